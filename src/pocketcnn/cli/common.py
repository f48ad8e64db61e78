"""Helpers shared by the command modules: JSON output, model options, tables."""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.text import Text


# Progress bars and tables go to stderr so that --json on stdout stays parseable.
# Not on a terminal (pipes, CI logs), tables get a wide fixed width instead of rich's 80.
# No console markup: the text printed carries paths, class names and install hints such as
# pip install 'pocketcnn[litert]', whose brackets rich would take for a style and drop; styles
# are given as Text spans instead (see tagged).
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140, markup=False)
out_console = Console(width=None if sys.stdout.isatty() else 140, markup=False)


def tagged(tag: str, style: str, message: str, *, console: Console = err_console) -> None:
    """One line: ``tag`` in ``style`` (e.g. a yellow "warning"), then ``message`` printed as it is."""
    console.print(Text.assemble((tag, style), " ", message), highlight=False, soft_wrap=True)


def echo_json(obj: Any) -> None:
    """Print exactly one JSON document on stdout: strict JSON (a NaN or infinity becomes null),
    numpy arrays and scalars as lists and numbers, anything else as its string."""
    click.echo(json.dumps(jsonable(obj), indent=2, allow_nan=False))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types; ``json.dumps`` calls no ``default=`` for a float, so NaN is handled here."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return jsonable(value.tolist())
    return str(value)


class ModelName(click.ParamType):
    """A registered model name; a bad one lists close matches (via the registry's error)."""

    name = "MODEL"

    def convert(self, value, param, ctx):
        from ..errors import PocketCNNError
        from ..models.registry import model_config

        try:
            model_config(value)
        except PocketCNNError as exc:  # names the value and the close matches
            self.fail(str(exc).split(" Known models:")[0], param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        from ..models.registry import list_models

        return [CompletionItem(n) for n in list_models(f"{incomplete}*")]


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


class RichProgress:
    """Engine callbacks drawing one rich progress bar per epoch on stderr."""

    def __init__(self, enabled: bool, verbose: bool = False, preface: Sequence[str] = ()) -> None:
        self.enabled = enabled  # progress bars (a terminal)
        self.verbose = verbose or enabled  # the set-up's choices
        self.preface = tuple(preface)  # lines printed at the start even when quiet (a changed setting)
        self.progress = None

    def on_start(self, notes: list[str]) -> None:
        """What the set-up chose (input size, pretrained weights, frozen layers): one line each, unless quiet."""
        for note in (*self.preface, *(notes if self.verbose else ())):
            tagged("train:", "dim", note)

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err_console,
                                 transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, info="")

    def on_step(self, step: int, loss: float, acc: float, images_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step,
                                 info=f"loss {loss:.3f}  acc {acc:5.1f}%  {images_per_s:,.0f} img/s")

    def on_epoch_end(self, m: dict) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.enabled:
            err_console.print(f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}  test top-1 {m['test_top1']:.2f}%"
                              f"  top-5 {m['test_top5']:.2f}%  {m['images_per_s']:,.0f} img/s  {m['epoch_seconds']:.0f}s")
