"""Inference benchmarks: latency, throughput, memory and compute efficiency, with references.

:func:`measure` times one callable the way timm's ``benchmark.py`` does: fixed threads,
warm-up calls, then repeated calls of the forward pass alone (nothing else in the timed
region) until both a minimum time and a minimum number of runs are reached; the median
is the headline, the minimum the best case. :func:`measure_many` does the same for
several runtimes of one model at once, interleaving their timed calls so that load from
other processes hits all of them alike. :func:`run_benchmark` builds every requested
runtime for every model, measures each batch size, and, with ``reference=True``, adds
torchvision's implementation of the same architecture measured in the same run, so every
record carries its speed ratio to it.

Runtimes (``RUNTIMES``), each taking the same ``(N, C, H, W)`` float32 batch:

- ``eager``: the model as built, in ``torch.inference_mode``;
- ``channels_last``: the same with weights (and so activations) in NHWC;
- ``compiled``: ``torch.compile`` (Inductor); compiled during the warm-up;
- ``optimized``: :func:`pocketcnn.optimize` with ``backend="auto"``, pocketcnn's fastest
  fp32 path for the device. On CPU that is ONNX Runtime on the BN-folded graph, with a
  batch split across one single-thread session per thread (batch 1 runs in one session
  with all threads, exactly like ``onnxruntime``); the record's ``note`` says so;
- ``optimized-torch``: :func:`pocketcnn.optimize` in PyTorch (BN folded, channels-last,
  ``torch.jit.freeze``);
- ``onnxruntime``: the BN-folded model exported to ONNX, one ONNX Runtime session with
  the same recipe as the reference (all graph optimizations, ``threads`` intra-op threads);
- ``onnxruntime-int8`` / ``torch-int8``: INT8 models from :mod:`pocketcnn.compress.quantize`
  (calibrated on random inputs: their speed is meaningful, their accuracy is not).

References (``reference=True``): ``torchvision-eager`` and ``torchvision-onnxruntime``
(torchvision's model exported and run with the same session recipe as ``onnxruntime``).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util
import math
import random
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, PocketCNNError, close_matches

RUNTIMES: dict[str, str] = {
    "eager": "PyTorch eager, NCHW",
    "channels_last": "PyTorch eager, channels-last weights and activations",
    "compiled": "torch.compile (Inductor)",
    "optimized": "pocketcnn.optimize(backend='auto'): the fastest fp32 path for the device",
    "optimized-torch": "pocketcnn.optimize in PyTorch: BN folded, channels-last, jit.freeze",
    "onnxruntime": "ONNX Runtime on the BN-folded export, one session",
    "onnxruntime-int8": "ONNX Runtime, INT8 model from pocketcnn.compress.quantize",
    "torch-int8": "PyTorch INT8 model from pocketcnn.compress.quantize",
}
REFERENCE_RUNTIMES: dict[str, str] = {
    "torchvision-eager": "torchvision's model, PyTorch eager",
    "torchvision-onnxruntime": "torchvision's model exported to ONNX, same session recipe as onnxruntime",
}
RATIO_KEYS: dict[str, str] = {
    "torchvision-eager": "vs_torchvision_eager",
    "torchvision-onnxruntime": "vs_torchvision_onnxruntime",
}
INT8_RUNTIMES = ("onnxruntime-int8", "torch-int8")
DEFAULT_RUNTIMES = ("eager", "optimized", "onnxruntime", *INT8_RUNTIMES)  # int8 ones only when available
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
    median_ms: float
    min_ms: float
    images_per_s: float
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


@dataclass(frozen=True)
class BenchConfig:
    """What :func:`run_benchmark` measures; checked on construction."""

    models: tuple[str, ...]
    runtimes: tuple[str, ...] = ("eager", "optimized", "onnxruntime")
    batch_sizes: tuple[int, ...] = (1, 32)
    threads: int | None = None  # None: torch.get_num_threads()
    input_size: int | None = None  # square side; None: each model's registered size
    reference: bool = False
    quick: bool = False

    def __post_init__(self) -> None:
        from .registry import model_info

        if not self.models:
            raise ConfigError("give at least one model, received none")
        for name in self.models:
            model_info(name)  # raises UnknownModelError naming close matches
        object.__setattr__(self, "runtimes", parse_runtimes(self.runtimes))
        if self.threads is None:
            object.__setattr__(self, "threads", torch.get_num_threads())
        if not self.batch_sizes or any(not _is_pos_int(b) for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes must be positive integers, received {list(self.batch_sizes)!r}")
        if not _is_pos_int(self.threads):
            raise ConfigError(f"threads must be a positive integer, received threads={self.threads!r}")
        if self.input_size is not None and (not _is_pos_int(self.input_size) or self.input_size < 8):
            raise ConfigError(f"input_size must be an integer >= 8, received input_size={self.input_size!r}")

    @property
    def warmup(self) -> int:
        return 1 if self.quick else 3

    @property
    def min_time(self) -> float:
        return 0.1 if self.quick else 1.0

    @property
    def repeats(self) -> int:
        return 3 if self.quick else 5


@dataclass(frozen=True)
class BenchReport:
    """Everything one :func:`run_benchmark` call measured, and what it could not."""

    results: list[BenchResult]
    peak_gflops: float
    threads: int
    skipped: list[str] = field(default_factory=list)  # "model / runtime: why"

    def to_records(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.results]

    def best(self, model: str, batch_size: int, runtimes: Sequence[str] = ()) -> BenchResult | None:
        """The fastest record of ``model`` at ``batch_size`` among ``runtimes`` (default: pocketcnn fp32 ones)."""
        allowed = set(runtimes) or {r for r in RUNTIMES if r not in INT8_RUNTIMES}
        cells = [r for r in self.results if r.model == model and r.batch_size == batch_size and r.runtime in allowed]
        return max(cells, key=lambda r: r.images_per_s, default=None)


@dataclass(frozen=True)
class Runtime:
    """A built runtime: ``fn`` takes a ``(N, C, H, W)`` float32 CPU tensor."""

    name: str
    fn: Callable[[torch.Tensor], Any]
    note: str = ""


class RuntimeUnavailable(Exception):
    """A runtime that cannot run on this machine (the benchmark skips it with this reason)."""


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


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


# --- measurement ------------------------------------------------------------------------------

_PEAK_CACHE: dict[tuple[int, int], float] = {}


def matmul_peak_gflops(threads: int | None = None, *, n: int = 2048, min_time: float = 0.5) -> float:
    """The machine's practical fp32 peak: GFLOP/s of the best ``n x n`` matmul in ``threads`` threads.

    Repeats ``torch.mm`` for at least ``min_time`` seconds and keeps the fastest call;
    cached per ``(threads, n)`` for the life of the process.
    """
    threads = torch.get_num_threads() if threads is None else threads
    if not _is_pos_int(threads):
        raise ConfigError(f"threads must be a positive integer, received threads={threads!r}")
    key = (threads, n)
    if key not in _PEAK_CACHE:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        out = torch.empty(n, n)
        with _num_threads(threads):
            torch.mm(a, b, out=out)  # warm-up
            best, start = math.inf, time.perf_counter()
            while time.perf_counter() - start < min_time or best is math.inf:
                t0 = time.perf_counter()
                torch.mm(a, b, out=out)
                best = min(best, time.perf_counter() - t0)
        _PEAK_CACHE[key] = 2 * n**3 / best / 1e9
    return _PEAK_CACHE[key]


@contextlib.contextmanager
def _num_threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_LIBC: Any = None


def _trim_heap() -> None:
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
        _trim_heap()
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


def _check_timing(batch_size: Any, input_size: Any, threads: Any, warmup: Any, min_time: Any,
                  repeats: Any) -> tuple[tuple[int, int, int], int]:
    if not _is_pos_int(batch_size):
        raise ConfigError(f"batch_size must be a positive integer, received batch_size={batch_size!r}")
    try:
        size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(f"input_size must be (C, H, W) with positive values, received {input_size!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be a non-negative integer, received warmup={warmup!r}")
    if not _is_pos_int(repeats):
        raise ConfigError(f"repeats must be a positive integer, received repeats={repeats!r}")
    if not isinstance(min_time, (int, float)) or min_time < 0:
        raise ConfigError(f"min_time must be a number >= 0, received min_time={min_time!r}")
    threads = torch.get_num_threads() if threads is None else threads
    if not _is_pos_int(threads):
        raise ConfigError(f"threads must be a positive integer, received threads={threads!r}")
    return size, threads  # type: ignore[return-value]


def measure_many(
    fns: dict[str, Callable[[torch.Tensor], Any]],
    *,
    batch_size: int = 1,
    input_size: Sequence[int] = (3, 224, 224),
    threads: int | None = None,
    warmup: int = 3,
    min_time: float = 1.0,
    repeats: int = 5,
    max_repeats: int = 10_000,
    macs: int | dict[str, int | None] | None = None,
    peak_gflops: float | None = None,
    model_name: str = "model",
    notes: dict[str, str] | None = None,
    errors: dict[str, BaseException] | None = None,
    on_step: Callable[[str], None] | None = None,
    seed: int = 0,
) -> list[BenchResult]:
    """Time several runtimes of one model on the same batch, interleaved; one record per runtime.

    Each runtime gets its warm-up, then ``repeats`` rounds visit every runtime in turn (in
    a new random order each round, seeded), each visit timing calls for at least ``min_time /
    repeats`` seconds (one call at least). Load that comes and goes on a shared machine
    so hits every runtime alike, which keeps their ratios honest. A runtime that raises
    anything but a ``PocketCNNError`` is dropped and its exception put in ``errors`` (or
    re-raised when ``errors`` is None). See :func:`measure` for the rest.
    """
    size, threads = _check_timing(batch_size, input_size, threads, warmup, min_time, repeats)
    macs_of = macs if isinstance(macs, dict) else {name: macs for name in fns}
    if peak_gflops is None and any(v is not None for v in macs_of.values()):
        peak_gflops = matmul_peak_gflops(threads)
    x = torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed))
    clock = time.perf_counter
    rng = random.Random(seed)
    live = dict(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, float | None] = {}

    def failed(name: str, exc: BaseException) -> None:
        if isinstance(exc, PocketCNNError) or errors is None:
            raise exc
        errors[name] = exc
        live.pop(name, None)

    with _num_threads(threads), torch.inference_mode():
        for name, fn in list(live.items()):
            if on_step:
                on_step(f"{name}: warm-up")
            try:
                with _PeakMemory() as mem:  # the first calls at this size allocate all a call needs
                    start = clock()
                    for i in range(warmup):
                        if i >= 2 and clock() - start > min_time:
                            break  # slow runtimes: two calls are enough (TorchScript optimizes in its first two)
                        fn(x)
                peaks[name] = mem.mb
            except Exception as exc:  # noqa: BLE001 - e.g. a compilation that fails at the first call
                failed(name, exc)
        slice_s = min_time / repeats
        for r in range(repeats):
            if on_step:
                on_step(f"round {r + 1}/{repeats}")
            order = list(live)
            rng.shuffle(order)  # a fixed order would always put the same runtime after the same neighbour
            for name in order:
                fn, ts = live[name], times[name]
                try:
                    start = clock()
                    while True:
                        t0 = clock()
                        fn(x)
                        t1 = clock()
                        ts.append(t1 - t0)
                        if t1 - start >= slice_s or len(ts) >= max_repeats:
                            break
                except Exception as exc:  # noqa: BLE001
                    failed(name, exc)

    results = []
    for name in live:
        ts = times[name]
        median = statistics.median(ts)
        ips = batch_size / median
        m = macs_of.get(name)
        gflops = 2 * m * ips / 1e9 if m is not None else None
        frac = gflops / peak_gflops if gflops is not None and peak_gflops else None
        results.append(BenchResult(model_name, name, batch_size, median * 1e3, min(ts) * 1e3, ips, peaks.get(name),
                                   gflops, frac, threads=threads, input_size=size, runs=len(ts),
                                   note=(notes or {}).get(name, "")))
    return results


def measure(
    model_or_callable: nn.Module | Callable[[torch.Tensor], Any],
    *,
    batch_size: int = 1,
    input_size: Sequence[int] = (3, 224, 224),
    threads: int | None = None,
    warmup: int = 3,
    min_time: float = 1.0,
    repeats: int = 5,
    max_repeats: int = 10_000,
    macs: int | None = None,
    peak_gflops: float | None = None,
    model_name: str | None = None,
    runtime: str = "eager",
    note: str = "",
    seed: int = 0,
) -> BenchResult:
    """Time ``model_or_callable`` on one random ``(batch_size, *input_size)`` float32 batch.

    Recipe: ``threads`` PyTorch threads (default: the current setting; ONNX Runtime
    sessions get theirs when built), ``torch.inference_mode``, ``warmup`` untimed calls
    (beyond the first two, only while they have taken less than ``min_time``), then timed
    calls of the forward pass alone, nothing else in the timed region, until at least
    ``min_time`` seconds and ``repeats`` calls (at most ``max_repeats``).
    ``median_ms`` / ``min_ms`` are per batch; ``peak_mem_mb`` is measured over the
    warm-up calls (the first calls at this batch size allocate everything a call needs).

    ``macs`` are the mult-adds of one image; for an ``nn.Module`` (not a ``ScriptModule``)
    they default to :func:`pocketcnn.profile`'s count, for a plain callable to unknown
    (then ``gflops`` and ``peak_fraction`` are ``None``). ``peak_gflops`` defaults to
    :func:`matmul_peak_gflops` in the same threads. See :class:`BenchResult` for the fields.
    """
    from .optimize import OnnxRuntimeModule

    size, threads = _check_timing(batch_size, input_size, threads, warmup, min_time, repeats)
    fn = model_or_callable
    if isinstance(fn, nn.Module):
        fn.eval()
        if macs is None and not isinstance(fn, (torch.jit.ScriptModule, OnnxRuntimeModule)):
            from .analysis import profile

            macs = profile(fn, size).macs  # type: ignore[arg-type]
    elif not callable(fn):
        raise ConfigError(f"measure needs an nn.Module or a callable, received {type(fn).__name__}")
    name = model_name or getattr(fn, "pocketcnn_name", None) or type(fn).__name__
    return measure_many({runtime: fn}, batch_size=batch_size, input_size=size, threads=threads, warmup=warmup,
                        min_time=min_time, repeats=repeats, max_repeats=max_repeats, macs=macs,
                        peak_gflops=peak_gflops, model_name=name, notes={runtime: note}, seed=seed)[0]


# --- runtimes ---------------------------------------------------------------------------------

def _calibration(input_size: tuple[int, int, int], batches: int = 4, batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, *input_size, generator=gen) for _ in range(batches)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def build_runtime(name: str, model: nn.Module, *, input_size: tuple[int, int, int], threads: int,
                  workdir: str | Path) -> Runtime:
    """Build runtime ``name`` (a key of ``RUNTIMES``) for an eval-mode ``model``; the model is not changed.

    Raises :class:`RuntimeUnavailable` when this machine cannot run it (for example no
    C++ compiler for ``compiled``), and ``ConfigError`` for an INT8 runtime when
    :mod:`pocketcnn.compress.quantize` is missing.
    """
    import copy

    from .deploy.export import export_onnx
    from .optimize import OnnxRuntimeModule, fold_batchnorm, optimize

    workdir = Path(workdir)
    model = model.eval()
    tag = f"{getattr(model, 'pocketcnn_name', type(model).__name__)}-{name}"
    if name in ("eager", "torchvision-eager"):
        return Runtime(name, model, RUNTIMES.get(name) or REFERENCE_RUNTIMES[name])
    if name == "channels_last":
        return Runtime(name, copy.deepcopy(model).to(memory_format=torch.channels_last), RUNTIMES[name])
    if name == "compiled":
        try:
            compiled = torch.compile(copy.deepcopy(model), dynamic=False)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeUnavailable(f"torch.compile failed: {_first_line(exc)}") from None
        return Runtime(name, compiled, RUNTIMES[name])
    if name == "optimized":
        opt = optimize(model, backend="auto", example_input=input_size, threads=threads)
        note = getattr(opt, "note", "") or "PyTorch: BN folded, channels-last, jit.freeze"
        return Runtime(name, opt, f"optimize(backend='auto'): {note}")
    if name == "optimized-torch":
        return Runtime(name, optimize(model, example_input=input_size), RUNTIMES[name])
    if name in ("onnxruntime", "torchvision-onnxruntime", "onnxruntime-int8"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RuntimeUnavailable("onnxruntime is not installed") from None
        export_model = model
        if name != "torchvision-onnxruntime":
            export_model = copy.deepcopy(model).eval()
            fold_batchnorm(export_model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = export_onnx(export_model, workdir / f"{tag}.onnx", input_size=input_size, dynamic_batch=True)
        note = RUNTIMES.get(name) or REFERENCE_RUNTIMES[name]
        if name == "onnxruntime-int8":
            from .compress import quantize
            calib = [b.numpy() for b in _calibration(input_size)]
            path = quantize.quantize_onnx(path, workdir / f"{tag}.int8.onnx", calib, per_channel=True)
            note += " (calibrated on random inputs: speed only)"
        return Runtime(name, OnnxRuntimeModule(path, threads=threads, shards=1, note=note), note)
    if name == "torch-int8":
        from .compress import quantize
        qmodel = quantize.quantize_torch(copy.deepcopy(model), _calibration(input_size))
        return Runtime(name, qmodel, RUNTIMES[name] + " (calibrated on random inputs: speed only)")
    raise ConfigError(f"unknown runtime {name!r}. Valid runtimes: {', '.join([*RUNTIMES, *REFERENCE_RUNTIMES])}")


def reference_model(name: str) -> nn.Module | None:
    """torchvision's model of the same architecture as registered model ``name`` (random weights), or None."""
    from .registry import model_info

    tv_name = model_info(name).torchvision
    if tv_name is None:
        return None
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(tv_name, weights=None)
    model.pocketcnn_name = f"torchvision.{tv_name}"  # type: ignore[attr-defined]
    return model.eval()


