"""Prediction from every model file type; every kind of bad input gives one error line, others still run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import pocketcnn
import pocketcnn.runtime.images as IMG
import pocketcnn.workflows.predict as P
from pocketcnn.artifacts.source import ModelSource
from pocketcnn.data.spec import imagenet_classes
from pocketcnn.export.onnx import export_onnx
from pocketcnn.workflows.predict import Prediction, load_image, load_predictor, to_model_mode
from pocketcnn.errors import CheckpointError, ConfigError, DataError
from pocketcnn.artifacts.checkpoint import save_checkpoint

KWARGS = {"num_classes": 10, "in_chans": 1, "small_input": True}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DATA = {"name": "fashion-mnist", "num_classes": 10, "in_chans": 1, "image_size": 28, "mean": [0.286],
        "std": [0.353], "classes": CLASSES}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint, its ONNX export, and images of many modes plus broken ones."""
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = pocketcnn.create_model("squeezenet1_1", **KWARGS).eval()
    ckpt = save_checkpoint(d / "m.pt", {"model": "squeezenet1_1", "model_kwargs": KWARGS,
                                        "state_dict": model.state_dict(), "data": DATA})
    src = ModelSource(model, "squeezenet1_1", KWARGS, DATA, ckpt)
    onnx_path = export_onnx(model, d / "m.onnx", input_size=(1, 28, 28), dynamic_batch=True,
                            metadata=src.metadata())
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    gray = rng.integers(0, 255, (28, 28), dtype=np.uint8)
    img = {}
    img["gray.png"] = Image.fromarray(gray)
    img["color.jpg"] = Image.fromarray(rgb)
    img["rgba.png"] = Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8))
    img["la.png"] = Image.fromarray(gray).convert("LA")
    img["palette.png"] = Image.fromarray(rgb).convert("P")
    img["cmyk.jpg"] = Image.fromarray(rgb).convert("CMYK")
    img["wide16.png"] = Image.fromarray((gray.astype(np.uint16) * 257))
    paths = {}
    for name, im in img.items():
        im.save(d / name)
        paths[name] = d / name
    (d / "notes.png").write_text("this is not an image\n")
    full = (d / "color.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    png = (d / "gray.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) - 30])
    return {"dir": d, "model": model, "ckpt": ckpt, "onnx": onnx_path, "images": paths}


def test_every_mode_is_converted_and_predicted(files):
    pred = load_predictor(files["ckpt"])
    images = list(files["images"].values())
    results = pred.predict(images, topk=3)
    assert [r.image for r in results] == [str(p) for p in images]
    for r in results:
        assert r.ok, r.error
        assert len(r.topk) == 3 and r.topk[0].prob >= r.topk[1].prob >= r.topk[2].prob
        assert all(t.label == CLASSES[t.index] for t in r.topk)
    assert to_model_mode(Image.new("RGBA", (4, 4)), 3).mode == "RGB"
    assert to_model_mode(Image.new("CMYK", (4, 4)), 1).mode == "L"


def test_checkpoint_and_onnx_predict_alike(files):
    images = [files["images"]["gray.png"], files["images"]["color.jpg"]]
    a = load_predictor(files["ckpt"]).predict(images)
    b = load_predictor(files["onnx"]).predict(images)
    for ra, rb in zip(a, b):
        assert [t.index for t in ra.topk[:1]] == [t.index for t in rb.topk[:1]]
        assert abs(ra.topk[0].prob - rb.topk[0].prob) < 1e-4
    # the preprocessing matches the training pipeline: gray 28x28 image -> normalized tensor
    x = torch.from_numpy(load_predictor(files["onnx"]).preprocess(files["images"]["gray.png"]))
    raw = torch.from_numpy(np.asarray(Image.open(files["images"]["gray.png"]), np.float32))
    assert torch.allclose(x[0], (raw / 255 - 0.286) / 0.353, atol=1e-5)


def test_pil_images_are_accepted(files):
    r = load_predictor(files["onnx"]).predict(Image.new("RGB", (50, 20), (200, 10, 10)))
    assert len(r) == 1 and r[0].ok and r[0].image == "<PIL image>"


def test_bad_images_get_errors_and_the_rest_still_run(files):
    d = files["dir"]
    images = [files["images"]["gray.png"], d / "missing.png", d / "notes.png", d / "truncated.jpg",
              d / "truncated.png", d, files["images"]["color.jpg"]]
    results = load_predictor(files["ckpt"]).predict(images)
    assert [r.ok for r in results] == [True, False, False, False, False, False, True]
    errors = [r.error for r in results if not r.ok]
    assert "no such file" in errors[0] and "missing.png" in errors[0]
    assert "not an image" in errors[1]
    assert "truncated.jpg" in errors[2] and "cannot decode" in errors[2]
    assert "truncated.png" in errors[3]
    assert "folder" in errors[4]
    assert all("\n" not in e for e in errors)


