"""``evaluate_checkpoint``: what ``pocketcnn eval`` runs: a checkpoint scored on a test split, with its
per-class accuracy and confusion matrix written beside it (``eval.json`` and ``confusion.png``).

The test images are the ones the run itself held out when it trained with ``val_split`` (and no other
data set is asked for); otherwise the named split of the data set the checkpoint records, or ``data``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts.checkpoint import is_int8, load_checkpoint, model_from_checkpoint
from ..data import DataSpec, balanced_subset, load_dataset
from ..errors import ConfigError
from ..fileio import atomic_write_text, check_writable_dir
from ..train.data_prep import run_splits
from ..train.engine import evaluate, select_device
from .plots import confusion_matrix


@dataclass(frozen=True)
class EvalSettings:
    """What ``pocketcnn eval`` takes besides the checkpoint (the defaults are the command's)."""

    data: str | None = None  # default: the data set the checkpoint was trained on
    data_dir: str | None = None
    split: str = "test"
    test_samples: int | None = None  # a class-balanced subset of this size
    batch_size: int = 512
    use_ema: bool = True
    tta: bool = False  # the mean of the logits of each image and its mirror image
    out: str | Path | None = None  # default: the checkpoint's folder


def evaluate_checkpoint(checkpoint: str | Path, settings: EvalSettings = EvalSettings()) -> dict[str, Any]:
    """Score ``checkpoint``, write ``eval.json`` and ``confusion.png``, and return the report (``files``: both)."""
    s = settings
    out_dir = check_writable_dir(Path(s.out) if s.out else Path(checkpoint).parent, "evaluation report")
    ckpt = load_checkpoint(checkpoint)
    device = torch.device("cpu") if is_int8(ckpt) else select_device("auto")  # int8 kernels are CPU ones
    model = model_from_checkpoint(ckpt, use_ema=s.use_ema, source=str(checkpoint)).to(device)  # before the data
    spec = DataSpec.from_dict(ckpt["data"]) if ckpt.get("data") else None
    name = s.data or (spec.name if spec else None)
    if name is None:
        raise ConfigError(f"{checkpoint}: no data set recorded in the checkpoint; pass --data")
    if spec is None:
        raise ConfigError(f"{checkpoint}: the checkpoint records no preprocessing (its 'data' entry), so its "
                          "test images cannot be prepared")
    ds = balanced_subset(_test_images(ckpt.get("config", {}), name, spec, s), s.test_samples, seed=0)
    if len(ds.classes) != spec.num_classes:
        raise ConfigError(f"{checkpoint}: model has {spec.num_classes} classes, "
                          f"data set {name!r} has {len(ds.classes)}")
    res = evaluate(model, ds, spec, batch_size=s.batch_size, device=device, flip_tta=s.tta)
    report = {"checkpoint": str(checkpoint), "model": ckpt["model"], "data": name, "split": s.split, "tta": s.tta,
              "n": res.n, "top1": res.top1, "top5": res.top5, "loss": res.loss,
              "per_class": dict(zip(spec.classes, res.per_class)), "confusion": res.confusion,
              "classes": list(spec.classes)}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "eval.json", json.dumps(report, indent=2))
    confusion_matrix(res.confusion, spec.classes, out_dir / "confusion.png",
                     title=f"{ckpt['model']} on {name} {s.split} (top-1 {res.top1:.2f}%)")
    report["files"] = [str(out_dir / "eval.json"), str(out_dir / "confusion.png")]
    return report


def _test_images(cfg: dict[str, Any], name: str, spec: DataSpec, s: EvalSettings):
    """The images to score: the run's own ``val_split`` hold-out when it had one (and no other data set is
    asked for), else the split ``s.split`` of data set ``name`` (the run's folder when it is the run's data)."""
    folder = s.data_dir or (cfg.get("data_dir") if name == cfg.get("data") else None)
    if cfg.get("val_split") and s.data is None and s.split == "test":
        return run_splits(cfg, spec.image_size, folder)[1]
    kw = {"image_size": spec.image_size} if name == "imagefolder" else {}
    return load_dataset(name, s.split, folder, **kw)
