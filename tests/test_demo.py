"""`pocketcnn demo` on the real Fashion-MNIST files (CI installs Debian's dataset-fashion-mnist)."""
import json

import pytest

from pocketcnn.cli import cli
from conftest import FMNIST

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")


def test_demo_writes_leaderboard_and_reuses_runs(tmp_path, cli_runner):
    out = tmp_path / "demo"
    args = ["demo", "--models", "squeezenet1_1,mobilenet_v3_small", "--budget-minutes", "0.2",
            "--test-samples", "200", "--out", str(out), "--json", "--quiet"]
    r = cli_runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    board = json.loads(r.stdout)
    assert set(board) >= {"wall_seconds", "budget_minutes", "rows"} and board["budget_minutes"] == 0.2
    assert {row["model"] for row in board["rows"]} == {"squeezenet1_1", "mobilenet_v3_small"}
    for row in board["rows"]:
        assert set(row) >= {"model", "top1", "params", "size_mb", "macs", "latency_ms", "images_per_s"}
        assert 0 <= row["top1"] <= 100 and row["latency_ms"] > 0 and row["images_per_s"] > 0
    assert json.loads((out / "leaderboard.json").read_text())["rows"] == board["rows"]
    for png in ("pareto.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "squeezenet1_1" in report and "Leaderboard" in report
    # a second run reuses the finished runs (no retraining: same rows, fast)
    mtime = (out / "squeezenet1_1" / "last.pt").stat().st_mtime_ns
    r2 = cli_runner.invoke(cli, args)
    assert r2.exit_code == 0
    assert (out / "squeezenet1_1" / "last.pt").stat().st_mtime_ns == mtime
    assert json.loads(r2.stdout)["rows"] == board["rows"]