def test_decompression_bombs_are_refused(files, monkeypatch):
    pred = load_predictor(files["ckpt"])
    big = files["images"]["color.jpg"]  # 30x40 = 1200 pixels
    monkeypatch.setattr(IMG, "MAX_IMAGE_PIXELS", 1000)
    r = pred.predict([big, files["images"]["gray.png"]])  # 784 pixels passes
    assert not r[0].ok and "decompression bomb" in r[0].error and r[1].ok
    monkeypatch.setattr(IMG, "MAX_IMAGE_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL's own limit: warning (>500) and error (>1000)
    for path in (big, files["images"]["gray.png"]):
        with pytest.raises(DataError, match="decompression bomb"):
            load_image(path)


def test_unreadable_model_files(files, tmp_path):
    for name in ("bad.onnx", "bad.pt", "bad.pte", "bad.pt2", "bad.pcz"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_predictor(tmp_path / name)
    with pytest.raises(CheckpointError, match="no such model file"):
        load_predictor(tmp_path / "nothing.onnx")
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown model file type"):
        load_predictor(tmp_path / "m.h5")
    plain = export_onnx(files["model"], tmp_path / "plain.onnx", input_size=(1, 28, 28))
    with pytest.raises(CheckpointError, match="no pocketcnn metadata"):
        load_predictor(plain)


def test_fp32_models_run_on_the_fastest_runtime_by_default(files):
    """auto = the BN-folded graph in ONNX Runtime; its probabilities equal eager PyTorch's."""
    images = [files["images"]["gray.png"], files["images"]["color.jpg"], files["images"]["rgba.png"]]
    fast, eager = load_predictor(files["ckpt"]), load_predictor(files["ckpt"], runtime="torch")
    assert (fast.runtime, eager.runtime) == ("onnxruntime", "torch")
    assert load_predictor(files["ckpt"], runtime="onnxruntime").runtime == "onnxruntime"
    x = np.stack([eager.preprocess(i) for i in images])
    np.testing.assert_allclose(fast.runner.run(x), eager.runner.run(x), atol=1e-4, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(eager.runner.run(x), files["model"](torch.from_numpy(x)).numpy(), atol=1e-6)
    for a, b in zip(fast.predict(images), eager.predict(images)):
        assert [t.index for t in a.topk] == [t.index for t in b.topk]
    with pytest.raises(ConfigError, match="runtime must be one of auto, torch, onnxruntime"):
        load_predictor(files["ckpt"], runtime="tensorrt")


def test_auto_falls_back_to_eager_without_onnxruntime(files, monkeypatch):
    import pocketcnn.export.optimize as O

    monkeypatch.setattr(O, "_onnxruntime_available", lambda: False)
    assert load_predictor(files["ckpt"]).runtime == "torch"


def test_pt2_int8_onnx_and_pcz_predict(files, tmp_path):
    from pocketcnn.compress.quantize import quantize_onnx
    from pocketcnn.export.torch_formats import export_pt2

    img = [files["images"]["gray.png"]]
    ref = load_predictor(files["ckpt"]).predict(img)[0].topk[0].index
    int8 = quantize_onnx(files["onnx"], tmp_path / "m.int8.onnx",
                         [torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)).numpy()])
    assert load_predictor(int8).predict(img)[0].ok
    src = ModelSource(files["model"], "squeezenet1_1", KWARGS, DATA, None)
    pt2 = export_pt2(files["model"], tmp_path / "m.pt2", input_size=(1, 28, 28), metadata=src.metadata())
    assert load_predictor(pt2).predict(img)[0].topk[0].index == ref
    coding = pytest.importorskip("pocketcnn.compress.coding")
    pcz = tmp_path / "m.pcz"
    coding.save_pcz(pcz, files["model"], metadata={"data": DATA})
    r = load_predictor(pcz).predict(img)[0]
    assert r.topk[0].index == ref and r.topk[0].label == CLASSES[ref]
    assert load_predictor(pcz, runtime="torch").predict(img)[0].topk[0].index == ref


def test_three_channel_model_takes_gray_images(files, tmp_path):
    data = {**DATA, "name": "cifar10", "in_chans": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    model = pocketcnn.create_model("mobilenet_v3_small", num_classes=10, in_chans=3, small_input=True)
    ckpt = save_checkpoint(tmp_path / "c.pt", {"model": "mobilenet_v3_small",
                                               "model_kwargs": {**KWARGS, "in_chans": 3},
                                               "state_dict": model.state_dict(), "data": data})
    pred = load_predictor(ckpt)
    assert pred.preprocess(files["images"]["gray.png"]).shape == (3, 32, 32)
    assert all(r.ok for r in pred.predict([files["images"]["gray.png"], files["images"]["rgba.png"]]))


def test_prediction_json_shape():
    ok = Prediction("a.png", [P.TopK(3, "Dress", 0.5)])
    assert ok.to_dict() == {"image": "a.png", "topk": [{"index": 3, "label": "Dress", "prob": 0.5}]}
    assert Prediction("b.png", error="b.png: no such file").to_dict() == {"image": "b.png", "error": "b.png: no such file"}


def test_cli_predict_json_and_exit_status(files, cli_runner):
    from pocketcnn.cli import cli

    good = [str(files["images"]["gray.png"]), str(files["images"]["color.jpg"])]
    res = cli_runner.invoke(cli, ["predict", str(files["onnx"]), *good, "--topk", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [o["image"] for o in out] == good
    for o in out:
        assert set(o) == {"image", "topk"} and len(o["topk"]) == 2
        assert all(set(t) == {"index", "label", "prob"} and 0 <= t["prob"] <= 1 for t in o["topk"])
    bad = str(files["dir"] / "notes.png")
    res = cli_runner.invoke(cli, ["predict", str(files["ckpt"]), good[0], bad, "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert "topk" in out[0] and set(out[1]) == {"image", "error"} and out[1]["image"] == bad


def test_cli_predict_table_and_errors(files, cli_runner, tmp_path):
    from pocketcnn.cli import cli

    missing = str(files["dir"] / "missing.png")
    res = cli_runner.invoke(cli, ["predict", str(files["ckpt"]), str(files["images"]["gray.png"]), missing])
    assert res.exit_code == 1
    assert "gray.png" in res.stdout and "probability" in res.stdout
    assert "no such file" in res.stderr and "1 of 2 images failed" in res.stderr
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    res = cli_runner.invoke(cli, ["predict", str(tmp_path / "bad.onnx"), missing])
    assert res.exit_code == 1 and "bad.onnx" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_predict_text_keeps_brackets_in_names(files, cli_runner, tmp_path):
    """Text mode prints paths and errors as they are: rich took ``[red]`` or ``[litert]`` for a style and dropped it."""
    import shutil

    from pocketcnn.cli import cli

    photo = tmp_path / "shirt[1].png"
    shutil.copy(files["images"]["gray.png"], photo)
    missing = tmp_path / "[red]gone.png"
    res = cli_runner.invoke(cli, ["predict", str(files["onnx"]), str(photo), str(missing)])
    assert res.exit_code == 1
    assert str(photo) in res.stdout
    assert any(line.startswith("error ") and str(missing) in line for line in res.stderr.splitlines()), res.stderr


def test_cli_predict_name_with_imagenet_weights(files, tmp_path, cli_runner):
    from pocketcnn.cli import cli

    weights = tmp_path / "sq.pth"
    torch.save(pocketcnn.create_model("squeezenet1_1").state_dict(), weights)
    res = cli_runner.invoke(cli, ["predict", "squeezenet1_1", str(files["images"]["color.jpg"]), "--weights",
                                  str(weights), "--json", "--topk", "3"])
    assert res.exit_code == 0, res.output
    top = json.loads(res.stdout)[0]["topk"]
    names = imagenet_classes()
    assert len(top) == 3 and all(t["label"] == names[t["index"]] for t in top)


def test_cli_predict_runtime_choice(files, cli_runner):
    from pocketcnn.cli import cli

    img = str(files["images"]["color.jpg"])
    outs = {}
    for rt in ("auto", "torch", "onnxruntime"):
        res = cli_runner.invoke(cli, ["predict", str(files["ckpt"]), img, "--runtime", rt, "--json", "--topk", "3"])
        assert res.exit_code == 0, res.output
        outs[rt] = json.loads(res.stdout)[0]["topk"]
    assert [t["index"] for t in outs["auto"]] == [t["index"] for t in outs["torch"]] == [t["index"] for t in outs["onnxruntime"]]
    assert abs(outs["auto"][0]["prob"] - outs["torch"][0]["prob"]) < 1e-5
    res = cli_runner.invoke(cli, ["predict", str(files["ckpt"]), img, "--runtime", "tensorrt"])
    assert res.exit_code == 2 and "tensorrt" in res.stderr


def test_imagenet_weights_use_torchvisions_resize_256_center_crop_224(tmp_path):
    """The predictor (and the ONNX file exported from the same weights) resize the shorter side to
    256 and center-crop 224, as torchvision's ImageNet weights were evaluated."""
    from torchvision.transforms import v2

    from pocketcnn.artifacts.source import load_model_source
    from pocketcnn.export.exporter import export_model

    weights = tmp_path / "sq.pth"
    torch.save(pocketcnn.create_model("squeezenet1_1").state_dict(), weights)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    ref = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor(),
                      v2.ToDtype(torch.float32, scale=True),
                      v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(img)
    source = load_model_source("squeezenet1_1", weights)
    x = torch.from_numpy(P.predictor_from_source(source, runtime="torch").preprocess(img))
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    onnx_path = export_model(source, tmp_path / "sq.onnx", format="onnx", verify_n=1).path
    torch.testing.assert_close(torch.from_numpy(load_predictor(onnx_path).preprocess(img)), ref, atol=1e-5, rtol=0)
