"""Inference-ready models: batch norm folded into convolutions, channels-last, frozen or compiled.

:func:`optimize` works on any model of the zoo (and on any ``nn.Module`` built the same
way) without knowing its architecture: batch norm folding walks every ``nn.Sequential``
and folds each ``BatchNorm2d`` into the ``Conv2d`` right before it (``ConvBNAct`` is
``conv, bn, act``; MobileNetV2's projection is ``..., conv, bn`` inside
``InvertedResidual.conv``). A ``Sequential`` feeds each child's output only to the next
child, so this pairing is always safe.

Which path is fastest, and by how much, was measured with ``benchmarks/bench_inference.py``;
the numbers, the command and the choices they led to (channels-last, BN folding and
``torch.jit.freeze`` for PyTorch; ONNX Runtime on the folded graph as ``backend="auto"``;
single-thread shards of :class:`OnnxRuntimeModule` on a loaded machine) are in
docs/speed.md, "How the fp32 path was chosen".
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import ConfigError, first_line
from ..validate import check_int
from ..runtime.onnx import ort_session

__all__ = ["optimize", "fold_batchnorm", "example_batch", "OnnxRuntimeModule", "BACKENDS"]

BACKENDS = ("torch", "onnxruntime", "auto")
# Each shard runs its images 4 at a time: their activations then stay in the core's caches
# (measured: docs/speed.md, "How the fp32 path was chosen").
SHARD_MICRO_BATCH = 4


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential``.

    Works in place on ``model`` (which must be in eval mode: folding uses the running
    statistics); each folded batch norm is replaced by ``nn.Identity`` so that the indices
    of the ``Sequential`` stay the same. Returns how many were folded. Batch norms without
    running statistics or whose width does not match the convolution are left alone.
    """
    if model.training:
        raise ConfigError("fold_batchnorm needs a model in eval mode (it uses the running statistics), "
                          "received a model in training mode; call model.eval() first")
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_key, conv), (bn_key, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d
                    and bn.running_mean is not None and bn.running_var is not None
                    and conv.out_channels == bn.num_features):
                module._modules[conv_key] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_key] = nn.Identity()
                folded += 1
    return folded


