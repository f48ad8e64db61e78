"""Every command of the light install (no PyTorch): ``--help`` works, and one real call each either
works (an ONNX model: ``predict``, ``web-runtime --check``) or refuses in one line that names the
command and the extra to install.

Used twice: by ``tests/light/test_cli_light.py`` in the real light install (``make test-light``),
and by ``tests/test_cli_light.py`` in the main environment with PyTorch made unimportable
(``prepare.blocked_env``), so ``make test`` catches a command module that imports torch.
Imports nothing heavy.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

# every command of `pocketcnn --help` (tests assert this list is complete)
COMMANDS = ("models", "inspect", "compare", "train", "eval", "demo", "export", "quantize", "compress", "predict",
            "bench", "serve", "weights", "web-runtime")
NEEDS_TORCH = r"^Error: pocketcnn {cmd} needs PyTorch, which is not installed \(the light install leaves it out\): " \
              r"pip install 'pocketcnn\[train\]'$"


@dataclass(frozen=True)
class Call:
    args: tuple[str, ...]  # {model} (an .onnx file), {ckpt} (a .pt file), {image} are filled in
    exit_code: int
    stderr: str | None = None  # a regex the whole of stderr must match (None: no check beyond "no traceback")
    json: bool = False  # stdout must be one JSON document


def _refused(cmd: str, *args: str) -> Call:
    return Call((cmd, *args), 1, NEEDS_TORCH.format(cmd=cmd))


CALLS = (
    _refused("models"),
    _refused("inspect", "squeezenet1_1"),
    _refused("compare", "alexnet", "squeezenet1_1"),
    _refused("weights"),
    _refused("train", "--model", "squeezenet1_1", "--epochs", "1"),
    _refused("eval", "{ckpt}"),
    _refused("demo", "--budget-minutes", "1"),
    _refused("export", "{ckpt}"),
    _refused("export", "{ckpt}", "--format", "web", "--out", "{tmp}/site"),
    _refused("quantize", "{ckpt}"),
    _refused("compress", "{ckpt}"),
    _refused("predict", "{ckpt}", "{image}"),
    _refused("bench", "squeezenet1_1"),
    Call(("predict", "{model}", "{image}"), 0),
    Call(("predict", "{model}", "{image}", "--json"), 0, json=True),
    Call(("web-runtime", "--check", "--dest", "{tmp}/ort"), 1),  # an empty folder: "missing", exit 1
)


def run(python: str, args: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None):
    return subprocess.run([python, "-m", "pocketcnn", *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=cwd)


def help_problems(python: str, env: dict[str, str] | None = None) -> list[str]:
    """``pocketcnn --help`` and each command's ``--help``: exit 0, a usage line, no traceback."""
    problems = []
    top = run(python, ["--help"], env)
    listed = re.findall(r"^  (\S+) ", top.stdout.split("Commands:")[-1], flags=re.M)
    if top.returncode != 0 or tuple(listed) != COMMANDS:
        problems.append(f"pocketcnn --help: exit {top.returncode}, commands {listed}, stderr {top.stderr[-500:]}")
    for cmd in COMMANDS:
        out = run(python, [cmd, "--help"], env)
        if out.returncode != 0 or f"Usage: pocketcnn {cmd}" not in out.stdout or "Traceback" in out.stderr:
            problems.append(f"pocketcnn {cmd} --help: exit {out.returncode}, stderr {out.stderr[-500:]}")
    return problems


def call_problems(python: str, files: dict[str, str], env: dict[str, str] | None = None) -> list[str]:
    """Each of :data:`CALLS`, with ``files`` (model, ckpt, image, tmp) filled in."""
    problems = []
    for call in CALLS:
        args = [a.format(**files) for a in call.args]
        out = run(python, args, env, cwd=files["tmp"])
        what = f"pocketcnn {' '.join(args)}: exit {out.returncode}"
        if "Traceback" in out.stderr or out.returncode != call.exit_code:
            problems.append(f"{what} (expected {call.exit_code}); stderr: {out.stderr[-800:]}")
        elif call.stderr is not None and not re.fullmatch(call.stderr, out.stderr.strip()):
            problems.append(f"{what}; stderr is not one line matching {call.stderr!r}: {out.stderr!r}")
        elif call.exit_code == 0 and not out.stdout.strip():
            problems.append(f"{what}; printed nothing")
        elif call.json:
            try:
                json.loads(out.stdout)
            except ValueError as exc:
                problems.append(f"{what}; stdout is not JSON ({exc})")
    return problems
