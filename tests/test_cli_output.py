"""What every command prints for scripts: ``--json`` is strict JSON (RFC 8259), whatever the values."""
from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from pocketcnn.cli.common import echo_json


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