def example_batch(model: nn.Module, example_input: torch.Tensor | Sequence[int] | None = None,
                  batch_size: int = 1) -> torch.Tensor:
    """A batch for tracing ``model``: ``example_input`` as is, or zeros of its ``(C, H, W)`` size.

    With ``None``, ``C`` is the first convolution's input channels and ``H = W`` is the
    registered input size of the model (224 when it is not a registered model).
    """
    if isinstance(example_input, torch.Tensor):
        if example_input.dim() != 4:
            raise ConfigError(f"example_input must be a (N, C, H, W) tensor, received shape {list(example_input.shape)}")
        return example_input
    if example_input is None:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        chans = first_conv.in_channels if first_conv is not None else 3
        side = 224
        from ..models.registry import build_of

        build = build_of(model)
        if build is not None:
            side = build.config.input_size[1]
        size: tuple[int, ...] = (chans, side, side)
    else:
        try:
            size = tuple(int(v) for v in example_input)
        except (TypeError, ValueError):
            size = ()
        if len(size) != 3 or min(size) < 1:
            raise ConfigError("example_input must be a (N, C, H, W) tensor or a (C, H, W) size, "
                              f"received {example_input!r}")
    return torch.zeros(batch_size, *size)


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime model behind the ``nn.Module`` call: ``(N, C, H, W)`` float tensor -> logits.

    ``shards > 1`` splits a batch of at least ``min_shard * shards`` images into ``shards``
    parts run at the same time by as many single-threaded sessions (ONNX Runtime releases
    the GIL), each part ``micro_batch`` images at a time (``None``: all at once); smaller
    batches go to one session with ``threads`` intra-op threads. Splitting the batch keeps
    every core busy on its own images instead of meeting the others at a barrier in every
    layer; see the module docstring for what it measured. Each session holds its own copy
    of the weights.
    """

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, shards: int = 1,
                 min_shard: int = 1, micro_batch: int | None = None, note: str = "") -> None:
        super().__init__()
        threads = _check_threads(threads)
        check_int("shards", shards, 1, threads)  # at most one single-thread session per thread
        self.micro_batch = check_int("micro_batch", micro_batch, optional=True)
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.session = ort_session(data, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.shards = shards
        self.min_shard = min_shard
        self.shard_sessions = [ort_session(data, threads=1) for _ in range(shards)] if shards > 1 else []
        self._pool = ThreadPoolExecutor(shards, thread_name_prefix="pocketcnn-ort") if shards > 1 else None
        self.note = note

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        n = arr.shape[0]
        if self._pool is None or n < self.min_shard * self.shards:
            return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
        bounds = [n * i // self.shards for i in range(self.shards + 1)]
        futures = [self._pool.submit(self._run_part, s, arr[a:b])
                   for s, a, b in zip(self.shard_sessions, bounds, bounds[1:])]
        return torch.cat([torch.from_numpy(f.result()) for f in futures])

    def _run_part(self, session, arr):
        step = self.micro_batch or len(arr)
        outs = [session.run(None, {self.input_name: arr[i:i + step]})[0] for i in range(0, len(arr), step)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False)

    def extra_repr(self) -> str:
        return f"shards={self.shards}, micro_batch={self.micro_batch}, note={self.note!r}"


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return torch.get_num_threads()
    return check_int("threads", threads)


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _to_onnxruntime(model: nn.Module, example: torch.Tensor, threads: int | None, shards: int | None) -> nn.Module:
    from ..export.onnx import export_onnx

    threads = _check_threads(threads)
    shards = threads if shards is None else shards
    with tempfile.TemporaryDirectory(prefix="pocketcnn-opt-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_size=tuple(example.shape[1:]), dynamic_batch=True)
        note = (f"ONNX Runtime on the BN-folded graph, {threads} thread(s)"
                + (f"; batches split across {shards} single-thread sessions, {SHARD_MICRO_BATCH} images "
                   "per run" if shards > 1 else ""))
        return OnnxRuntimeModule(path, threads=threads, shards=shards, micro_batch=SHARD_MICRO_BATCH, note=note)


def optimize(model: nn.Module, *, example_input: torch.Tensor | Sequence[int] | None = None,
             channels_last: bool = True, compile: bool = False, freeze: bool = True,
             backend: str = "torch", threads: int | None = None, shards: int | None = None) -> nn.Module:
    """Return an inference-ready copy of ``model``; the caller's model is not touched.

    ``backend="torch"`` (default): deep copy, eval mode, batch norm folded into the
    preceding convolution (:func:`fold_batchnorm`), weights in channels-last memory
    format, then either ``torch.jit.freeze(torch.jit.trace(...))`` (``freeze=True``, the
    default) or ``torch.compile`` (``compile=True``, which takes precedence; compilation
    happens at the first call). The result takes the same ``(N, C, H, W)`` input; inputs
    need not be channels-last (the first convolution switches formats). A frozen module is
    a ``ScriptModule``: it has ``forward`` only, not ``forward_features`` /
    ``forward_head``; pass ``freeze=False`` to keep the model's own class and surface.

    ``backend="onnxruntime"``: the BN-folded copy exported to ONNX and run by ONNX Runtime
    (CPU, all graph optimizations) inside an :class:`OnnxRuntimeModule`, with ``threads``
    threads (default ``torch.get_num_threads()``); batches are split across ``shards``
    single-thread sessions (default: one per thread). ``channels_last``, ``freeze`` and
    ``compile`` do not apply. ``backend="auto"`` picks ONNX Runtime for a CPU model when
    it is installed (the fastest fp32 path on CPU: docs/speed.md, "How the fp32 path was
    chosen"), else ``"torch"``.

    Either way the outputs equal the eval-mode original's within float rounding
    (tests/test_optimize.py holds them to 1e-4). ``example_input`` (a tensor or a ``(C, H, W)`` size) is what tracing or export
    runs; by default zeros of the model's registered input size. Run a torch result under
    ``torch.inference_mode()`` for the best speed.
    """
    backend, device = _backend_and_device(model, backend, compile=compile, threads=threads, shards=shards)
    example = example_batch(model, example_input).to(device)
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    fold_batchnorm(out)
    if backend == "onnxruntime":
        return _to_onnxruntime(out.cpu(), example.cpu(), threads, shards)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    if compile:
        try:
            return torch.compile(out, dynamic=False)  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - any backend failure becomes a user-facing message
            raise ConfigError(f"torch.compile is not available here: {first_line(exc, 200)}") from None
    return _freeze(out, example) if freeze else out


def _backend_and_device(model: nn.Module, backend: str, *, compile: bool, threads: int | None,
                        shards: int | None) -> tuple[str, torch.device]:
    """Check :func:`optimize`'s arguments; the backend it runs (``"auto"`` resolved) and ``model``'s device."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"optimize needs an nn.Module, received {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError("optimize needs an eager nn.Module, received a ScriptModule (already frozen?)")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, received backend={backend!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    resolved = backend
    if backend == "auto":
        resolved = "onnxruntime" if device.type == "cpu" and _onnxruntime_available() else "torch"
    if resolved == "onnxruntime" and compile:
        raise ConfigError("compile=True needs backend='torch', received backend='onnxruntime'")
    if backend == "torch" and (threads is not None or shards is not None):
        raise ConfigError("threads and shards apply to backend='onnxruntime' only "
                          f"(torch uses torch.set_num_threads), received threads={threads!r}, shards={shards!r}")
    return resolved, device


def _freeze(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``torch.jit.freeze(torch.jit.trace(model, example))``; an example that does not fit is a ``ConfigError``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript announces its deprecation
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except RuntimeError as exc:
            raise ConfigError(f"example_input of shape {list(example.shape)} does not fit the model: "
                              f"{first_line(exc, 200)}") from None
        return torch.jit.freeze(traced)
