"""Batch inference throughput and memory: today's ``predict`` against the streaming engines.

    python benchmarks/batch_predict.py [--work DIR] [--sets png5k,png50k,jpeg224] [--repeats 1] [--out FILE.json]

In one run, on the same model file and images (written once into ``--work`` and reused):

* ``png5k`` / ``png50k``: 5,000 and 50,000 real Fashion-MNIST PNGs (28x28, from the Debian
  package's IDX files) with squeezenet1_1 built for 1x28x28 (resize 32, crop 28; random
  weights: speed does not depend on them);
* ``jpeg224``: 2,000 JPEGs at 224x224 (the same images enlarged, RGB) with squeezenet1_1 at
  3x224x224.

For each set: today's ``pocketcnn predict MODEL FILE... --json`` (file names on the command
line, relative to the image folder so 50,000 fit under the argument limit), the local engine
(``--out rows.jsonl --workers 1`` and ``--workers 2``), the Ray engine (``--engine ray
--workers 2`` on a local Ray runtime with 2 CPUs, Parquet) and ONNX Runtime alone on
preprocessed tensors at batch 32 with 2 threads (the ceiling). Before the commands, each set
prints its per-image costs (:func:`per_image`: decoding, the model on 1 and on 2 threads) and the
bound they put on local engine / today's ``predict`` on 2 cores. Every command is a new process:
images/s is the images over the wall time from spawn to exit (start-up included); the
engines' own time without start-up (their ``--json`` summary) is printed beside it. Peak RSS
sums every process of the command's tree (the Ray runtime's too), sampled from /proc every
100 ms (one scan of /proc costs about 5 ms of CPU here: sampled every 20 ms, the sampler took a
tenth of a core from the commands it measured), and so does the CPU time per image (user +
system of every process the command started, orphans included: what the work costs, which the
machine's other load changes far less than the rates). The best of ``--repeats`` runs is kept
(the machine is shared). Prints a markdown table and the load average; ``--out`` writes the
rows as JSON.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path(os.environ.get("POCKETCNN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
SETS = {"png5k": (5_000, "png", 28), "png50k": (50_000, "png", 28), "jpeg224": (2_000, "jpg", 224)}
PAGE = os.sysconf("SC_PAGE_SIZE")


def fashion_images(n: int) -> np.ndarray:
    """``n`` Fashion-MNIST images (the training file: 60,000), uint8 (n, 28, 28)."""
    with gzip.open(FMNIST / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    if n > len(images):
        raise SystemExit(f"only {len(images)} images in {FMNIST}")
    return images[:n]


def write_set(folder: Path, n: int, kind: str, size: int) -> Path:
    """The images, ten sub-folders; skipped when ``folder`` holds them already."""
    from PIL import Image

    images = folder / "images"
    stamp = folder / ".complete"
    if stamp.exists():
        return images
    shutil.rmtree(images, ignore_errors=True)
    for i, pixels in enumerate(fashion_images(n)):
        sub = images / str(i % 10)
        sub.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(pixels)
        if size != 28:
            img = img.resize((size, size), Image.BILINEAR).convert("RGB")
        img.save(sub / f"{i:05d}.{kind}", **({"quality": 90} if kind == "jpg" else {}))
    stamp.write_text(str(n))
    return images


def build_model(path: Path, size: int) -> Path:
    """squeezenet1_1 with random weights: 1x28x28 as the Fashion-MNIST builds (small_input), or the
    ImageNet layout at 3x224x224 (10 classes), exported to ONNX with pocketcnn metadata (needs torch)."""
    if path.exists():
        return path
    sys.path.insert(0, str(REPO / "tests" / "light"))
    import prepare  # tests/light/prepare.py: pocketcnn ONNX exports with metadata

    if size == 28:
        return prepare.make_onnx(path)
    import torch

    import pocketcnn
    from pocketcnn.artifacts.metadata import build_metadata
    from pocketcnn.export.onnx import export_onnx

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_chans": 3}
    model = pocketcnn.create_model("squeezenet1_1", **kwargs).eval()
    meta = build_metadata("squeezenet1_1", kwargs, prepare.spec(3, 224, 224, 10),
                          params=sum(p.numel() for p in model.parameters()))
    return export_onnx(model, path, input_size=(3, 224, 224), dynamic_batch=True, metadata=meta)


SAMPLE_S = 0.1  # seconds between samples of the process tree's memory


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _become_subreaper() -> None:
    """Orphans of a command (Ray's worker processes when their raylet goes first) are re-parented to
    this process instead of init, so their CPU time is counted when :func:`_reap_orphans` reaps them."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap_orphans(wait_s: float = 10.0) -> None:
    """Reap every child left (orphans that exited, or exit within ``wait_s``): their CPU time then
    counts in this process's RUSAGE_CHILDREN."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd``: wall seconds, peak RSS of its process tree (MB), the CPU seconds of every process
    it started (user + system, counted as each is reaped: orphans too, see :func:`_become_subreaper`),
    exit code, stdout."""
    cpu0 = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    _reap_orphans()
    return {"seconds": wall, "peak_mb": peak[0] / 2**20, "cpu_s": _children_cpu_s() - cpu0,
            "code": proc.returncode, "stdout": stdout, "stderr": stderr[-2000:]}


def ceiling(model: Path, images: Path, threads: int = 2, batch: int = 32, n: int = 512) -> float:
    """ONNX Runtime alone: images/s on preprocessed tensors at ``batch``, ``threads`` threads."""
    from pocketcnn.runtime.images import preprocess
    from pocketcnn.runtime.predictor import open_model

    predictor = open_model(model, threads=threads)
    paths = sorted(p for p in images.rglob("*") if p.is_file())[:n]
    x = np.stack([preprocess(p, predictor.spec) for p in paths])
    batches = [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)]
    for b in batches[:4]:
        predictor.runner.run(b)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for b in batches:
            predictor.runner.run(b)
        best = max(best, len(batches) * batch / (time.perf_counter() - start))
    return best


