"""``pocketcnn eval``: accuracy of a checkpoint on a test split, with a confusion matrix."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from ..data.spec import DATASETS
from .common import echo_json, out_console


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Choice(DATASETS),
              help="Data set (default: the one the checkpoint was trained on).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test", "val"]))
@click.option("--test-samples", type=click.IntRange(1), help="Class-balanced subset size.")
@click.option("--batch-size", type=click.IntRange(1), default=512, show_default=True)
@click.option("--no-ema", is_flag=True, help="Use the raw weights even if the checkpoint has EMA weights.")
@click.option("--tta", is_flag=True, help="Test-time augmentation: average the logits of each image and its mirror "
              "image (2x the inference cost).")
@click.option("--out", type=click.Path(file_okay=False), help="Where to write eval.json and confusion.png "
              "(default: the checkpoint's folder).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(checkpoint, data, data_dir, split, test_samples, batch_size, no_ema, tta, out, as_json) -> None:
    """Top-1, top-5, per-class accuracy and confusion matrix (PNG and JSON) of CHECKPOINT."""
    from ..data import DataSpec, balanced_subset, load_dataset
    import torch

    from ..errors import ConfigError
    from ..workflows.plots import confusion_matrix
    from ..artifacts.checkpoint import is_int8, load_checkpoint, model_from_checkpoint
    from ..fileio import atomic_write_text
    from ..train.engine import evaluate as run_eval
    from ..train.engine import select_device

    from ..fileio import check_writable_dir

    out_dir = check_writable_dir(Path(out) if out else Path(checkpoint).parent, "evaluation report")
    ckpt = load_checkpoint(checkpoint)
    device = torch.device("cpu") if is_int8(ckpt) else select_device("auto")  # int8 kernels are CPU ones
    model = model_from_checkpoint(ckpt, use_ema=not no_ema, source=str(checkpoint)).to(device)  # before the data
    spec = DataSpec.from_dict(ckpt["data"]) if ckpt.get("data") else None
    cfg = ckpt.get("config", {})
    name = data or (spec.name if spec else None)
    if name is None:
        raise ConfigError(f"{checkpoint}: no data set recorded in the checkpoint; pass --data")
    folder = data_dir or (cfg.get("data_dir") if name == cfg.get("data") else None)
    if cfg.get("val_split") and data is None and split == "test":  # the run's own held-out images
        from ..train.config import TrainConfig
        from ..train.engine import load_data

        run_cfg = TrainConfig.from_dict(cfg).replace(data_dir=folder, train_samples=None, test_samples=None,
                                                     weights=None, freeze="none", input_size=spec.image_size)
        ds = load_data(run_cfg)[1]
    else:
        kw = {"image_size": spec.image_size} if name == "imagefolder" and spec else {}
        ds = load_dataset(name, split, folder, **kw)
    ds = balanced_subset(ds, test_samples, seed=0)
    if spec is None or len(ds.classes) != spec.num_classes:
        raise ConfigError(f"{checkpoint}: model has {spec.num_classes if spec else '?'} classes, "
                          f"data set {name!r} has {len(ds.classes)}")
    res = run_eval(model, ds, spec, batch_size=batch_size, device=device, flip_tta=tta)
    report = {"checkpoint": str(checkpoint), "model": ckpt["model"], "data": name, "split": split, "tta": tta,
              "n": res.n, "top1": res.top1, "top5": res.top5, "loss": res.loss,
              "per_class": dict(zip(spec.classes, res.per_class)), "confusion": res.confusion,
              "classes": list(spec.classes)}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "eval.json", json.dumps(report, indent=2))
    confusion_matrix(res.confusion, spec.classes, out_dir / "confusion.png",
                     title=f"{ckpt['model']} on {name} {split} (top-1 {res.top1:.2f}%)")
    report["files"] = [str(out_dir / "eval.json"), str(out_dir / "confusion.png")]
    if as_json:
        echo_json(report)
        return
    table = Table("class", "top-1 %", title=f"{ckpt['model']} on {name}/{split}: {res.n} images")
    for c, acc in zip(spec.classes, res.per_class):
        table.add_row(c, f"{acc:.1f}")
    out_console.print(table)
    click.echo(f"top-1 {res.top1:.2f}%  top-5 {res.top5:.2f}%  loss {res.loss:.4f}  "
               f"(wrote {out_dir / 'eval.json'}, {out_dir / 'confusion.png'})")
