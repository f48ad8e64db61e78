"""Inference benchmarks: latency, throughput, memory and compute efficiency, with references.

* :mod:`~pocketcnn.bench.timing`: :func:`measure`, :func:`measure_many` (the timing recipe, :class:`TimingRecipe`),
  the matmul peak and the peak-memory probe.
* :mod:`~pocketcnn.bench.runtimes`: the runtimes that can be timed and how each is built.
* :mod:`~pocketcnn.bench.run`: :func:`run_benchmark` over models x runtimes x batch sizes,
  with torchvision's implementations as references measured in the same run.

The bar chart is :func:`pocketcnn.workflows.plots.bench_chart`.
"""
from __future__ import annotations

from .run import BenchConfig, BenchReport, run_benchmark
from .runtimes import (DEFAULT_RUNTIMES, INT8_RUNTIMES, REFERENCE_RUNTIMES, RUNTIMES, Runtime, RuntimeUnavailable,
                       build_runtime, default_runtimes, int8_available, parse_runtimes, reference_model)
from .timing import RATIO_KEYS, RECORD_KEYS, BenchResult, TimingRecipe, matmul_peak_gflops, measure, measure_many

__all__ = ["BenchResult", "TimingRecipe", "BenchConfig", "BenchReport", "Runtime", "RuntimeUnavailable", "RUNTIMES",
           "REFERENCE_RUNTIMES", "RATIO_KEYS", "RECORD_KEYS", "DEFAULT_RUNTIMES", "INT8_RUNTIMES", "measure",
           "matmul_peak_gflops", "measure_many", "run_benchmark", "build_runtime", "reference_model",
           "parse_runtimes", "default_runtimes", "int8_available"]
