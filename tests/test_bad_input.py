"""The bad-input corpus (issue #18): every case is one line on stderr naming the problem, a non-zero
exit status, and no traceback. Files are made once per module; no case trains anything."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import pytest
from PIL import Image

import pocketcnn
from pocketcnn.artifacts.checkpoint import save_checkpoint
from pocketcnn.cli import cli
from pocketcnn.data.spec import DataSpec

KWARGS = {"num_classes": 10, "in_chans": 1, "small_input": True}
DATA = DataSpec("mnist", 10, 1, 28, (0.2860,), (0.3530,), tuple(str(i) for i in range(10)))


class Evil:
    def __reduce__(self):  # what a malicious pickle does: run code on load
        return (print, ("pwned",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    model = pocketcnn.create_model("squeezenet1_1", **KWARGS)
    good = save_checkpoint(d / "good.pt", {"model": "squeezenet1_1", "model_kwargs": KWARGS,
                                           "state_dict": model.state_dict(), "data": DATA.to_dict()})
    raw = good.read_bytes()
    files = {"good": good, "folder": d / "folder"}
    files["folder"].mkdir()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "garbage.pt").write_bytes(b"\x00garbage" * 64)
    (d / "empty.pt").write_bytes(b"")
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    save_checkpoint(d / "nodata.pt", {"model": "squeezenet1_1", "model_kwargs": KWARGS, "state_dict": model.state_dict()})
    save_checkpoint(d / "unknown_model.pt", {"model": "squeezenet9", "model_kwargs": {}, "state_dict": {}, "data": DATA.to_dict()})
    save_checkpoint(d / "bad_kwargs.pt", {"model": "squeezenet1_1", "model_kwargs": {"colour": 3}, "state_dict": {},
                                          "data": DATA.to_dict()})
    save_checkpoint(d / "huge.pt", {"model": "mobilenet_v1", "model_kwargs": {**KWARGS, "width_mult": 200},
                                    "state_dict": {}, "data": DATA.to_dict()})
    torch_free = {"format": "pocketcnn-checkpoint", "version": 99, "model": "x", "model_kwargs": {}, "state_dict": {}}
    import torch

    torch.save(torch_free, d / "newer.pt")
    Image.new("RGB", (9, 9), "red").save(d / "image.png")
    (d / "image.onnx").write_bytes((d / "image.png").read_bytes())  # a PNG named .onnx
    (d / "garbage.pcz").write_bytes(b"PCZ1" + b"\x01\x00" + b"\x00" * 20)
    (d / "notpcz.pcz").write_bytes(b"hello world, not a pcz file")
    (d / "garbage.pte").write_bytes(b"not a program at all")
    (d / "garbage.pt2").write_bytes(b"PK\x03\x04 broken zip")
    (d / "model.xyz").write_bytes(b"?")
    (d / "bad.json").write_text("{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "unknown_field.json").write_text('{"model": "squeezenet1_1", "epochz": 3}')
    idx = d / "idx"
    idx.mkdir()
    for stem, shape in (("train-images-idx3-ubyte", (4, 28, 28)), ("train-labels-idx1-ubyte", (4,)),
                        ("t10k-images-idx3-ubyte", (4, 28, 28)), ("t10k-labels-idx1-ubyte", (4,))):
        header = struct.pack(">I", 2048 + len(shape)) + b"".join(struct.pack(">I", n) for n in shape)
        with gzip.open(idx / f"{stem}.gz", "wb") as f:
            f.write(header + b"\x01" * 10)  # truncated body
    files.update({p.name: p for p in d.iterdir()})
    return files


def F(name: str):
    """A placeholder for a corpus file's path."""
    return ("file", name)


