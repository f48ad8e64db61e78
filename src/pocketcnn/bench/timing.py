"""Timing the way timm's ``benchmark.py`` does: fixed threads, warm-up, then the forward pass alone.

:func:`measure` times one callable; :func:`measure_many` times several runtimes of one
model at once, interleaving their timed calls (in a new random order each round) so that
load from other processes hits all of them alike; both follow one :class:`TimingRecipe`. The
median is the headline, the minimum the best case. Also: the machine's fp32 matmul peak and the
peak-memory probe.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, PocketCNNError
from ..validate import check_int, check_number
from ..models.registry import build_of

RATIO_KEYS: dict[str, str] = {
    "torchvision-eager": "vs_torchvision_eager",
    "torchvision-onnxruntime": "vs_torchvision_onnxruntime",
}
RECORD_KEYS = ("model", "runtime", "batch_size", "median_ms", "min_ms", "images_per_s", "peak_mem_mb",
               "gflops", "peak_fraction", *RATIO_KEYS.values())



@dataclass(frozen=True)
class BenchResult:
    """One measured cell: a model, a runtime, a batch size.

    ``images_per_s = batch_size / median``. ``gflops = 2 * mult-adds * images_per_s / 1e9``
    (mult-adds from :func:`pocketcnn.profile`, convolutions and linear layers only), and
    ``peak_fraction`` divides it by the fp32 matmul peak measured in the same process
    (:func:`matmul_peak_gflops`); it can pass 1 when ONNX Runtime's kernels beat PyTorch's
    matmul, or when other processes slowed the probe. ``peak_mem_mb`` is how far the process's resident memory
    high-water mark rose above its resident size during the warm-up and timed calls: the
    activations, workspaces and arenas the runtime needs to run a batch, not the weights
    or libraries loaded before (``None`` where the platform cannot tell).
    ``vs_torchvision_*`` are ``images_per_s`` over the same reference's at the same batch
    size, when it was measured.
    """

    model: str
    runtime: str
    batch_size: int
    median_ms: float  # per batch
    min_ms: float  # per batch
    images_per_s: float  # batch_size / median
    peak_mem_mb: float | None
    gflops: float | None
    peak_fraction: float | None
    vs_torchvision_eager: float | None = None
    vs_torchvision_onnxruntime: float | None = None
    threads: int = 1
    input_size: tuple[int, int, int] = (3, 224, 224)
    runs: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d



_PEAK_CACHE: dict[tuple[int, int], float] = {}


def matmul_peak_gflops(threads: int | None = None, *, n: int = 2048, min_time: float = 0.5) -> float:
    """The machine's practical fp32 peak: GFLOP/s of the best ``n x n`` matmul in ``threads`` threads.

    Repeats ``torch.mm`` for at least ``min_time`` seconds and keeps the fastest call;
    cached per ``(threads, n)`` for the life of the process.
    """
    threads = check_int("threads", torch.get_num_threads() if threads is None else threads)
    key = (threads, n)
    if key not in _PEAK_CACHE:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        out = torch.empty(n, n)
        with torch_threads(threads):
            torch.mm(a, b, out=out)  # warm-up
            best, start = math.inf, time.perf_counter()
            while time.perf_counter() - start < min_time or best is math.inf:
                t0 = time.perf_counter()
                torch.mm(a, b, out=out)
                best = min(best, time.perf_counter() - t0)
        _PEAK_CACHE[key] = 2 * n**3 / best / 1e9
    return _PEAK_CACHE[key]


@contextlib.contextmanager
def torch_threads(threads: int):
    """PyTorch's intra-op threads set to ``threads`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_LIBC: Any = None


def trim_heap() -> None:
    """Return freed heap to the OS (glibc), so the next high-water mark starts from real use."""
    global _LIBC
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            if _LIBC is None:
                _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim(0)
        except (OSError, AttributeError):
            pass


class _PeakMemory:
    """Rise of the resident high-water mark over the resident size at the start, in MB.

    Linux: resets ``VmHWM`` through ``/proc/self/clear_refs`` and reads ``/proc/self/status``.
    Elsewhere: ``getrusage`` maxrss delta, which reads 0 when an earlier phase went higher.
    """

    def __enter__(self) -> _PeakMemory:
        trim_heap()
        self.mb: float | None = None
        self._linux = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._start = self._status("VmRSS")
            self._linux = True
        except OSError:
            try:
                import resource

                self._start = self._maxrss(resource)
            except (ImportError, OSError):
                self._start = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._start is None:
            return
        if self._linux:
            self.mb = max(0.0, self._status("VmHWM") - self._start)
        else:
            import resource

            self.mb = max(0.0, self._maxrss(resource) - self._start)

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.M)
        if m is None:
            raise OSError(f"no {key} in /proc/self/status")
        return int(m.group(1)) / 1024

    @staticmethod
    def _maxrss(resource: Any) -> float:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KB elsewhere


