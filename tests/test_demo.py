"""`pocketcnn demo` on the real Fashion-MNIST files (CI installs Debian's dataset-fashion-mnist): the plan's
rule, the leaderboard, the paper's chain (each stage's file exists and predicts) and the report."""
import json

import pytest

from conftest import FMNIST
from pocketcnn.cli import cli
from pocketcnn.workflows.demo import (CHAIN_SHARE, LADDER, ModelPlan, Plan, epoch_seconds, fixed_seconds,
                                     plan_models, report, top_rung_budget)

needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")


def test_each_model_gets_the_same_share_and_the_largest_rung_that_fits():
    table = {"fast": (1000.0, 5000.0), "slow": (100.0, 1000.0), "glacial": (1.0, 10.0)}
    asked = []

    def speed(m, batch):  # a smaller batch trains at half the speed, as AlexNet's does
        asked.append((m, batch))
        train, ev = table[m]
        return (train if batch == 128 else train / 2), ev

    params = {"fast": 1_000_000, "slow": 50_000_000, "glacial": 1_000}
    plan = plan_models(list(table), speed, dict.fromkeys(table, 128), params, share_s=120.0, test_images=10_000)
    # fast: 60,000 x 2 takes 120 s of training plus the epochs' checks: over; 50,000 x 2 fits
    assert (plan["fast"].train_samples, plan["fast"].epochs) == (50000, 2)
    assert plan["slow"].train_samples < plan["fast"].train_samples and plan["slow"].epochs == 1
    # the share is training time (with each epoch's check and checkpoint); the final evaluation comes on top
    assert plan["fast"].estimated_seconds == pytest.approx(
        2 * epoch_seconds(50000, 1000.0, 5000.0, 1_000_000) + fixed_seconds(5000.0, 10_000), abs=0.1)
    assert plan["fast"].estimated_seconds - fixed_seconds(5000.0, 10_000) <= 120.0
    # slow: at 100/s (batch 128) 10,000 images would fit, but a run that short trains at a smaller batch
    # (fewer than 150 steps at 128), here at 50/s: 4,000 images fit
    assert plan["slow"].train_samples == 4000 and plan["slow"].images_per_s == 50.0
    assert ("slow", 16) in asked and ("fast", 64) not in asked  # measured only where a rung needs it
    assert (plan["glacial"].train_samples, plan["glacial"].epochs) == LADDER[-1]  # nothing fits: the smallest rung
    # the ladder is ordered from most to least work, so "first that fits" is "largest that fits"
    work = [n * e for n, e in LADDER]
    assert work == sorted(work, reverse=True)


def test_report_says_when_this_machine_cannot_train_the_top_rung_and_what_budget_would():
    """An AVX2-only 2-core machine (AlexNet 43 training images/s): AlexNet got 6,000 x 1 in a 151-s share."""
    rows = [{"model": "squeezenet1_1", "top1": 85.87, "top5": 99.0, "params": 726_474, "size_mb": 2.77, "macs": 15e6,
             "latency_ms": 2.0, "images_per_s": 1500.0, "train_seconds": 140, "train_samples": 60000, "epochs": 2,
             "batch_size": 64},
            {"model": "alexnet", "top1": 74.33, "top5": 98.0, "params": 57_022_154, "size_mb": 217.5, "macs": 180e6,
             "latency_ms": 18.0, "images_per_s": 300.0, "train_seconds": 150, "train_samples": 6000, "epochs": 1,
             "batch_size": 128}]
    plan = Plan(151.0, 156.6, {"squeezenet1_1": ModelPlan(60000, 2, 900.0, 145.0),
                               "alexnet": ModelPlan(6000, 1, 43.0, 160.0)})
    board = {"budget_minutes": 14.5, "share_seconds": 151.0, "rows": rows, "rule": "r", "machine": "m",
             "test_samples": 10000, "wall_seconds": 870.0}
    gap = top_rung_budget(board, plan)
    need = 2 * epoch_seconds(60000, 43.0, 300.0, 57_022_154)  # AlexNet's two epochs of all images, from its speeds
    assert gap["models"] == {"alexnet": {"train_samples": 6000, "epochs": 1, "images_per_s": 43.0}}
    assert gap["share_needed_seconds"] == pytest.approx(need, abs=0.1)
    assert gap["budget_minutes"] == pytest.approx(14.5 + 2 * (need - 151.0) / (1 - CHAIN_SHARE) / 60, abs=0.1)
    text = report({**board, "top_rung": gap})
    assert "## What this machine could not do in the budget" in text
    assert f"`pocketcnn demo --budget-minutes {int(gap['budget_minutes']) + 1}`" in text
    assert "alexnet 6,000 x 1 at 43 training images/s" in text
    # every model on the top rung: nothing to say
    plan_ok = Plan(151.0, 156.6, {"squeezenet1_1": ModelPlan(60000, 2, 900.0, 145.0)})
    assert top_rung_budget({**board, "rows": rows[:1]}, plan_ok) is None
    assert "could not do" not in report({**board, "top_rung": None})


