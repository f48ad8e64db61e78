"""Reproduce the README's inference table: pocketcnn vs torchvision, CPU, fp32 (and INT8).

    python benchmarks/bench_inference.py                       # the README's table (several minutes)
    python benchmarks/bench_inference.py --quick --models squeezenet1_1 --input-size 64

For each model: every pocketcnn runtime and torchvision's model in eager PyTorch and in
ONNX Runtime, measured in the same process at batch 1 and 32 (224x224, 2 threads by
default). Prints a Markdown table with each runtime's ratio to the two references, then
the summary the README quotes: the best pocketcnn fp32 path against torchvision in ONNX
Runtime and in eager PyTorch at the largest batch, and batch-1 latency against torchvision
in ONNX Runtime. The load average before and after is printed too: on a shared machine
the absolute numbers move, the same-run ratios much less.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from pocketcnn.bench import INT8_RUNTIMES, BenchConfig, int8_available, run_benchmark

MODELS = ("squeezenet1_1", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small")
FP32 = ("eager", "channels_last", "optimized-torch", "onnxruntime", "optimized")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runtimes", default=None, help="default: every fp32 runtime but 'compiled', plus INT8 if available")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="also write the records to this file")
    args = ap.parse_args(argv)

    runtimes = args.runtimes or ",".join(FP32 + (INT8_RUNTIMES if int8_available() else ()))
    config = BenchConfig(models=tuple(args.models.split(",")), runtimes=runtimes,
                         batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), threads=args.threads,
                         input_size=args.input_size, reference=True, quick=args.quick)
    load_before = os.getloadavg()[0]
    report = run_benchmark(config, progress=lambda d, t, label: print(f"[{d}/{t}] {label}", file=sys.stderr))
    load_after = os.getloadavg()[0]

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{config.threads} threads, {config.input_size}x{config.input_size}; fp32 matmul peak "
          f"{report.peak_gflops:.0f} GFLOP/s; load average {load_before:.1f} before, {load_after:.1f} after\n")
    print("| model | runtime | batch | median ms | img/s | GFLOP/s | % peak | peak MB | vs tv eager | vs tv ORT |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    fmt = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
    for r in report.results:
        print(f"| {r.model} | {r.runtime} | {r.batch_size} | {r.median_ms:.1f} | {r.images_per_s:.1f} | "
              f"{fmt(r.gflops, '.1f')} | {fmt(r.peak_fraction and 100 * r.peak_fraction, '.0f')} | "
              f"{fmt(r.peak_mem_mb, '.0f')} | {fmt(r.vs_torchvision_eager, '.2f')} | "
              f"{fmt(r.vs_torchvision_onnxruntime, '.2f')} |")
    big, small = max(config.batch_sizes), min(config.batch_sizes)
    print(f"\n## best pocketcnn fp32 path vs torchvision (batch {big} throughput, batch {small} latency)\n")
    print(f"| model | best runtime (batch {big}) | vs tv ORT | vs tv eager | best batch-{small} ms | tv ORT batch-{small} ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for model in config.models:
        best = report.best(model, big)
        lat = report.best(model, small)
        tv = next((r for r in report.results if r.model == model and r.batch_size == small
                   and r.runtime == "torchvision-onnxruntime"), None)
        if best is None:
            continue
        print(f"| {model} | {best.runtime} | {fmt(best.vs_torchvision_onnxruntime, '.2f')} | "
              f"{fmt(best.vs_torchvision_eager, '.2f')} | {fmt(lat and lat.median_ms, '.2f')} | "
              f"{fmt(tv and tv.median_ms, '.2f')} |")
    for line in report.skipped:
        print(f"\nskipped: {line}")
    notes = dict((r.runtime, r.note) for r in report.results if r.note)
    print("\n" + "\n".join(f"- {k}: {v}" for k, v in notes.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_before": load_before, "load_after": load_after, "peak_gflops": report.peak_gflops,
                       "records": report.to_records(), "skipped": report.skipped}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