ProgressFn = Callable[[int, int, str], None]


def run_benchmark(config: BenchConfig, *, progress: ProgressFn | None = None) -> BenchReport:
    """Measure every model x runtime x batch size of ``config``; see the module docstring.

    All runtimes of one model (and its references) are built first, then each batch size
    is timed with :func:`measure_many`, interleaved. ``progress(done, total, label)`` is
    called as cells start and once at the end. A runtime that cannot run here
    (``RuntimeUnavailable``, or any error but a ``PocketCNNError`` while it is built or
    called, e.g. a failed compilation) is skipped and listed in ``BenchReport.skipped``;
    a ``PocketCNNError`` (a user error, e.g. an INT8 runtime asked for in a build without
    :mod:`pocketcnn.compress.quantize`) propagates.
    """
    from .analysis import profile
    from .registry import create_model, model_info

    peak = matmul_peak_gflops(config.threads, n=2048 if config.quick else 4096, min_time=0.2 if config.quick else 1.0)
    refs = [r for r in REFERENCE_RUNTIMES if r in config.runtimes or config.reference]
    ours = [r for r in config.runtimes if r in RUNTIMES]
    per_model = (len(ours) + len(refs)) * len(config.batch_sizes)
    total = len(config.models) * per_model
    results: list[BenchResult] = []
    skipped: list[str] = []
    torch.manual_seed(0)
    for i, model_name in enumerate(config.models):
        done = i * per_model
        info = model_info(model_name)
        side = config.input_size or info.input_size[1]
        size = (info.input_size[0], side, side)
        model = create_model(model_name).eval()
        macs = profile(model, size, name=model_name).macs
        ref = reference_model(model_name) if refs else None
        if refs and ref is None:
            skipped.append(f"{model_name} / torchvision: no torchvision reference")
        wanted = [(r, model) for r in ours] + ([(r, ref) for r in refs] if ref is not None else [])
        built: dict[str, Runtime] = {}
        with tempfile.TemporaryDirectory(prefix="pocketcnn-bench-") as tmp:
            for rt_name, net in wanted:
                if progress:
                    progress(done, total, f"{model_name} / {rt_name}: building")
                try:
                    with _num_threads(config.threads):
                        built[rt_name] = build_runtime(rt_name, net, input_size=size, threads=config.threads,
                                                       workdir=tmp)
                except RuntimeUnavailable as exc:
                    skipped.append(f"{model_name} / {rt_name}: {exc}")
                except PocketCNNError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one runtime that fails to build must not stop the rest
                    skipped.append(f"{model_name} / {rt_name}: {type(exc).__name__}: {_first_line(exc)}")
            for j, bs in enumerate(config.batch_sizes):
                cell_done = done + j * len(wanted)

                def step(label: str, bs: int = bs, cell_done: int = cell_done) -> None:
                    if progress:
                        progress(cell_done, total, f"{model_name} / batch {bs} / {label}")

                errors: dict[str, BaseException] = {}
                results += measure_many(
                    {k: rt.fn for k, rt in built.items()}, batch_size=bs, input_size=size, threads=config.threads,
                    warmup=config.warmup, min_time=config.min_time, repeats=config.repeats, macs=macs,
                    peak_gflops=peak, model_name=model_name, notes={k: rt.note for k, rt in built.items()},
                    errors=errors, on_step=step)
                for k, exc in errors.items():
                    skipped.append(f"{model_name} / {k} / batch {bs}: {type(exc).__name__}: {_first_line(exc)}")
        del built
        _trim_heap()
    if progress:
        progress(total, total, "done")
    return BenchReport(_with_ratios(results), peak, config.threads, skipped)


