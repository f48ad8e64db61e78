"""Every registered model: shapes, exact parameter counts, gradients, torchvision parity."""
import pytest
import torch
import torchvision

import pocketcnn
from pocketcnn import create_model, list_models, model_config
from pocketcnn.errors import ConfigError, UnknownModelError

ALL = list_models()

# The papers' and torchvision's numbers (docs/design.md), at 1000 classes.
PARAMS = {
    "alexnet": 61_100_840,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
}
# width aliases: the paper's 2.6M / 1.3M / 0.5M (with batch norm)
PARAMS_APPROX = {"mobilenet_v1_075": 2.6e6, "mobilenet_v1_050": 1.3e6, "mobilenet_v1_025": 0.5e6}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_every_family():
    assert set(PARAMS) | set(PARAMS_APPROX) == set(ALL)
    assert list_models("squeezenet*") == ["squeezenet1_0", "squeezenet1_1"]
    assert list_models(["alexnet", "mobilenet_v3_*"]) == ["alexnet", "mobilenet_v3_large", "mobilenet_v3_small"]


@pytest.mark.parametrize("name", ALL)
def test_param_count(name):
    m = create_model(name)
    if name in PARAMS:
        assert n_params(m) == PARAMS[name]
    else:
        assert abs(n_params(m) - PARAMS_APPROX[name]) / PARAMS_APPROX[name] < 0.1


def test_mobilenet_v1_params_without_bn():
    m = create_model("mobilenet_v1")
    bn = sum(p.numel() for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in mod.parameters())
    assert n_params(m) - bn == 4_210_088


@pytest.mark.parametrize("name", ALL)
def test_forward_224_and_surface(name):
    m = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = m.forward_features(x)
        out = m.forward_head(feats)
    assert feats.shape[:2] == (2, m.num_features)
    assert out.shape == (2, 7) and m.num_classes == 7
    assert torch.isfinite(out).all()
    m.reset_classifier(3)
    assert m.num_classes == 3
    with torch.no_grad():
        assert m(x[:1]).shape == (1, 3)


# AlexNet's 11x11/4 stem and three pools need >= 63 px: at 28/32 only its small_input stem works
SMALL_CASES = [(n, s) for n in ALL for s in (False, True) if s or n != "alexnet"]


@pytest.mark.parametrize("name, small_input", SMALL_CASES)
def test_small_images_gradients_reach_every_parameter(name, small_input):
    m = create_model(name, num_classes=10, in_chans=1, small_input=small_input)
    m.train()
    for size in (28, 32):
        x = torch.randn(4, 1, size, size)
        out = m(x)
        assert out.shape == (4, 10)
        assert torch.isfinite(out).all()
    m.zero_grad()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert any(p.grad.abs().sum() > 0 for p in m.parameters())


def test_small_input_keeps_detail():
    # the small-image stems keep a spatial map instead of collapsing 28x28 to 1x1
    for name in ("squeezenet1_1", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "alexnet"):
        m = create_model(name, in_chans=1, small_input=True).eval()
        with torch.no_grad():
            f = m.forward_features(torch.zeros(1, 1, 28, 28))
        assert f.shape[-1] >= 2, name


@pytest.mark.parametrize("name", [n for n in ALL if model_config(n).torchvision])
def test_torchvision_state_dict_parity(name):
    tv = getattr(torchvision.models, model_config(name).torchvision)().eval()
    ours = create_model(name).eval()
    sd = tv.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - tv(x)).abs().max() <= 1e-5


def test_load_weights_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    tv = torchvision.models.squeezenet1_1().eval()
    torch.save(tv.state_dict(), tmp_path / "w.pth")
    save_file(tv.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, 224, 224)
    for f in ("w.pth", "w.safetensors"):
        m = pocketcnn.load_weights(create_model("squeezenet1_1"), tmp_path / f).eval()
        with torch.no_grad():
            assert (m(x) - tv(x)).abs().max() <= 1e-5


