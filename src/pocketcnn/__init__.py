"""pocketcnn: pocket-sized CNNs (SqueezeNet, MobileNet) from paper to phone.

The public names below are loaded on first use: ``import pocketcnn`` costs no PyTorch
import, so the light runtime (``pocketcnn.runtime``) and the CLI start fast.
"""
from __future__ import annotations

from .lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "create_model": "models.registry", "list_models": "models.registry", "model_config": "models.registry",
    "profile": "models.analysis", "Profile": "models.analysis",
    "load_weights": "models.weights",
    "load_predictor": "workflows.predict",
    "PocketCNNError": "errors",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
