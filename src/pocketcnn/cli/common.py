"""Helpers shared by the command modules: JSON output, model options, tables."""
from __future__ import annotations

import json
import math
import sys
from typing import Any

import click
from rich.console import Console


# Progress bars and tables go to stderr so that --json on stdout stays parseable.
# Not on a terminal (pipes, CI logs), tables get a wide fixed width instead of rich's 80.
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
out_console = Console(width=None if sys.stdout.isatty() else 140)


def echo_json(obj: Any) -> None:
    """Print exactly one JSON document on stdout."""
    click.echo(json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
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


def is_tty() -> bool:
    return sys.stderr.isatty()
