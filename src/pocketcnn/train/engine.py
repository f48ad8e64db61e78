"""The training engine: one loop for every registered model, in one process or under torchrun.

``fit(cfg)`` trains, evaluates on the test split every epoch, appends ``metrics.jsonl`` and
writes ``last.pt`` / ``best.pt`` atomically. A checkpoint taken anywhere (epoch end, or
mid-epoch on SIGINT/SIGTERM) resumes to the same weights an uninterrupted run reaches:
the data order depends only on (seed, epoch), and every RNG state is saved.

The parts: :mod:`.data_prep` (data sets, this rank's batches), :mod:`.hardware` (device, mixed
precision), :mod:`.optim` (optimizer, schedule, EMA), :mod:`.state` (set-up, checkpoint, resume),
:mod:`.loop` (epochs and steps), :mod:`.evaluation`, :mod:`.signals` (Ctrl-C, SIGTERM),
:mod:`.runfolder` (what a run writes where); the checkpoint's schema is
:class:`~pocketcnn.artifacts.checkpoint.TrainingCheckpoint`. Their public names are importable
from here too.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..data import augment_batch, normalize_batch
from . import distributed as D
from .callbacks import Callbacks
from .config import TrainConfig
from .data_prep import RunData, iterate, load_data, prepare_data
from .evaluation import EvalResult, evaluate
from .hardware import amp_dtype, amp_enabled, cpu_has_native_bf16, select_device
from .loop import EpochTotals, backward_step, end_epoch, forward_loss, run_epochs, train_epoch
from .optim import WARMUP_MAX_SHARE, Optimization, ema_update, lr_factor, make_optimizer, warmup_steps
from .runfolder import RESULT_FILES, check_run_folder, existing_run, refuse_earlier_run, start_run_folder
from .signals import Interrupted, StopFlag
from .state import SMALL_INPUT_MAX, Position, RunModel, RunState, build_model, restore, setup_run

__all__ = ["Callbacks", "EpochTotals", "EvalResult", "FitResult", "Interrupted", "Optimization", "Position",
           "RESULT_FILES", "RunData", "RunModel", "RunState", "SMALL_INPUT_MAX", "StopFlag", "WARMUP_MAX_SHARE",
           "amp_dtype", "amp_enabled", "augment_batch", "backward_step", "build_model", "cpu_has_native_bf16",
           "ema_update", "end_epoch", "evaluate", "existing_run", "fit", "forward_loss", "iterate", "load_data",
           "lr_factor", "make_optimizer", "normalize_batch", "prepare_data", "refuse_earlier_run", "restore",
           "select_device", "setup_run", "train_epoch", "warmup_steps"]


@dataclass
class FitResult:
    model: str
    epochs: int
    best_top1: float
    final_top1: float
    params: int
    wall_seconds: float
    checkpoint: str
    best_checkpoint: str
    images_per_s: float
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "metrics"}


def fit(cfg: TrainConfig, callbacks: Callbacks | None = None, *, model: nn.Module | None = None,
        after_step: Callable[[], None] | None = None, save: bool = True,
        resume: str | Path | None = None, overwrite: bool = False) -> FitResult:
    """Train ``cfg.model`` (or the given ``model``) on ``cfg.data``; see the module docstring.

    ``resume``: a checkpoint of this run to continue from. ``after_step``: called after every
    optimizer step (compression keeps masks and shared weights with it). ``save=False``
    writes nothing. A folder that already holds a run's results is refused (OutputError)
    unless ``overwrite`` or ``resume``; the folder is checked to be writable before training.
    Under torchrun, the process group fit joins is left on every way out (the end, an error,
    Ctrl-C or SIGTERM) when fit made it; a group the caller made is the caller's.
    """
    t_start = time.perf_counter()
    if save and os.environ.get("RANK", "0") == "0":
        check_run_folder(cfg.out_dir, resume=bool(resume), overwrite=overwrite)
    device = select_device(cfg.device)
    dist = D.setup(device.type)
    try:
        state = setup_run(cfg, model=model, save=save, pretrained=not resume, device=device, dist=dist)
        if resume:
            restore(state, resume)
        if callbacks and dist.is_main:
            callbacks.on_start(state.notes)
        if state.writes:
            start_run_folder(state.out_dir, cfg.to_dict(), state.pos.metrics)
        run_epochs(state, callbacks, after_step)
    finally:
        D.teardown(dist)
    return fit_result(state, time.perf_counter() - t_start)


def fit_result(state: RunState, seconds: float) -> FitResult:
    metrics, ips = state.pos.metrics, state.pos.ips
    return FitResult(state.model.name, state.cfg.epochs, state.best_top1,
                     metrics[-1]["test_top1"] if metrics else float("nan"),
                     sum(p.numel() for p in state.core.parameters()), seconds, str(state.last), str(state.best),
                     sum(ips) / len(ips) if ips else 0.0, metrics)
