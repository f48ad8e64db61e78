"""The run folder's policy: an earlier run is never replaced silently, and what a run writes there.

``DIR/config.json`` and ``DIR/metrics.jsonl`` at the start (the metrics of a resumed run's earlier
epochs), a line appended to ``metrics.jsonl`` each epoch, ``DIR/last.pt`` replaced atomically and
``DIR/best.pt`` linked to it when the epoch is the best so far.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..fileio import atomic_write_text, check_writable_dir

RESULT_FILES = ("last.pt", "best.pt", "metrics.jsonl")  # what makes a folder hold a training run


def existing_run(out_dir: Path) -> list[str]:
    """The training results already in ``out_dir`` (empty when it holds none)."""
    return [f for f in RESULT_FILES if (out_dir / f).exists()]


def refuse_earlier_run(out_dir: Path) -> None:
    """Raise OutputError if ``out_dir`` holds an earlier run's results (a new run would replace them)."""
    if existing_run(out_dir):
        raise OutputError(f"{out_dir} already holds a training run ({', '.join(existing_run(out_dir))}): "
                          f"pass --force to replace it, --resume {out_dir / 'last.pt'} to continue it, "
                          "or another --out")


def check_run_folder(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Before any work: an earlier run's folder is refused (unless ``overwrite`` or ``resume``); the folder is writable."""
    if not resume and not overwrite:
        refuse_earlier_run(out_dir)
    check_writable_dir(out_dir, "training run")


def start_run_folder(out_dir: Path, config: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """``config.json`` and ``metrics.jsonl`` (the epochs a resumed run already has), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2))


def record_epoch(out_dir: Path, metrics: dict[str, Any], *, best: bool) -> None:
    """Append the epoch's metrics; when it is the best so far, ``best.pt`` becomes the ``last.pt`` just written."""
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    if best:
        tmp = out_dir / "best.pt.tmp"
        tmp.unlink(missing_ok=True)
        os.link(out_dir / "last.pt", tmp)  # last.pt is only ever replaced, never rewritten: share its bytes
        os.replace(tmp, out_dir / "best.pt")
