"""Top-k predictions for images with a runner and the preprocessing its file carries, without PyTorch.

:class:`Predictor` joins a :class:`Runner` (anything with ``runtime``, ``metadata``,
``max_batch`` and ``run``) and a :class:`~pocketcnn.data.spec.DataSpec`. Each image is
judged on its own: a missing, unreadable, truncated or oversized image gives a
:class:`Prediction` with ``error`` set while the other images are still predicted.
:func:`open_model` builds one for an ``.onnx`` or ``.tflite`` file.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..artifacts.formats import format_of, suffixes
from ..artifacts.metadata import require_data
from ..data.spec import DataSpec
from ..errors import CheckpointError, ConfigError, ExportError, PocketCNNError, first_line
from ..validate import check_int
from .images import ImageSource, image_name, preprocess

BATCH = 32  # images per runner call in :meth:`Predictor.predict`


@dataclass(frozen=True)
class TopK:
    index: int
    label: str
    prob: float


@dataclass(frozen=True)
class Prediction:
    """The result for one image: ``topk`` (best first) or the one-line ``error``."""

    image: str
    topk: tuple[TopK, ...] | list[TopK] = field(default_factory=tuple)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The record of ``predict --json``: ``{image, topk: [{index, label, prob}]}`` or ``{image, error}``."""
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "topk": [{"index": t.index, "label": t.label, "prob": t.prob} for t in self.topk]}


@runtime_checkable
class Runner(Protocol):
    """What a :class:`Predictor` runs: float32 ``(N, C, H, W)`` -> float32 ``(N, classes)`` logits."""

    runtime: str
    metadata: dict[str, Any]
    max_batch: int | None

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def check_topk(topk: Any) -> int:
    return check_int("topk", topk)


def softmax(logits: np.ndarray) -> np.ndarray:
    """``(N, K)`` logits -> float64 ``(N, K)`` probabilities (logits rounded to float32 first)."""
    x = np.asarray(logits, np.float32).astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """A runner plus the preprocessing and class names its file carries.

    ``source``: where the model came from (messages); ``model``: its architecture name.
    """

    def __init__(self, runner: Runner, spec: DataSpec, *, source: str = "", model: str = "") -> None:
        if not isinstance(spec, DataSpec):
            raise ConfigError(f"spec must be a DataSpec, received {type(spec).__name__}")
        self.runner = runner
        self.spec = spec
        self.source = source
        self.model = model

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def runtime(self) -> str:
        return self.runner.runtime

    def preprocess(self, image: ImageSource, *, name: str | None = None) -> np.ndarray:
        """One image (path, bytes or PIL image) -> float32 ``(C, S, S)`` as the model was trained.
        DataError (naming ``name`` or the image) if it cannot be read."""
        return preprocess(image, self.spec, name=name)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed float32 ``(N, C, S, S)`` -> float64 ``(N, classes)`` softmax probabilities."""
        try:
            logits = self.runner.run(np.ascontiguousarray(batch, dtype=np.float32))
        except PocketCNNError:
            raise
        except Exception as exc:  # a model that does not run on its own preprocessing: not the images' fault
            raise ExportError(f"{self.source or 'model'}: {self.runtime} failed to run: {first_line(exc)}") from None
        return softmax(logits)

    def top(self, name: str, probs: np.ndarray, topk: int = 5) -> Prediction:
        """The :class:`Prediction` for one image's float ``(classes,)`` probabilities, best first."""
        k = min(check_topk(topk), probs.shape[-1])
        order = np.argsort(-probs, kind="stable")[:k]
        return Prediction(name, tuple(TopK(int(j), self._label(int(j)), float(probs[j])) for j in order))

    def predict_arrays(self, batch: np.ndarray, *, names: Sequence[str] | None = None,
                       topk: int = 5) -> list[Prediction]:
        """Preprocessed float32 ``(N, C, S, S)`` -> N predictions (``names``: one per row, default ``<array i>``)."""
        check_topk(topk)
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ConfigError(f"predict_arrays expects an (N, C, H, W) batch, received shape {batch.shape}")
        names = list(names) if names is not None else [f"<array {i}>" for i in range(len(batch))]
        if len(names) != len(batch):
            raise ConfigError(f"{len(names)} names for a batch of {len(batch)} images")
        out: list[Prediction] = []
        for start in range(0, len(batch), BATCH):
            probs = self.probabilities(batch[start:start + BATCH])
            out.extend(self.top(n, p, topk) for n, p in zip(names[start:start + BATCH], probs))
        return out

    def predict(self, images: Sequence[ImageSource] | ImageSource, *, topk: int = 5) -> list[Prediction]:
        """One :class:`Prediction` per image, in order; bad images get ``error`` instead of ``topk``."""
        if isinstance(images, (str, Path, bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
            images = [images]  # type: ignore[list-item]
        check_topk(topk)
        results: list[Prediction | None] = [None] * len(images)
        ready: list[tuple[int, np.ndarray]] = []
        for i, image in enumerate(images):
            try:
                ready.append((i, self.preprocess(image)))
            except PocketCNNError as exc:
                results[i] = Prediction(image_name(image), error=str(exc))
        for start in range(0, len(ready), BATCH):
            chunk = ready[start:start + BATCH]
            probs = self.probabilities(np.stack([x for _, x in chunk]))
            for (i, _), p in zip(chunk, probs):
                results[i] = self.top(image_name(images[i]), p, topk)
        return [r for r in results if r is not None]

    def _label(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)


def open_model(path: str | Path, threads: int | None = None, *, spinning: bool = True) -> Predictor:
    """A :class:`Predictor` for an ``.onnx`` file (fp32 or int8) in ONNX Runtime or a ``.tflite``
    file (fp32 or int8) in the LiteRT interpreter, with the preprocessing and class names its
    metadata carries (``threads``; ``spinning``, ONNX Runtime only: see
    :func:`~pocketcnn.runtime.onnx.ort_session`). One-line CheckpointError for a missing
    file, another format, or a file without pocketcnn metadata; MissingDependencyError for a
    ``.tflite`` file without ai-edge-litert installed."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None or not fmt.light:
        light = " and ".join(suffixes(light=True))
        if fmt is None:
            raise CheckpointError(f"{path}: unknown model file type {path.suffix!r} (the light runtime opens {light} "
                                  "files)")
        if fmt.kind == "folder":
            raise CheckpointError(f"{path}: {fmt.description}; pocketcnn predicts with {light} files")
        raise CheckpointError(f"{path}: {fmt.description}, which the light runtime does not open: use "
                              "pocketcnn.load_predictor (needs PyTorch, the full install), or export it to "
                              "ONNX with 'pocketcnn export'")
    if not path.is_file():
        raise CheckpointError(f"{path}: {'is a folder, not' if path.is_dir() else 'no such'} model file")
    runner: Runner = fmt.open_runner(path, threads=threads, spinning=spinning)
    spec = require_data(runner.metadata, str(path))
    return Predictor(runner, spec, source=str(path), model=str(runner.metadata.get("model", "")))
