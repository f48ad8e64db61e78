"""One run's state: set up from a config (:func:`setup_run`), saved as a checkpoint, restored from one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..artifacts.checkpoint import TrainingCheckpoint, load_checkpoint, save_training_checkpoint
from ..data import DataSpec
from ..errors import CheckpointError, ConfigError
from ..models.registry import build_of, create_model
from . import distributed as D
from .config import TrainConfig
from .data_prep import RunData, prepare_data
from .finetune import HeadOnly, freeze_features, load_pretrained
from .hardware import select_device
from .optim import Optimization, ema_update, make_optimization

SMALL_INPUT_MAX = 96  # up to this side the small-input stem is the default (model_kwargs may say otherwise)


@dataclass
class RunModel:
    """The network being trained, as each use needs it."""

    core: nn.Module  # the model itself: what checkpoints and the optimizer hold
    net: nn.Module  # what the forward pass runs: core, or its classifier alone (HeadOnly), in DDP with N processes
    name: str  # registry name and keywords, saved with the weights
    kwargs: dict[str, Any]
    ema: AveragedModel | None  # the exponential moving average of core (TrainConfig.ema)


@dataclass
class Position:
    """Where the run is, and what it has measured so far."""

    start_epoch: int = 0
    skip: int = 0  # batches of start_epoch already done (a checkpoint taken mid-epoch)
    step: int = 0  # optimizer steps so far
    partial: tuple[float, int, int] = (0.0, 0, 0)  # loss sum, correct, seen of an interrupted epoch
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one dict per finished epoch
    ips: list[float] = field(default_factory=list)  # training images/s of each epoch of this session


@dataclass
class RunState:
    """Everything one training run carries from step to step, and into its checkpoints."""

    cfg: TrainConfig
    device: torch.device
    dist: D.DistInfo
    data: RunData
    model: RunModel
    opt: Optimization
    save: bool = True  # False: nothing is written
    pos: Position = field(default_factory=Position)
    notes: list[str] = field(default_factory=list)  # what the set-up chose (input size, pretrained weights...)

    @property
    def core(self) -> nn.Module:
        return self.model.core

    @property
    def spec(self) -> DataSpec:
        return self.data.spec

    @property
    def out_dir(self) -> Path:
        return self.cfg.out_dir

    @property
    def last(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def writes(self) -> bool:
        return self.dist.is_main and self.save

    @property
    def ema_ready(self) -> bool:
        """Whether the EMA has averaged over its window (``1 / (1 - decay)`` steps, 500 at 0.998). Until
        then a run evaluates and exports its raw weights: a short run's EMA still leans on early ones."""
        ema = self.model.ema
        return ema is not None and int(ema.n_averaged) >= round(1 / (1 - self.cfg.ema_decay))

    @property
    def eval_model(self) -> nn.Module:
        return self.model.ema.module if self.ema_ready else self.core

    @property
    def best_top1(self) -> float:
        return max((m["test_top1"] for m in self.pos.metrics), default=-1.0)

    def checkpoint(self, epoch: int, batch_in_epoch: int, partial: tuple[float, int, int] = (0.0, 0, 0)) -> None:
        """Write ``last.pt`` (rank 0): a :class:`~pocketcnn.artifacts.checkpoint.TrainingCheckpoint`."""
        if self.writes:
            save_training_checkpoint(self.last, self.record(epoch, batch_in_epoch, partial))

    def record(self, epoch: int, batch_in_epoch: int, partial: tuple[float, int, int]) -> TrainingCheckpoint:
        """The run as a checkpoint: ``epoch`` finished epochs and ``batch_in_epoch`` batches of the next one
        (``partial``: their train loss sum, correct and seen, over all ranks)."""
        m, o, ema = self.model, self.opt, self.model.ema
        return TrainingCheckpoint(
            model=m.name, model_kwargs=m.kwargs, state_dict=m.core.state_dict(), optimizer=o.optimizer.state_dict(),
            scheduler=o.scheduler.state_dict(), rng=rng_state(self.data.gen), epoch=epoch,
            ema=ema.module.state_dict() if ema is not None else None,
            ema_n_averaged=int(ema.n_averaged) if ema is not None else 0, ema_ready=self.ema_ready,
            scaler=o.scaler.state_dict() if o.scaler.is_enabled() else None, batch_in_epoch=batch_in_epoch,
            step=self.pos.step, epoch_partial=list(partial), config=self.cfg.to_dict(), metrics=self.pos.metrics,
            data=self.spec.to_dict())


