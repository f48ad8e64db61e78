"""The one table of model files: which file is which, and what reads, runs and writes it.

Every place that decides by a file's name (the light runtime's loader, ``load_predictor``,
``load_model_source``, ``export``, ``serve``, batch prediction, the CLI's choices and install hints)
reads :data:`FORMATS`; adding a format is one row here plus the code the row names. The row names
its runner and exporter as ``"module:attribute"`` strings, imported only when a file of that kind is
opened, so this module stays torch-free (the light install reads it).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import install_hint


@dataclass(frozen=True)
class FileFormat:
    name: str  # "onnx"; for exported kinds also the `pocketcnn export --format` value
    suffixes: tuple[str, ...]  # the first is what pocketcnn writes
    description: str  # "an ONNX model", as error messages name it
    kind: str  # "weights" (PyTorch weights: checkpoint, .pcz, weight file), "exported" (a runtime's file), "folder"
    runner: str | None = None  # "module:attr" building the runner of an exported file (runtime/loader.py)
    light: bool = False  # runs without PyTorch (numpy, onnxruntime or ai-edge-litert, Pillow)
    exporter: bool = False  # `pocketcnn export --format NAME` writes it
    extra: str | None = None  # the pyproject extra that provides its exporter or runtime (None: the base/train install)

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def install(self) -> str:
        """How to get what this format needs, e.g. ``pip install 'pocketcnn[litert]'``."""
        return install_hint(self.extra or "train")

    def open_runner(self, path: str | Path, **kwargs: Any) -> Any:
        """The runner of an exported file (``runtime``, ``metadata``, ``max_batch``, ``run(batch) -> logits``)."""
        if self.runner is None:
            raise TypeError(f"{self.name} files have no runner")
        module, attr = self.runner.split(":")
        return getattr(importlib.import_module(module), attr)(path, **kwargs)


FORMATS: tuple[FileFormat, ...] = (
    FileFormat("checkpoint", (".pt", ".pth"), "a PyTorch checkpoint", "weights"),
    FileFormat("pcz", (".pcz",), "a compressed (.pcz) model", "weights"),
    FileFormat("safetensors", (".safetensors",), "a safetensors weight file", "weights"),
    FileFormat("onnx", (".onnx",), "an ONNX model", "exported", "pocketcnn.runtime.onnx:OnnxRunner", light=True,
               exporter=True),
    FileFormat("pt2", (".pt2",), "a torch.export archive", "exported", "pocketcnn.runtime.torch_runners:load_pt2",
               exporter=True),
    FileFormat("pte", (".pte",), "an ExecuTorch program", "exported",
               "pocketcnn.runtime.torch_runners:ExecuTorchRunner", exporter=True, extra="mobile"),
    FileFormat("tflite", (".tflite",), "a LiteRT model", "exported", "pocketcnn.runtime.litert:LiteRtRunner",
               light=True, exporter=True, extra="litert"),
    FileFormat("coreml", (".mlpackage",), "a Core ML package, which runs only on Apple systems", "folder",
               exporter=True, extra="mobile"),
    FileFormat("web", ("-web",), "a static web folder", "folder", exporter=True),
)
BY_NAME = {f.name: f for f in FORMATS}
EXPORT_FORMATS = tuple(f.name for f in FORMATS if f.exporter)  # the choices of `pocketcnn export --format`


def format_of(path: str | Path) -> FileFormat | None:
    """The format of ``path`` by its suffix (case-insensitive), None for an unknown one."""
    name = str(path).lower()
    return next((f for f in FORMATS if any(name.endswith(s) for s in f.suffixes if s.startswith("."))), None)


def suffixes(*, kind: str | None = None, light: bool | None = None, predict: bool = False) -> tuple[str, ...]:
    """Suffixes of the formats that match: ``kind``, ``light`` (runs without torch), ``predict`` (what
    ``load_predictor`` opens: weights and exported files with a runner, not weight files without a model)."""
    out = []
    for f in FORMATS:
        if (kind is None or f.kind == kind) and (light is None or f.light == light) \
                and (not predict or f.runner is not None or f.name in ("checkpoint", "pcz")):
            out += [s for s in f.suffixes if s.startswith(".")]
    return tuple(out)


def export_suffix(name: str, *, int8: bool = False) -> str:
    """What ``pocketcnn export --format name`` appends to the source's stem (``.int8.tflite`` with ``int8``)."""
    return (".int8" if int8 else "") + BY_NAME[name].suffix
