"""``pocketcnn demo`` (``make demo``): the zoo trained on Fashion-MNIST within a time budget."""
from __future__ import annotations

import click
from rich.table import Table

from .common import echo_json, err_console, out_console
from .train import RichProgress


@click.command()
@click.option("--models", default="alexnet,squeezenet1_1,mobilenet_v1,mobilenet_v3_small", show_default=True,
              help="Comma list of registered models.")
@click.option("--budget-minutes", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Time for training and evaluation of all models together.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Fashion-MNIST folder ($POCKETCNN_DATA_DIR).")
@click.option("--fresh", is_flag=True, help="Retrain even if finished runs exist.")
@click.option("--test-samples", type=click.IntRange(10), help="Rank on a class-balanced test subset "
              "(default: all 10,000 test images).")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def demo(models, budget_minutes, out, data_dir, fresh, test_samples, as_json, quiet) -> None:
    """Train AlexNet, SqueezeNet and MobileNets on Fashion-MNIST and rank them.

    Writes OUT/leaderboard.json, report.md, pareto.png and curves.png.
    """
    from ..workflows.demo import run_demo

    names = tuple(m.strip() for m in models.split(",") if m.strip())
    log = (lambda msg: None) if quiet else (lambda msg: err_console.print(f"[dim]demo:[/dim] {msg}"))
    show_bar = not quiet and err_console.is_terminal
    board = run_demo(names, budget_minutes=budget_minutes, out=out, data_dir=data_dir, fresh=fresh,
                     test_samples=test_samples, make_callbacks=lambda name: RichProgress(show_bar), log=log)
    if as_json:
        echo_json(board)
        return
    table = Table("model", "test top-1 %", "params", "size MB", "mult-adds", "latency ms (b=1)", "images/s",
                  title=f"Fashion-MNIST leaderboard ({board['train_samples']:,} train images x {board['epochs']} "
                        f"epochs, {board['wall_seconds'] / 60:.1f} min)")
    for r in board["rows"]:
        table.add_row(r["model"], f"{r['top1']:.2f}", f"{r['params']:,}", f"{r['size_mb']:.2f}",
                      f"{r['macs'] / 1e6:.1f}M", f"{r['latency_ms']:.2f}", f"{r['images_per_s']:,.0f}")
    out_console.print(table)
    click.echo(f"wrote {out}/leaderboard.json, report.md, pareto.png, curves.png")
