"""Phone formats on this machine: file size, latency and INT8 accuracy of LiteRT, ONNX Runtime and ExecuTorch.

    python benchmarks/phone_formats.py [--models squeezenet1_1,mobilenet_v2,mobilenet_v3_small]
        [--checkpoints runs/a/best.pt,runs/b/best.pt] [--threads 2] [--test-samples 0] [--json]

Each model is measured in five runtimes, all on the CPU with ``--threads`` threads:

* ``litert`` / ``litert-int8``: ``.tflite`` files from :mod:`pocketcnn.export.tflite` (fp32; full-integer
  INT8 from litert-torch's PT2E path) in the LiteRT interpreter with XNNPACK;
* ``onnxruntime`` / ``onnxruntime-int8``: the BN-folded ONNX export, and its static QDQ INT8 file
  from :func:`pocketcnn.compress.quantize.quantize_onnx` (what ``pocketcnn quantize`` writes), in
  ONNX Runtime with pocketcnn's session recipe;
* ``executorch``: ``.pte`` programs (XNNPACK, fp32) in ExecuTorch's runtime, one per batch size
  with a static batch: with a dynamic batch (``export --dynamic-batch``) XNNPACK does not take
  SqueezeNet's ceil-mode max pools, which then run in ExecuTorch's portable kernels, 4-5x slower.

``--models``: registered models at ImageNet shape (3x224x224, 1000 classes, random weights,
INT8 calibrated on random inputs: their speed is meaningful, their accuracy is not).
``--checkpoints``: trained checkpoints (the Fashion-MNIST builds); INT8 is calibrated on 512
training images of the checkpoint's data set and every INT8 file is scored on its test split
(``--test-samples``: a balanced subset, 0 = all) against the fp32 model.

Latency: median milliseconds per call at batch 1 and 32 (images/s at 32), the runtimes of one
model timed interleaved by :func:`pocketcnn.bench.timing.measure_many`, so load from other
processes hits them alike. Prints a markdown table on stderr and, with ``--json``, one JSON
document on stdout (else the table goes to stdout).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pocketcnn.artifacts.source import ModelSource, load_model_source
from pocketcnn.bench.timing import measure_many
from pocketcnn.compress.quantize import quantize_onnx
from pocketcnn.data.spec import imagenet_spec
from pocketcnn.data.transforms import load_images
from pocketcnn.export.onnx import export_onnx
from pocketcnn.export.tflite import export_tflite
from pocketcnn.export.torch_formats import export_pte
from pocketcnn.models.registry import create_model
from pocketcnn.export.optimize import fold_batchnorm
from pocketcnn.runtime.litert import LiteRtRunner
from pocketcnn.runtime.onnx import OnnxRunner
from pocketcnn.runtime.torch_runners import ExecuTorchRunner

RUNTIMES = ("litert", "litert-int8", "onnxruntime", "onnxruntime-int8", "executorch")
INT8 = ("litert-int8", "onnxruntime-int8")


def build_files(source: ModelSource, tmp: Path, calib: list[torch.Tensor], calib_desc: str) -> dict[str, Path]:
    """Every runtime's file for one model."""
    size, meta, tag = source.input_size, source.metadata(), source.name
    files = {"litert": export_tflite(source.model, tmp / f"{tag}.tflite", input_size=size, metadata=meta),
             "litert-int8": export_tflite(source.model, tmp / f"{tag}.int8.tflite", input_size=size, metadata=meta,
                                          calib_batches=calib, calibration=calib_desc)}
    folded = copy.deepcopy(source.model).eval()
    fold_batchnorm(folded)
    files["onnxruntime"] = export_onnx(folded, tmp / f"{tag}.onnx", input_size=size, dynamic_batch=True, metadata=meta)
    files["onnxruntime-int8"] = quantize_onnx(files["onnxruntime"], tmp / f"{tag}.int8.onnx", [c.numpy() for c in calib])
    files["executorch"] = export_pte(source.model, tmp / f"{tag}.pte", input_size=size, metadata=meta)
    files["executorch-b32"] = static_pte(source.model, tmp / f"{tag}.b32.pte", size, batch=32)
    return files


