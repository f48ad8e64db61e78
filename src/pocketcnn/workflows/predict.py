"""Predicting classes of image files with any model file pocketcnn writes.

:func:`load_predictor` reads an ONNX file (fp32 or int8: the light runtime, no PyTorch), an
ExecuTorch program (``.pte``), a ``torch.export`` archive (``.pt2``), a checkpoint (``.pt``,
fp32 or the torch back end's int8) or a compressed model (``.pcz``); preprocessing (input
size, channels, mean, std) and class names come from the file itself.

A model held as PyTorch weights (an fp32 checkpoint, a ``.pcz`` file, a name with ImageNet
weights) runs by default (``runtime="auto"``) on the fastest path measured on CPU: its
BN-folded graph in ONNX Runtime (:func:`pocketcnn.export.optimize.optimize` with ``backend="auto"``;
1.3-2.2x the best PyTorch path for every model of the zoo, see ``docs/speed.md``). Outputs
equal PyTorch eager's within float rounding; ``runtime="torch"`` keeps eager PyTorch.

This module imports no PyTorch itself: an ``.onnx`` file is predicted without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts.formats import format_of, suffixes
from ..data.spec import DataSpec
from ..errors import CheckpointError, ConfigError, PocketCNNError
from ..runtime.images import load_image, to_model_mode
from ..runtime.predictor import Prediction, Predictor, TopK

__all__ = ["load_predictor", "predictor_from_source", "fp32_runner", "Prediction", "Predictor", "TopK",
           "load_image", "to_model_mode", "MODEL_SUFFIXES", "FP32_PATHS"]

MODEL_SUFFIXES = suffixes(predict=True)  # what load_predictor opens (the format table's rows)
FP32_PATHS = ("auto", "torch", "onnxruntime")  # how a model held as PyTorch weights is run


def load_predictor(path: str | Path, *, threads: int | None = None, runtime: str = "auto") -> Predictor:
    """A :class:`Predictor` for a model file: ``.onnx``, ``.tflite``, ``.pte``, ``.pt2``, ``.pt`` checkpoint (fp32 or
    int8) or ``.pcz``. A missing or unreadable file is a one-line CheckpointError.

    ``runtime`` (one of :data:`FP32_PATHS`) applies to fp32 checkpoints and ``.pcz`` files (see the
    module docstring); exported files run in their own runtime and int8 checkpoints in PyTorch's.
    """
    _check_runtime(runtime)
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a model file ({', '.join(MODEL_SUFFIXES)})")
    if not path.is_file():
        if not path.suffix and _is_model_name(str(path)):
            raise ConfigError(f"model name {str(path)!r} needs --weights FILE or a weights name (see "
                              "`pocketcnn weights`); nothing is downloaded")
        raise CheckpointError(f"{path}: no such model file")
    fmt = format_of(path)
    if fmt is not None and fmt.light:  # the light runtime: ONNX Runtime, the LiteRT interpreter
        from ..runtime.predictor import open_model

        return open_model(path, threads=threads)
    if fmt is not None and fmt.kind == "exported":  # .pte, .pt2: their PyTorch runtimes
        from ..artifacts.metadata import require_data
        from ..runtime.loader import open_runtime

        runner = open_runtime(path, threads=threads)
        return Predictor(runner, require_data(runner.metadata, str(path)), source=str(path),
                         model=str(runner.metadata.get("model", "")))
    if fmt is not None and fmt.name in ("checkpoint", "pcz"):
        from ..artifacts.checkpoint import is_int8, load_checkpoint
        from ..artifacts.source import load_model_source
        from ..runtime.torch_runners import TorchRunner

        if fmt.name == "checkpoint":
            ckpt = load_checkpoint(path)
            if is_int8(ckpt):  # PyTorch's int8 kernels: no ONNX path
                from ..artifacts.checkpoint import model_from_checkpoint
                from ..artifacts.source import check_data

                model = model_from_checkpoint(ckpt, source=str(path))
                return Predictor(TorchRunner(model, runtime="torch-int8"), check_data(ckpt.get("data"), path),
                                 source=str(path), model=str(ckpt["model"]))
        return predictor_from_source(load_model_source(path), runtime=runtime, threads=threads)
    raise CheckpointError(f"{path}: unknown model file type {path.suffix!r} (expected one of "
                          f"{', '.join(MODEL_SUFFIXES)})")


def _is_model_name(name: str) -> bool:
    try:
        from ..models.registry import list_models
    except ImportError:  # the light install has no model zoo
        return False
    return name in list_models()


def _check_runtime(runtime: str) -> None:
    if runtime not in FP32_PATHS:
        raise ConfigError(f"runtime must be one of {', '.join(FP32_PATHS)}, received runtime={runtime!r}")


def fp32_runner(model: Any, data: DataSpec, runtime: str = "auto", threads: int | None = None) -> Any:
    """The runner for an fp32 PyTorch model: eager (``"torch"``), or its BN-folded graph in
    ONNX Runtime (``"onnxruntime"``; ``"auto"`` when ONNX Runtime is installed and the model
    exports, else eager)."""
    from ..export.optimize import OnnxRuntimeModule, optimize
    from ..runtime.torch_runners import TorchRunner

    _check_runtime(runtime)
    if runtime == "torch":
        return TorchRunner(model)
    size = (data.in_chans, data.image_size, data.image_size)
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


def predictor_from_source(source: Any, *, runtime: str = "auto", threads: int | None = None) -> Predictor:
    """A :class:`Predictor` for a :class:`~pocketcnn.artifacts.source.ModelSource` (e.g. a name + ImageNet weights)."""
    return Predictor(fp32_runner(source.model, source.data, runtime, threads), source.data,
                     source=str(source.path or source.name), model=source.name)
