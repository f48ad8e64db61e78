"""Training speed: pocketcnn's engine against a plain PyTorch loop, same model, data and optimizer.

    python benchmarks/train_speed.py [--models squeezenet1_1,mobilenet_v3_small] [--samples 6400] [--amp]

The plain loop is what a user would write: NCHW model, a DataLoader over a TensorDataset of
normalized float images, zero_grad / backward / step. The engine adds what makes it faster on
this hardware (channels-last, batched on-device augmentation from uint8) and what a real run
needs (augmentation, label smoothing, grad clipping, the NaN check). Both are timed over the
same number of training images after one warm-up batch; the engine's figure excludes its
per-epoch evaluation. Prints images/s and the ratio for the engine in fp32; ``--amp`` adds
the engine with bf16 autocast (CPU) or fp16 (CUDA), and which of the two the model's recipe
runs by default on this hardware (``amp: "auto"``).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from pocketcnn.data import balanced_subset, dataset_spec, load_dataset
from pocketcnn.train.config import TrainConfig, recipe
from pocketcnn.train.engine import amp_enabled, build_model, fit, make_optimizer

DEVICE = "cpu"  # both loops run here: the claim is about cheap hardware


def plain_loop(name: str, samples: int, batch: int) -> float:
    ds = balanced_subset(load_dataset("fashion-mnist", "train"), samples)
    spec = dataset_spec("fashion-mnist", ds)
    x = (ds.data.float() / 255 - spec.mean[0]) / spec.std[0]
    loader = DataLoader(TensorDataset(x, ds.targets), batch_size=batch, shuffle=True, drop_last=True)
    cfg = TrainConfig.from_dict({**recipe(name), "model": name})
    model = build_model(cfg, spec).train()
    opt = make_optimizer(cfg, model)
    seen, t0 = 0, None
    for i, (xb, yb) in enumerate(loader):
        if i == 1:
            seen, t0 = 0, time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(yb)
    return seen / (time.perf_counter() - t0)


def engine(name: str, samples: int, batch: int, amp: bool = False) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict({**recipe(name), "model": name, "epochs": 1, "batch_size": batch, "amp": amp,
                                     "device": DEVICE,
                                     "train_samples": samples, "test_samples": 100, "out": tmp})
        return fit(cfg, save=False).images_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="squeezenet1_1,mobilenet_v1,mobilenet_v3_small")
    ap.add_argument("--samples", type=int, default=6400)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--amp", action="store_true", help="also time the engine with mixed precision")
    args = ap.parse_args()
    extra = " engine + amp img/s | amp / plain | recipe default / plain |" if args.amp else ""
    print(f"| model | plain loop img/s | engine fp32 img/s | fp32 / plain |{extra}  ({torch.get_num_threads()} threads)")
    print("| --- | ---: | ---: | ---: |" + (" ---: | ---: | ---: |" if args.amp else ""))
    for name in args.models.split(","):
        p = plain_loop(name, args.samples, args.batch_size)
        e = engine(name, args.samples, args.batch_size)
        row = f"| {name} | {p:,.0f} | {e:,.0f} | {e / p:.2f}x |"
        if args.amp:
            a = engine(name, args.samples, args.batch_size, amp=True)
            default_amp = amp_enabled(recipe(name).get("amp", False), torch.device(DEVICE))
            row += f" {a:,.0f} | {a / p:.2f}x | {(a if default_amp else e) / p:.2f}x ({'amp' if default_amp else 'fp32'}) |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
