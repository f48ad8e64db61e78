"""Make the inputs of the light tests in the MAIN environment (with PyTorch).

    python tests/light/prepare.py FOLDER

writes ``FOLDER/model.onnx`` (SqueezeNet 1.1, 1x28x28, 10 Fashion-MNIST classes, random
weights), ``FOLDER/images/*`` (PNG images of several modes and sizes, plus two broken
files) and ``FOLDER/expected.json`` (the ``pocketcnn predict --json`` records computed
the torch way, see :func:`torch_records`), then prints the three environment variables the light tests read::

    POCKETCNN_LIGHT_MODEL=... POCKETCNN_LIGHT_IMAGES=... POCKETCNN_LIGHT_EXPECTED=...

``tests/test_runtime.py`` and ``tests/test_serve.py`` import the helpers below.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def find(*targets: str) -> Any:
    """The first importable ``module:attr`` (modules move while the code base is restructured)."""
    errors = []
    for target in targets:
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{target}: {exc}")
    raise ImportError("none of these could be imported: " + "; ".join(errors))


def spec(in_chans: int = 1, image_size: int = 28, resize_size: int | None = 32, num_classes: int = 10):
    from pocketcnn.data.spec import DataSpec

    classes = FASHION_CLASSES if num_classes == 10 else tuple(f"class{i}" for i in range(num_classes))
    mean, std = ((0.2860,), (0.3530,)) if in_chans == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return DataSpec("fashion-mnist" if in_chans == 1 else "test-rgb", num_classes, in_chans, image_size, mean, std,
                    classes, resize_size)


def make_onnx(path: str | Path, *, name: str = "squeezenet1_1", in_chans: int = 1, image_size: int = 28,
              resize_size: int | None = 32, num_classes: int = 10, dynamic_batch: bool = True,
              seed: int = 0, with_params: bool = True) -> Path:
    """Export a randomly initialized ``name`` (small_input) as ONNX with pocketcnn metadata."""
    import torch

    import pocketcnn

    export_onnx = find("pocketcnn.export.onnx:export_onnx", "pocketcnn.export:export_onnx",
                       "pocketcnn.deploy.export:export_onnx")
    build_metadata = find("pocketcnn.artifacts.metadata:build_metadata")
    torch.manual_seed(seed)
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, "small_input": True}
    model = pocketcnn.create_model(name, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    meta = build_metadata(name, kwargs, spec(in_chans, image_size, resize_size, num_classes),
                          params=params if with_params else None)
    if not with_params:
        meta.pop("params", None)  # as older files
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, path, input_size=(in_chans, image_size, image_size), dynamic_batch=dynamic_batch,
                metadata=meta)
    return path


def make_int8(fp32_path: str | Path, out_path: str | Path, *, seed: int = 0, n: int = 32) -> Path:
    """Static INT8 quantization of ``fp32_path`` calibrated on random normalized images."""
    from pocketcnn.runtime.predictor import open_model

    quantize_onnx = find("pocketcnn.compress.quantize:quantize_onnx", "pocketcnn.export.quantize:quantize_onnx",
                         "pocketcnn.compress:quantize_onnx")
    s = open_model(fp32_path).spec
    rng = np.random.default_rng(seed)
    calib = [((rng.random((8, s.in_chans, s.image_size, s.image_size)) - s.mean[0]) / s.std[0]).astype(np.float32)
             for _ in range(n // 8)]
    return Path(quantize_onnx(fp32_path, out_path, calib))


def write_images(folder: str | Path, *, broken: bool = True) -> list[Path]:
    """Images of several PIL modes and odd sizes (PNG, and a CMYK JPEG), plus a non-image and a truncated PNG."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:61, 0:47]
    base = ((np.sin(xx / 5.0) + np.cos(yy / 7.0) + 2) * 60).astype(np.uint8)  # smooth, so classes differ
    noise = rng.integers(0, 40, (61, 47, 4), dtype=np.uint8)
    rgba = np.stack([base, base[::-1], base[:, ::-1], np.full_like(base, 200)], -1) + noise
    images = {
        "gray.png": Image.fromarray(base),
        "rgb.png": Image.fromarray(rgba[..., :3].copy()).resize((33, 70)),
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "palette.png": Image.fromarray(rgba[..., :3].copy()).convert("P", palette=Image.Palette.ADAPTIVE),
        "gray16.png": Image.fromarray((base.astype(np.uint16) * 257)[:29, :45].copy()),
        "small.png": Image.fromarray(base[:9, :13].copy()),
        "cmyk.jpg": Image.fromarray(rgba[..., :3].copy()).convert("CMYK"),
    }
    images["palette.png"].info["transparency"] = 0
    paths = []
    for name, img in images.items():
        path = folder / name
        if name.endswith(".jpg"):
            img.save(path, quality=95)
        elif name == "palette.png":
            img.save(path, transparency=0)
        else:
            img.save(path)
        paths.append(path)
    if broken:
        (folder / "not-an-image.png").write_text("hello, I am text")
        data = (folder / "gray.png").read_bytes()
        (folder / "truncated.png").write_bytes(data[: len(data) // 2])
        paths += [folder / "not-an-image.png", folder / "truncated.png"]
    return sorted(paths)


def png_header(width: int, height: int) -> bytes:
    """A PNG announcing width x height gray pixels and holding no pixel data: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def torch_records(model: str | Path, images: list[Path], topk: int = 5) -> list[dict[str, Any]]:
    """``pocketcnn predict --json`` records computed the torch way, independently of
    ``pocketcnn.runtime.predictor``: the training preprocessing (torchvision,
    ``pil_to_input``), a plain ONNX Runtime session, ``torch.softmax`` in float64 and
    ``torch.topk`` (what the torch-path predictor did before the light runtime existed).
    Images the runtime cannot read get its error message (the runtime owns those)."""
    import onnx
    import onnxruntime as ort
    import torch

    from pocketcnn.artifacts.metadata import data_from_metadata, parse_metadata
    from pocketcnn.data.transforms import pil_to_input
    from pocketcnn.errors import PocketCNNError
    from pocketcnn.runtime.images import load_image, to_model_mode

    meta = parse_metadata({p.key: p.value for p in onnx.load(str(model)).metadata_props})
    data = data_from_metadata(meta)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    records: list[dict[str, Any]] = []
    for path in images:
        try:
            img = load_image(path)
        except PocketCNNError as exc:
            records.append({"image": str(path), "error": str(exc)})
            continue
        x = pil_to_input(to_model_mode(img, data.in_chans), data)[None].numpy()
        fixed = session.get_inputs()[0].shape[0]
        if isinstance(fixed, int) and fixed > 1:
            x = np.concatenate([x, np.zeros((fixed - 1, *x.shape[1:]), np.float32)])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0][:1]
        probs = torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)).double(), 1)
        values, indices = probs.topk(min(topk, probs.shape[1]), 1)
        records.append({"image": str(path), "topk": [
            {"index": int(j), "label": data.classes[j], "prob": float(v)}
            for v, j in zip(values[0].tolist(), indices[0].tolist())]})
    return records


def _tied(entry: dict[str, Any], expected_topk: list[dict[str, Any]], atol: float) -> bool:
    """Whether ``entry``'s class has its probability in the expected list too (ranked differently
    among equals), or ties the expected list's last entry (cut off differently among equals)."""
    same = [t for t in expected_topk if t["index"] == entry["index"]]
    if same:
        return abs(same[0]["prob"] - entry["prob"]) <= atol
    return abs(expected_topk[-1]["prob"] - entry["prob"]) <= atol


def record_differences(got: list[dict[str, Any]], expected: list[dict[str, Any]], *, atol: float = 1e-6,
                       by_name: bool = False) -> list[str]:
    """What differs between two lists of predict --json records (empty: the same).

    Errors must be equal; probabilities equal within ``atol``, rank by rank; an index may
    differ only where the probabilities tie (int8 logits tie often, and ``torch.topk``
    orders ties its own way). ``by_name``: compare image file names, not whole paths.
    """
    def key(r: dict[str, Any]) -> str:
        return Path(r["image"]).name if by_name else r["image"]

    problems = []
    if [key(r) for r in got] != [key(r) for r in expected]:
        return [f"images differ: {[key(r) for r in got]} != {[key(r) for r in expected]}"]
    for g, e in zip(got, expected):
        if ("error" in g) != ("error" in e):
            problems.append(f"{key(e)}: {g} != {e}")
        elif "error" in e:
            if g["error"].replace(g["image"], "") != e["error"].replace(e["image"], ""):
                problems.append(f"{key(e)}: error {g['error']!r} != {e['error']!r}")
        elif len(g["topk"]) != len(e["topk"]):
            problems.append(f"{key(e)}: {len(g['topk'])} != {len(e['topk'])} classes")
        else:
            for rank, (a, b) in enumerate(zip(g["topk"], e["topk"])):
                if abs(a["prob"] - b["prob"]) > atol:
                    problems.append(f"{key(e)} rank {rank}: prob {a['prob']} != {b['prob']}")
                elif a["index"] != b["index"] and not _tied(a, e["topk"], atol):
                    problems.append(f"{key(e)} rank {rank}: index {a['index']} != {b['index']} (no tie)")
                elif a["index"] == b["index"] and a["label"] != b["label"]:
                    problems.append(f"{key(e)} rank {rank}: label {a['label']!r} != {b['label']!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    model = make_onnx(folder / "model.onnx")
    images = write_images(folder / "images")
    expected = folder / "expected.json"
    expected.write_text(json.dumps(torch_records(model, images), indent=2))
    for key, value in (("POCKETCNN_LIGHT_MODEL", model), ("POCKETCNN_LIGHT_IMAGES", folder / "images"),
                       ("POCKETCNN_LIGHT_EXPECTED", expected)):
        print(f"{key}={shlex.quote(str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


BLOCKER = '''"""Installed by the tests as sitecustomize: importing a blocked module fails, as if not installed."""
import os
import sys

_BLOCKED = {m for m in os.environ.get("POCKETCNN_BLOCK_IMPORTS", "").split(",") if m}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''


def blocked_env(folder: str | Path, modules: tuple[str, ...] = ("torch", "torchvision")) -> dict[str, str]:
    """Environment variables for a subprocess in which importing ``modules`` raises
    ModuleNotFoundError (a ``sitecustomize`` on PYTHONPATH), inherited by its own children."""
    import os

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER)
    src = str(Path(__file__).resolve().parents[2] / "src")
    path = os.pathsep.join([str(folder), src, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "POCKETCNN_BLOCK_IMPORTS": ",".join(modules)}
