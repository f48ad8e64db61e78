"""The export formats and their file suffixes (torch-free, so the CLI can list them cheaply)."""
from __future__ import annotations

FORMATS = ("onnx", "pt2", "pte")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "pte": ".pte"}
