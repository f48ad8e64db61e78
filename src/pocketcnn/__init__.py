"""pocketcnn: pocket-sized CNNs (SqueezeNet, MobileNet) from paper to phone."""
from __future__ import annotations

__version__ = "0.1.0"

from .analysis import Profile, profile
from .deploy.predict import load_predictor
from .errors import PocketCNNError
from .registry import create_model, list_models, model_info
from .weights import load_weights

__all__ = ["__version__", "create_model", "list_models", "model_info", "profile", "Profile",
           "load_weights", "load_predictor", "PocketCNNError"]
