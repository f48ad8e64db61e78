"""``pocketcnn eval``: accuracy of a checkpoint on a test split, with a confusion matrix."""
from __future__ import annotations

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
    from ..workflows.evaluate import EvalSettings, evaluate_checkpoint

    settings = EvalSettings(data=data, data_dir=data_dir, split=split, test_samples=test_samples,
                            batch_size=batch_size, use_ema=not no_ema, tta=tta, out=out)
    report = evaluate_checkpoint(checkpoint, settings)
    if as_json:
        echo_json(report)
        return
    table = Table("class", "top-1 %", title=f"{report['model']} on {report['data']}/{split}: {report['n']} images")
    for c, acc in report["per_class"].items():
        table.add_row(c, f"{acc:.1f}")
    out_console.print(table)
    click.echo(f"top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%  loss {report['loss']:.4f}  "
               f"(wrote {', '.join(report['files'])})")
