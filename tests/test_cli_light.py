"""``make test``'s guard of the light install: the matrix of tests/light/matrix.py (every command's
``--help`` and one real call) run with PyTorch, torchvision, onnx and matplotlib made unimportable,
so a command module that imports one of them at the top fails here, not only in ``make test-light``."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

LIGHT = Path(__file__).with_name("light")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"light_{name}", LIGHT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


matrix = _module("matrix")
prepare = _module("prepare")
BLOCKED = ("torch", "torchvision", "onnx", "onnxscript", "matplotlib", "safetensors")


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    return prepare.blocked_env(tmp_path_factory.mktemp("blocked"), BLOCKED)


def test_commands_listed_are_the_cli_commands():
    from pocketcnn.cli import COMMANDS

    assert tuple(COMMANDS) == matrix.COMMANDS


def test_every_command_help_without_torch(blocked):
    assert matrix.help_problems(sys.executable, blocked) == []


def test_every_command_one_call_without_torch(blocked, tmp_path):
    model = prepare.make_onnx(tmp_path / "model.onnx")
    image = prepare.write_images(tmp_path / "images", broken=False)[0]
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not read: the command refuses before opening it")
    files = {"model": str(model), "image": str(image), "ckpt": str(ckpt), "tmp": str(tmp_path)}
    assert matrix.call_problems(sys.executable, files, blocked) == []


def test_the_matrix_catches_a_traceback(tmp_path):
    """The check itself can fail: where click cannot be imported, every ``--help`` ends in a traceback."""
    env = prepare.blocked_env(tmp_path / "noclick", ("click",))
    problems = matrix.help_problems(sys.executable, env)
    assert len(problems) == 1 + len(matrix.COMMANDS)
    assert all(" exit 1" in p and "ModuleNotFoundError" in p for p in problems)
