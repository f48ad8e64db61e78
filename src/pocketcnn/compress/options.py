"""The INT8 choices, torch-free so that ``pocketcnn quantize --help`` lists them without importing PyTorch."""
from __future__ import annotations

BACKENDS = ("onnxruntime", "torch")
TORCH_METHODS = ("fx", "pt2e")
ACTIVATION_TYPES = ("qint8", "quint8")
ACTIVATION_TYPE = "quint8"  # measured faster (U8S8 kernels): see quantize_onnx
