"""Streaming batch inference in the light install (no torch, no pyarrow, no Ray): ``predict
MODEL FOLDER --out FILE`` writes the main environment's records; Parquet and the Ray engine
are refused in one line naming their extra."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

ATOL = 1e-5


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketcnn", "predict", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("fmt,workers", [("jsonl", "2"), ("csv", "0")])
def test_folder_to_file_gives_expected_records(light, tmp_path, fmt, workers):
    out = tmp_path / f"rows.{fmt}"
    folder = light["images"][0].parent
    r = _predict(str(light["model"]), str(folder), "--out", str(out), "--workers", workers)
    broken = sum("error" in rec for rec in light["expected"])
    assert r.returncode == (1 if broken else 0), r.stderr
    assert "Traceback" not in r.stderr
    from pocketcnn.workflows.batch import read_records

    got = sorted(read_records(out), key=lambda rec: rec["image"])
    expected = sorted(light["expected"], key=lambda rec: rec["image"])
    assert light["prepare"].record_differences(got, expected, atol=ATOL, by_name=True) == []


@pytest.mark.parametrize("args,extra", [(("--out", "{tmp}/rows.parquet"), "parquet"),
                                        (("--out", "{tmp}/ray", "--engine", "ray"), "ray")])
def test_optional_outputs_name_their_extra(light, tmp_path, args, extra):
    if extra == "parquet" and _has("pyarrow") or extra == "ray" and _has("ray"):
        pytest.skip(f"{extra} is installed here")
    folder = light["images"][0].parent
    r = _predict(str(light["model"]), str(folder), *(a.format(tmp=tmp_path) for a in args))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'pocketcnn[{extra}]'" in lines[0], r.stderr
    assert not list(tmp_path.iterdir())


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_summary_json(light, tmp_path):
    out = tmp_path / "rows.jsonl"
    folder = light["images"][0].parent
    r = _predict(str(light["model"]), str(folder), "--out", str(out), "--json", "--workers", "1")
    summary = json.loads(r.stdout)
    assert summary["rows"] == len(light["expected"]) and summary["engine"] == "local"
    assert summary["failed"] == sum("error" in rec for rec in light["expected"])