@needs_fmnist
def test_demo_ranks_then_runs_the_papers_chain(tmp_path, cli_runner):
    out = tmp_path / "demo"
    args = ["demo", "--models", "squeezenet1_1,mobilenet_v3_small", "--budget-minutes", "0.3",
            "--test-samples", "200", "--out", str(out), "--json", "--quiet"]
    r = cli_runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    board = json.loads(r.stdout)
    assert set(board) >= {"wall_seconds", "budget_minutes", "rows", "rule", "chain"} and board["budget_minutes"] == 0.3
    assert {row["model"] for row in board["rows"]} == {"squeezenet1_1", "mobilenet_v3_small"}
    for row in board["rows"]:
        assert set(row) >= {"model", "top1", "params", "size_mb", "macs", "latency_ms", "images_per_s",
                            "train_samples", "epochs", "batch_size"}
        assert 0 <= row["top1"] <= 100 and row["latency_ms"] > 0 and row["images_per_s"] > 0
    assert json.loads((out / "leaderboard.json").read_text())["rows"] == board["rows"]
    for png in ("pareto.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    chain = board["chain"]
    names = [s["stage"] for s in chain["stages"]]
    assert names[1:] == ["squeezenet1_1 dense (fp32)", "squeezenet1_1 Deep Compression (.pcz)",
                         "squeezenet1_1 INT8 ONNX"]
    dense, pcz, int8 = chain["stages"][1:]
    assert (out / pcz["file"]).stat().st_size == pcz["bytes"] < dense["bytes"] / 8  # 6 bits, 1/3 kept, coded
    assert (out / int8["file"]).stat().st_size == int8["bytes"] < dense["bytes"] / 2.5
    assert chain["sparsity"] == pytest.approx(0.67, abs=0.01) and chain["bits_per_param"] < 4.0
    # each stage's file predicts: the .pcz and the INT8 file, the latter through the light runtime
    from pocketcnn.runtime.predictor import open_model
    from pocketcnn.workflows.predict import load_predictor

    png = [out / s["image"] for s in chain["samples"]]
    assert len(png) == len(set(png)) == len(list((out / "samples").glob("*.png"))) == 10
    assert [p.topk[0].label for p in open_model(out / int8["file"]).predict(png, topk=1)] == \
        [s["predicted"] for s in chain["samples"]]
    assert all(p.ok for p in load_predictor(out / pcz["file"], runtime="torch").predict(png))

    report = (out / "report.md").read_text()
    assert "## The paper's title, measured" in report and "| model file | bytes | x smaller than AlexNet |" in report
    assert board["rule"] in report and "Leaderboard" in report
    # a second run reuses the finished runs and the chain (no retraining: same rows and files)
    mtime = (out / "squeezenet1_1" / "last.pt").stat().st_mtime_ns, (out / pcz["file"]).stat().st_mtime_ns
    r2 = cli_runner.invoke(cli, args)
    assert r2.exit_code == 0, r2.output
    assert ((out / "squeezenet1_1" / "last.pt").stat().st_mtime_ns, (out / pcz["file"]).stat().st_mtime_ns) == mtime
    assert json.loads(r2.stdout)["rows"] == board["rows"]
    assert json.loads(r2.stdout)["chain"]["stages"] == chain["stages"]