def commands(name: str, n: int, model: Path, images: Path, out: Path) -> dict[str, list[str]]:
    exe = [sys.executable, "-m", "pocketcnn", "predict", str(model)]
    files = sorted(str(p.relative_to(images)) for p in images.rglob("*") if p.is_file())
    return {
        "predict FILE... (today)": [*exe, *files, "--json"],
        "local engine, 1 worker": [*exe, ".", "--out", str(out / "w1.jsonl"), "--workers", "1", "--json", "--force"],
        "local engine, 2 workers": [*exe, ".", "--out", str(out / "w2.jsonl"), "--workers", "2", "--json", "--force"],
        "Ray engine, 2 CPUs": [*exe, ".", "--out", str(out / "ray"), "--engine", "ray", "--workers", "2", "--json",
                               "--force"],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def decode_ms(model: Path, images: Path, n: int = 512) -> float:
    """Decoding and preprocessing one image (``preprocess``, as every engine does it), ms: best of 3 passes."""
    from pocketcnn.runtime.images import preprocess
    from pocketcnn.runtime.predictor import open_model

    spec = open_model(model, threads=1).spec
    paths = sorted(p for p in images.rglob("*") if p.is_file())[:n]
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for p in paths:
            preprocess(p, spec)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return 1000 * best


def per_image(model: Path, images: Path, two_threads: float) -> dict:
    """The costs that bound the engines on 2 cores, per image: decoding ``d``, the model ``m1`` on one
    thread and ``m2`` on two (``two_threads``: the ceiling's images/s). Today's ``predict`` decodes,
    then runs the model on both cores: at best ``d + m2``; two workers each do both on one core: at
    best ``(d + m1) / 2``. Their ratio bounds local engine / today's ``predict``, with no start-up."""
    d, m1, m2 = decode_ms(model, images), 1000 / ceiling(model, images, threads=1), 1000 / two_threads
    return {"decode_ms": round(d, 3), "model_ms_1_thread": round(m1, 3), "model_ms_2_threads": round(m2, 3),
            "bound_local_over_today": round((d + m2) / ((d + m1) / 2), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pocketcnn-batch-bench"))
    parser.add_argument("--sets", default="png5k,png50k,jpeg224")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma-separated row names to leave out (e.g. 'Ray engine')")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    _become_subreaper()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; load average before: {os.getloadavg()}", flush=True)
    for name in args.sets.split(","):
        n, kind, size = SETS[name]
        folder = args.work / name
        images = write_set(folder, n, kind, size)
        model = build_model(args.work / f"squeezenet1_1-{size}.onnx", size)
        out = folder / "out"
        out.mkdir(exist_ok=True)
        top = ceiling(model, images)
        costs = per_image(model, images, top)
        print(f"{name}: per image, decoding {costs['decode_ms']:.2f} ms, the model {costs['model_ms_1_thread']:.2f} "
              f"ms on 1 thread and {costs['model_ms_2_threads']:.2f} ms on 2: on 2 cores the local engine is at most "
              f"{costs['bound_local_over_today']:.2f}x today's predict", flush=True)
        for label, cmd in commands(name, n, model, images, out).items():
            if any(s and s in label for s in args.skip.split(",")):
                continue
            best = None
            for _ in range(args.repeats):
                shutil.rmtree(out / "ray", ignore_errors=True)
                run = measure(cmd, images)
                if run["code"] not in (0, 1):
                    raise SystemExit(f"{label} failed ({run['code']}): {run['stderr']}")
                if best is None or run["seconds"] < best["seconds"]:
                    best = run
            engine_s = None
            if "engine" in label:
                engine_s = json.loads(best["stdout"])["seconds"]
            row = {"set": name, "images": n, "command": label, "seconds": round(best["seconds"], 2),
                   "images_per_s": round(n / best["seconds"], 1),
                   "engine_images_per_s": round(n / engine_s, 1) if engine_s else None,
                   "peak_rss_mb": round(best["peak_mb"], 1), "cpu_ms_per_image": round(1000 * best["cpu_s"] / n, 3),
                   "ceiling_images_per_s": round(top, 1),
                   "share_of_ceiling": round(n / best["seconds"] / top, 3), "load": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        rows.append({"set": name, "images": n, "command": "ONNX Runtime alone, batch 32, 2 threads (ceiling)",
                     "images_per_s": round(top, 1), "share_of_ceiling": 1.0, **costs})
    print("\n| set | command | images/s (wall) | images/s (engine, no start-up) | peak RSS MB, all processes "
          "| CPU ms per image, all processes | share of ceiling |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['set']} | {r['command']} | {r['images_per_s']:,.0f} | "
              f"{'' if r.get('engine_images_per_s') is None else format(r['engine_images_per_s'], ',.0f')} | "
              f"{'' if 'peak_rss_mb' not in r else format(r['peak_rss_mb'], ',.0f')} | "
              f"{'' if 'cpu_ms_per_image' not in r else format(r['cpu_ms_per_image'], '.2f')} | "
              f"{100 * r['share_of_ceiling']:.0f}% |")
    by = {(r["set"], r["command"]): r for r in rows}
    for s in args.sets.split(","):
        today, local2 = by.get((s, "predict FILE... (today)")), by.get((s, "local engine, 2 workers"))
        ray = by.get((s, "Ray engine, 2 CPUs"))
        if today and local2:
            print(f"{s}: local engine (2 workers) / today's predict = {local2['images_per_s'] / today['images_per_s']:.2f}x")
        if ray and local2:
            print(f"{s}: Ray / local engine = {ray['images_per_s'] / local2['images_per_s']:.2f} (wall), "
                  f"{ray['engine_images_per_s'] / local2['engine_images_per_s']:.2f} (engine time)")
    if ("png5k", "local engine, 2 workers") in by and ("png50k", "local engine, 2 workers") in by:
        a, b = by[("png5k", "local engine, 2 workers")], by[("png50k", "local engine, 2 workers")]
        print(f"local engine peak RSS, 50,000 / 5,000 PNGs: {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}")
    print(f"load average after: {os.getloadavg()}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
