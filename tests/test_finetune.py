"""Fine-tuning from pretrained weights (issue #22). No real pretrained file is on this machine: the weight
files are saved from torchvision's own constructors (random initialisation); the mechanics are what
is tested."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision
from PIL import Image

import pocketcnn
from pocketcnn.artifacts.checkpoint import load_checkpoint
from pocketcnn.cli import cli
from pocketcnn.errors import CheckpointError, ConfigError
from pocketcnn.models import registry
from pocketcnn.train.config import TrainConfig
from pocketcnn.train.engine import Interrupted, fit, make_optimizer, setup_run
from pocketcnn.train.finetune import adapt_input_conv
from test_train import _SignalAt, _states_equal


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    """torchvision's squeezenet1_1 and mobilenet_v3_small state dicts (random init), as .pth files."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    out = {}
    for name in ("squeezenet1_1", "mobilenet_v3_small"):
        out[name] = d / f"{name}.pth"
        torch.save(getattr(torchvision.models, name)().state_dict(), out[name])
    return out


def ft_cfg(tiny_data, tmp_path, weights, **kw) -> TrainConfig:
    base = dict(model="squeezenet1_1", data="mnist", data_dir=tiny_data, epochs=1, batch_size=32, lr=1e-3,
                optimizer="adamw", weights=str(weights), input_size=64, train_samples=64, test_samples=32,
                out=str(tmp_path / "ft"), augment=())
    return TrainConfig.from_dict({**base, **kw})


def test_strict_loading_except_the_new_head_and_the_adapted_stem(tiny_data, tmp_path, tv_weights):
    state = setup_run(ft_cfg(tiny_data, tmp_path, tv_weights["squeezenet1_1"]), save=False)
    theirs = torch.load(tv_weights["squeezenet1_1"], weights_only=True)
    mine = state.core.state_dict()
    assert mine["classifier.1.weight"].shape == (10, 512, 1, 1)  # re-initialised for 10 classes
    torch.testing.assert_close(mine["features.0.weight"], theirs["features.0.weight"].sum(1, keepdim=True))
    for k, v in theirs.items():
        if not k.startswith(("classifier.1.", "features.0.weight")):
            assert torch.equal(mine[k], v), k
    assert state.spec.image_size == 64 and state.spec.in_chans == 1  # --input-size wins over the weights' 224
    assert state.spec.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))  # ImageNet's, averaged for gray
    assert not state.core.features[0].stride == (1, 1)  # the ImageNet stem, not the small-input one
    assert any("re-initialised for 10 classes" in n for n in state.notes)
    assert any("adapted from 3 to 1 input channel" in n for n in state.notes)


def test_a_mismatch_elsewhere_names_the_layer_and_both_shapes(tiny_data, tmp_path, tv_weights):
    bad = torch.load(tv_weights["squeezenet1_1"], weights_only=True)
    bad["features.3.squeeze.weight"] = torch.zeros(8, 64, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"layer features.3.squeeze.weight is \[8, 64, 1, 1\] in the weights, "
                                              r"\[16, 64, 1, 1\] in the model"):
        setup_run(ft_cfg(tiny_data, tmp_path, tmp_path / "bad.pth"), save=False)
    with pytest.raises(CheckpointError, match="weights do not fit squeezenet1_1: missing"):
        setup_run(ft_cfg(tiny_data, tmp_path, tv_weights["mobilenet_v3_small"]), save=False)


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v3_small"])
def test_in_chans_adaptation_gives_equal_outputs(name):
    torch.manual_seed(0)
    rgb = pocketcnn.create_model(name, num_classes=10).eval()
    gray = pocketcnn.create_model(name, num_classes=10, in_chans=1).eval()
    conv = registry.model_config(name).first_conv + ".weight"
    state = dict(rgb.state_dict())
    state[conv] = adapt_input_conv(state[conv], 1)
    gray.load_state_dict(state)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)
    # and back: 1 -> 3 channels (repeated, scaled by 1/3) on a gray image repeated to RGB
    back = pocketcnn.create_model(name, num_classes=10).eval()
    state = dict(gray.state_dict())
    state[conv] = adapt_input_conv(state[conv], 3)
    back.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(back(x.repeat(1, 3, 1, 1)), gray(x), atol=1e-5, rtol=1e-4)


def test_frozen_features_stay_bit_identical_and_get_no_gradient(tiny_data, tmp_path, tv_weights):
    cfg = ft_cfg(tiny_data, tmp_path, tv_weights["mobilenet_v3_small"], model="mobilenet_v3_small", freeze="features")
    model = pocketcnn.create_model("mobilenet_v3_small", num_classes=10, in_chans=1)
    res = fit(cfg, model=model)
    ckpt = load_checkpoint(res.checkpoint)
    start = setup_run(cfg, save=False).core.state_dict()  # the same pretrained start, before training
    changed = [k for k, v in ckpt["state_dict"].items() if not torch.equal(v, start[k])]
    assert changed and all(k.startswith("classifier.") for k in changed)  # BN statistics included: eval mode
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("classifier."))
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("classifier."))
    assert ckpt["config"]["freeze"] == "features" and ckpt["config"]["weights"] == str(tv_weights["mobilenet_v3_small"])


def test_lr_features_makes_two_learning_rates(tiny_data, tmp_path, tv_weights):
    cfg = ft_cfg(tiny_data, tmp_path, tv_weights["squeezenet1_1"], lr_features=0.1, weight_decay=0.05)
    model = pocketcnn.create_model("squeezenet1_1", num_classes=10, in_chans=1)
    groups = {g["name"]: g for g in make_optimizer(cfg, model).param_groups}
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["body"]["lr"] == pytest.approx(1e-4)
    assert groups["body (no decay)"]["weight_decay"] == 0 and groups["body"]["weight_decay"] == 0.05
    head = {id(p) for g in ("head", "head (no decay)") for p in groups[g]["params"]}
    assert head == {id(p) for p in model.classifier.parameters()}
    with pytest.raises(ConfigError, match="freeze='features' keeps pretrained features: it needs weights"):
        TrainConfig(freeze="features")


