"""The runtimes ``pocketcnn bench`` can time, each built from one eval-mode model.

Runtimes (``RUNTIMES``), each taking the same ``(N, C, H, W)`` float32 batch:

- ``eager``: the model as built, in ``torch.inference_mode``;
- ``channels_last``: the same with weights (and so activations) in NHWC;
- ``compiled``: ``torch.compile`` (Inductor); compiled during the warm-up;
- ``optimized``: :func:`pocketcnn.export.optimize.optimize` with ``backend="auto"``, pocketcnn's fastest
  fp32 path for the device. On CPU that is ONNX Runtime on the BN-folded graph, with a
  batch split across one single-thread session per thread (batch 1 runs in one session
  with all threads, exactly like ``onnxruntime``); the record's ``note`` says so;
- ``optimized-torch``: :func:`pocketcnn.export.optimize.optimize` in PyTorch (BN folded, channels-last,
  ``torch.jit.freeze``);
- ``onnxruntime``: the BN-folded model exported to ONNX, one ONNX Runtime session with
  the same recipe as the reference (all graph optimizations, ``threads`` intra-op threads);
- ``onnxruntime-int8`` / ``torch-int8``: INT8 models from :mod:`pocketcnn.compress.quantize`
  (calibrated on random inputs: their speed is meaningful, their accuracy is not);
- ``litert`` / ``litert-int8``: the model as a ``.tflite`` file (:mod:`pocketcnn.export.tflite`: fp32,
  or full-integer INT8 calibrated on random inputs) in the LiteRT interpreter with XNNPACK and
  ``threads`` threads (extra ``pocketcnn[litert]``; skipped with that reason when missing).

References: ``torchvision-eager`` and ``torchvision-onnxruntime`` (torchvision's model
exported and run with the same session recipe as ``onnxruntime``).
"""
from __future__ import annotations

import copy
import importlib.util
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.formats import BY_NAME
from ..errors import ConfigError, close_matches, first_line
from ..models.registry import build_of

RUNTIMES: dict[str, str] = {
    "eager": "PyTorch eager, NCHW",
    "channels_last": "PyTorch eager, channels-last weights and activations",
    "compiled": "torch.compile (Inductor)",
    "optimized": "pocketcnn.export.optimize(backend='auto'): the fastest fp32 path for the device",
    "optimized-torch": "pocketcnn.export.optimize in PyTorch: BN folded, channels-last, jit.freeze",
    "onnxruntime": "ONNX Runtime on the BN-folded export, one session",
    "onnxruntime-int8": "ONNX Runtime, INT8 model from pocketcnn.compress.quantize",
    "torch-int8": "PyTorch INT8 model from pocketcnn.compress.quantize",
    "litert": "LiteRT interpreter (XNNPACK), fp32 .tflite from litert-torch, NHWC input",
    "litert-int8": "LiteRT interpreter (XNNPACK), full-integer INT8 .tflite (litert-torch PT2E)",
}
REFERENCE_RUNTIMES: dict[str, str] = {
    "torchvision-eager": "torchvision's model, PyTorch eager",
    "torchvision-onnxruntime": "torchvision's model exported to ONNX, same session recipe as onnxruntime",
}
INT8_RUNTIMES = ("onnxruntime-int8", "torch-int8")
DEFAULT_RUNTIMES = ("eager", "optimized", "onnxruntime", *INT8_RUNTIMES)  # int8 ones only when available
LITERT_RUNTIMES = ("litert", "litert-int8")  # asked for by name: they need pocketcnn[litert]

@dataclass(frozen=True)
class Runtime:
    """A built runtime: ``fn`` takes a ``(N, C, H, W)`` float32 CPU tensor."""

    name: str
    fn: Callable[[torch.Tensor], Any]
    note: str = ""


class RuntimeUnavailable(Exception):
    """A runtime that cannot run on this machine (the benchmark skips it with this reason)."""


def int8_available() -> bool:
    """Whether :mod:`pocketcnn.compress.quantize` is part of this build."""
    try:
        return importlib.util.find_spec("pocketcnn.compress.quantize") is not None
    except (ImportError, ValueError):
        return False


def default_runtimes() -> tuple[str, ...]:
    """``eager, optimized, onnxruntime``, plus the INT8 runtimes when this build has them."""
    return tuple(r for r in DEFAULT_RUNTIMES if r not in INT8_RUNTIMES or int8_available())


def parse_runtimes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"eager,onnxruntime"`` or a sequence -> validated, de-duplicated names (references allowed)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    valid = [*RUNTIMES, *REFERENCE_RUNTIMES]
    if not names:
        raise ConfigError(f"give at least one runtime, received {spec!r}. Valid runtimes: {', '.join(valid)}")
    for n in names:
        if n not in valid:
            raise ConfigError(f"unknown runtime {n!r}.{close_matches(n, valid)} Valid runtimes: {', '.join(valid)}")
    return tuple(dict.fromkeys(names))


# --- runtimes ---------------------------------------------------------------------------------

def _calibration(input_size: tuple[int, int, int], batches: int = 4, batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, *input_size, generator=gen) for _ in range(batches)]