def test_load_weights_refuses_pickled_code(tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(pocketcnn.errors.CheckpointError, match="evil.pth"):
        pocketcnn.load_weights(create_model("squeezenet1_1"), tmp_path / "evil.pth")
    assert not marker.exists()


def test_load_weights_shape_mismatch_names_the_tensor(tmp_path):
    torch.save(create_model("squeezenet1_1", num_classes=10).state_dict(), tmp_path / "w.pth")
    with pytest.raises(pocketcnn.errors.CheckpointError, match="classifier.1.weight"):
        pocketcnn.load_weights(create_model("squeezenet1_1"), tmp_path / "w.pth")


def test_squeezenet_design_space_defaults_are_1_0():
    from pocketcnn.models.squeezenet import fire_widths

    assert fire_widths() == [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
                             (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]
    m = create_model("squeezenet1_0", base_e=128, incr_e=128, pct3x3=0.5, freq=2, squeeze_ratio=0.125)
    assert n_params(m) == PARAMS["squeezenet1_0"]
    # the paper's Figure 6 knob: fewer 3x3 filters, fewer weights
    assert n_params(create_model("squeezenet1_0", pct3x3=0.25)) < PARAMS["squeezenet1_0"]
    assert n_params(create_model("squeezenet1_0", squeeze_ratio=0.75)) > PARAMS["squeezenet1_0"]


def test_squeezenet_final_relu_off_keeps_weights_and_lets_logits_go_negative():
    torch.manual_seed(0)
    paper = pocketcnn.create_model("squeezenet1_1", num_classes=10, in_chans=1, small_input=True).eval()
    free = pocketcnn.create_model("squeezenet1_1", num_classes=10, in_chans=1, small_input=True, final_relu=False).eval()
    free.load_state_dict(paper.state_dict(), strict=True)  # same keys and shapes: the ReLU has no weights
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        a, b = paper(x), free(x)
        pre = free.forward_head(free.forward_features(x))
    assert (a >= 0).all() and (b < 0).any()
    # the paper's head averages ReLU(conv10) over the map; without the ReLU, conv10 itself
    conv = free.classifier[1]
    with torch.no_grad():
        maps = conv(free.forward_features(x))
    torch.testing.assert_close(a, maps.clamp_min(0).mean((2, 3)))
    torch.testing.assert_close(pre, maps.mean((2, 3)))
    assert sum(p.numel() for p in free.parameters()) == sum(p.numel() for p in paper.parameters())


def test_squeezenet_bypass_variants():
    plain = create_model("squeezenet1_0")
    simple = create_model("squeezenet1_0", bypass="simple")
    complex_ = create_model("squeezenet1_0", bypass="complex")
    # simple bypass adds no parameters; complex adds 1x1 convs around fire2, 4, 6, 8
    assert n_params(simple) == n_params(plain)
    extra = (96 * 128 + 128) + (128 * 256 + 256) + (256 * 384 + 384) + (384 * 512 + 512)
    assert n_params(complex_) == n_params(plain) + extra
    assert len(simple.bypass) == 4 and len(complex_.bypass) == 8
    x = torch.randn(1, 3, 224, 224)
    for m in (simple, complex_):
        assert m.eval()(x).shape == (1, 1000)
    # identity shortcut really is added: same weights, different output
    simple.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not torch.allclose(simple.eval()(x), plain.eval()(x))


def test_mobilenet_v1_width_any_float():
    m = create_model("mobilenet_v1", width_mult=0.6, num_classes=10)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert create_model("mobilenet_v1_050").num_features == 512


@pytest.mark.parametrize("bad, match", [
    (dict(name="squeezenet1_2"), "squeezenet1_2.*Did you mean: squeezenet1_1"),
    (dict(name="mobilenet_v1", widht_mult=0.5), "widht_mult.*Did you mean: width_mult"),
    (dict(name="mobilenet_v1", width_mult=-1), "width_mult=-1"),
    (dict(name="squeezenet1_0", bypass="both"), "bypass='both'"),
    (dict(name="alexnet", num_classes=0), "num_classes=0"),
])
def test_bad_names_and_keywords(bad, match):
    name = bad.pop("name")
    with pytest.raises((UnknownModelError, ConfigError), match=match):
        create_model(name, **bad)
