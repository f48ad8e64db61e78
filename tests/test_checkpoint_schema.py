"""The training checkpoint's schema: a written file has exactly the keys docs/checkpoint.md documents, and a
file written before the later keys existed (no version, no position within an epoch) still resumes."""
import os
import re
import signal
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from pocketcnn.artifacts.checkpoint import FORMAT, RNG_KEYS, VERSION, TrainingCheckpoint, load_checkpoint
from pocketcnn.train.callbacks import Callbacks
from pocketcnn.train.config import TrainConfig
from pocketcnn.train.engine import Interrupted, fit

DOC = Path(__file__).resolve().parents[1] / "docs" / "checkpoint.md"


def documented(section: str) -> set[str]:
    """The first-column keys of the table under ``## section`` in docs/checkpoint.md."""
    text = DOC.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.M))


def cfg(tiny_data, out, **kw) -> TrainConfig:
    base = dict(model="squeezenet1_1", data="mnist", data_dir=tiny_data, epochs=2, batch_size=64, lr=0.01,
                optimizer="adamw", warmup_epochs=0.5, train_samples=128, test_samples=40, out=str(out))
    return TrainConfig.from_dict({**base, **kw})


def test_a_written_checkpoint_has_exactly_the_documented_keys(tiny_data, tmp_path):
    fit(cfg(tiny_data, tmp_path / "run", epochs=1, ema=True))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    keys = documented("Keys")
    assert len(keys) == 19 and set(ckpt) == keys
    assert {f.name for f in fields(TrainingCheckpoint)} | {"format", "version"} == keys
    assert (ckpt["format"], ckpt["version"]) == (FORMAT, VERSION)
    rng = documented("rng")
    assert set(RNG_KEYS) | {"cuda"} == rng and "python" not in rng
    assert set(ckpt["rng"]) == (rng if torch.cuda.is_available() else rng - {"cuda"})
    assert ckpt["ema_n_averaged"] == 2 and ckpt["step"] == 2 and ckpt["epoch_partial"] == [0.0, 0, 0]
    assert ckpt["config"]["short_run"] == "auto"  # fit trains the config as given; the CLI decides the rule
    assert set(load_checkpoint(tmp_path / "run" / "best.pt")) == keys


class StopAfterEpoch(Callbacks):
    """SIGINT at the end of epoch 1: the run saves that epoch's checkpoint and stops."""

    def on_epoch_end(self, metrics):
        if metrics["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_older_checkpoint_without_version_or_later_keys_resumes(tiny_data, tmp_path):
    full = fit(cfg(tiny_data, tmp_path / "full"))
    c = cfg(tiny_data, tmp_path / "old")
    with pytest.raises(Interrupted):
        fit(c, StopAfterEpoch())
    last = tmp_path / "old" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 0
    for key in ("version", "ema", "ema_n_averaged", "ema_ready", "scaler", "batch_in_epoch", "step",
                "epoch_partial", "data"):
        del ckpt[key]
    torch.save(ckpt, last)
    assert TrainingCheckpoint.from_dict(load_checkpoint(last)).epoch_partial == [0.0, 0, 0]
    resumed = fit(c, resume=last)
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert b["version"] == VERSION and len(b["metrics"]) == 2
