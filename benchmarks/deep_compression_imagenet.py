"""Size of the ImageNet-shaped SqueezeNet 1.0 (1000 classes) under Deep Compression's settings.

    python benchmarks/deep_compression_imagenet.py [--sparsity 0.67] [--bits 6]

Random (untrained) weights: sizes only; trained weights compress a little better.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from pocketcnn import create_model
from pocketcnn.compress.pipeline import deep_compress

ALEXNET_MB = 240.0  # the paper's AlexNet file (61M fp32 weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsity", type=float, default=0.67)
    ap.add_argument("--bits", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("squeezenet1_0")
    result = deep_compress(model, sparsity=args.sparsity, bits=args.bits)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "squeezenet1_0.pcz"
        result.save(path)
        size = path.stat().st_size
    mb = size / 1e6
    print(f"squeezenet1_0, 1000 classes, {result.n_params:,} params, sparsity {args.sparsity}, {args.bits} bits: "
          f"{size:,} bytes = {mb:.3f} MB, {8 * size / result.n_params:.2f} bits/param, "
          f"{ALEXNET_MB / mb:.0f}x smaller than AlexNet's {ALEXNET_MB:.0f} MB")


if __name__ == "__main__":
    main()