def test_resuming_a_fine_tune_equals_the_uninterrupted_run(tiny_data, tmp_path, tv_weights):
    kw = dict(epochs=2, train_samples=128, lr_features=0.1)  # 4 steps per epoch
    full = fit(ft_cfg(tiny_data, tmp_path / "a", tv_weights["squeezenet1_1"], **kw))
    c = ft_cfg(tiny_data, tmp_path / "b", tv_weights["squeezenet1_1"], **kw)
    with pytest.raises(Interrupted):
        fit(c, _SignalAt(epoch=2, step=2))
    resumed = fit(c, resume=tmp_path / "b" / "ft" / "last.pt")
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert _states_equal(a["state_dict"], b["state_dict"])
    assert b["config"]["lr_features"] == 0.1 and b["config"]["weights"] == str(tv_weights["squeezenet1_1"])


def test_named_weights_are_found_by_name_and_checked_by_hash(tmp_path, tv_weights, monkeypatch):
    from pocketcnn.models.weights import sha256_of

    cfg = registry.model_config("squeezenet1_1")
    entry = cfg.weights[0]
    folder = tmp_path / "hub"
    folder.mkdir()
    # the expected path is named when the file is missing
    with pytest.raises(CheckpointError, match=rf"{folder / entry.filename}: .*put torchvision's file "
                                              rf"{entry.filename} there"):
        pocketcnn.create_model("squeezenet1_1", weights="IMAGENET1K_V1", weights_dir=folder)
    # a file of the right name but other content is refused by its hash
    (folder / entry.filename).write_bytes(tv_weights["squeezenet1_1"].read_bytes())
    with pytest.raises(CheckpointError, match=r"SHA-256 [0-9a-f]{12}\.\.\. does not match weights squeezenet1_1 "
                                              r"IMAGENET1K_V1 \(expected b8a52dc0"):
        pocketcnn.create_model("squeezenet1_1", weights="IMAGENET1K_V1", weights_dir=folder)
    # the right hash: loaded, with the preprocessing that travels with it
    real = dataclasses.replace(entry, sha256=sha256_of(folder / entry.filename)[:8])
    monkeypatch.setitem(registry._REGISTRY, "squeezenet1_1", dataclasses.replace(cfg, weights=(real,)))
    model = pocketcnn.create_model("squeezenet1_1", weights="IMAGENET1K_V1", weights_dir=folder)
    assert model.pocketcnn_build.weights.spec.resize_size == 256
    assert torch.equal(model.state_dict()["features.0.weight"],
                       torch.load(tv_weights["squeezenet1_1"], weights_only=True)["features.0.weight"])
    with pytest.raises(ConfigError, match="has no weights named 'IMAGENET1K_V9'"):
        pocketcnn.create_model("squeezenet1_1", weights="IMAGENET1K_V9")


def test_image_folder_with_a_val_split_end_to_end(tmp_path, tv_weights, cli_runner):
    root = tmp_path / "photos"
    gen = torch.Generator().manual_seed(0)
    for c, colour in enumerate(("red", "green", "blue")):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(10):
            img = Image.new("RGB", (40 + i, 36), colour)
            noise = (torch.rand(36, 40 + i, 3, generator=gen) * 60).to(torch.uint8).numpy()
            Image.fromarray(noise).save(root / "tmp.png")
            Image.blend(img, Image.open(root / "tmp.png").convert("RGB"), 0.3).save(root / f"class{c}" / f"{i}.png")
    (root / "tmp.png").unlink()
    out = tmp_path / "run"
    res = cli_runner.invoke(cli, ["train", "--model", "squeezenet1_1", "--data", "imagefolder", "--data-dir", str(root),
                                  "--weights", str(tv_weights["squeezenet1_1"]), "--val-split", "0.2",
                                  "--input-size", "48", "--epochs", "1", "--batch-size", "8", "--lr-features", "0.1",
                                  "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "started from the weight file" in res.stderr and "re-initialised for 3 classes" in res.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["val_split"] == 0.2 and saved["lr_features"] == 0.1
    assert load_checkpoint(out / "last.pt")["metrics"][0]["test_images"] == 6  # 2 of each class's 10, held out
    ev = cli_runner.invoke(cli, ["eval", str(out / "last.pt"), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["n"] == 6  # eval uses the run's own held-out images
    exp = cli_runner.invoke(cli, ["export", str(out / "last.pt"), "--verify-samples", "2", "--json"])
    assert exp.exit_code == 0, exp.output
    pred = cli_runner.invoke(cli, ["predict", str(out / "last.onnx"), str(root / "class0" / "0.png"), "--json"])
    assert pred.exit_code == 0 and json.loads(pred.stdout)[0]["topk"][0]["label"] in ("class0", "class1", "class2")


def test_weights_command_lists_every_torchvision_compatible_model(cli_runner):
    res = cli_runner.invoke(cli, ["weights", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert {r["model"] for r in rows} == {n for n in pocketcnn.list_models() if registry.model_config(n).torchvision}
    sq = next(r for r in rows if r["model"] == "squeezenet1_1")
    assert sq["file"] == "squeezenet1_1-b8a52dc0.pth" and sq["sha256"] == "b8a52dc0" and sq["imagenet_top1"] == 58.178
