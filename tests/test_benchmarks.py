"""The accuracy benchmark script's bookkeeping: resuming a run that spans sessions."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from pocketcnn.errors import ConfigError
from pocketcnn.artifacts.checkpoint import load_checkpoint, save_checkpoint
from pocketcnn.train.engine import Interrupted

ROOT = Path(__file__).resolve().parents[1]
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TermAfterFirstEpoch:
    """Sends this process SIGTERM at the end of epoch 1, as a session's end would."""

    def on_start(self, notes): ...
    def on_epoch_start(self, epoch, epochs, steps): ...
    def on_step(self, step, loss, acc, images_per_s): ...

    def on_epoch_end(self, metrics):
        if metrics["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_benchmark_resumes_an_interrupted_run(tmp_path, monkeypatch):
    bench = load_script("fashion_mnist")
    real_fit = bench.fit
    args = ["--models", "mobilenet_v3_small", "--epochs", "2", "--train-samples", "300", "--device", "cpu",
            "--out", str(tmp_path)]
    run_dir = tmp_path / "mobilenet_v3_small_2ep"

    monkeypatch.setattr(bench, "fit", lambda cfg, resume=None, **kw: real_fit(cfg, TermAfterFirstEpoch(), resume=resume, **kw))
    with pytest.raises(Interrupted, match="signal 15.*epoch 1 complete"):
        bench.main(args)
    (first_epoch,) = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert not (tmp_path / "results.json").exists()
    # a checkpoint written before the erase_prob field existed reads as its default (0.25): accepted
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["config"].pop("erase_prob") == 0.25
    save_checkpoint(run_dir / "last.pt", ckpt)

    # another recipe would continue under the wrong schedule: refused, naming the field
    with pytest.raises(ConfigError, match=r"config field 'train_samples' is 300, this invocation asks 400"):
        bench.main([*args[:5], "400", *args[6:], "--resume"])
    # another erasing probability is another run (its own folder): nothing to resume there
    assert bench.run_name("mobilenet_v3_small", 2, None, 0.5) != run_dir.name

    # rows of earlier invocations: one of this run written before rows named their run (replaced),
    # one of another run (kept)
    common = {"train_samples": 60000, "wall_minutes": 1.0, "hardware": "cpu"}
    older = [{**common, "model": "mobilenet_v3_small", "epochs": 2, "input_size": 28, "best_top1": 1.0,
              "final_top1": 1.0},
             {**common, "run": "squeezenet1_1", "model": "squeezenet1_1", "epochs": 30, "best_top1": 93.0,
              "final_top1": 93.0}]
    (tmp_path / "results.json").write_text(json.dumps(older))
    monkeypatch.setattr(bench, "fit", real_fit)
    bench.main([*args, "--resume"])
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in epochs] == [1, 2]
    assert json.loads(first_epoch) == epochs[0]  # kept (with its timing), not retrained
    kept, row = json.loads((tmp_path / "results.json").read_text())
    assert kept == older[1] and row["run"] == run_dir.name
    assert row["resumed"] is True and row["epochs"] == 2 and row["final_top1"] == round(epochs[-1]["test_top1"], 2)
    assert row["wall_minutes"] == round(sum(m["epoch_seconds"] for m in epochs) / 60, 1)


def test_fashion_mnist_benchmark_run_folders_differ_by_epochs_size_and_erasing():
    name = load_script("fashion_mnist").run_name
    assert name("squeezenet1_1", 30, None) == "squeezenet1_1"
    assert name("mobilenet_v3_small", 35, 56) == "mobilenet_v3_small_56px_35ep"
    assert name("mobilenet_v3_small", 60, 56) == "mobilenet_v3_small_56px_60ep"
    assert name("mobilenet_v3_small", 40, 56, 0.5) == "mobilenet_v3_small_56px_40ep_erase0.5"
    assert name("mobilenet_v3_small", 40, 56, 0.25) == "mobilenet_v3_small_56px_40ep"  # the default: unnamed
    assert name("mobilenet_v3_small", 40, 72, 0.5, 0.1) == "mobilenet_v3_small_72px_40ep_erase0.5_wd0.1"
    assert name("mobilenet_v3_small", 40, 72, 0.5, None) == "mobilenet_v3_small_72px_40ep_erase0.5"  # the recipe's


def test_fashion_mnist_benchmark_rows_name_their_run_and_old_rows_get_one():
    bench = load_script("fashion_mnist")
    assert bench.row_run({"run": "x_56px", "model": "mobilenet_v3_small", "epochs": 30}) == "x_56px"
    # written before input size, erasing and the run field existed: native size, default erasing
    assert bench.row_run({"model": "alexnet", "epochs": 10, "input_size": 28, "config": {}}) == "alexnet_10ep"
    assert bench.row_run({"model": "squeezenet1_1", "epochs": 30}) == "squeezenet1_1"
    # the row's own field says 28 for native; its config says None (native) or 28 (asked for, resized)
    assert bench.row_run({"model": "m", "epochs": 30, "input_size": 28, "config": {"input_size": None}}) == "m"
    assert bench.row_run({"model": "m", "epochs": 30, "input_size": 28, "config": {"input_size": 28}}) == "m_28px"
    assert bench.row_run({"model": "m", "epochs": 40, "input_size": 56, "erase_prob": 0.5,
                          "config": {"input_size": 56}}) == "m_56px_40ep_erase0.5"


def test_fashion_mnist_benchmark_weight_decay_override_is_its_own_run(tmp_path, monkeypatch, capsys):
    bench = load_script("fashion_mnist")
    seen = []

    def fake_fit(cfg, resume=None, **kw):  # the bookkeeping only: no training
        seen.append(cfg)
        return SimpleNamespace(best_top1=50.0, final_top1=40.0, metrics=[])

    monkeypatch.setattr(bench, "fit", fake_fit)
    args = ["--models", "mobilenet_v3_small", "--epochs", "2", "--out", str(tmp_path)]
    bench.main(args)
    bench.main([*args, "--weight-decay", "0.05"])  # the recipe's own value: the same run
    bench.main([*args, "--weight-decay", "0.1"])
    assert [c.weight_decay for c in seen] == [0.05, 0.05, 0.1]
    assert [Path(c.out).name for c in seen] == ["mobilenet_v3_small_2ep"] * 2 + ["mobilenet_v3_small_2ep_wd0.1"]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["run"], r["config"]["weight_decay"]) for r in rows] == [
        ("mobilenet_v3_small_2ep", 0.05), ("mobilenet_v3_small_2ep_wd0.1", 0.1)]
    assert "| 2 | 28 | 0.25 | 0.1 | 60,000 |" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="weight_decay must be a number >= 0"):
        bench.main([*args, "--weight-decay", "-1"])


OPTIONAL = {"phone_formats": ("litert_torch", "executorch"), "browser_latency": ("playwright",),
            "browser_screenshot": ("playwright",)}


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_imports(name):
    """A script whose imports broke (a moved function) fails here, not months later when someone reruns it."""
    for dep in OPTIONAL.get(name, ()):
        pytest.importorskip(dep)
    module = load_script(name)
    assert callable(getattr(module, "main", None)), f"benchmarks/{name}.py has no main()"
