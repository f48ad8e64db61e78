"""torchrun/DDP on CPU (gloo) with 2 processes: equality with 1 process, gathered metrics,
a killed rank, and checkpoints that move between process counts."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pocketcnn.artifacts.checkpoint import load_checkpoint

COMMON = ["--model", "squeezenet1_1", "--data", "mnist", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.003",
          "--augment", "none", "--train-samples", "256", "--seed", "3", "--quiet", "--json",
          "--model-arg", "drop_rate=0",  # dropout draws differ per rank; without it 2 ranks = 1 process
          "--no-amp"]  # the recipe's bf16 rounds a 32-image half-batch otherwise than a 64-image batch


def train(args, tiny_data, *, nproc=1, check=True, popen=False):
    cmd = [sys.executable, "-m", "pocketcnn", "train", *COMMON, "--data-dir", tiny_data, *args]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def close(a: dict, b: dict, tol=1e-4) -> bool:
    # float sums run in another order across ranks: equal up to rounding, not bit for bit
    return a.keys() == b.keys() and all(
        torch.allclose(a[k].double(), b[k].double(), atol=tol, rtol=1e-3) if a[k].is_floating_point() else torch.equal(a[k], b[k])
        for k in a)


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    train(["--epochs", "3", "--out", str(out)], tiny_data)
    return out


def test_two_processes_equal_one(tiny_data, single, tmp_path):
    out = tmp_path / "ddp"
    r = train(["--epochs", "3", "--out", str(out)], tiny_data, nproc=2)
    d = json.loads(r.stdout)  # rank 0 alone prints
    assert d["epochs"] == 3
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(out / "last.pt")
    assert close(a["state_dict"], b["state_dict"])
    # metrics are over the WHOLE test split, gathered from both ranks' shards
    for ma, mb in zip(a["metrics"], b["metrics"]):
        assert mb["test_images"] == ma["test_images"] == 160
        assert mb["test_loss"] == pytest.approx(ma["test_loss"], rel=1e-3)
        assert mb["train_loss"] == pytest.approx(ma["train_loss"], rel=1e-3)


def _interrupt_after_first_epoch(proc, out: Path) -> dict:
    """SIGINT the run once epoch 1 is saved; it checkpoints mid-run and exits 130."""
    deadline = time.time() + 240
    while not (out / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "finished before the interrupt; make the run longer"
    ckpt = load_checkpoint(out / "last.pt")
    assert 1 <= ckpt["epoch"] < 3
    return ckpt


@pytest.mark.parametrize("first, then", [(1, 2), (2, 1)])
def test_checkpoint_moves_between_process_counts(tiny_data, single, tmp_path, first, then):
    # interrupted with `first` processes, resumed with `then`: ends where 1 process ends
    out = tmp_path / "moved"
    proc = train(["--epochs", "3", "--out", str(out)], tiny_data, nproc=first, popen=True)
    _interrupt_after_first_epoch(proc, out)
    train(["--epochs", "3", "--out", str(out), "--resume", str(out / "last.pt")], tiny_data, nproc=then)
    assert close(load_checkpoint(single / "last.pt")["state_dict"], load_checkpoint(out / "last.pt")["state_dict"])


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_rank_fails_cleanly_and_resume_finishes(tiny_data, tmp_path):
    out = tmp_path / "killed"
    proc = train(["--epochs", "30", "--train-samples", "320", "--out", str(out)], tiny_data, nproc=2, popen=True)
    deadline = time.time() + 240
    while not (out / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.5)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert time.time() - t0 < 120  # the job ends within a bounded time
    assert "distributed training failed" in err and "Traceback" not in err.splitlines()[-1]
    ckpt = load_checkpoint(out / "last.pt")  # intact: loads and is a whole epoch
    assert ckpt["epoch"] >= 1 and ckpt["batch_in_epoch"] == 0
    # resume to the end (fewer epochs than planned, to stay fast) in one process
    r = train(["--epochs", str(ckpt["epoch"] + 1), "--out", str(out), "--resume", str(out / "last.pt")], tiny_data,
              check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(out / "last.pt")["epoch"] == ckpt["epoch"] + 1



TEARDOWN = """
import json, os, signal, sys
import torch.distributed as dist
from pocketcnn.train.config import TrainConfig
from pocketcnn.train.engine import fit

how = sys.argv[2]
cfg = TrainConfig.from_dict(dict(model="squeezenet1_1", data="mnist", data_dir=sys.argv[1], epochs=1,
                                 train_samples=128, test_samples=40, augment=(), amp=False,
                                 model_kwargs={"drop_rate": 0}, batch_size=64))

def after_step():  # on every rank, after the first step (all ranks connected, no collective pending)
    if how == "error":
        raise ValueError("a failing step")
    if how == "sigterm":  # Interrupted, as on Ctrl-C in a terminal
        os.kill(os.getpid(), signal.SIGTERM)

try:
    fit(cfg, save=False, after_step=after_step)
except Exception as exc:
    how += f" ({type(exc).__name__})"
with open(os.path.join(sys.argv[3], "rank" + os.environ["RANK"] + ".json"), "w") as f:  # not one shared stdout
    json.dump({"rank": int(os.environ["RANK"]), how: dist.is_initialized()}, f)
"""


@pytest.mark.parametrize("how, raised", [("end", ""), ("error", " (ValueError)"), ("sigterm", " (Interrupted)")])
def test_every_exit_destroys_the_process_group(tiny_data, tmp_path, how, raised):
    """A normal end, an exception and SIGTERM in a 2-process gloo group made by fit(): none leaves the
    group alive (a gloo group alive at exit is the usual cause of an abort at exit). One launch each: a group
    made again in the same processes would read the launcher's store keys of the first one."""
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", str(script),
           tiny_data, how, str(tmp_path)]
    r = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert rows == [{"rank": rank, how + raised: False} for rank in (0, 1)]
