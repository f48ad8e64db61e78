"""The light install (no PyTorch): every command's ``--help``, and one real call of each (see matrix.py)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("light_matrix", Path(__file__).with_name("matrix.py"))
matrix = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = matrix  # dataclasses look their module up
_spec.loader.exec_module(matrix)


def test_every_command_help(light):
    assert matrix.help_problems(sys.executable) == []


def test_every_command_one_call(light, tmp_path):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not read: the command refuses before opening it")
    files = {"model": str(light["model"]), "image": str(next(p for p in light["images"] if p.suffix == ".png")),
             "ckpt": str(ckpt), "tmp": str(tmp_path)}
    assert matrix.call_problems(sys.executable, files) == []


def test_no_torch_here():
    assert importlib.util.find_spec("torch") is None, "not the light install"
    with pytest.raises(ImportError):
        import torch  # noqa: F401