@dataclass(frozen=True)
class TimingRecipe:
    """How :func:`measure` and :func:`measure_many` time (their ``**timing`` keywords); checked on construction.

    ``threads`` PyTorch threads (``None``: the current setting; ONNX Runtime sessions get theirs
    when built); ``warmup`` untimed calls (beyond the first two, only while they have taken less
    than ``min_time``); then timed calls for at least ``min_time`` seconds over ``repeats``
    rounds, at most ``max_repeats`` calls per runtime. ``seed`` seeds the random batch and the
    order of each round.
    """

    batch_size: int = 1
    input_size: tuple[int, int, int] = (3, 224, 224)
    threads: int | None = None  # None: torch.get_num_threads()
    warmup: int = 3
    min_time: float = 1.0
    repeats: int = 5
    max_repeats: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size)
        object.__setattr__(self, "input_size", _chw_size(self.input_size))
        check_int("warmup", self.warmup, 0)
        check_int("repeats", self.repeats)
        check_number("min_time", self.min_time, 0)
        threads = torch.get_num_threads() if self.threads is None else self.threads
        object.__setattr__(self, "threads", check_int("threads", threads))


def _chw_size(input_size: Any) -> tuple[int, int, int]:
    """``input_size`` as a ``(C, H, W)`` tuple of positive integers, else ``ConfigError`` naming it."""
    try:
        size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"input_size must be (C, H, W) with positive values, received {input_size!r}")
    return size  # type: ignore[return-value]


class _Live:
    """The runtimes still being timed. One that raises anything but a ``PocketCNNError`` is dropped and its
    exception kept in ``errors``; with ``errors=None`` (or a ``PocketCNNError``) the exception propagates."""

    def __init__(self, fns: dict[str, Callable[[torch.Tensor], Any]], errors: dict[str, BaseException] | None) -> None:
        self.fns = dict(fns)
        self.errors = errors

    def drop(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, PocketCNNError) or self.errors is None:
            raise exc
        self.errors[name] = exc
        self.fns.pop(name, None)


StepFn = Callable[[str], None]


def _warm_up(live: _Live, x: torch.Tensor, recipe: TimingRecipe, on_step: StepFn | None) -> dict[str, float | None]:
    """Each runtime's untimed calls, in turn; returns how far each raised the memory high-water mark."""
    clock = time.perf_counter
    peaks: dict[str, float | None] = {}
    for name, fn in list(live.fns.items()):
        if on_step:
            on_step(f"{name}: warm-up")
        try:
            with _PeakMemory() as mem:  # the first calls at this size allocate all a call needs
                start = clock()
                for i in range(recipe.warmup):
                    if i >= 2 and clock() - start > recipe.min_time:
                        break  # slow runtimes: two calls are enough (TorchScript optimizes in its first two)
                    fn(x)
            peaks[name] = mem.mb
        except Exception as exc:  # noqa: BLE001 - e.g. a compilation that fails at the first call
            live.drop(name, exc)
    return peaks


def _timed_rounds(live: _Live, x: torch.Tensor, recipe: TimingRecipe, on_step: StepFn | None) -> dict[str, list[float]]:
    """``repeats`` rounds, each visiting every live runtime once in a new seeded random order; the call times."""
    rng = random.Random(recipe.seed)
    times: dict[str, list[float]] = {name: [] for name in live.fns}
    slice_s = recipe.min_time / recipe.repeats
    for r in range(recipe.repeats):
        if on_step:
            on_step(f"round {r + 1}/{recipe.repeats}")
        order = list(live.fns)
        rng.shuffle(order)  # a fixed order would always put the same runtime after the same neighbour
        for name in order:
            try:
                _time_slice(live.fns[name], x, slice_s, recipe.max_repeats, times[name])
            except Exception as exc:  # noqa: BLE001
                live.drop(name, exc)
    return times


def _time_slice(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, slice_s: float, max_calls: int,
                times: list[float]) -> None:
    """Time calls of ``fn(x)`` alone into ``times`` for at least ``slice_s`` seconds (one call at least),
    until ``times`` holds ``max_calls``."""
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        fn(x)
        t1 = clock()
        times.append(t1 - t0)
        if t1 - start >= slice_s or len(times) >= max_calls:
            break


def _record(model_name: str, runtime: str, times: list[float], recipe: TimingRecipe, peak_mem_mb: float | None,
            macs: int | None, peak_gflops: float | None, note: str) -> BenchResult:
    """The :class:`BenchResult` of one runtime's call times."""
    median = statistics.median(times)
    ips = recipe.batch_size / median
    gflops = 2 * macs * ips / 1e9 if macs is not None else None
    frac = gflops / peak_gflops if gflops is not None and peak_gflops else None
    return BenchResult(model_name, runtime, recipe.batch_size, median * 1e3, min(times) * 1e3, ips, peak_mem_mb,
                       gflops, frac, threads=recipe.threads, input_size=recipe.input_size, runs=len(times),
                       note=note)