def build_model(cfg: TrainConfig, spec: DataSpec) -> nn.Module:
    """The run's network. Images up to 96 px get the small-input stem (stride 1): with the usual
    total stride 32 their last feature maps would be 3x3 or smaller (3x3 at 72 px, 2x2 at 56),
    too coarse for the pooling head; from 97 px on, stride 32 leaves 4x4 or more."""
    kwargs = dict(cfg.model_kwargs)
    # pretrained weights have the ImageNet stem: the small-input one has another first convolution
    kwargs.setdefault("small_input", spec.image_size <= SMALL_INPUT_MAX and cfg.weights is None)
    return create_model(cfg.model, num_classes=spec.num_classes, in_chans=spec.in_chans, **kwargs)


def setup_run(cfg: TrainConfig, *, model: nn.Module | None = None, save: bool = True, pretrained: bool = True,
              device: torch.device | None = None, dist: D.DistInfo | None = None) -> RunState:
    """Device, process group (``dist``: one already joined), data, model (with ``cfg.weights`` loaded when
    ``pretrained``), optimizer, schedule, EMA and mixed precision for ``cfg``."""
    device = device or select_device(cfg.device)
    dist = dist or D.setup(device.type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {dist.world_size} processes")
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg, dist)
    core = model if model is not None else build_model(cfg, data.spec)
    build = build_of(core)
    notes = [f"input {data.spec.in_chans}x{data.spec.image_size}x{data.spec.image_size}, "
             f"mean {[round(m, 4) for m in data.spec.mean]}, std {[round(s, 4) for s in data.spec.std]}"]
    core, more = place_model(cfg, core, device, dist, pretrained)
    opt = make_optimization(cfg, core, data.steps_per_epoch, device)
    ema = AveragedModel(core, multi_avg_fn=ema_update(cfg.ema_decay), use_buffers=True) if cfg.ema else None
    trained = HeadOnly(core) if cfg.freeze == "features" else core
    net = nn.parallel.DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.enabled else trained
    run_model = RunModel(core, net, build.name if build else cfg.model, dict(build.kwargs) if build else {}, ema)
    return RunState(cfg, device, dist, data, run_model, opt, save, notes=notes + more)


def place_model(cfg: TrainConfig, model: nn.Module, device: torch.device, dist: D.DistInfo,
                pretrained: bool) -> tuple[nn.Module, list[str]]:
    """Pretrained weights (when ``pretrained``), frozen features, the device and memory format, SyncBatchNorm;
    with a note on each choice."""
    notes = []
    if cfg.weights and pretrained:
        notes += load_pretrained(model, cfg)
    if cfg.freeze == "features":
        notes.append(f"features frozen: {freeze_features(model):,} parameters; only the classifier trains")
    elif cfg.weights and cfg.lr_features != 1.0:
        notes.append(f"the pretrained body learns at {cfg.lr_features:g} x lr")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, notes


def restore(state: RunState, resume: str | Path) -> None:
    """Continue ``state`` from a checkpoint of the same run: weights, optimizer, schedule, EMA, RNG, position."""
    raw = load_checkpoint(resume)
    if raw["model"] != state.model.name or "optimizer" not in raw:
        raise CheckpointError(f"{resume}: not a training checkpoint of {state.model.name!r} (found {raw['model']!r})")
    ckpt = TrainingCheckpoint.from_dict(raw, str(resume))
    state.core.load_state_dict(ckpt.state_dict)
    state.opt.optimizer.load_state_dict(ckpt.optimizer)
    state.opt.scheduler.load_state_dict(ckpt.scheduler)
    if state.model.ema is not None and ckpt.ema is not None:
        state.model.ema.module.load_state_dict(ckpt.ema)
        state.model.ema.n_averaged.fill_(int(ckpt.ema_n_averaged))
    if ckpt.scaler:
        state.opt.scaler.load_state_dict(ckpt.scaler)
    set_rng_state(ckpt.rng, state.data.gen)
    pos = state.pos
    pos.start_epoch, pos.skip, pos.step = ckpt.epoch, ckpt.batch_in_epoch, ckpt.step
    if state.dist.is_main:  # the saved sums are over all ranks: count them once
        pos.partial = tuple(ckpt.epoch_partial)
    pos.metrics = list(ckpt.metrics)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """The checkpoint's ``rng``: :data:`~pocketcnn.artifacts.checkpoint.RNG_KEYS`, and ``cuda`` where there is CUDA."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "augment": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["augment"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
