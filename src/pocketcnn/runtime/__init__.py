"""The light runtime: predictions from exported ``.onnx`` files with numpy, ONNX Runtime and
Pillow only. Nothing here imports PyTorch (a test keeps it so), so ``pocketcnn predict
FILE.onnx`` and ``pocketcnn serve`` run on machines without it.

* :mod:`~pocketcnn.runtime.images`: reading images, the training preprocessing in numpy.
* :mod:`~pocketcnn.runtime.onnx`: the ONNX Runtime session recipe and :class:`OnnxRunner`.
* :mod:`~pocketcnn.runtime.predictor`: :class:`Predictor`, :class:`Prediction`, :func:`open_model`.

Names are loaded on first use, so ``import pocketcnn.runtime`` costs nothing.
"""
from __future__ import annotations

from ..lazy import lazy_getattr

_LAZY = {
    "load_image": "images", "to_model_mode": "images", "preprocess": "images", "MAX_IMAGE_PIXELS": "images",
    "ort_session": "onnx", "OnnxRunner": "onnx", "default_threads": "onnx",
    "Predictor": "predictor", "Prediction": "predictor", "TopK": "predictor", "Runner": "predictor",
    "open_model": "predictor", "softmax": "predictor",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