def static_pte(model: torch.nn.Module, path: Path, size: tuple[int, int, int], batch: int) -> Path:
    """An ExecuTorch program (XNNPACK) for a fixed ``batch``: pocketcnn's export_pte recipe at another batch size."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model.eval(), (torch.zeros(batch, *size),))
    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    return path


def runners(files: dict[str, Path], threads: int) -> dict[str, object]:
    return {"litert": LiteRtRunner(files["litert"], threads=threads),
            "litert-int8": LiteRtRunner(files["litert-int8"], threads=threads),
            "onnxruntime": OnnxRunner(files["onnxruntime"], threads=threads),
            "onnxruntime-int8": OnnxRunner(files["onnxruntime-int8"], threads=threads),
            "executorch": ExecuTorchRunner(files["executorch"]),
            "executorch-b32": ExecuTorchRunner(files["executorch-b32"])}


def top1(run, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    hits = sum(int((np.asarray(run(x[i:i + batch].numpy())).argmax(1) == y[i:i + batch].numpy()).sum())
               for i in range(0, len(x), batch))
    return 100.0 * hits / max(len(x), 1)


def measure_case(label: str, source: ModelSource, tmp: Path, threads: int, calib: list[torch.Tensor], calib_desc: str,
                 test: tuple[torch.Tensor, torch.Tensor] | None) -> list[dict]:
    files = build_files(source, tmp, calib, calib_desc)
    run = runners(files, threads)
    rows = {rt: {"model": label, "runtime": rt, "size_bytes": files[rt].stat().st_size} for rt in RUNTIMES}
    for bs in (1, 32):
        fns = {rt: (lambda x, r=r: r.run(x.numpy())) for rt, r in run.items() if not rt.startswith("executorch")}
        fns["executorch"] = lambda x, r=run["executorch" if bs == 1 else "executorch-b32"]: r.run(x.numpy())
        records = measure_many(fns, batch_size=bs, input_size=source.input_size, threads=threads, warmup=3,
                               min_time=1.5, repeats=5, model_name=label)
        for rec in records:
            rows[rec.runtime][f"ms_b{bs}"] = rec.median_ms
            rows[rec.runtime][f"img_s_b{bs}"] = rec.images_per_s
    if test is not None:
        x, y = test
        with torch.no_grad():
            fp32 = top1(lambda b: source.model(torch.from_numpy(b)).numpy(), x, y)
        for rt in RUNTIMES:
            rows[rt]["fp32_top1"] = fp32
            rows[rt]["top1"] = top1(run[rt].run, x, y) if rt in INT8 or rt == "litert" else None
            rows[rt]["test_images"] = len(x)
    return list(rows.values())


def markdown(rows: list[dict], threads: int) -> str:
    head = ("| model | runtime | file MB | batch 1 ms | batch 32 ms | batch 32 img/s | top-1 % (fp32 %) |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    lines = [f"{threads} threads; {platform.machine()}, {os.cpu_count()} CPUs", "", head]
    for r in rows:
        acc = f"{r['top1']:.2f} ({r['fp32_top1']:.2f})" if r.get("top1") is not None else "-"
        lines.append(f"| {r['model']} | {r['runtime']} | {r['size_bytes'] / 2**20:.2f} | {r.get('ms_b1', float('nan')):.2f} "
                     f"| {r.get('ms_b32', float('nan')):.1f} | {r.get('img_s_b32', float('nan')):.0f} | {acc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="squeezenet1_1,mobilenet_v2,mobilenet_v3_small",
                    help="registered models at 3x224x224, random weights ('' for none)")
    ap.add_argument("--checkpoints", default="", help="comma-separated trained checkpoints (.pt)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--test-samples", type=int, default=0, help="balanced test images (0: the whole split)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout, the table on stderr")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    try:  # ExecuTorch's XNNPACK threadpool: the same thread count as the others
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(args.threads)
    except (ImportError, RuntimeError):
        pass
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-phone-") as tmp:
        for name in filter(None, args.models.split(",")):
            model = create_model(name).eval()
            source = ModelSource(model, name, {"num_classes": 1000, "in_chans": 3}, imagenet_spec(224), None, "model")
            gen = torch.Generator().manual_seed(1)
            calib = [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(4)]
            print(f"measuring {name} 224x224 ...", file=sys.stderr, flush=True)
            rows += measure_case(f"{name} 224", source, Path(tmp), args.threads, calib, "32 random inputs", None)
        for ckpt in filter(None, args.checkpoints.split(",")):
            source = load_model_source(ckpt)
            data = source.data
            x, _ = load_images(data.name, "train", args.calib_samples, data, args.data_dir, seed=1)
            calib = [x[i:i + 32] for i in range(0, len(x), 32)]
            test = load_images(data.name, "test", args.test_samples or None, data, args.data_dir, seed=0)
            side = data.image_size
            print(f"measuring {ckpt} ({source.name}, {data.name} {side}x{side}) ...", file=sys.stderr, flush=True)
            rows += measure_case(f"{source.name} {data.name} {side}", source, Path(tmp), args.threads, calib,
                                 f"{len(x)} {data.name} train images", test)
    table = markdown(rows, args.threads)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps({"threads": args.threads, "machine": platform.machine(), "rows": rows}, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
