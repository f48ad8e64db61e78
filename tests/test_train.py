"""The training engine on tiny real data: one epoch per family, exact resume, SIGINT, NaN, eval, CLI."""
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketcnn.cli import cli
from pocketcnn.errors import ConfigError, TrainingError
from pocketcnn.artifacts.checkpoint import load_checkpoint, model_from_checkpoint
from pocketcnn.train.config import TrainConfig, recipe
from pocketcnn.train.engine import Interrupted, ema_update, fit

def cfg(tiny_data, tmp_path, **kw) -> TrainConfig:
    base = dict(model="squeezenet1_1", data="mnist", data_dir=tiny_data, epochs=1, batch_size=64, lr=0.01,
                optimizer="adamw", warmup_epochs=0.5, out=str(tmp_path / "run"), eval_batch_size=160)
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("name", ["alexnet", "squeezenet1_1", "mobilenet_v1_025", "mobilenet_v2", "mobilenet_v3_small"])
def test_one_epoch_per_family(tiny_data, tmp_path, name):
    res = fit(cfg(tiny_data, tmp_path, model=name, train_samples=128, ema=name == "mobilenet_v2"))
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])
    assert 0 <= res.final_top1 <= 100 and res.epochs == 1
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["model"] == name and ckpt["epoch"] == 1 and ckpt["data"]["in_chans"] == 1
    assert (ckpt["ema"] is not None) == (name == "mobilenet_v2")
    model = model_from_checkpoint(ckpt)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert (out / "best.pt").is_file()


def test_ema_warms_up_then_decays_at_the_set_rate():
    """decay_n = min(decay, (1 + n) / (10 + n)): the first updates follow the model closely, so a
    short run's EMA does not keep the initial batch-norm variances (which left MobileNetV3-Small at
    10% test top-1 after 3 full Fashion-MNIST epochs)."""
    update = ema_update(0.998)
    ema, model = [torch.zeros(3), torch.tensor(5)], [torch.ones(3), torch.tensor(7)]
    update(ema, model, torch.tensor(1))  # decay 2/11: 9/11 of the way to the model
    torch.testing.assert_close(ema[0], torch.full((3,), 9 / 11))
    assert ema[1].item() == 7 and ema[1].dtype == torch.int64  # integer buffers are copied
    ema = [torch.zeros(3)]
    update(ema, [torch.ones(3)], torch.tensor(10_000))  # (1 + n) / (10 + n) > 0.998: the set decay rules
    torch.testing.assert_close(ema[0], torch.full((3,), 0.002))


def test_ema_batchnorm_statistics_follow_a_short_run(tiny_data, tmp_path):
    fit(cfg(tiny_data, tmp_path, model="mobilenet_v3_small", epochs=3, ema=True, ema_decay=0.998))  # 15 steps
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    errs = [((ckpt["ema"][k] - v).abs() / v).median().item() for k, v in ckpt["state_dict"].items()
            if k.endswith("running_var")]
    assert max(errs) < 0.15  # measured: 0.06 with the warm-up, 0.33 without (0.998^15 of the initial 1.0)


def test_learns_on_real_images(tiny_data, tmp_path):
    # 120 steps: batch-norm running variances start at 1 and need ~100 steps (momentum 0.1) to
    # forget it; fewer, and eval mode sees 10x too large variances in the last layers
    res = fit(cfg(tiny_data, tmp_path, model="mobilenet_v1_025", epochs=6, batch_size=16, lr=0.003))
    assert res.best_top1 >= 25.0  # 10 classes: chance is 10%; 320 images, 120 steps


