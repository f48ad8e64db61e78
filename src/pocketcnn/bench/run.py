"""``run_benchmark``: every model x runtime x batch size of a :class:`BenchConfig`, with references.

All runtimes of one model (and, with ``reference=True``, torchvision's implementation of
the same architecture) are built first, then each batch size is timed with
:func:`~pocketcnn.bench.timing.measure_many`, interleaved, so every record carries its
speed ratio to the reference measured in the same run.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import ConfigError, PocketCNNError, first_line
from ..validate import check_int
from .cpu import CpuInfo, cpu_info
from .runtimes import (INT8_RUNTIMES, REFERENCE_RUNTIMES, RUNTIMES, Runtime, RuntimeUnavailable, build_runtime,
                       parse_runtimes, reference_model)
from .timing import RATIO_KEYS, BenchResult, matmul_peak_gflops, measure_many, torch_threads, trim_heap

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
        from ..models.registry import model_config

        if not self.models:
            raise ConfigError("give at least one model, received none")
        for name in self.models:
            model_config(name)  # raises UnknownModelError naming close matches
        object.__setattr__(self, "runtimes", parse_runtimes(self.runtimes))
        if self.threads is None:
            object.__setattr__(self, "threads", torch.get_num_threads())
        if not self.batch_sizes:
            raise ConfigError(f"batch_sizes must be positive integers, received {list(self.batch_sizes)!r}")
        for i, b in enumerate(self.batch_sizes):
            check_int(f"batch_sizes[{i}]", b)
        check_int("threads", self.threads)
        check_int("input_size", self.input_size, 8, optional=True)

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
    cpu: CpuInfo = field(default_factory=cpu_info)  # the machine the numbers hold for

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per result, each naming the CPU it was measured on (its model and instruction sets)."""
        cpu = self.cpu.to_dict()
        return [{**r.to_dict(), "cpu": cpu} for r in self.results]

    def best(self, model: str, batch_size: int, runtimes: Sequence[str] = ()) -> BenchResult | None:
        """The fastest record of ``model`` at ``batch_size`` among ``runtimes`` (default: pocketcnn fp32 ones)."""
        allowed = set(runtimes) or {r for r in RUNTIMES if r not in (*INT8_RUNTIMES, "litert-int8")}
        cells = [r for r in self.results if r.model == model and r.batch_size == batch_size and r.runtime in allowed]
        return max(cells, key=lambda r: r.images_per_s, default=None)


ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class _Progress:
    """``progress(done, total, label)`` when the caller gave one; ``total`` cells in the whole run."""

    fn: ProgressFn | None
    total: int

    def __call__(self, done: int, label: str) -> None:
        if self.fn:
            self.fn(done, self.total, label)


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
    peak = matmul_peak_gflops(config.threads, n=2048 if config.quick else 4096, min_time=0.2 if config.quick else 1.0)
    refs = [r for r in REFERENCE_RUNTIMES if r in config.runtimes or config.reference]
    ours = [r for r in config.runtimes if r in RUNTIMES]
    per_model = (len(ours) + len(refs)) * len(config.batch_sizes)
    notify = _Progress(progress, len(config.models) * per_model)
    results: list[BenchResult] = []
    skipped: list[str] = []
    torch.manual_seed(0)
    for i, model_name in enumerate(config.models):
        results += _bench_model(config, model_name, ours, refs, peak, notify, i * per_model, skipped)
        trim_heap()
    notify(notify.total, "done")
    return BenchReport(_with_ratios(results), peak, config.threads, skipped)


def _bench_model(config: BenchConfig, model_name: str, ours: list[str], refs: list[str], peak: float,
                 progress: _Progress, done: int, skipped: list[str]) -> list[BenchResult]:
    """One model's cells: its runtimes (and torchvision's ``refs``) built, then timed at each batch size.
    ``done`` cells came before; what cannot run is appended to ``skipped``."""
    from ..models.analysis import profile
    from ..models.registry import create_model, model_config

    info = model_config(model_name)
    side = config.input_size or info.input_size[1]
    size = (info.input_size[0], side, side)
    model = create_model(model_name).eval()
    macs = profile(model, size, name=model_name).macs
    ref = reference_model(model_name) if refs else None
    if refs and ref is None:
        skipped.append(f"{model_name} / torchvision: no torchvision reference")
    wanted = [(r, model) for r in ours] + ([(r, ref) for r in refs] if ref is not None else [])
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-bench-") as tmp:
        built = _build_runtimes(config, model_name, wanted, size, tmp, lambda label: progress(done, label), skipped)
        for j, bs in enumerate(config.batch_sizes):
            cell_done = done + j * len(wanted)

            def step(label: str, bs: int = bs, cell_done: int = cell_done) -> None:
                progress(cell_done, f"{model_name} / batch {bs} / {label}")

            errors: dict[str, BaseException] = {}
            results += measure_many(
                {k: rt.fn for k, rt in built.items()}, batch_size=bs, input_size=size, threads=config.threads,
                warmup=config.warmup, min_time=config.min_time, repeats=config.repeats, macs=macs,
                peak_gflops=peak, model_name=model_name, notes={k: rt.note for k, rt in built.items()},
                errors=errors, on_step=step)
            skipped += [f"{model_name} / {k} / batch {bs}: {_why(exc)}" for k, exc in errors.items()]
    return results


def _build_runtimes(config: BenchConfig, model_name: str, wanted: list[tuple[str, torch.nn.Module]],
                    size: tuple[int, int, int], workdir: str, step: Callable[[str], None],
                    skipped: list[str]) -> dict[str, Runtime]:
    """Each ``(runtime, model)`` of ``wanted`` built in ``workdir``; one that cannot run here goes to
    ``skipped`` (a ``PocketCNNError`` propagates)."""
    built: dict[str, Runtime] = {}
    for rt_name, net in wanted:
        step(f"{model_name} / {rt_name}: building")
        try:
            with torch_threads(config.threads):  # type: ignore[arg-type]
                label = f"torchvision.{model_name}" if rt_name in REFERENCE_RUNTIMES else model_name
                built[rt_name] = build_runtime(rt_name, net, input_size=size, threads=config.threads,
                                               workdir=workdir, label=label)
        except RuntimeUnavailable as exc:
            skipped.append(f"{model_name} / {rt_name}: {exc}")
        except PocketCNNError:
            raise
        except Exception as exc:  # noqa: BLE001 - one runtime that fails to build must not stop the rest
            skipped.append(f"{model_name} / {rt_name}: {_why(exc)}")
    return built


def _why(exc: BaseException) -> str:
    """A skipped runtime's reason: the exception's type and first line."""
    return f"{type(exc).__name__}: {first_line(exc, 200)}"


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