def build_runtime(name: str, model: nn.Module, *, input_size: tuple[int, int, int], threads: int,
                  workdir: str | Path, label: str | None = None) -> Runtime:
    """Build runtime ``name`` (a key of ``RUNTIMES``) for an eval-mode ``model``; the model is not changed.

    ``label`` names the model in file names (default: its registry name).
    Raises :class:`RuntimeUnavailable` when this machine cannot run it (for example no
    C++ compiler for ``compiled``), and ``ConfigError`` for an INT8 runtime when
    :mod:`pocketcnn.compress.quantize` is missing.
    """
    from ..export.optimize import optimize

    workdir = Path(workdir)
    model = model.eval()
    build = build_of(model)
    tag = f"{label or (build.name if build else type(model).__name__)}-{name}"
    if name in ("eager", "torchvision-eager"):
        return Runtime(name, model, RUNTIMES.get(name) or REFERENCE_RUNTIMES[name])
    if name == "channels_last":
        return Runtime(name, copy.deepcopy(model).to(memory_format=torch.channels_last), RUNTIMES[name])
    if name == "compiled":
        try:
            compiled = torch.compile(copy.deepcopy(model), dynamic=False)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeUnavailable(f"torch.compile failed: {first_line(exc, 200)}") from None
        return Runtime(name, compiled, RUNTIMES[name])
    if name == "optimized":
        opt = optimize(model, backend="auto", example_input=input_size, threads=threads)
        note = getattr(opt, "note", "") or "PyTorch: BN folded, channels-last, jit.freeze"
        return Runtime(name, opt, f"optimize(backend='auto'): {note}")
    if name == "optimized-torch":
        return Runtime(name, optimize(model, example_input=input_size), RUNTIMES[name])
    if name in ("onnxruntime", "torchvision-onnxruntime", "onnxruntime-int8"):
        return _onnxruntime_runtime(name, model, input_size, threads, workdir / tag)
    if name == "torch-int8":
        from ..compress import quantize
        qmodel = quantize.quantize_torch(copy.deepcopy(model), _calibration(input_size))
        return Runtime(name, qmodel, RUNTIMES[name] + " (calibrated on random inputs: speed only)")
    if name in LITERT_RUNTIMES:
        return _litert_runtime(name, model, input_size, threads, workdir / f"{tag}{BY_NAME['tflite'].suffix}")
    raise ConfigError(f"unknown runtime {name!r}. Valid runtimes: {', '.join([*RUNTIMES, *REFERENCE_RUNTIMES])}")


def _onnxruntime_runtime(name: str, model: nn.Module, input_size: tuple[int, int, int], threads: int,
                         stem: Path) -> Runtime:
    """One ONNX Runtime session on the model exported to ``stem.onnx``: BN-folded (not torchvision's
    reference, whose graph ONNX Runtime folds itself), INT8-quantized for ``onnxruntime-int8``."""
    from ..export.onnx import export_onnx
    from ..export.optimize import OnnxRuntimeModule, fold_batchnorm

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise RuntimeUnavailable("onnxruntime is not installed") from None
    export_model = model
    if name != "torchvision-onnxruntime":
        export_model = copy.deepcopy(model).eval()
        fold_batchnorm(export_model)
    suffix = BY_NAME["onnx"].suffix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(export_model, Path(f"{stem}{suffix}"), input_size=input_size, dynamic_batch=True)
    note = RUNTIMES.get(name) or REFERENCE_RUNTIMES[name]
    if name == "onnxruntime-int8":
        from ..compress import quantize
        calib = [b.numpy() for b in _calibration(input_size)]
        path = quantize.quantize_onnx(path, Path(f"{stem}.int8{suffix}"), calib, per_channel=True)
        note += " (calibrated on random inputs: speed only)"
    return Runtime(name, OnnxRuntimeModule(path, threads=threads, shards=1, note=note), note)


def _litert_runtime(name: str, model: nn.Module, input_size: tuple[int, int, int], threads: int, path: Path) -> Runtime:
    """The model exported to ``.tflite`` (int8: calibrated on random inputs) in a LiteRT interpreter."""
    from ..errors import MissingDependencyError
    from ..export.tflite import export_tflite
    from ..runtime.litert import LiteRtRunner

    calib = _calibration(input_size) if name == "litert-int8" else None
    try:
        export_tflite(model, path, input_size=input_size, calib_batches=calib, calibration="random inputs")
        runner = LiteRtRunner(path, threads=threads)
    except MissingDependencyError as exc:
        raise RuntimeUnavailable(str(exc)) from None
    note = RUNTIMES[name] + (" (calibrated on random inputs: speed only)" if calib else "")
    return Runtime(name, lambda x: runner.run(x.numpy()), note)


def reference_model(name: str) -> nn.Module | None:
    """torchvision's model of the same architecture as registered model ``name`` (random weights), or None."""
    from ..models.registry import model_config

    tv_name = model_config(name).torchvision
    if tv_name is None:
        return None
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(tv_name, weights=None)
    return model.eval()