class _SignalAt:
    """Callbacks that send SIGINT to this process at a given step of a given epoch."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.epoch = (epoch, step), 0

    def on_start(self, notes):
        pass

    def on_epoch_start(self, epoch, epochs, steps):
        self.epoch = epoch

    def on_step(self, step, loss, acc, ips):
        if (self.epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGINT)

    def on_epoch_end(self, m):
        pass


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model_kwargs, ema", [({}, False), ({"drop_rate": 0.5}, True)])
def test_sigint_saves_and_resume_equals_uninterrupted(tiny_data, tmp_path, model_kwargs, ema):
    kw = dict(epochs=2, train_samples=256, model_kwargs=model_kwargs, ema=ema)  # 4 steps per epoch
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    full = fit(cfg(tiny_data, tmp_path / "a", **kw))
    c = cfg(tiny_data, tmp_path / "b", **kw)
    with pytest.raises(Interrupted, match="resume with --resume"):
        fit(c, _SignalAt(epoch=2, step=2))
    ckpt = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["batch_in_epoch"]) == (1, 2)
    resumed = fit(c, resume=tmp_path / "b" / "run" / "last.pt")
    a = load_checkpoint(full.checkpoint)
    b = load_checkpoint(resumed.checkpoint)
    assert _states_equal(a["state_dict"], b["state_dict"])
    if ema:
        assert _states_equal(a["ema"], b["ema"])
    assert a["metrics"] == [dict(m, epoch_seconds=a["metrics"][i]["epoch_seconds"],
                                 images_per_s=a["metrics"][i]["images_per_s"]) for i, m in enumerate(b["metrics"])]
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path):
    c = cfg(tiny_data, tmp_path, epochs=3, train_samples=128)  # 2 steps per epoch
    holder = {}

    def poison():
        holder["n"] = holder.get("n", 0) + 1
        if holder["n"] == 3:  # first step of epoch 2
            with torch.no_grad():
                next(holder["model"].parameters()).fill_(float("nan"))

    from pocketcnn.train.engine import build_model, load_data

    _, _, spec = load_data(c)
    holder["model"] = build_model(c, spec)
    with pytest.raises(TrainingError, match="loss became nan at epoch 2.*last good checkpoint"):
        fit(c, model=holder["model"], after_step=poison)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_config_validation(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="optimizer='adam'.*Did you mean: adamw"):
        cfg(tiny_data, tmp_path, optimizer="adam")
    with pytest.raises(ConfigError, match="unknown field 'epoch'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="batch_size=0"):
        cfg(tiny_data, tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match="amp must be true, false or \"auto\", received amp='yes'"):
        cfg(tiny_data, tmp_path, amp="yes")
    with pytest.raises(ConfigError, match=r"erase_prob must be a number in \[0, 1\], received erase_prob=1.5"):
        cfg(tiny_data, tmp_path, erase_prob=1.5)


def test_config_changes_against_a_saved_config():
    from pocketcnn.train.config import config_changes

    now = TrainConfig(model="mobilenet_v3_small", epochs=40, erase_prob=0.5, out="a", device="cpu")
    saved = {**now.to_dict(), "out": "b", "device": "cuda"}  # where and on what: not what is computed
    assert config_changes(saved, now) == []
    assert config_changes({**saved, "epochs": 30, "lr": 0.1}, now) == [("epochs", 30, 40), ("lr", 0.1, now.lr)]
    older = {k: v for k, v in saved.items() if k != "erase_prob"}  # written before the field existed
    assert config_changes(older, now) == [("erase_prob", 0.25, 0.5)]
    assert config_changes(older, now.replace(erase_prob=0.25)) == []


@pytest.mark.parametrize("augment, erase_prob, expected", [(("crop", "erase"), 0.6, 0.6), (("crop",), 0.6, 0.0),
                                                           (("erase",), None, 0.25)])
def test_engine_erases_with_the_configured_probability(tiny_data, tmp_path, monkeypatch, augment, erase_prob, expected):
    import pocketcnn.train.loop as E  # the loop's step augments the batch

    seen = []
    real = E.augment_batch
    monkeypatch.setattr(E, "augment_batch", lambda x, **kw: seen.append(kw["erase"]) or real(x, **kw))
    extra = {} if erase_prob is None else {"erase_prob": erase_prob}
    fit(cfg(tiny_data, tmp_path, train_samples=128, test_samples=20, augment=augment, **extra))
    assert seen and set(seen) == {expected}


def test_amp_auto_follows_the_hardware(monkeypatch):
    import pocketcnn.train.hardware as E
    from pocketcnn.train.config import recipe

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert E.amp_enabled(True, cpu) and not E.amp_enabled(False, cuda) and E.amp_enabled("auto", cuda)
    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: True)
    assert E.amp_enabled("auto", cpu)
    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: False)
    assert not E.amp_enabled("auto", cpu)  # emulated bf16 is slower than fp32
    # measured (benchmarks/train_speed.py --amp): bf16 speeds SqueezeNet up, slows depthwise MobileNets
    assert recipe("squeezenet1_1")["amp"] == "auto" and not recipe("mobilenet_v3_small").get("amp")


def test_bf16_autocast_trains_on_cpu(tiny_data, tmp_path):
    res = fit(cfg(tiny_data, tmp_path, amp=True, epochs=2))
    assert res.epochs == 2 and all(np.isfinite(m["train_loss"]) for m in res.metrics)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_cli_train_eval_json(tiny_data, tmp_path, cli_runner):
    out = tmp_path / "cli"
    r = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data,
                                "--epochs", "1", "--batch-size", "64", "--train-samples", "128", "--optimizer",
                                "adamw", "--lr", "0.01", "--augment", "crop,flip,erase", "--erase-prob", "0.5",
                                "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    saved = load_checkpoint(out / "last.pt")["config"]
    assert saved["augment"] == ["crop", "flip", "erase"] and saved["erase_prob"] == 0.5
    for key in ("model", "epochs", "best_top1", "final_top1", "params", "wall_seconds", "checkpoint"):
        assert key in d
    assert d["model"] == "squeezenet1_1" and Path(d["checkpoint"]).is_file()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    r = cli_runner.invoke(cli, ["eval", str(out / "last.pt"), "--data-dir", tiny_data, "--json"])
    assert r.exit_code == 0, r.output
    e = json.loads(r.stdout)
    assert e["n"] == 160 and len(e["confusion"]) == 10 and sum(map(sum, e["confusion"])) == 160
    assert set(e) >= {"top1", "top5", "per_class", "confusion"} and 0 <= e["top1"] <= e["top5"] <= 100
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    r = cli_runner.invoke(cli, ["eval", str(out / "last.pt"), "--data-dir", tiny_data, "--tta", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tta"] is True and e["tta"] is False


def test_cli_resume_warns_about_changed_settings(tiny_data, tmp_path, cli_runner):
    out = tmp_path / "r"
    args = ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data, "--batch-size", "64",
            "--train-samples", "64", "--test-samples", "20", "--out", str(out), "-q"]
    r = cli_runner.invoke(cli, [*args, "--epochs", "1"])
    assert r.exit_code == 0, r.output
    last = str(out / "last.pt")
    r = cli_runner.invoke(cli, [*args, "--resume", last, "--json"])  # the saved epochs (1): nothing changes
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and json.loads(r.stdout)["epochs"] == 1
    r = cli_runner.invoke(cli, [*args, "--epochs", "2", "--lr", "0.002", "--resume", last, "--json"])
    assert r.exit_code == 0, r.output
    warning = r.stderr.strip()
    assert len(warning.splitlines()) == 1 and warning.startswith(f"warning: resuming {last} with ")
    assert "epochs=2 (was 1), lr=0.002 (was 0.001)" in warning
    assert json.loads(r.stdout)["epochs"] == 2 and load_checkpoint(last)["epoch"] == 2


def test_flip_tta_averages_the_logits_of_image_and_mirror(tiny_data):
    from pocketcnn.data import DataSpec, load_dataset, normalize_batch
    from pocketcnn.train.engine import evaluate

    torch.manual_seed(0)
    ds = load_dataset("mnist", "test", tiny_data)
    spec = DataSpec("mnist", 10, 1, 28, (0.5,), (0.25,), tuple(ds.classes))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))  # not mirror-symmetric
    x = normalize_batch(ds.data, spec.mean, spec.std, size=28)
    with torch.no_grad():
        plain, mirror = model(x), model(x.flip(-1))
    for tta, logits in ((False, plain), (True, (plain + mirror) / 2)):
        res = evaluate(model, ds, spec, batch_size=64, flip_tta=tta)
        pred = logits.argmax(1)
        assert res.n == 160
        assert res.top1 == pytest.approx(100 * (pred == ds.targets).float().mean().item())
        assert res.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, ds.targets).item(), rel=1e-5)
    assert (plain.argmax(1) != ((plain + mirror) / 2).argmax(1)).any()  # the two evaluations differ


def test_cli_config_file_and_errors(tiny_data, tmp_path, cli_runner):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"model": "squeezenet1_1", "data": "mnist", "data_dir": tiny_data, "epochs": 1,
                                "batch_size": 64, "train_samples": 64, "test_samples": 20, "optimizer": "adamw",
                                "lr": 0.01, "out": str(tmp_path / "c")}))
    r = cli_runner.invoke(cli, ["train", "--config", str(conf), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs"] == 1
    conf.write_text(json.dumps({"model": "squeezenet1_1", "epoch": 2}))
    r = cli_runner.invoke(cli, ["train", "--config", str(conf)])
    assert r.exit_code != 0 and "unknown field 'epoch'" in r.output and "Traceback" not in r.output
    r = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir",
                                str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "nowhere" in r.output and "Traceback" not in r.output
    r = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--erase-prob", "2"])
    assert r.exit_code == 2 and "--erase-prob" in r.output and "0<=x<=1" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = cli_runner.invoke(cli, ["eval", str(bad)])
    assert r.exit_code == 1 and "bad.pt" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("size, small", [(28, True), (56, True), (72, True), (96, True), (97, False), (128, False)])
def test_small_input_stem_up_to_96_px(size, small):
    from pocketcnn.data import DataSpec
    from pocketcnn.train.engine import build_model

    spec = DataSpec("fashion-mnist", 10, 1, size, (0.5,), (0.25,), tuple("abcdefghij"))
    model = build_model(TrainConfig(model="mobilenet_v3_small"), spec)
    assert model.pocketcnn_build.kwargs["small_input"] is small
    with torch.no_grad():  # last feature maps: 4x4 or more from 56 px on (2x2 at 28)
        assert model.forward_features(torch.zeros(1, 1, size, size)).shape[-1] >= (4 if size >= 56 else 2)
    forced = build_model(TrainConfig(model="mobilenet_v3_small", model_kwargs={"small_input": not small}), spec)
    assert forced.pocketcnn_build.kwargs["small_input"] is (not small)  # the recipe's or user's choice wins


def test_warmup_is_at_most_a_tenth_of_a_short_run_and_one_epoch_of_a_long_one():
    from pocketcnn.train.engine import lr_factor, warmup_steps

    long_run = TrainConfig(epochs=30, warmup_epochs=1.0)
    assert warmup_steps(long_run, 100) == 100  # 1 epoch of 3,000 steps: unchanged for the long recipes
    for epochs, steps, warm in ((3, 100, 30), (1, 78, 7), (2, 78, 15)):
        assert warmup_steps(TrainConfig(epochs=epochs, warmup_epochs=1.0), steps) == warm
    f = lr_factor(TrainConfig(epochs=1, warmup_epochs=1.0), 78)
    assert f(6) < 1.0 and f(7) == pytest.approx(1.0) and f(77) < 0.01  # leaves warm-up, ends near zero


def test_a_short_run_gets_steps_and_no_augmentation_unless_told():
    cfg = TrainConfig.from_dict({"model": "squeezenet1_1", "batch_size": 64, "epochs": 1})
    short = cfg.for_run_length(5000)
    assert short.batch_size == 32 and short.augment == ()  # 78 steps at 64, 156 at 32
    assert cfg.for_run_length(5000, fixed={"batch_size", "augment"}) == cfg
    long_cfg = cfg.replace(epochs=10)
    assert long_cfg.for_run_length(60000) == long_cfg  # 9,370 steps, 10 epochs: untouched
    assert cfg.for_run_length(100).batch_size == 16  # never below MIN_BATCH
    # the family's short-run recipe: AlexNet's higher peak learning rate, unless the user set one
    alex = TrainConfig.from_dict({**recipe("alexnet"), "model": "alexnet", "epochs": 1})
    assert alex.lr == 2e-4 and alex.for_run_length(30000).lr == 1e-3
    assert alex.for_run_length(30000, fixed={"lr"}).lr == 2e-4 and alex.replace(epochs=3).for_run_length(30000).lr == 2e-4
    assert short.lr == cfg.lr  # SqueezeNet has no short recipe


def test_an_unready_ema_is_not_what_a_short_run_reports(tiny_data, tmp_path):
    """15 steps of EMA at decay 0.998 is far from its 500-step window: the raw weights are evaluated and
    exported, and the metrics say which."""
    fit(cfg(tiny_data, tmp_path, model="mobilenet_v3_small", epochs=1, ema=True, train_samples=128))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["ema"] is not None and ckpt["ema_ready"] is False
    assert ckpt["metrics"][-1]["evaluated"] == "raw"
    model = model_from_checkpoint(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][k])


def test_cli_short_run_says_what_it_changed(tiny_data, tmp_path, cli_runner):
    r = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data,
                                "--epochs", "1", "--train-samples", "320", "--test-samples", "40",
                                "--out", str(tmp_path / "r"), "-q"])
    assert r.exit_code == 0, r.output
    assert "batch_size=16 instead of 64" in r.stderr and "augment=() instead of ('crop', 'flip')" in r.stderr
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["batch_size"] == 16 and saved["augment"] == []


def test_the_short_run_rule_depends_on_the_run_not_on_a_flag():
    one_epoch = TrainConfig.from_dict({**recipe("squeezenet1_1"), "model": "squeezenet1_1", "epochs": 1})
    whole = one_epoch.decide_run_length(60000)  # all of Fashion-MNIST once: 937 steps, but each image seen once
    assert whole.short and whole.steps == 937 and whole.config.augment == () and whole.config.short_run == "on"
    assert one_epoch.replace(train_samples=60000).decide_run_length(60000).config == whole.config.replace(
        train_samples=60000)  # the same run with or without --train-samples
    assert whole.config.batch_size == 64  # 937 steps: enough, the batch stays
    assert "a short run (60,000 images x 1 epoch(s), 937 optimizer steps at batch 64; --short-run auto)" in whole.note()
    long_run = one_epoch.replace(epochs=10).decide_run_length(60000)
    assert not long_run.short and long_run.changed == () and long_run.config == one_epoch.replace(epochs=10,
                                                                                                    short_run="off")
    assert "not a short run" in long_run.note()
    few_steps = one_epoch.replace(epochs=3).decide_run_length(1000)  # 45 steps at 64: smaller batch, augmentation kept
    assert few_steps.short and few_steps.config.batch_size == 16 and few_steps.config.augment == ("crop", "flip")
    off = one_epoch.replace(short_run="off").decide_run_length(5000)
    assert not off.short and off.config == one_epoch.replace(short_run="off") and off.changed == ()
    alex = TrainConfig.from_dict({**recipe("alexnet"), "model": "alexnet", "epochs": 10, "short_run": "on"})
    forced = alex.decide_run_length(60000)
    assert forced.short and forced.config.lr == 1e-3 and forced.config.augment == () and forced.config.batch_size == 128
    with pytest.raises(ConfigError, match="short_run must be one of auto, on, off"):
        one_epoch.replace(short_run="maybe")


def test_cli_short_run_off_keeps_the_settings_and_records_the_decision(tiny_data, tmp_path, cli_runner):
    r = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data,
                                "--epochs", "1", "--test-samples", "40", "--short-run", "off",
                                "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "train: not a short run (320 images x 1 epoch(s), 5 optimizer steps at batch 64; --short-run off)" \
        in r.stderr
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["short_run"] == "off" and saved["batch_size"] == 64 and saved["augment"] == ["crop", "flip"]
    r = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", tiny_data,
                                "--epochs", "1", "--test-samples", "40", "--out", str(tmp_path / "auto"), "-q"])
    assert r.exit_code == 0, r.output  # no --train-samples: the rule still sees 320 images x 1 epoch
    assert "a short run (320 images" in r.stderr and "batch_size=16 instead of 64" in r.stderr
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["short_run"] == "on"