def _with_ratios(results: list[BenchResult]) -> list[BenchResult]:
    """Fill ``vs_torchvision_*``: images/s over the reference's, same model and batch size."""
    refs = {(r.model, r.batch_size, r.runtime): r.images_per_s for r in results if r.runtime in RATIO_KEYS}
    out = []
    for r in results:
        ratios = {}
        for ref, key in RATIO_KEYS.items():
            ref_ips = refs.get((r.model, r.batch_size, ref))
            if ref_ips:
                ratios[key] = r.images_per_s / ref_ips
        out.append(replace(r, **ratios))
    return out


# --- chart ------------------------------------------------------------------------------------

def plot_bench(results: Sequence[BenchResult], path: str | Path) -> Path:
    """Bar chart of images/s per runtime, grouped by model, one panel per batch size (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ConfigError("nothing to plot: the benchmark produced no records")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batches = sorted({r.batch_size for r in results})
    models = list(dict.fromkeys(r.model for r in results))
    runtimes = list(dict.fromkeys(r.runtime for r in results))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(batches), 1, squeeze=False,
                             figsize=(2.5 + max(4.0, 0.45 * len(models) * len(runtimes)), 3.4 * len(batches)))
    width = 0.8 / len(runtimes)
    for ax, bs in zip(axes[:, 0], batches):
        for j, rt in enumerate(runtimes):
            xs, ys = [], []
            for i, m in enumerate(models):
                cell = next((r for r in results if r.model == m and r.runtime == rt and r.batch_size == bs), None)
                if cell is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(cell.images_per_s)
            is_ref = rt in REFERENCE_RUNTIMES
            ax.bar(xs, ys, width, label=rt, color="0.55" if is_ref else colors(j % 10),
                   hatch="//" if rt == "torchvision-onnxruntime" else None, edgecolor="black", linewidth=0.5)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel("images / s")
        th = results[0].threads
        ax.set_title(f"batch {bs}, {th} thread{'s' if th != 1 else ''}, input {'x'.join(map(str, results[0].input_size))}")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["BenchResult", "BenchConfig", "BenchReport", "Runtime", "RuntimeUnavailable", "RUNTIMES",
           "REFERENCE_RUNTIMES", "RATIO_KEYS", "RECORD_KEYS", "DEFAULT_RUNTIMES", "measure", "matmul_peak_gflops",
           "measure_many", "run_benchmark", "build_runtime", "reference_model", "parse_runtimes", "default_runtimes",
           "int8_available", "plot_bench"]
