"""Footprint of the deployed side: cold-start time and peak memory of ``pocketcnn predict``
on an ONNX file (the light runtime: numpy, ONNX Runtime, Pillow) against the torch path
on the same model's checkpoint, and the installed size of a light and a full venv.

    python benchmarks/footprint.py [--light-venv DIR] [--full-venv DIR] [--repeats 5] [--out FILE.json]

For SqueezeNet 1.1 and MobileNetV3-Small built for Fashion-MNIST (1x28x28, 10 classes,
small_input, random weights: the footprint does not depend on them) the script writes a
checkpoint, its ONNX export and one 28x28 PNG, then runs each command ``--repeats`` times
(after one untimed run that fills the page cache), alternating the commands:

* light: ``pocketcnn predict MODEL.onnx one.png --json`` with the light venv's Python when
  ``--light-venv`` is given (the repository's ``src`` on PYTHONPATH if the package is not
  installed there), and with this Python too;
* torch: ``pocketcnn predict MODEL.pt one.png --json --runtime torch`` with ``--full-venv``'s
  Python (default: this one).

Each run is a new process: wall time from spawn to exit, and its peak RSS from the kernel's
accounting of that child (``os.wait4`` rusage, what ``/usr/bin/time -v`` reports). Linux
starts a child's peak at its parent's resident size (exec keeps the old mm's high-water
mark), so this process imports nothing but the standard library: the models are built by
a child (``--build FOLDER``) that holds torch. The
medians are printed as a markdown table and written as JSON. Targets of the light path:
<= 1.0 s and <= 150 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("squeezenet1_1", "mobilenet_v3_small")
TARGET_S, TARGET_MB = 1.0, 150.0


def build(folder: Path, name: str) -> tuple[Path, Path]:
    """``(checkpoint.pt, model.onnx)`` of ``name`` at 1x28x28, 10 classes, random weights."""
    import torch

    from pocketcnn.artifacts.checkpoint import save_checkpoint
    from pocketcnn.artifacts.metadata import build_metadata
    from pocketcnn.data.spec import DataSpec
    from pocketcnn.export.onnx import export_onnx
    from pocketcnn import create_model

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_chans": 1, "small_input": True}
    model = create_model(name, **kwargs).eval()
    spec = DataSpec("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), tuple(f"class{i}" for i in range(10)))
    ckpt = save_checkpoint(folder / f"{name}.pt", {"model": name, "model_kwargs": kwargs,
                                                    "state_dict": model.state_dict(), "data": spec.to_dict()})
    meta = build_metadata(name, kwargs, spec, params=sum(p.numel() for p in model.parameters()))
    onnx_path = export_onnx(model, folder / f"{name}.onnx", input_size=(1, 28, 28), dynamic_batch=True, metadata=meta)
    return Path(ckpt), Path(onnx_path)


def write_image(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:28, 0:28]
    Image.fromarray(((np.sin(xx / 4) + np.cos(yy / 5) + 2) * 60).astype(np.uint8)).save(path)
    return path


def venv_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{venv}: no bin/python in this folder, not a virtual environment")
    return python


def env_for(python: Path) -> dict[str, str]:
    """This environment, plus the repository's ``src`` on PYTHONPATH when ``python`` lacks pocketcnn."""
    env = dict(os.environ)
    found = subprocess.run([str(python), "-c", "import pocketcnn"], capture_output=True).returncode == 0
    if not found:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """``(wall seconds, peak RSS MB)`` of one process running ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    json.loads(out)  # a real answer, not an error message
    return wall, usage.ru_maxrss / 1024.0  # KiB on Linux -> MiB


def dir_size_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 1e6


def largest_packages(venv: Path, n: int = 6) -> dict[str, float]:
    site = next(venv.glob("lib/python3*/site-packages"), None)
    if site is None:
        return {}
    sizes = {p.name: dir_size_mb(p) for p in site.iterdir() if p.is_dir() and not p.name.endswith("-info")}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:n])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--light-venv", type=Path, default=None)
    ap.add_argument("--full-venv", type=Path, default=None)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "footprint.json")
    ap.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)  # the child that holds torch
    args = ap.parse_args(argv)
    if args.build is not None:
        write_image(args.build / "one.png")
        for name in args.models.split(","):
            build(args.build, name)
        return 0

    full_py = venv_python(args.full_venv) if args.full_venv else Path(sys.executable)
    pythons = {"this": (Path(sys.executable), env_for(Path(sys.executable)))}
    if args.light_venv:
        light_py = venv_python(args.light_venv)
        pythons["light-venv"] = (light_py, env_for(light_py))
    full = (full_py, env_for(full_py))
    rows = []
    with tempfile.TemporaryDirectory(prefix="pocketcnn-footprint-") as tmp:
        folder = Path(tmp)
        subprocess.run([str(full[0]), __file__, "--build", str(folder), "--models", args.models], env=full[1],
                       check=True)
        image = folder / "one.png"
        for name in args.models.split(","):
            ckpt, onnx_path = folder / f"{name}.pt", folder / f"{name}.onnx"
            commands = {f"light ({where})": ([str(py), "-m", "pocketcnn", "predict", str(onnx_path), str(image),
                                              "--json"], env) for where, (py, env) in pythons.items()}
            commands["torch"] = ([str(full[0]), "-m", "pocketcnn", "predict", str(ckpt), str(image), "--json",
                                  "--runtime", "torch"], full[1])
            samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
            for cmd, env in commands.values():
                run_once(cmd, env)  # page cache
            for _ in range(args.repeats):
                for key, (cmd, env) in commands.items():
                    samples[key].append(run_once(cmd, env))
            for key, runs in samples.items():
                rows.append({"model": name, "path": key, "python": commands[key][0][0],
                             "wall_s": statistics.median(w for w, _ in runs),
                             "peak_rss_mb": statistics.median(m for _, m in runs),
                             "runs": [{"wall_s": w, "peak_rss_mb": m} for w, m in runs],
                             "onnx_mb": onnx_path.stat().st_size / 1e6})
    sizes = {}
    for label, venv in (("light", args.light_venv), ("full", args.full_venv)):
        if venv is not None:
            sizes[label] = {"path": str(venv), "mb": dir_size_mb(venv), "largest_packages_mb": largest_packages(venv)}

    print(f"| model | path | wall (median of {args.repeats}) | peak RSS | light target |")
    print("| --- | --- | --- | --- | --- |")
    torch_by_model = {r["model"]: r for r in rows if r["path"] == "torch"}
    for r in rows:
        ok = "" if r["path"] == "torch" else \
            ("met" if r["wall_s"] <= TARGET_S and r["peak_rss_mb"] <= TARGET_MB else "MISSED")
        ref = torch_by_model[r["model"]]
        ratio = "" if r["path"] == "torch" else \
            f" ({ref['wall_s'] / r['wall_s']:.1f}x faster, {ref['peak_rss_mb'] / r['peak_rss_mb']:.1f}x less)"
        print(f"| {r['model']} | {r['path']} | {r['wall_s']:.2f} s | {r['peak_rss_mb']:.0f} MB{ratio} | {ok} |")
    if sizes:
        print("\n| venv | installed size | largest packages |")
        print("| --- | --- | --- |")
        for label, s in sizes.items():
            top = ", ".join(f"{k} {v:.0f}" for k, v in s["largest_packages_mb"].items())
            print(f"| {label} ({s['path']}) | {s['mb']:.0f} MB | {top} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "venvs": sizes, "repeats": args.repeats,
                                    "targets": {"wall_s": TARGET_S, "peak_rss_mb": TARGET_MB}}, indent=2))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
