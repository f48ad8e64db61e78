"""Predicting classes of image files with any model file pocketcnn writes.

:func:`load_predictor` reads a checkpoint (``.pt``, fp32 or the torch back end's int8), an
ONNX file (fp32 or int8), an ExecuTorch program (``.pte``), a ``torch.export`` archive
(``.pt2``) or a compressed model (``.pcz``); preprocessing (input size, channels, mean,
std) and class names come from the file itself.

A model held as PyTorch weights (an fp32 checkpoint, a ``.pcz`` file, a name with ImageNet
weights) runs by default (``runtime="auto"``) on the fastest path measured on CPU: its
BN-folded graph in ONNX Runtime (:func:`pocketcnn.optimize` with ``backend="auto"``; 1.3-2.2x
the best PyTorch path for every model of the zoo, see ``benchmarks/bench_inference.py``).
Outputs equal PyTorch eager's within float rounding; ``runtime="torch"`` keeps eager PyTorch.

Each image is judged on its own: a missing, unreadable, truncated or oversized image gives
a :class:`Prediction` with ``error`` set while the other images are still predicted.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import CheckpointError, ConfigError, DataError, ExportError, PocketCNNError
from .runtime import Runner, TorchRunner, open_runtime

# Images with more pixels than this are refused before decoding (decompression bombs).
# PIL's own limit (Image.MAX_IMAGE_PIXELS) is honored too: its warning counts as an error.
MAX_IMAGE_PIXELS = 64_000_000
MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".pte", ".pt2", ".pcz")
RUNTIMES = ("auto", "torch", "onnxruntime")  # for models held as PyTorch weights
BATCH = 32


@dataclass(frozen=True)
class TopK:
    index: int
    label: str
    prob: float


@dataclass(frozen=True)
class Prediction:
    """The result for one image: ``topk`` (best first) or the one-line ``error``."""

    image: str
    topk: list[TopK] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "topk": [{"index": t.index, "label": t.label, "prob": t.prob} for t in self.topk]}


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """Open and fully decode an image file (EXIF rotation applied); every failure is a DataError."""
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                pixels = img.width * img.height
                if pixels > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: image of {img.width}x{img.height} = {pixels:,} pixels is over the "
                                    f"limit of {MAX_IMAGE_PIXELS:,} (possible decompression bomb)")
                img.load()  # decode now: a truncated file fails here, not later
                return ImageOps.exif_transpose(img)  # a decoded copy, rotated as the camera meant
    except DataError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data, unreadable file
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot decode image ({reason})") from None


def to_model_mode(img: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL mode -> ``L`` (1 channel) or ``RGB`` (3): alpha is dropped, palettes expanded,
    16-bit and float images scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 255.0) if arr.size else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if in_chans == 1:
        return img if img.mode == "L" else img.convert("RGB").convert("L")  # via RGB: CMYK, YCbCr, LA, ...
    return img if img.mode == "RGB" else img.convert("RGB")


class Predictor:
    """A model runner plus the preprocessing and class names its file carries."""

    def __init__(self, runner: Runner, data: Mapping[str, Any], *, source: str = "", model: str = "") -> None:
        from ..data import DataSpec

        try:
            self.spec = DataSpec.from_dict(dict(data))
        except PocketCNNError as exc:
            raise CheckpointError(f"{source or 'model'}: bad preprocessing description: {exc}") from None
        self.runner = runner
        self.source = source
        self.model = model

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def runtime(self) -> str:
        return self.runner.runtime

    def preprocess(self, image: str | Path | Image.Image) -> torch.Tensor:
        """One image -> normalized float ``(C, S, S)`` as the model was trained (DataError if unreadable)."""
        from ..data import pil_to_input

        img = load_image(image)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # palette transparency notes
                return pil_to_input(to_model_mode(img, self.spec.in_chans), self.spec)
        except PocketCNNError:
            raise
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{_name(image)}: cannot convert image of mode {img.mode!r} ({exc})") from None

    def predict(self, images: Sequence[str | Path | Image.Image] | str | Path | Image.Image, *,
                topk: int = 5) -> list[Prediction]:
        """One :class:`Prediction` per image, in order; bad images get ``error`` instead of ``topk``."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ConfigError(f"topk must be a positive integer, received topk={topk!r}")
        k = min(topk, len(self.classes))
        results: list[Prediction | None] = [None] * len(images)
        ready: list[tuple[int, torch.Tensor]] = []
        for i, image in enumerate(images):
            try:
                ready.append((i, self.preprocess(image)))
            except PocketCNNError as exc:
                results[i] = Prediction(_name(image), error=str(exc))
        for start in range(0, len(ready), BATCH):
            chunk = ready[start:start + BATCH]
            try:
                logits = self.runner.run(torch.stack([x for _, x in chunk]).numpy())
            except PocketCNNError:
                raise
            except Exception as exc:  # a model that does not run on its own preprocessing: not the images' fault
                text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise ExportError(f"{self.source or 'model'}: {self.runtime} failed to run: {text}") from None
            probs = torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)).double(), 1)
            values, indices = probs.topk(k, 1)
            for (i, _), vals, idxs in zip(chunk, values.tolist(), indices.tolist()):
                results[i] = Prediction(_name(images[i]), [TopK(int(j), self._label(j), float(p))
                                                           for p, j in zip(vals, idxs)])
        return [r for r in results if r is not None]

    def _label(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)


