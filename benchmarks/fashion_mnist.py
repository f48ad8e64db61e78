"""Accuracy benchmark: full recipes on Fashion-MNIST (all 60,000 training images, all 10,000 test).

    python benchmarks/fashion_mnist.py [--models squeezenet1_1,mobilenet_v1,...] [--epochs 30]
                                       [--input-size 56] [--erase-prob 0.25] [--weight-decay WD]
                                       [--device auto] [--out runs/bench_fmnist] [--resume]

Records test top-1 (best and final), epochs, input size, wall time and the hardware into
OUT/results.json (each row names its run folder; a run replaces the earlier row of the same
folder, the others are kept) and prints a Markdown table for the README.
Checkpoints and metrics go to OUT/MODEL[_SIZEpx][_EPOCHSep][_eraseP][_wdWD]/ (the epochs named
unless they are the default 30, the erasing probability unless it is the default 0.25, the weight
decay only when --weight-decay overrides the recipe's).
``--input-size`` resizes the 28x28 images (bilinear) before the network: MobileNet's resolution
multiplier. ``--resume`` continues each model's interrupted run from its ``last.pt`` (so a long
run can span sessions; the same arguments are required); its wall time is then the sum of the
per-epoch times in ``metrics.jsonl``. Public results to beat:
MobileNet 95.0%, SqueezeNet 90.0% (200 epochs), AlexNet 89.9%, ResNet-18 94.9%.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from pocketcnn.errors import ConfigError, PocketCNNError
from pocketcnn.artifacts.checkpoint import load_checkpoint
from pocketcnn.fileio import atomic_write_text
from pocketcnn.train.config import TrainConfig, config_changes, recipe
from pocketcnn.train.engine import fit

NATIVE_SIZE = 28  # Fashion-MNIST's images; rows written before --input-size existed are this size
DEFAULT_EPOCHS = 30
DEFAULT_ERASE = TrainConfig.erase_prob  # rows written before --erase-prob existed used this


def run_name(model: str, epochs: int, input_size: int | None, erase_prob: float = DEFAULT_ERASE,
             weight_decay: float | None = None) -> str:
    """OUT/<this>: one folder per model, epochs, input size, erasing probability and weight decay
    (None: the recipe's), named like its results.json row (so a 60-epoch run neither overwrites a
    35-epoch one nor resumes from it)."""
    return (model + ("" if input_size is None else f"_{input_size}px")
            + ("" if epochs == DEFAULT_EPOCHS else f"_{epochs}ep")
            + ("" if erase_prob == DEFAULT_ERASE else f"_erase{erase_prob:g}")
            + ("" if weight_decay is None else f"_wd{weight_decay:g}"))


def row_run(row: dict) -> str:
    """The run a results.json row belongs to: its ``run`` field, or for a row written before that
    field existed, the name run_name gives its recorded model, epochs, input size and erasing."""
    if "run" in row:
        return row["run"]
    size = row.get("input_size", NATIVE_SIZE)  # the row's own field says 28 for "native" ...
    size = row.get("config", {}).get("input_size", None if size == NATIVE_SIZE else size)  # ... its config, None
    return run_name(row["model"], row["epochs"], size, row.get("erase_prob", DEFAULT_ERASE))


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="alexnet,squeezenet1_0,squeezenet1_1,mobilenet_v1,mobilenet_v2,mobilenet_v3_small")
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--train-samples", type=int, default=None, help="subset (default: all 60,000)")
    ap.add_argument("--input-size", type=int, default=None,
                    help=f"resize images to this side (default: {NATIVE_SIZE}, native)")
    ap.add_argument("--erase-prob", type=float, default=DEFAULT_ERASE,
                    help=f"chance that a training image gets one erased rectangle (default: {DEFAULT_ERASE})")
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="override the recipe's weight decay (default: the recipe's, 0.05 for AdamW recipes)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="mixed precision on/off (default: the recipe's, bf16 for SqueezeNet/AlexNet on a bf16 CPU)")
    ap.add_argument("--out", default="runs/bench_fmnist")
    ap.add_argument("--resume", action="store_true", help="continue each model's run from OUT/MODEL/last.pt if present")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else []
    for name in args.models.split(","):
        base = {**recipe(name), "model": name}
        wd = None if args.weight_decay == TrainConfig.from_dict(base).weight_decay else args.weight_decay
        run_dir = out / run_name(name, args.epochs, args.input_size, args.erase_prob, wd)
        cfg = TrainConfig.from_dict({**base, "epochs": args.epochs, "ema": True,
                                     "augment": ("crop", "flip", "erase"), "erase_prob": args.erase_prob,
                                     "device": args.device,
                                     **({} if args.amp is None else {"amp": args.amp}),
                                     **({} if wd is None else {"weight_decay": wd}),
                                     "train_samples": args.train_samples, "input_size": args.input_size,
                                     "out": str(run_dir)})
        last = run_dir / "last.pt"
        resume = last if args.resume and last.exists() else None
        if resume is not None:  # a different recipe would continue under the wrong schedule
            changes = config_changes(load_checkpoint(resume).get("config", {}), cfg)
            if changes:
                field, was, asked = changes[0]
                raise ConfigError(f"{resume}: config field {field!r} is {was!r}, "
                                  f"this invocation asks {asked!r}; resume with the same arguments")
        t0 = time.perf_counter()
        res = fit(cfg, resume=resume, overwrite=True)  # a new run of the same recipe replaces the old one
        wall_minutes = round((time.perf_counter() - t0) / 60, 1)
        if resume is not None:  # the run's whole time, over every invocation (its checkpoint kept the metrics)
            wall_minutes = round(sum(m["epoch_seconds"] for m in res.metrics) / 60, 1)
        row = {"run": run_dir.name, "model": name,
               "best_top1": round(res.best_top1, 2), "final_top1": round(res.final_top1, 2),
               "epochs": args.epochs, "train_samples": args.train_samples or 60000,
               "input_size": args.input_size or NATIVE_SIZE, "erase_prob": args.erase_prob,
               "wall_minutes": wall_minutes,
               "resumed": resume is not None,
               "hardware": hardware(), "config": cfg.to_dict()}
        results = [r for r in results if row_run(r) != run_dir.name] + [row]
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    print("| model | best test top-1 % | final % | epochs | input | erase p | weight decay | train images "
          "| wall min | hardware |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(f"| {r['model']} | {r['best_top1']:.2f} | {r['final_top1']:.2f} | {r['epochs']} "
              f"| {r.get('input_size', NATIVE_SIZE)} | {r.get('erase_prob', DEFAULT_ERASE):g} "
              f"| {r.get('config', {}).get('weight_decay', '?')} | {r['train_samples']:,} "
              f"| {r['wall_minutes']} | {r['hardware']} |")


if __name__ == "__main__":
    try:
        main()
    except PocketCNNError as exc:  # bad data, Ctrl-C/SIGTERM (resume with --resume), diverged run
        sys.exit(f"fashion_mnist.py: {exc}")
