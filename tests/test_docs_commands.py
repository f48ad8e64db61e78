"""The docs are tests: every command line of README.md and docs/*.md runs as written, in text mode.

What counts as a command line (:func:`command_lines`):
- in a fenced shell block (```` ```bash ````, ``sh``, ``console`` or no language), every line that
  starts with ``pocketcnn``, ``make``, ``curl``, ``torchrun`` or ``docker`` (a line ending in ``\\`` goes on);
- in the prose, an inline code span that is a whole concrete command: it starts with one of those
  programs, has at least one argument after a ``pocketcnn`` subcommand (a bare `pocketcnn train`
  names the command) and no placeholder (an upper-case word such as NAME or CKPT, ``...``, ``|``,
  ``[``, ``<``): those describe a syntax, not a line to type.

Each line runs through bash in one working folder (``make`` lines in the repo root), in the order
of the files (README.md first, then docs/*.md) and of the lines in them, with PyTorch's
``pocketcnn`` first on PATH. The folder holds what the docs assume a user has (:func:`workspace`):
real Fashion-MNIST photos (``shirt.png``, ``boot.jpg``, ``cat.jpg``, ``my_photo.jpg``, ``photos/``
with a sub-folder per class), a trained run at ``runs/demo/squeezenet1_1/`` with its ONNX file,
``best.onnx`` and ``model.onnx``, and torchvision-shaped weight files under their torchvision names.

A line passes when it exits 0 with no traceback and prints something; a ``--json`` line (and a
``curl`` answer) must be strict JSON, and a ``curl`` answer must not be an error object. A
``pocketcnn serve`` line is started in the background and must answer ``/healthz``; the ``curl``
lines after it talk to it; at the next ``serve`` line or the end of the file it gets SIGTERM and must
exit 0.

The test may only APPEND flags, from the one table :data:`APPEND` (runs of minutes become runs of
seconds); it never rewrites a command otherwise. The lines it cannot run are in :data:`EXCLUDED`,
each with the reason; a command line in the docs that is neither run nor excluded is run (and fails
if it does not work), and an exclusion that matches no line fails the test. It prints how many lines
it ran.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
PROGRAMS = ("pocketcnn", "make", "curl", "torchrun", "docker")
SHELL_LANGS = ("", "bash", "sh", "shell", "console")
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_0-9]*\b(?!=)|\.\.\.|[|\[<]")

# Flags appended to each `pocketcnn SUBCOMMAND` (also under torchrun) so that it takes seconds, not minutes.
APPEND = {
    "train": "--epochs 1 --train-samples 256",  # the test split stays whole: a 10% hold-out of photos/ is 30
    "eval": "--test-samples 256",
    "quantize": "--calib-samples 64 --test-samples 256",
    "compress": "--prune-steps 1 --probe-samples 0 --finetune-epochs 0 --test-samples 256",
    "export": "--verify-samples 2 --calib-samples 64 --test-samples 256",
    "bench": "--quick --batch-sizes 1 --input-size 64 --runtimes eager,onnxruntime",
}
# Lines (by a regex on the line as written) this test does not run, and why.
EXCLUDED = {
    r"^make demo\b": "the main job itself (about 14 minutes); tests/test_demo.py runs it on a small budget",
    r"^make test(?!-)\b": "this test suite runs under it",
    r"^make test-light\b": "CI runs it after make test (.ci/run); a second virtual environment",
    r"^make lint\b": "CI runs it (.ci/run)",
    r"^make bench\b": "minutes of timing; the same `pocketcnn bench squeezenet1_1 mobilenet_v2 --reference` runs "
                      "here with --quick",
    r"^docker ": "needs a Docker daemon",
    r"--host 0\.0\.0\.0": "opens a port to other machines; the same server on 127.0.0.1 runs here",
    r"^torchrun --nnodes 2": "two machines",
    r"^torchrun --nproc-per-node 8 .*--data-dir /data/imagenet": "8 processes on ImageNet, which is not on this machine",
    r"^pocketcnn train \.\.\. ": "an elided variation of the line above it",
}

# Lines that need an optional extra (by a regex, as above), with the modules it installs. `make test` installs
# every extra the docs use (Makefile TEST_EXTRAS), so they run there; a plain `pytest` in an environment without
# the extra lists them as excluded, with the reason, instead of failing on the missing install.
NEEDS_EXTRA = {
    r"\btflite\b": ("litert", ("litert_torch", "ai_edge_litert")),
}


def _missing(modules: tuple[str, ...]) -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in modules)


@dataclass(frozen=True)
class Line:
    file: str  # relative to the repo
    lineno: int
    text: str
    block: int  # index of the fenced block in its file; -1 for an inline span

    @property
    def where(self) -> str:
        return f"{self.file}:{self.lineno}"


def command_lines(path: Path) -> list[Line]:
    """The command lines of one Markdown file (see the module docstring), in order."""
    rel = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Line] = []
    fence, block, i = None, -1, 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if stripped.startswith("```"):
            if fence is None:
                fence, block = stripped[3:].strip().lower(), block + 1
            else:
                fence = None
            i += 1
            continue
        if fence is not None:
            start = i
            text = stripped
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            if fence in SHELL_LANGS and text.split(" ", 1)[0] in PROGRAMS:
                out.append(Line(rel, start + 1, text, block))
        else:
            for span in re.findall(r"`([^`]+)`", raw):
                if _is_inline_command(span):
                    out.append(Line(rel, i + 1, span.strip(), -1))
        i += 1
    return out


def _is_inline_command(span: str) -> bool:
    words = span.split()
    if len(words) < 2 or words[0] not in PROGRAMS or PLACEHOLDER.search(span):
        return False
    return not (words[0] == "pocketcnn" and len(words) < 3 and words[1:] not in (["models"], ["weights"]))


def excluded(line: Line) -> str | None:
    command = line.text.partition(" # ")[0]  # a comment may mention what the command does not do
    for pattern, reason in EXCLUDED.items():
        if re.search(pattern, command):
            return reason
    for pattern, (extra, modules) in NEEDS_EXTRA.items():
        if re.search(pattern, command) and _missing(modules):
            return f"needs the {extra} extra, not installed here (pip install 'pocketcnn[{extra}]'; make test installs it)"
    return None


def with_appended_flags(text: str) -> str:
    """``text`` with the :data:`APPEND` flags after each ``pocketcnn SUBCOMMAND ...`` of the line (before a
    trailing comment; each command of an ``&&`` chain)."""
    command, _, comment = text.partition(" # ")
    parts = []
    for part in command.split("&&"):
        words = part.split()
        sub = next((words[j + 1] for j, w in enumerate(words[:-1]) if w == "pocketcnn"), None)
        extra = APPEND.get(sub or "")
        parts.append(f"{part.rstrip()} {extra} " if extra else part)
    return "&&".join(parts).strip()


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------------------- the workspace
def _fashion_images(n_per_class: int, classes: tuple[int, ...]):
    from pocketcnn.data import balanced_subset, load_dataset

    ds = balanced_subset(load_dataset("fashion-mnist", "test"), 10 * n_per_class, seed=3)
    data, targets = ds.data[:, 0].numpy(), ds.targets.numpy()
    return {c: [data[i] for i in range(len(targets)) if targets[i] == c][:n_per_class] for c in classes}


def workspace(root: Path) -> dict[str, str]:
    """The files the docs assume, made in ``root``; returns the environment the lines run in."""
    import torch
    from PIL import Image

    import pocketcnn

    classes = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    images = _fashion_images(75, (0, 1, 6, 9))  # 300 photos: 270 to train on after a 10% hold-out
    Image.fromarray(images[6][0]).save(root / "shirt.png")
    Image.fromarray(images[9][0]).convert("RGB").save(root / "boot.jpg", quality=95)
    Image.fromarray(images[0][0]).resize((224, 224)).convert("RGB").save(root / "cat.jpg", quality=95)
    Image.fromarray(images[1][0]).save(root / "my_photo.jpg")
    for c, arrays in images.items():
        folder = root / "photos" / classes[c].replace(" ", "_").lower()
        folder.mkdir(parents=True)
        for k, a in enumerate(arrays):
            Image.fromarray(a).save(folder / f"{k:03d}.png")
    for name, file in (("mobilenet_v2", "mobilenet_v2-7ebf99e0.pth"), ("mobilenet_v3_small",
                                                                        "mobilenet_v3_small-047dcff4.pth")):
        torch.manual_seed(0)  # torchvision's state-dict layout (no pretrained file is on this machine)
        torch.save(pocketcnn.create_model(name).state_dict(), root / file)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TORCH_HOME": str(root / ".torch"), "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
    demo = "runs/demo/squeezenet1_1"
    for cmd in (f"pocketcnn train --model squeezenet1_1 --out {demo} {APPEND['train']} -q",
                f"pocketcnn export {demo}/best.pt --verify-samples 2",
                f"cp {demo}/best.onnx best.onnx", f"cp {demo}/best.onnx model.onnx"):
        res = subprocess.run(["bash", "-c", cmd], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"workspace: {cmd}: {res.stderr[-2000:]}"
    return env


# ------------------------------------------------------------------------------------------- running
class Server:
    """A `pocketcnn serve` line running in the background until the next one or the end of its file."""

    def __init__(self, line: Line, env: dict[str, str], cwd: Path) -> None:
        words = shlex.split(line.text.partition(" # ")[0])
        self.port = int(words[words.index("--port") + 1]) if "--port" in words else 8000
        self.line = line
        self.proc = subprocess.Popen(["bash", "-c", "exec " + line.text.partition(" # ")[0]], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def ready(self, timeout: float = 60) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited {self.proc.returncode} before answering: {self.proc.stderr.read()[-1500:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return None
            except OSError:
                time.sleep(0.25)
        return f"no answer on 127.0.0.1:{self.port}/healthz in {timeout:.0f} s"

    def stop(self) -> str | None:
        if self.proc.poll() is not None:
            return None  # it never answered: ready() said why
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
            return "did not stop within 30 s of SIGTERM"
        if self.proc.returncode != 0 or "Traceback" in err:
            return f"exit {self.proc.returncode} on SIGTERM: {err[-1500:]}"
        return None


def run_line(line: Line, env: dict[str, str], cwd: Path) -> str | None:
    """Run one (non-server) line; None when it passed, else what went wrong."""
    text = with_appended_flags(line.text)
    where = REPO if text.startswith("make ") else cwd
    res = subprocess.run(["bash", "-c", text], cwd=where, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or "Traceback" in res.stderr:
        return f"exit {res.returncode}: {res.stderr.strip()[-1500:]}"
    if not (res.stdout.strip() or res.stderr.strip()):
        return "printed nothing"
    if "--json" in text.split() or text.startswith("curl "):
        try:
            doc = strict_json(res.stdout)
        except ValueError as exc:
            if "--json" in text.split() or res.stdout.lstrip()[:1] in "{[":
                return f"stdout is not one strict JSON document ({exc}): {res.stdout[:300]!r}"
        else:
            if text.startswith("curl ") and isinstance(doc, dict) and "error" in doc:
                return f"the server answered an error: {doc}"
    return None


def all_lines() -> list[Line]:
    return [line for path in DOCS for line in command_lines(path)]


# ------------------------------------------------------------------------------------------- tests
def test_extractor_finds_block_continuation_and_inline_lines(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Run `pocketcnn inspect squeezenet1_1 --json` or `pocketcnn train` or `pocketcnn eval CKPT`.\n"
                   "```bash\npocketcnn train --model a \\\n    --epochs 2   # note\ncurl http://x\nls\n```\n"
                   "```python\npocketcnn.list_models()\n```\n`make test` and `pocketcnn models`\n")
    got = [(ln.lineno, ln.text, ln.block) for ln in command_lines(doc)]
    assert got == [(1, "pocketcnn inspect squeezenet1_1 --json", -1),
                   (3, "pocketcnn train --model a --epochs 2   # note", 0), (5, "curl http://x", 0),
                   (11, "make test", -1), (11, "pocketcnn models", -1)]


def test_flags_are_only_appended():
    assert with_appended_flags("pocketcnn eval runs/x/best.pt --tta   # mirror") == \
        "pocketcnn eval runs/x/best.pt --tta --test-samples 256"
    assert with_appended_flags("pocketcnn quantize a.pt && pocketcnn export a.pt --format tflite") == \
        f"pocketcnn quantize a.pt {APPEND['quantize']} && pocketcnn export a.pt --format tflite {APPEND['export']}"
    assert with_appended_flags("curl http://127.0.0.1:8000/metrics") == "curl http://127.0.0.1:8000/metrics"
    for line in all_lines():  # the table only adds: every word of the line is still there, in order
        words = with_appended_flags(line.text).split()
        original = line.text.partition(" # ")[0].split()
        it = iter(words)
        assert all(w in it for w in original), line


def test_every_exclusion_matches_a_line():
    lines = all_lines()
    stale = [p for p in (*EXCLUDED, *NEEDS_EXTRA) if not any(re.search(p, ln.text.partition(" # ")[0]) for ln in lines)]
    assert not stale, f"exclusions that match no command line of the docs: {stale}"


def test_every_command_line_is_run_or_excluded(capsys):
    """The count: every line found is run by the test below or listed in EXCLUDED with its reason."""
    lines = all_lines()
    skipped = [(ln, excluded(ln)) for ln in lines if excluded(ln)]
    with capsys.disabled():
        print(f"\ndocs test: {len(lines)} command lines in {len(DOCS)} files: {len(lines) - len(skipped)} run, "
              f"{len(skipped)} excluded:")
        for line, reason in skipped:
            print(f"  {line.where} `{line.text.partition(' # ')[0].strip()[:80]}`: {reason}")
    assert len(lines) - len(skipped) >= 40, "fewer than 40 command lines to run: is the extractor broken?"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("docs-base")
    return root, workspace(root)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("doc", [d for d in DOCS if command_lines(d)], ids=lambda d: d.name)
def test_docs_command_lines_run_as_written(doc, base, tmp_path, capsys):
    """One file's lines, in order, in a fresh copy of the workspace (a page is read on its own)."""
    import shutil

    root, env = base
    cwd = tmp_path / "work"
    shutil.copytree(root, cwd, symlinks=True)
    lines = command_lines(doc)
    failures: list[str] = []
    ran, seconds = run_file(lines, env, cwd, failures)
    with capsys.disabled():
        print(f"\ndocs test: {doc.name}: ran {len(ran)} of its {len(lines)} command lines in {sum(seconds):.0f} s"
              + "".join(f"\n  {t:5.1f} s  {ln.where} `{ln.text.partition(' # ')[0].strip()[:90]}`"
                        for ln, t in zip(ran, seconds)))
    assert not failures, "\n".join(failures)


def run_file(lines: list[Line], env: dict[str, str], cwd: Path, failures: list[str]) -> tuple[list[Line], list[float]]:
    """Run one file's lines in ``cwd``; a server lives until the next `pocketcnn serve` line or the end of the file (a
    page may start it in one block and talk to it in the next). Returns the lines run and their seconds."""
    ran, seconds, server = [], [], None

    def stop() -> None:
        problem = server.stop()
        if problem:
            failures.append(f"{server.line.where} `{server.line.text}`: {problem}")

    for line in lines:
        if excluded(line):
            continue
        t0 = time.perf_counter()
        if line.text.startswith("pocketcnn serve "):
            if server is not None:
                stop()
            server = Server(line, env, cwd)
            problem = server.ready()
        else:
            problem = run_line(line, env, cwd)
        ran.append(line)
        seconds.append(time.perf_counter() - t0)
        if problem:
            failures.append(f"{line.where} `{line.text}`: {problem}")
    if server is not None:
        stop()
    return ran, seconds
