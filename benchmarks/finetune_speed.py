"""Fine-tuning speed: a frozen-feature epoch (``--freeze features``, a linear probe) against a full
fine-tune epoch, same model, data and input size, measured in the same run.

No pretrained file is on the development machine, so the weights are saved from torchvision's own
constructors (random initialisation): speed does not depend on the weights' values.

    python benchmarks/finetune_speed.py [--models squeezenet1_1,mobilenet_v3_small] [--input-size 224]
                                        [--samples 640] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

from pocketcnn.train.config import TrainConfig, recipe
from pocketcnn.train.engine import fit


def epoch_speed(model: str, weights: Path, *, freeze: str, input_size: int, samples: int) -> float:
    """Training images/s of one epoch over ``samples`` Fashion-MNIST images (the engine's own figure)."""
    cfg = TrainConfig.from_dict({**recipe(model), "model": model, "weights": str(weights), "freeze": freeze,
                                 "input_size": input_size, "epochs": 1, "train_samples": samples,
                                 "test_samples": 100, "batch_size": 32, "augment": [], "amp": False})
    return fit(cfg, save=False).images_per_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="squeezenet1_1,mobilenet_v3_small")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--samples", type=int, default=640)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-ft-") as tmp:
        for name in args.models.split(","):
            weights = Path(tmp) / f"{name}.pth"
            torch.save(getattr(torchvision.models, name)().state_dict(), weights)
            full, frozen = (epoch_speed(name, weights, freeze=f, input_size=args.input_size, samples=args.samples)
                            for f in ("none", "features"))
            rows.append({"model": name, "input_size": args.input_size, "samples": args.samples,
                         "full_images_per_s": round(full, 1), "frozen_images_per_s": round(frozen, 1),
                         "speedup": round(frozen / full, 2)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"| model | input | full fine-tune img/s | frozen features img/s | frozen / full |  "
              f"({torch.get_num_threads()} threads, batch 32, fp32)")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['model']} | {r['input_size']} | {r['full_images_per_s']:,.1f} | "
                  f"{r['frozen_images_per_s']:,.1f} | {r['speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
