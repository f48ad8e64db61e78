"""Where ONNX Runtime spends its time, fp32 vs INT8, per operator type.

    python benchmarks/int8_profile.py [--models mobilenet_v3_small,squeezenet1_1] [--batch-size 32]

The README's bound on MobileNetV3-Small's INT8 speed comes from this script. Each model
(random weights, batch norm folded, 224x224) is exported to ONNX, quantized the way
``pocketcnn quantize`` does it (QDQ, int8 per-channel weights, uint8 activations; here
calibrated on random inputs, which changes the scales but not the operators), and run in
ONNX Runtime with the session recipe of every pocketcnn runtime and its profiler on. For
each model: images/s of both files (measured without the profiler, best of 4 rounds that
alternate the two), the profiled milliseconds per batch (warm-up left out), and the share
of each operator type. The last line answers "how fast could INT8 be at best": the time
ONNX Runtime spends in its int8 convolutions alone, against the fp32 file's whole time.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pocketcnn.compress.quantize import quantize_onnx
from pocketcnn.workflows.quantize import speeds
from pocketcnn.export.onnx import export_onnx
from pocketcnn.export.optimize import fold_batchnorm
from pocketcnn.runtime.onnx import ort_session
from pocketcnn.models.registry import create_model

CONV_OPS = ("Conv", "FusedConv", "QLinearConv", "NhwcFusedConv", "Gemm", "QGemm", "MatMul", "MatMulInteger")


def op_profile(path: Path, batch: np.ndarray, threads: int, runs: int,
               warmup: int = 3) -> tuple[float, dict[str, float]]:
    """``(ms per batch, {op type: ms per batch})`` from ONNX Runtime's profiler, warm-up runs left out."""
    sess = ort_session(path, threads=threads, profile_prefix=str(path.with_suffix("")))
    name = sess.get_inputs()[0].name
    for _ in range(warmup + runs):
        sess.run(None, {name: batch})
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    run_ends = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    after = run_ends[warmup - 1] if warmup else -1
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] > after:
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return sum(per_op.values()), dict(per_op.most_common())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v3_small,squeezenet1_1")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    size = (3, args.input_size, args.input_size)
    batch_t = torch.randn(args.batch_size, *size)
    batch = batch_t.numpy()
    print(f"# {os.cpu_count()} CPUs, {args.threads} threads, batch {args.batch_size}, "
          f"{args.input_size}x{args.input_size}")
    with tempfile.TemporaryDirectory(prefix="pocketcnn-int8prof-") as tmp:
        for name in args.models.split(","):
            model = create_model(name).eval()
            fold_batchnorm(model)
            fp32 = export_onnx(model, Path(tmp) / f"{name}.onnx", input_size=size, dynamic_batch=True)
            int8 = quantize_onnx(fp32, Path(tmp) / f"{name}.int8.onnx",
                                 [torch.randn(2, *size).numpy() for _ in range(4)])
            sessions = [ort_session(p, threads=args.threads) for p in (fp32, int8)]
            runs = {k: (lambda x, s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in zip(("fp32", "int8"), sessions)}
            ips = speeds(runs, batch_t, args.threads)
            speed = [ips["fp32"], ips["int8"]]
            (t32, ops32), (t8, ops8) = (op_profile(p, batch, args.threads, args.runs) for p in (fp32, int8))
            print(f"\n## {name}: fp32 {speed[0]:.0f} img/s, int8 {speed[1]:.0f} img/s ({speed[1] / speed[0]:.2f}x)")
            for label, total, ops in (("fp32", t32, ops32), ("int8", t8, ops8)):
                shares = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in list(ops.items())[:8])
                print(f"{label}: {total:.1f} ms per batch (profiled): {shares}")
            conv8 = sum(v for k, v in ops8.items() if k in CONV_OPS)
            print(f"int8 convolutions alone: {conv8:.1f} ms = {100 * conv8 / t32:.0f}% of the fp32 file's "
                  f"{t32:.1f} ms, so int8 could reach at most {t32 / conv8:.2f}x even if every other "
                  f"operator cost nothing; the rest (quantize/dequantize, element-wise, layout) takes "
                  f"{t8 - conv8:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
