"""``pocketcnn demo`` (``make demo``): the zoo trained on Fashion-MNIST within a time budget, then the
paper's chain (Deep Compression, INT8, export, prediction from the exported file)."""
from __future__ import annotations

import time

import click
from rich.table import Table

from .common import echo_json, err_console, out_console, tagged


class DemoProgress:
    """Engine callbacks for one model of the demo. On a terminal: one live line (epoch, images/s,
    time left for the model's whole run); in a log or CI: one plain line per epoch."""

    def __init__(self, name: str, images: int, epochs: int, live: bool, enabled: bool) -> None:
        self.name, self.images, self.epochs = name, images, epochs
        self.live, self.enabled = live and enabled, enabled
        self.progress = self.task = None
        self.t0 = time.perf_counter()
        self.done_steps = 0
        self.steps = 0

    def on_start(self, notes: list[str]) -> None:
        pass

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.steps = steps
        if self.live and self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn(f"{self.name:<20}"), TextColumn("{task.fields[info]}"), BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(), console=err_console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.name, total=steps * epochs, info="")
        self.epoch = epoch

    def on_step(self, step: int, loss: float, acc: float, images_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=(self.epoch - 1) * self.steps + step,
                                 info=f"epoch {self.epoch}/{self.epochs}  {images_per_s:,.0f} img/s  loss {loss:.3f}")

    def on_epoch_end(self, m: dict) -> None:
        if self.progress is not None and m["epoch"] == self.epochs:
            self.progress.stop()
            self.progress = None
        if self.enabled:
            left = (time.perf_counter() - self.t0) * (self.epochs - m["epoch"]) / max(m["epoch"], 1)
            err_console.print(f"{self.name}: epoch {m['epoch']}/{self.epochs}  test top-1 {m['test_top1']:.2f}% "
                              f"(1,000-image check)  {m['images_per_s']:,.0f} img/s  {m['epoch_seconds']:.0f} s"
                              + (f"  ~{left:.0f} s left" if m["epoch"] < self.epochs else ""), highlight=False)


@click.command()
@click.option("--models", help="Comma list of registered models (default: alexnet, the baseline, and one model "
              "per family: squeezenet1_1, mobilenet_v3_small).")
@click.option("--budget-minutes", type=click.FloatRange(0, min_open=True),
              help="Time for the whole job: training (an equal share per model), evaluation and the "
                   "compression chain (default: 14.5).")
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), help="Fashion-MNIST folder ($POCKETCNN_DATA_DIR).")
@click.option("--fresh", is_flag=True, help="Retrain even if finished runs exist.")
@click.option("--test-samples", type=click.IntRange(10), help="Rank on a class-balanced test subset "
              "(default: all 10,000 test images).")
@click.option("--no-chain", is_flag=True, help="Stop after the leaderboard (no Deep Compression, INT8, export).")
@click.option("--json", "as_json", is_flag=True, help="Print the leaderboard as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def demo(models, budget_minutes, out, data_dir, fresh, test_samples, no_chain, as_json, quiet) -> None:
    """Train AlexNet, SqueezeNet and MobileNets on Fashion-MNIST, rank them, then compress SqueezeNet
    (Deep Compression and INT8), export it and classify test images from the exported file.

    Writes OUT/leaderboard.json, report.md, pareto.png, curves.png, the .pcz and INT8 ONNX files.
    """
    from ..workflows.demo import DEFAULT_BUDGET_MINUTES, DEFAULT_MODELS, run_demo

    names = tuple(m.strip() for m in models.split(",") if m.strip()) if models else DEFAULT_MODELS
    budget_minutes = budget_minutes or DEFAULT_BUDGET_MINUTES
    log = (lambda msg: None) if quiet else (lambda msg: tagged("demo:", "dim", msg))
    board = run_demo(names, budget_minutes=budget_minutes, out=out, data_dir=data_dir, fresh=fresh,
                     test_samples=test_samples, chain=not no_chain,
                     make_callbacks=lambda name, plan: DemoProgress(name, plan.train_samples, plan.epochs,
                                                                    err_console.is_terminal, not quiet), log=log)
    if as_json:
        echo_json(board)
        return
    table = Table("model", "test top-1 %", "params", "size MB", "train images x epochs", "latency ms (b=1)",
                  "images/s", title=f"Fashion-MNIST leaderboard ({board['wall_seconds'] / 60:.1f} min)")
    for r in board["rows"]:
        table.add_row(r["model"], f"{r['top1']:.2f}", f"{r['params']:,}", f"{r['size_mb']:.2f}",
                      f"{r['train_samples']:,} x {r['epochs']}", f"{r['latency_ms']:.2f}", f"{r['images_per_s']:,.0f}")
    out_console.print(table)
    if board.get("chain"):
        chain = Table("model file", "bytes", "x smaller than AlexNet", "test top-1 %", title="the paper's chain")
        for s in board["chain"]["stages"]:
            chain.add_row(s["stage"], f"{s['bytes']:,}" if s["bytes"] else "-",
                          f"{s['x_smaller']:.0f}x" if s["x_smaller"] else "-",
                          f"{s['top1']:.2f}" if s["top1"] is not None else "-")
        out_console.print(chain)
    click.echo(f"wrote {out}/report.md, leaderboard.json, pareto.png, curves.png")
