"""The README's picture of the browser page: docs/browser.png, both modes side by side.

    python benchmarks/browser_screenshot.py [--checkpoint RUN/best.pt] [--out docs/browser.png]

Without ``--checkpoint`` it trains squeezenet1_1 with its recipe for 3 epochs on 10,000
Fashion-MNIST training images (about 75% top-1; 5-10 minutes on 2 CPU cores), exports
it with ``export_web``, serves it with ``pocketcnn serve`` on 127.0.0.1, and photographs the
page in headless Chromium at a phone's size (412 px wide): on the left four Fashion-MNIST
test images answered by the server, on the right the same images (and a text file) answered
on the device with LiteRT.js (the page's default device runtime, on the fp32 or the INT8
``.tflite`` file, whichever it measured faster), the camera button first as on a phone.
"""
from __future__ import annotations

import argparse
import gzip
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/lib/chromium/chromium"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (0, 7, 8, 9)  # T-shirt/top, Sneaker, Bag, Ankle boot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "browser.png")
    ap.add_argument("--height", type=int, default=980, help="height of each phone screen, px")
    args = ap.parse_args(argv)

    import torch

    from pocketcnn.artifacts.source import load_model_source
    from pocketcnn.export.web import export_web

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="pocketcnn-shot-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt = args.checkpoint or train(tmp)
        web = export_web(load_model_source(ckpt), tmp / "web").path
        files = sample_files(tmp)
        proc, url = serve(web / "model.onnx")
        try:
            shots = shoot(url, files, tmp, args.height)
        finally:
            proc.terminate()
            proc.wait(20)
        out = side_by_side(shots)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out.save(args.out, optimize=True)
    print(f"wrote {args.out} ({out.width}x{out.height})", file=sys.stderr)
    return 0


def train(tmp: Path) -> Path:
    """squeezenet1_1 with its recipe, 3 epochs on 10,000 Fashion-MNIST images: its best checkpoint."""
    from pocketcnn.models.registry import model_config
    from pocketcnn.train.config import TrainConfig
    from pocketcnn.train.engine import fit

    recipe = dict(model_config("squeezenet1_1").recipe)  # the family's small-image recipe
    cfg = TrainConfig.from_dict({**recipe, "model": "squeezenet1_1", "data": "fashion-mnist", "epochs": 3,
                                 "train_samples": 10_000, "test_samples": 1000, "out": str(tmp / "run")})
    print(f"training squeezenet1_1: {fit(cfg).final_top1:.1f}% top-1 on 1,000 test images", file=sys.stderr)
    return tmp / "run" / "best.pt"


def sample_files(tmp: Path) -> list[Path]:
    """One Fashion-MNIST test image of each of CLASSES as a PNG, and a text file (notes.txt) last."""
    from PIL import Image

    with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    files = []
    for cls, name in zip(CLASSES, ("tshirt", "sneaker", "bag", "boot")):
        path = tmp / f"{name}.png"
        Image.fromarray(images[np.flatnonzero(labels == cls)[3]]).save(path)
        files.append(path)
    (tmp / "notes.txt").write_text("not a photo")
    return [*files, tmp / "notes.txt"]


def serve(model: Path) -> tuple[subprocess.Popen, str]:
    """``pocketcnn serve model`` on a free loopback port, once it answers /healthz."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pocketcnn", "serve", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            if httpx.get(url + "healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url


def shoot(url: str, files: list[Path], tmp: Path, height: int) -> list:
    """The page at a phone's size: the first four images in server mode; three and the text file on the device."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for mode, upload in (("server", files[:4]), ("device", [*files[:3], files[-1]])):
            page = browser.new_page(viewport={"width": 412, "height": height}, device_scale_factor=2)
            page.goto(f"{url}?mode={mode}")
            page.evaluate("pocketcnn.ready")
            page.set_input_files("#files", [str(f) for f in upload])
            page.wait_for_function(
                f"document.querySelectorAll('.card:not([data-status=pending])').length >= {len(upload)}")
            shot = tmp / f"{mode}.png"
            page.screenshot(path=str(shot))
            shots.append(Image.open(shot).convert("RGB"))
            page.close()
        browser.close()
    return shots


def side_by_side(shots: list):
    """The two screens side by side with a gap, at half the captured scale."""
    from PIL import Image

    gap = 24
    w, h = shots[0].size
    out = Image.new("RGB", (2 * w + gap, h), (255, 255, 255))
    out.paste(shots[0], (0, 0))
    out.paste(shots[1], (w + gap, 0))
    return out.resize((out.width // 2, out.height // 2), Image.LANCZOS)


if __name__ == "__main__":
    sys.exit(main())
