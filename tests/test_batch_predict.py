"""Streaming batch inference (``pocketcnn predict MODEL SOURCE... --out FILE``), local and on a real Ray runtime.

2,000 real Fashion-MNIST test PNGs plus corrupt, truncated, zero-byte, non-image and
decompression-bomb files go through both engines; every row must equal ``predict --json``
(top-1 equal, probabilities within 1e-5). A run killed with SIGKILL and resumed has every
image exactly once; one stopped with SIGTERM leaves a readable file.
"""
from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pocketcnn.cli import cli
from pocketcnn.workflows import batch as B

FMNIST = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5
N_IMAGES = 2000
BAD = ("corrupt.png", "truncated.png", "zero.png", "notes.png", "bomb.png")


def _prepare():
    spec = importlib.util.spec_from_file_location("light_prepare", ROOT / "tests" / "light" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = _prepare()


def write_fashion_pngs(folder: Path, n: int, classes: int = 10) -> list[Path]:
    """``n`` real Fashion-MNIST test images as 28x28 PNGs in one sub-folder per label."""
    with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FMNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    paths = []
    for i in range(n):
        sub = folder / str(int(labels[i]) % classes)
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:05d}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(path)
    return paths


def write_bad_files(folder: Path, good: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    files = {
        "corrupt.png": data[:16] + bytes(range(256)) * 2,  # a PNG signature, then garbage
        "truncated.png": data[: len(data) // 2],
        "zero.png": b"",
        "notes.png": b"this is not an image\n",
        "bomb.png": prepare.png_header(20_000, 20_000),  # 400 Mpixel announced: refused before decoding
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / n for n in files]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    if not FMNIST.is_dir():
        pytest.skip("needs the Fashion-MNIST files (make data)")
    root = tmp_path_factory.mktemp("batch")
    prepare.make_onnx(root / "model.onnx")
    good = write_fashion_pngs(root / "photos", N_IMAGES)
    bad = write_bad_files(root / "photos" / "bad", good[0])
    # the rows of today's `predict --json` (file names on the command line), relative to root
    names = [str(p.relative_to(root)) for p in good + bad]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        from click.testing import CliRunner

        result = CliRunner().invoke(cli, ["predict", "model.onnx", *names, "--json"], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 1  # the bad files failed
    expected = {r["image"]: r for r in json.loads(result.stdout)}
    assert len(expected) == N_IMAGES + len(BAD)
    assert all("error" in expected[f"photos/bad/{n}"] for n in BAD)
    assert "decompression bomb" in expected["photos/bad/bomb.png"]["error"]
    return {"root": root, "model": root / "model.onnx", "expected": expected, "good": good, "bad": bad}


def differences(got: list[dict], expected: dict[str, dict], *, subset: set[str] | None = None) -> list[str]:
    """What differs between rows and the expected records, by image (each image exactly once)."""
    names = [r["image"] for r in got]
    if len(names) != len(set(names)):
        return [f"{len(names) - len(set(names))} images appear twice"]
    want = sorted(subset if subset is not None else expected)
    if sorted(names) != want:
        return [f"images differ: {len(set(names) - set(want))} extra, {len(set(want) - set(names))} missing"]
    got = sorted(got, key=lambda r: r["image"])
    problems = prepare.record_differences(got, [expected[n] for n in want], atol=ATOL)
    for g in got:  # top-1 must be equal, not merely tied
        if "topk" in g and g["topk"][0]["index"] != expected[g["image"]]["topk"][0]["index"]:
            problems.append(f"{g['image']}: top-1 {g['topk'][0]['index']} != {expected[g['image']]['topk'][0]['index']}")
    return problems


def run_cli(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketcnn", "predict", *args], cwd=root, capture_output=True,
                          text=True, timeout=120, env=env)


# ------------------------------------------------------------------------------------------------ local engine

def test_local_engine_in_a_torch_free_process_gives_the_rows_of_predict_json(job, tmp_path):
    """2,000 PNGs + 5 bad files from a folder, 2 workers, JSON Lines; torch unimportable in the process."""
    out = tmp_path / "rows.jsonl"
    env = prepare.blocked_env(tmp_path / "block")
    r = run_cli(job["root"], "model.onnx", "photos", "--out", str(out), "--workers", "2", env=env)
    assert r.returncode == 1, r.stderr  # some images failed: exit 1, the count printed
    assert f"{len(BAD)} of {N_IMAGES + len(BAD):,} images failed" in r.stderr
    assert "Traceback" not in r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert differences(rows, job["expected"]) == []
    assert all(set(row) == ({"image", "error"} if "error" in row else {"image", "topk"}) for row in rows)
    assert len(rows[0]["topk"]) == 5


@pytest.mark.parametrize("fmt,workers", [("csv", 0), ("parquet", 1)])
def test_csv_and_parquet_outputs(job, tmp_path, fmt, workers):
    subset = sorted(job["expected"])[:150] + [f"photos/bad/{n}" for n in BAD]
    manifest = job["root"] / f"subset-{fmt}.txt"
    manifest.write_text("# a subset\n\n" + "\n".join(subset) + "\n")
    out = tmp_path / f"rows.{fmt}"
    result = B.predict_batch(job["model"], [manifest], out, workers=workers, batch_size=7, handle_signals=False)
    assert (result.rows, result.failed, result.format) == (len(set(subset)), len(BAD), fmt)
    rows = list(B.read_records(out))
    # a manifest's relative paths are relative to its folder: rows name them as joined
    rows = [{**r, "image": str(Path(r["image"]).relative_to(job["root"]))} for r in rows]
    for r in rows:
        if "error" in r:
            r["error"] = r["error"].replace(str(job["root"]) + "/", "")
    assert differences(rows, job["expected"], subset=set(subset)) == []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_schema(out) == B.arrow_schema()
        assert not B.journal_path(out).exists()
    else:
        assert out.read_text().splitlines()[0] == ",".join(B.CSV_COLUMNS)


def test_each_source_kind(job, tmp_path):
    root = job["root"]
    one = str(job["good"][1].relative_to(root))
    (root / "list.csv").write_text("label,path\n3," + "\n3,".join(["photos/bad/zero.png", one]) + "\n")
    kinds = {
        "file": ([one], {one}),
        "folder": (["photos/bad"], {f"photos/bad/{n}" for n in BAD}),
        "glob": (["photos/[01]/*.png"], {n for n in job["expected"] if n.split("/")[1] in "01" and "bad" not in n}),
        "csv manifest": (["list.csv"], {"photos/bad/zero.png", one}),
    }
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for kind, (sources, names) in kinds.items():
            assert len(names) > 0
            listed = list(B.iter_sources(B.check_sources(sources)))
            assert sorted(listed) == sorted(names), kind
            out = tmp_path / f"{kind.replace(' ', '-')}.jsonl"
            B.predict_batch("model.onnx", sources, out, workers=0, handle_signals=False)
            assert differences(list(B.read_records(out)), job["expected"], subset=names) == [], kind
    finally:
        os.chdir(cwd)


def test_refusals_are_one_line_exit_2_and_write_nothing(job, tmp_path, monkeypatch, cli_runner):
    monkeypatch.chdir(job["root"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "done.jsonl").write_text("{}\n")
    cases = [
        (["photos", "--out", str(tmp_path / "done.jsonl")], "exists; pass --resume to continue it or --force"),
        (["no-such-folder", "--out", str(tmp_path / "o.jsonl")], "no-such-folder: no such file or folder"),
        ([str(tmp_path / "empty"), "--out", str(tmp_path / "o.jsonl")], "holds no image file"),
        (["photos", "--out", str(tmp_path / "a-file" / "o.jsonl")], "cannot write"),
        (["photos", "--out", str(tmp_path / "o.txt")], "--out must end in .jsonl or .csv or .parquet"),
        (["photos", "--out", str(tmp_path / "o.jsonl"), "--resume", "--force"], "exclude each other"),
        (["photos/3", "--workers", "2"], "--workers needs --out"),
        (["photos", "--out", str(tmp_path / "o.jsonl"), "--address", "auto"], "--address needs --engine ray"),
    ]
    for args, message in cases:
        r = cli_runner.invoke(cli, ["predict", "model.onnx", *args])
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, r.stderr)
    assert not (tmp_path / "o.jsonl").exists() and (tmp_path / "done.jsonl").read_text() == "{}\n"


HALF = "photos/[0-4]"  # the images of five classes (about 1,000): a run long enough to stop half-way


def half(expected: dict[str, dict]) -> set[str]:
    return {n for n in expected if n.split("/")[1] in "01234"}


def _start(root: Path, out: Path, tmp_path: Path) -> subprocess.Popen:
    env = prepare.blocked_env(tmp_path / "block")
    return subprocess.Popen([sys.executable, "-m", "pocketcnn", "predict", "model.onnx", HALF, "--out", str(out),
                             "--workers", "1", "--batch-size", "8"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_rows(proc: subprocess.Popen, path: Path, rows: int) -> None:
    deadline = time.monotonic() + 60
    while not (path.exists() and path.read_bytes().count(b"\n") >= rows):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no rows within 60 s"
        time.sleep(0.02)


def test_resume_after_sigkill_has_every_image_exactly_once(job, tmp_path):
    out = tmp_path / "rows.jsonl"
    names = half(job["expected"])
    proc = _start(job["root"], out, tmp_path)
    _wait_for_rows(proc, out, 200)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker, mid-run
    proc.wait(timeout=20)
    killed = out.read_bytes().count(b"\n")
    assert 200 <= killed < len(names)
    with open(out, "a") as f:
        f.write('{"image": "photos/0/torn')  # half a row, as a kill during a write leaves
    r = run_cli(job["root"], "model.onnx", HALF, "--out", str(out), "--resume", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"{killed:,} images done already" in r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole again
    assert differences(rows, job["expected"], subset=names) == []
    r = run_cli(job["root"], "model.onnx", HALF, "--out", str(out), "--resume", "--workers", "0")  # nothing left
    assert r.returncode == 0, r.stderr
    assert out.read_text().count("\n") == len(names)


def test_sigterm_leaves_a_readable_parquet_file_and_resume_finishes_it(job, tmp_path):
    out = tmp_path / "rows.parquet"
    names = half(job["expected"])
    proc = _start(job["root"], out, tmp_path)
    _wait_for_rows(proc, B.journal_path(out), 100)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr
    assert not B.journal_path(out).exists()
    first = list(B.read_records(out))  # a complete Parquet file
    assert 100 <= len(first) < len(names)
    r = run_cli(job["root"], "model.onnx", HALF, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert differences(list(B.read_records(out)), job["expected"], subset=names) == []


def test_light_modules_import_no_torch_at_module_level():
    for name in ("batch.py", "batch_ray.py"):
        tree = ast.parse((ROOT / "src/pocketcnn/workflows" / name).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [m for m in modules if m.split(".")[0] in ("torch", "torchvision", "ray", "pyarrow")], name


def test_folder_listing_is_lazy(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.png").write_bytes(b"")
    listing = B.iter_sources([str(tmp_path)])
    assert next(listing).endswith(".png")  # a generator: nothing listed ahead
    assert sorted(Path(p).name for p in B.walk_folder(str(tmp_path))) == ["0.png", "1.png", "2.png"]


# ------------------------------------------------------------------------------------------------ Ray engine

@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="the ray extra (pip install 'pocketcnn[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_same_rows(job, ray_runtime, tmp_path):
    from pocketcnn.workflows.batch_ray import predict_batch_ray

    cwd = os.getcwd()
    os.chdir(job["root"])
    try:
        result = predict_batch_ray("model.onnx", ["photos"], tmp_path / "parquet", batch_size=32)
        subset = ["photos/bad"] + [str(p.relative_to(job["root"])) for p in job["good"][:100]]
        small = predict_batch_ray("model.onnx", subset, tmp_path / "rows.jsonl", workers=2)
    finally:
        os.chdir(cwd)
    assert ray_runtime.is_initialized()  # the engine joined the running runtime and left it running
    assert (result.engine, result.format, result.rows, result.failed) == ("ray", "parquet", N_IMAGES + len(BAD),
                                                                          len(BAD))
    parts = sorted((tmp_path / "parquet").glob("*.parquet"))
    assert len(parts) >= 2  # one file per block
    assert differences(list(B.read_records(tmp_path / "parquet")), job["expected"]) == []
    assert (small.format, small.rows, small.failed) == ("jsonl", 105, len(BAD))
    names = {str(p.relative_to(job["root"])) for p in job["good"][:100]} | {f"photos/bad/{n}" for n in BAD}
    assert differences(list(B.read_records(tmp_path / "rows.jsonl")), job["expected"], subset=names) == []


def test_ray_engine_refusals(job, tmp_path):
    from pocketcnn.workflows.batch_ray import predict_batch_ray

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for kwargs, message in [({"resume": True}, "--resume is for the local engine"),
                            ({"fmt": "csv"}, "writes parquet or jsonl"),
                            ({"force": True}, "holds other files than output files")]:
        with pytest.raises(B.UsageError, match=message):
            predict_batch_ray(job["model"], [str(job["root"] / "photos")], tmp_path / "full", **kwargs)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_progress_is_one_line_per_10000_images_off_a_terminal(capsys):
    from pocketcnn.cli.predict import PROGRESS_EVERY, _Reporter

    with _Reporter() as report:  # pytest's stderr is not a terminal
        for done in range(0, 3 * PROGRESS_EVERY + 1, 2_500):
            report(B.Progress(done, done // 1000, 0, 1 + done / 1000))
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["10,000 images, 909 images/s, 10 failed", "20,000 images, 952 images/s, 20 failed",
                     "30,000 images, 968 images/s, 30 failed"]