CASES = [
    # (id, argv with F(...) placeholders, substring of the one-line error)
    ("unknown-model", ["inspect", "mobilenet_v2x"], "Did you mean: mobilenet_v2"),
    ("unknown-model-train", ["train", "--model", "squeezenet11"], "unknown model 'squeezenet11'"),
    ("bad-model-arg", ["train", "--model", "squeezenet1_1", "--model-arg", "colour=3", "--out", F("folder")],
     "takes no keyword 'colour'"),
    ("model-arg-syntax", ["train", "--model", "squeezenet1_1", "--model-arg", "colour"], "expects KEY=VALUE"),
    ("bad-width", ["inspect", "mobilenet_v1", "--width", "-1"], "width"),
    ("config-not-json", ["train", "--config", F("bad.json")], "not valid JSON"),
    ("config-not-object", ["train", "--config", F("list.json")], "expected a JSON object"),
    ("config-unknown-field", ["train", "--config", F("unknown_field.json")], "unknown field 'epochz'"),
    ("missing-data-dir", ["train", "--model", "squeezenet1_1", "--data", "cifar10", "--data-dir", "/nonexistent/dir"],
     "no such folder"),
    ("truncated-idx", ["train", "--model", "squeezenet1_1", "--data", "mnist", "--data-dir", F("idx")], "truncated"),
    ("eval-missing", ["eval", "/nonexistent/x.pt"], "no such checkpoint"),
    ("eval-truncated", ["eval", F("truncated.pt")], "not a readable checkpoint"),
    ("eval-garbage", ["eval", F("garbage.pt")], "not a readable checkpoint"),
    ("eval-empty", ["eval", F("empty.pt")], "not a readable checkpoint"),
    ("eval-evil-pickle", ["eval", F("evil.pt")], "not a readable checkpoint"),
    ("eval-png", ["eval", F("image.png")], "PNG image"),
    ("eval-newer", ["eval", F("newer.pt")], "newer than this pocketcnn reads"),
    ("eval-no-data", ["eval", F("nodata.pt")], "no data set recorded"),
    ("eval-unknown-model", ["eval", F("unknown_model.pt")], "unknown model 'squeezenet9'"),
    ("compress-bad-kwargs", ["compress", F("bad_kwargs.pt"), "--probe-samples", "0"], "no data description"),
    ("predict-bad-kwargs", ["predict", F("bad_kwargs.pt"), F("image.png")], "colour"),
    ("export-huge", ["export", F("huge.pt")], "parameters; refused"),
    ("export-png-as-onnx", ["export", F("image.onnx")], "exported model cannot be exported"),
    ("export-bad-opset", ["export", F("good"), "--opset", "99"], "99"),
    ("export-bad-suffix", ["export", F("good"), "--out", "model.txt"], "must end in .onnx"),
    ("quantize-bad-calib", ["quantize", F("good"), "--calib-data", "imagenet21k"], "no local reader"),
    ("predict-png-as-onnx", ["predict", F("image.onnx"), F("image.png")], "not a readable ONNX model"),
    ("predict-garbage-pcz", ["predict", F("garbage.pcz"), F("image.png")], "pcz"),
    ("predict-not-pcz", ["predict", F("notpcz.pcz"), F("image.png")], "not a .pcz file"),
    ("predict-garbage-pte", ["predict", F("garbage.pte"), F("image.png")], "not an ExecuTorch program"),
    ("predict-garbage-pt2", ["predict", F("garbage.pt2"), F("image.png")], "not a readable torch.export archive"),
    ("predict-unknown-suffix", ["predict", F("model.xyz"), F("image.png")], "unknown model file type"),
    ("predict-evil-pickle", ["predict", F("evil.pt"), F("image.png")], "not a readable checkpoint"),
    ("predict-huge", ["predict", F("huge.pt"), F("image.png")], "parameters; refused"),
    ("predict-bad-topk", ["predict", F("good"), F("image.png"), "--topk", "0"], "topk"),
    ("predict-name-no-weights", ["predict", "squeezenet1_1", F("image.png")], "needs --weights"),
    ("predict-bad-weights", ["predict", "squeezenet1_1", "--weights", F("garbage.pt"), F("image.png")],
     "not a readable weight file"),
    ("serve-not-onnx", ["serve", F("good")], "needs an .onnx file"),
    ("serve-missing", ["serve", "/nonexistent/m.onnx"], "m.onnx"),
    ("bench-bad-runtime", ["bench", "squeezenet1_1", "--runtimes", "tensorrt"], "unknown runtime 'tensorrt'"),
    ("bench-bad-batches", ["bench", "squeezenet1_1", "--batch-sizes", "0,a"], "positive integers"),
    ("demo-bad-model", ["demo", "--models", "alexnet,lenet"], "unknown model 'lenet'"),
]


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(argv, expected, corpus, cli_runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(corpus[a[1]]) if isinstance(a, tuple) else a for a in argv]
    res = cli_runner.invoke(cli, args)
    assert res.exit_code not in (0, None), res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit), \
        res.output
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, res.output
    assert expected in lines[0], lines[0]
    assert "weights_only" not in res.output  # never torch's advice to unpickle an untrusted file


def test_a_bad_image_is_its_own_record_the_others_still_predict(corpus, cli_runner, tmp_path):
    import json

    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 Mpixel in a few KB: over the 64 Mpixel limit
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(corpus["image.png"].read_bytes()[:40])
    args = ["predict", str(corpus["good"]), str(corpus["image.png"]), str(bomb), str(truncated),
            str(tmp_path / "missing.png"), str(corpus["folder"]), str(corpus["bad.json"]), "--json", "--runtime", "torch"]
    res = cli_runner.invoke(cli, args)
    assert res.exit_code == 1
    records = json.loads(res.stdout)
    assert "topk" in records[0] and len(records) == 6
    errors = [r["error"] for r in records[1:]]
    for err, expected in zip(errors, ("decompression bomb", "not an image", "no such file", "is a folder",
                                      "not an image")):
        assert expected in err, err


def test_number_limits_read_as_typed():
    """A refused number states its limits as a user would type them (1000000, not 1e+06)."""
    from pocketcnn.errors import ConfigError
    from pocketcnn.serve.settings import ServeSettings
    from pocketcnn.validate import check_number

    with pytest.raises(ConfigError, match=r"^max_wait_ms must be a number in \[0, 1000000\), received max_wait_ms=2000000\.0$"):
        ServeSettings(model_path="m.onnx", max_wait_ms=2e6)
    with pytest.raises(ConfigError, match=r"^p must be a number in \(0, 0\.5\], received p=0\.7$"):
        check_number("p", 0.7, 0, 0.5, low_open=True)
    with pytest.raises(ConfigError, match=r"^lr must be a number >= 1e-08, received lr=0$"):
        check_number("lr", 0, 1e-8)