def _time_runtimes(fns: dict[str, Callable[[torch.Tensor], Any]], recipe: TimingRecipe, *,
                   macs: int | dict[str, int | None] | None, peak_gflops: float | None, model_name: str,
                   notes: dict[str, str] | None, errors: dict[str, BaseException] | None, on_step: StepFn | None,
                   batch: torch.Tensor | None) -> list[BenchResult]:
    """:func:`measure_many` with its recipe built."""
    macs_of = macs if isinstance(macs, dict) else {name: macs for name in fns}
    if peak_gflops is None and any(v is not None for v in macs_of.values()):
        peak_gflops = matmul_peak_gflops(recipe.threads)
    x = batch if batch is not None else torch.randn(recipe.batch_size, *recipe.input_size,
                                                    generator=torch.Generator().manual_seed(recipe.seed))
    live = _Live(fns, errors)
    with torch_threads(recipe.threads), torch.inference_mode():  # type: ignore[arg-type]
        peaks = _warm_up(live, x, recipe, on_step)
        times = _timed_rounds(live, x, recipe, on_step)
    return [_record(model_name, name, times[name], recipe, peaks.get(name), macs_of.get(name), peak_gflops,
                    (notes or {}).get(name, "")) for name in live.fns]


def measure_many(
    fns: dict[str, Callable[[torch.Tensor], Any]],
    *,
    macs: int | dict[str, int | None] | None = None,
    peak_gflops: float | None = None,
    model_name: str = "model",
    notes: dict[str, str] | None = None,
    errors: dict[str, BaseException] | None = None,
    on_step: StepFn | None = None,
    batch: torch.Tensor | None = None,
    **timing: Any,
) -> list[BenchResult]:
    """Time several runtimes of one model on the same batch, interleaved; one record per runtime.

    ``timing`` are the fields of :class:`TimingRecipe` (``batch_size``, ``input_size``, ``threads``,
    ``warmup``, ``min_time``, ``repeats``, ``max_repeats``, ``seed``). The batch is ``batch`` when
    given (real images, say), else seeded random numbers of ``(batch_size, *input_size)``.

    Each runtime gets its warm-up, then ``repeats`` rounds visit every runtime in turn (in
    a new random order each round, seeded), each visit timing calls for at least ``min_time /
    repeats`` seconds (one call at least). Load that comes and goes on a shared machine
    so hits every runtime alike, which keeps their ratios honest. A runtime that raises
    anything but a ``PocketCNNError`` is dropped and its exception put in ``errors`` (or
    re-raised when ``errors`` is None). See :func:`measure` for the rest.
    """
    return _time_runtimes(fns, TimingRecipe(**timing), macs=macs, peak_gflops=peak_gflops, model_name=model_name,
                          notes=notes, errors=errors, on_step=on_step, batch=batch)


def measure(
    model_or_callable: nn.Module | Callable[[torch.Tensor], Any],
    *,
    macs: int | None = None,
    peak_gflops: float | None = None,
    model_name: str | None = None,
    runtime: str = "eager",
    note: str = "",
    **timing: Any,
) -> BenchResult:
    """Time ``model_or_callable`` on one random ``(batch_size, *input_size)`` float32 batch.

    ``timing`` are the fields of :class:`TimingRecipe`, which says how the calls are timed:
    ``torch.inference_mode``, the warm-up, then calls of the forward pass alone, nothing else
    in the timed region. ``median_ms`` / ``min_ms`` are per batch; ``peak_mem_mb`` is measured
    over the warm-up calls (the first calls at this batch size allocate everything a call needs).

    ``macs`` are the mult-adds of one image; for an ``nn.Module`` (not a ``ScriptModule``)
    they default to :func:`pocketcnn.profile`'s count, for a plain callable to unknown
    (then ``gflops`` and ``peak_fraction`` are ``None``). ``peak_gflops`` defaults to
    :func:`matmul_peak_gflops` in the same threads. See :class:`BenchResult` for the fields.
    """
    recipe = TimingRecipe(**timing)
    fn = model_or_callable
    if isinstance(fn, nn.Module):
        fn.eval()
        if macs is None:
            macs = _default_macs(fn, recipe.input_size)
    elif not callable(fn):
        raise ConfigError(f"measure needs an nn.Module or a callable, received {type(fn).__name__}")
    build = build_of(fn) if isinstance(fn, nn.Module) else None
    name = model_name or (build.name if build else type(fn).__name__)
    return _time_runtimes({runtime: fn}, recipe, macs=macs, peak_gflops=peak_gflops, model_name=name,
                          notes={runtime: note}, errors=None, on_step=None, batch=None)[0]


def _default_macs(module: nn.Module, input_size: tuple[int, int, int]) -> int | None:
    """:func:`pocketcnn.profile`'s mult-adds of one image, or None for a compiled or ONNX Runtime module."""
    from ..export.optimize import OnnxRuntimeModule

    if isinstance(module, (torch.jit.ScriptModule, OnnxRuntimeModule)):
        return None
    from ..models.analysis import profile

    return profile(module, input_size).macs  # type: ignore[arg-type]