def _name(image: Any) -> str:
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or "<PIL image>"
    return str(image)


def load_predictor(path: str | Path, *, threads: int | None = None, runtime: str = "auto") -> Predictor:
    """A :class:`Predictor` for a model file: ``.pt`` checkpoint (fp32 or int8), ``.onnx``,
    ``.pte``, ``.pt2`` or ``.pcz``. A missing or unreadable file is a CheckpointError.

    ``runtime`` applies to fp32 checkpoints and ``.pcz`` files (see the module docstring);
    exported files run in their own runtime and int8 checkpoints in PyTorch's.
    """
    from .export import data_from_metadata

    _check_runtime(runtime)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".pte", ".pt2"):
        runner = open_runtime(path, threads=threads)
        data = data_from_metadata(runner.metadata)
        if data is None:
            raise CheckpointError(f"{path}: carries no pocketcnn metadata (input size, mean, std, classes); "
                                  "export it with 'pocketcnn export'")
        return Predictor(runner, data, source=str(path), model=str(runner.metadata.get("model", "")))
    if suffix == ".pcz":
        from ..compress.coding import load_pcz
        from .export import _check_data

        model, meta = load_pcz(path)
        data = _check_data(meta.get("data") if isinstance(meta, dict) else None, path)
        return Predictor(fp32_runner(model, data, runtime, threads), data, source=str(path),
                         model=str(getattr(model, "pocketcnn_name", "")))
    if suffix in (".pt", ".pth"):
        return _checkpoint_predictor(path, runtime, threads)
    raise CheckpointError(f"{path}: unknown model file type {path.suffix!r} (expected one of "
                          f"{', '.join(MODEL_SUFFIXES)})")


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, received runtime={runtime!r}")


def fp32_runner(model: torch.nn.Module, data: Mapping[str, Any], runtime: str = "auto",
                threads: int | None = None) -> Runner:
    """The runner for an fp32 PyTorch model: eager (``"torch"``), or its BN-folded graph in
    ONNX Runtime (``"onnxruntime"``; ``"auto"`` when ONNX Runtime is installed and the model
    exports, else eager)."""
    from ..optimize import OnnxRuntimeModule, optimize

    _check_runtime(runtime)
    if runtime == "torch":
        return TorchRunner(model)
    size = (int(data["in_chans"]), int(data["image_size"]), int(data["image_size"]))
    try:
        fast = optimize(model.cpu(), example_input=size, backend="auto" if runtime == "auto" else "onnxruntime",
                        threads=threads or None)
    except PocketCNNError:
        if runtime == "auto":
            return TorchRunner(model)
        raise
    if not isinstance(fast, OnnxRuntimeModule):  # auto without ONNX Runtime: eager is the measured fallback
        return TorchRunner(model)
    return TorchRunner(fast, runtime="onnxruntime")


def _checkpoint_predictor(path: Path, runtime: str = "auto", threads: int | None = None) -> Predictor:
    from ..train.checkpoint import is_int8, load_checkpoint, model_from_checkpoint
    from .export import _check_data

    ckpt = load_checkpoint(path)
    data = _check_data(ckpt.get("data"), path)
    try:
        model = model_from_checkpoint(ckpt)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    runner = TorchRunner(model, runtime="torch-int8") if is_int8(ckpt) else fp32_runner(model, data, runtime, threads)
    return Predictor(runner, data, source=str(path), model=str(ckpt["model"]))


def predictor_from_source(source: Any, *, runtime: str = "auto", threads: int | None = None) -> Predictor:
    """A :class:`Predictor` for a :class:`~pocketcnn.deploy.export.ModelSource` (e.g. a name + ImageNet weights)."""
    return Predictor(fp32_runner(source.model, source.data, runtime, threads), source.data,
                     source=str(source.path or source.name), model=source.name)
