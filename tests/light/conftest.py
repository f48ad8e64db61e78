"""Fixtures of the light tests: they run where only the light install is (no torch, torchvision
or onnx) and compare with records made in the main environment by ``tests/light/prepare.py``.

    python tests/light/prepare.py /tmp/light            # main environment: prints the 3 variables
    env POCKETCNN_LIGHT_MODEL=... POCKETCNN_LIGHT_IMAGES=... POCKETCNN_LIGHT_EXPECTED=... \\
        light-venv/bin/python -m pytest tests/light -p no:cacheprovider

Without the variables every test here is skipped. Imports nothing heavy (no torch).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

VARS = ("POCKETCNN_LIGHT_MODEL", "POCKETCNN_LIGHT_IMAGES", "POCKETCNN_LIGHT_EXPECTED")


def _load_prepare():
    spec = importlib.util.spec_from_file_location("light_prepare", Path(__file__).with_name("prepare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its top level needs numpy only
    return module


@pytest.fixture(scope="session")
def light() -> dict:
    """``model`` (Path), ``images`` (sorted Paths), ``expected`` (records), ``prepare`` (the helper module)."""
    missing = [v for v in VARS if not os.environ.get(v)]
    if missing:
        pytest.skip(f"light tests need {', '.join(missing)} (see tests/light/prepare.py)")
    model, folder, expected = (Path(os.environ[v]) for v in VARS)
    for path in (model, folder, expected):
        assert path.exists(), f"{path}: missing (run tests/light/prepare.py again)"
    return {"model": model, "images": sorted(p for p in folder.iterdir() if p.is_file()),
            "expected": json.loads(expected.read_text()), "prepare": _load_prepare()}
