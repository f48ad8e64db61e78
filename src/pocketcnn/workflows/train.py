"""What ``pocketcnn train`` runs around the engine: where the run writes, how long a run it is, and the
learning curves it leaves.

:func:`plan_run` decides, before anything trains, the folder (an earlier run is never replaced
silently: without an explicit ``out``, a default folder that holds one moves the run to the next free
numbered folder, ``runs/MODEL-2``, ...; an explicit one is refused unless ``overwrite``) and the
short-run rule (:meth:`~pocketcnn.train.config.TrainConfig.decide_run_length`). :func:`train_run`
trains with :func:`~pocketcnn.train.engine.fit` and draws ``curves.png``.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..train.config import TrainConfig
from ..train.data_prep import train_image_count
from ..train.engine import Callbacks, FitResult, existing_run, fit, refuse_earlier_run
from .plots import learning_curves


@dataclass(frozen=True)
class RunPlan:
    config: TrainConfig  # the run as it will train (its folder and the short-run rule applied)
    moved_from: Path | None  # the default folder that holds an earlier run, when the run moved to a new one
    notes: tuple[str, ...]  # the short-run rule's verdict, to print once the run is set up


def plan_run(cfg: TrainConfig, *, fixed: Collection[str] = (), resuming: bool = False, overwrite: bool = False,
             worker: bool = False, verbose: bool = True) -> RunPlan:
    """The folder and the run length of ``cfg``. ``fixed``: the fields the user set (the short-run rule
    leaves them); ``resuming`` keeps the folder and the rule's recorded decision; ``worker``: a rank of a
    launched run, which takes the folder its launcher chose; ``verbose``: the rule's note even when it
    changed nothing."""
    moved_from = None
    if not resuming and not overwrite and not worker:
        if cfg.out is None and existing_run(cfg.out_dir):
            moved_from = cfg.out_dir
            cfg = cfg.replace(out=str(next_free_folder(moved_from)))
        refuse_earlier_run(cfg.out_dir)  # before anything is printed: a refusal is one line
    notes: tuple[str, ...] = ()
    if not resuming:
        run = cfg.decide_run_length(train_image_count(cfg), fixed=set(fixed))
        notes = (run.note(),) if run.changed or verbose else ()
        cfg = run.config
    return RunPlan(cfg, moved_from, notes)


def next_free_folder(base: Path) -> Path:
    """``base-2``, ``base-3``, ...: the first that does not hold a training run."""
    n = 2
    while existing_run(base.with_name(f"{base.name}-{n}")):
        n += 1
    return base.with_name(f"{base.name}-{n}")


def train_run(cfg: TrainConfig, callbacks: Callbacks | None = None, *, resume: str | None = None,
              overwrite: bool = False, curves: bool = True) -> FitResult:
    """Train ``cfg`` (``resume``: a checkpoint to continue) and, on the process that writes (``curves``),
    draw its learning curves to ``curves.png`` in the run's folder."""
    result = fit(cfg, callbacks, resume=resume, overwrite=overwrite)
    if curves:
        learning_curves({result.model: result.metrics}, cfg.out_dir / "curves.png")
    return result
