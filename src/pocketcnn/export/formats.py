"""The export formats and their file suffixes (torch-free, so the CLI can list them cheaply)."""
from __future__ import annotations

FORMATS = ("onnx", "pt2", "pte", "tflite", "coreml", "web")
# "web" is a folder (index.html, the model, the runtime): its default name is <stem>-web
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "pte": ".pte", "tflite": ".tflite", "coreml": ".mlpackage", "web": "-web"}
EXTRA = {"pte": "mobile", "tflite": "litert", "coreml": "mobile"}  # the optional extra each format needs
