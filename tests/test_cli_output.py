"""What every command prints for scripts: ``--json`` is strict JSON (RFC 8259), whatever the values."""
from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from pocketcnn.cli.common import echo_json, err_console, out_console, tagged


def strict_loads(text: str):
    """``json.loads`` as other languages' parsers read JSON: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@click.command()
def _emit():
    echo_json({"top1": float("nan"), "loss": float("inf"), "ok": 1.5, "arr": np.array([1.0, np.nan], np.float32),
               "scalar": np.float64("-inf"), "n": np.int64(3), "t": (1, 2), "nested": [{"x": float("nan")}]})


def test_json_output_is_strict_json():
    res = CliRunner().invoke(_emit)
    assert res.exit_code == 0, res.output
    d = strict_loads(res.output)
    assert d == {"top1": None, "loss": None, "ok": 1.5, "arr": [1.0, None], "scalar": None, "n": 3, "t": [1, 2],
                 "nested": [{"x": None}]}


def test_strict_loads_refuses_nan():
    with pytest.raises(ValueError, match="NaN is not JSON"):
        strict_loads('{"a": NaN}')


@click.command()
def _say():
    tagged("warning", "yellow", "no model.tflite: the litert extra is not installed (pip install 'pocketcnn[litert]')")
    err_console.print("runs/[red]/best.pt")
    out_console.print("class [bold] shirt")


def test_text_output_prints_brackets_as_written():
    """Install hints, paths and class names reach the user whole: rich markup would take ``[litert]``,
    ``[red]`` or ``[bold]`` for a style and drop it (``export`` told a user to run ``pip install 'pocketcnn'``)."""
    res = CliRunner().invoke(_say)
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines() == ["warning no model.tflite: the litert extra is not installed "
                                       "(pip install 'pocketcnn[litert]')", "runs/[red]/best.pt"]
    assert res.stdout == "class [bold] shirt\n"
