"""The training engine: one loop for every registered model, in one process or under torchrun.

``fit(cfg)`` trains, evaluates on the test split every epoch, appends ``metrics.jsonl`` and
writes ``last.pt`` / ``best.pt`` atomically. A checkpoint taken anywhere (epoch end, or
mid-epoch on SIGINT/SIGTERM) resumes to the same weights an uninterrupted run reaches:
the data order depends only on (seed, epoch), and every RNG state is saved.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler

from ..data import DataSpec, TensorImageDataset, augment_batch, balanced_subset, dataset_spec, load_dataset
from ..data import split_balanced
from ..data import normalize_batch
from ..errors import CheckpointError, ConfigError, OutputError, PocketCNNError, TrainingError
from ..artifacts.checkpoint import load_checkpoint, save_checkpoint
from ..fileio import atomic_write_text, check_writable_dir
from ..models.registry import build_of, create_model
from . import distributed as D
from .config import TrainConfig
from .finetune import HeadOnly, features_to_eval, freeze_features, load_pretrained, param_groups


class Interrupted(PocketCNNError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""

    exit_code = 130


class Callbacks(Protocol):
    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def on_step(self, step: int, loss: float, acc: float, images_per_s: float) -> None: ...
    def on_epoch_end(self, metrics: dict[str, Any]) -> None: ...


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float
    loss: float
    n: int
    per_class: list[float]  # top-1 per class, percent
    confusion: list[list[int]]  # [true][predicted]


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


def select_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda requested but no CUDA device is available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def load_data(cfg: TrainConfig) -> tuple[Any, Any, DataSpec]:
    """Training and test sets (or a class-balanced ``val_split`` of the training images) and the run's
    preprocessing: the data set's, resized to ``input_size``, or the pretrained weights' (``weights``)."""
    from .finetune import pretrained_data_spec, pretrained_state

    weights_spec = pretrained_state(cfg)[1] if cfg.weights else None
    size = cfg.input_size or (weights_spec.image_size if weights_spec else None)
    kw = {"image_size": size} if cfg.data == "imagefolder" and size else {}
    if cfg.val_split:
        whole = load_dataset(cfg.data, "train" if _has_train_split(cfg) else "all", cfg.data_dir, **kw)
        train, test = split_balanced(whole, cfg.val_split, cfg.seed)
    else:
        train = load_dataset(cfg.data, "train", cfg.data_dir, **kw)
        test = load_dataset(cfg.data, "test", cfg.data_dir, **kw)
    for key, ds, split in (("train_samples", train, "training"), ("test_samples", test, "test")):
        n = getattr(cfg, key)
        if n is not None and n > len(ds):
            raise ConfigError(f"{key}={n} is more than the {len(ds):,} {split} images of {cfg.data}; "
                              f"pass at most {len(ds)} (or leave it out for all of them)")
    spec = dataset_spec(cfg.data, train)
    if weights_spec is not None:
        spec = pretrained_data_spec(spec, weights_spec, cfg.input_size)
    elif cfg.input_size:
        spec = DataSpec(spec.name, spec.num_classes, spec.in_chans, cfg.input_size, spec.mean, spec.std, spec.classes)
    return balanced_subset(train, cfg.train_samples, cfg.seed), balanced_subset(test, cfg.test_samples, cfg.seed), spec


def _has_train_split(cfg: TrainConfig) -> bool:
    """Whether an image folder has a train/ subfolder (else its class folders are the data set itself)."""
    from ..data import resolve_data_dir

    return cfg.data != "imagefolder" or (resolve_data_dir(cfg.data, cfg.data_dir) / "train").is_dir()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), as oneDNN needs to be fast."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes: assume not
        return False


def amp_enabled(amp: bool | str, device: torch.device) -> bool:
    """``TrainConfig.amp`` resolved for ``device``: ``"auto"`` is on for CUDA and for a CPU with
    native bf16, off otherwise (bf16 emulated in fp32 arithmetic is slower than fp32)."""
    if amp != "auto":
        return bool(amp)
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def amp_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision type: fp16 (with loss scaling) on CUDA, bf16 (no scaling needed) on CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def forward_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
                 amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward pass: logits and the loss, computed in fp32 under mixed precision."""
    with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=amp):
        out = net(x)
        loss = criterion(out.float(), y)
    return out, loss


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  model: nn.Module, grad_clip: float) -> None:
    """Gradients of ``loss``, clipped to ``grad_clip`` (0: off) on the unscaled values, then one
    optimizer step through ``scaler`` (a no-op wrapper when it is disabled)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """The EMA step for ``AveragedModel(multi_avg_fn=...)``, with TensorFlow's warm-up.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))`` (as in
    ``tf.train.ExponentialMovingAverage(num_updates=...)`` and timm's EMA warm-up), so the
    average forgets the random initialization within the first few hundred steps. Without
    it a short run (3 epochs, 1,400 steps at decay 0.998) keeps 6% of the initial batch-norm
    variances (1.0, where trained ones are ~0.01), which shrinks every MobileNet layer's
    output until the EMA model predicts one class. Floating tensors are averaged (batch-norm
    statistics included: ``use_buffers=True``); integer ones (``num_batches_tracked``) copied.
    """
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        for e, p in zip(ema_params, params):
            if e.is_floating_point() or e.is_complex():
                e.lerp_(p, weight)
            else:
                e.copy_(p)
    return update


SMALL_INPUT_MAX = 96  # up to this side the small-input stem is the default (model_kwargs may say otherwise)


def build_model(cfg: TrainConfig, spec: DataSpec) -> nn.Module:
    """The run's network. Images up to 96 px get the small-input stem (stride 1): with the usual
    total stride 32 their last feature maps would be 3x3 or smaller (3x3 at 72 px, 2x2 at 56),
    too coarse for the pooling head; from 97 px on, stride 32 leaves 4x4 or more."""
    kwargs = dict(cfg.model_kwargs)
    # pretrained weights have the ImageNet stem: the small-input one has another first convolution
    kwargs.setdefault("small_input", spec.image_size <= SMALL_INPUT_MAX and cfg.weights is None)
    return create_model(cfg.model, num_classes=spec.num_classes, in_chans=spec.in_chans, **kwargs)


def iterate(dataset, indices: list[int], batch_size: int, workers: int, skip: int = 0,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(uint8 (B, C, H, W), int64 (B,))`` over ``indices`` in order, skipping ``skip`` batches."""
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    start = skip * batch_size
    if isinstance(dataset, TensorImageDataset):
        for i in range(start, stop, batch_size):
            idx = torch.as_tensor(indices[i:i + batch_size])
            yield dataset.data[idx], dataset.targets[idx]
        return
    loader = DataLoader(torch.utils.data.Subset(dataset, indices[start:stop]), batch_size=batch_size,
                        num_workers=workers, persistent_workers=False)
    for x, y in loader:
        yield x, torch.as_tensor(y)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over :func:`~pocketcnn.train.finetune.param_groups` (no weight decay on
    biases and batch norm; the pretrained body at ``lr * lr_features``; frozen parameters left out)."""
    groups = param_groups(cfg, model)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        try:  # one fused kernel per step: AlexNet's 57 M-parameter update takes 0.06 s instead of 0.27 (2 CPU cores)
            return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        except RuntimeError:  # a device or dtype without the fused kernel
            return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=0.0316, momentum=cfg.momentum)


WARMUP_MAX_SHARE = 0.1  # warm-up takes at most this share of a run's steps


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """``warmup_epochs`` of steps, but at most :data:`WARMUP_MAX_SHARE` of the run: a 30-epoch run
    warms up for its first epoch (3%), a 3-epoch run for 10% of its steps instead of a third, a
    1-epoch run for 10% instead of all of them (it used to end still warming up, at 36% top-1)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    return min(int(cfg.warmup_epochs * steps_per_epoch), int(WARMUP_MAX_SHARE * total))


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up (:func:`warmup_steps`), then cosine to zero or x0.1 steps at 50% and 75%, per optimizer step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = warmup_steps(cfg, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        t = (step - warm) / max(1, total - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, dataset, spec: DataSpec, *, batch_size: int = 512, device: torch.device | None = None,
             channels_last: bool = False, dist: D.DistInfo = D.DistInfo(), workers: int = 0,
             flip_tta: bool = False) -> EvalResult:
    """Top-1/top-5/loss/per-class/confusion over the WHOLE data set (each rank takes a shard; sums are reduced).

    ``flip_tta``: test-time augmentation, the mean of the logits of each image and its mirror
    image (twice the inference cost; matches training with ``flip`` augmentation)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    k = spec.num_classes
    conf = torch.zeros(k, k, dtype=torch.float64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, top-5 hits
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    for x, y in iterate(dataset, indices, batch_size, workers):
        x = normalize_batch(x.to(device), spec.mean, spec.std, size=spec.image_size, channels_last=channels_last)
        y = y.to(device)
        out = model(x).float()
        if flip_tta:
            out = (out + model(x.flip(-1)).float()) / 2
        sums[0] += F.cross_entropy(out, y, reduction="sum")
        sums[1] += (out.topk(min(5, k), 1).indices == y[:, None]).any(1).sum()
        conf += torch.bincount(y * k + out.argmax(1), minlength=k * k).view(k, k)
    D.all_reduce_sum(conf, dist)
    D.all_reduce_sum(sums, dist)
    model.train(was_training)
    n = int(conf.sum().item())
    per_class = (100 * conf.diag() / conf.sum(1).clamp(min=1)).tolist()
    return EvalResult(100 * conf.diag().sum().item() / max(n, 1), 100 * sums[1].item() / max(n, 1),
                      sums[0].item() / max(n, 1), n, per_class, conf.long().tolist())


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop checks between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if hasattr(signal, "SIGTERM"):
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                self._old.clear()
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "augment": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["augment"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


RESULT_FILES = ("last.pt", "best.pt", "metrics.jsonl")  # what makes a folder hold a training run


def existing_run(out_dir: Path) -> list[str]:
    """The training results already in ``out_dir`` (empty when it holds none)."""
    return [f for f in RESULT_FILES if (out_dir / f).exists()]


@dataclass
class RunState:
    """Everything one training run carries from step to step, and into its checkpoints."""

    cfg: TrainConfig
    device: torch.device
    dist: D.DistInfo
    spec: DataSpec
    train_ds: Any
    test_ds: Any
    sampler: DistributedSampler
    local_bs: int
    steps_per_epoch: int
    core: nn.Module  # the model itself (DDP wraps it in ``net``)
    net: nn.Module
    name: str
    model_kwargs: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    scaler: torch.amp.GradScaler
    amp: bool
    gen: torch.Generator
    criterion: nn.Module
    save: bool
    metrics: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    skip: int = 0  # batches of start_epoch already done (a checkpoint taken mid-epoch)
    step: int = 0  # optimizer steps so far
    partial: tuple[float, int, int] = (0.0, 0, 0)  # loss sum, correct, seen of an interrupted epoch
    ips: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the set-up chose (input size, pretrained weights...)

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
        return self.ema is not None and int(self.ema.n_averaged) >= round(1 / (1 - self.cfg.ema_decay))

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema_ready else self.core

    @property
    def best_top1(self) -> float:
        return max((m["test_top1"] for m in self.metrics), default=-1.0)

    def checkpoint(self, epoch: int, batch_in_epoch: int, partial: tuple[float, int, int] = (0.0, 0, 0)) -> None:
        """Write ``last.pt`` (rank 0): weights, optimizer, scheduler, EMA, scaler, RNG, position, config, metrics."""
        if not self.writes:
            return
        ema = self.ema
        save_checkpoint(self.last, {
            "model": self.name, "model_kwargs": self.model_kwargs, "state_dict": self.core.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0, "ema_ready": self.ema_ready,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": _rng_state(self.gen), "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": self.step,
            "epoch_partial": list(partial),  # train loss sum, correct, seen so far in an interrupted epoch
            "config": self.cfg.to_dict(), "metrics": self.metrics, "data": self.spec.to_dict(),
        })


def setup_run(cfg: TrainConfig, *, model: nn.Module | None = None, save: bool = True,
              pretrained: bool = True, device: torch.device | None = None, dist: D.DistInfo | None = None) -> RunState:
    """Device, process group, data, model (with ``cfg.weights`` loaded when ``pretrained``), optimizer,
    schedule, EMA and mixed precision for ``cfg``."""
    device = device or select_device(cfg.device)
    dist = dist or D.setup(device.type)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {dist.world_size} processes")
    torch.manual_seed(cfg.seed)
    train_ds, test_ds, spec = load_data(cfg)
    local_bs = cfg.batch_size // dist.world_size
    sampler = DistributedSampler(train_ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    steps_per_epoch = len(sampler) // local_bs
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(train_ds)} training samples")
    model = model if model is not None else build_model(cfg, spec)
    build = build_of(model)
    notes = [f"input {spec.in_chans}x{spec.image_size}x{spec.image_size}, mean {[round(m, 4) for m in spec.mean]}, "
             f"std {[round(s, 4) for s in spec.std]}"]
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
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.ema_decay), use_buffers=True) if cfg.ema else None
    amp = amp_enabled(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    trained = HeadOnly(model) if cfg.freeze == "features" else model
    net = nn.parallel.DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.enabled else trained
    return RunState(cfg, device, dist, spec, train_ds, test_ds, sampler, local_bs, steps_per_epoch, model, net,
                    build.name if build else cfg.model, dict(build.kwargs) if build else {}, optimizer, scheduler,
                    ema, scaler, amp, torch.Generator().manual_seed(cfg.seed + 7919 * dist.rank),
                    nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), save, notes=notes)


def restore(state: RunState, resume: str | Path) -> None:
    """Continue ``state`` from a checkpoint of the same run: weights, optimizer, schedule, EMA, RNG, position."""
    ckpt = load_checkpoint(resume)
    if ckpt["model"] != state.name or "optimizer" not in ckpt:
        raise CheckpointError(f"{resume}: not a training checkpoint of {state.name!r} (found {ckpt['model']!r})")
    state.core.load_state_dict(ckpt["state_dict"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.module.load_state_dict(ckpt["ema"])
        state.ema.n_averaged.fill_(int(ckpt.get("ema_n_averaged", 1)))
    if ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"], state.gen)
    state.start_epoch, state.skip, state.step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt.get("step", 0)
    if state.dist.is_main:  # the saved sums are over all ranks: count them once
        state.partial = tuple(ckpt.get("epoch_partial") or (0.0, 0, 0))
    state.metrics = list(ckpt.get("metrics", []))


@dataclass
class EpochTotals:
    """One epoch's training sums on this rank (an interrupted epoch's saved sums included)."""

    loss_sum: float
    correct: int
    seen: int
    seen_at_start: int  # what the saved sums already counted (a resumed epoch)
    started: float = 0.0  # time.perf_counter() at the epoch's start
    seconds: float = 0.0  # training time (evaluation excluded)


def train_epoch(state: RunState, epoch: int, stop: _StopFlag, callbacks: Callbacks | None,
                after_step: Callable[[], None] | None) -> EpochTotals:
    """One pass over the training data (from batch ``state.skip`` when resuming mid-epoch)."""
    cfg, dist, device = state.cfg, state.dist, state.device
    state.sampler.set_epoch(epoch)
    indices = list(state.sampler)
    state.net.train()
    if cfg.freeze == "features":
        features_to_eval(state.core)
    if callbacks and dist.is_main:
        callbacks.on_epoch_start(epoch + 1, cfg.epochs, state.steps_per_epoch)
    t0 = time.perf_counter()
    skip = state.skip
    loss_sum, correct, seen = state.partial if skip else (0.0, 0, 0)
    totals = EpochTotals(float(loss_sum), int(correct), int(seen), seen_at_start=int(seen), started=t0)
    for i, (x, y) in enumerate(iterate(state.train_ds, indices, state.local_bs, cfg.workers, skip, drop_last=True),
                               skip):
        # a stop request is honoured before this batch draws any random numbers, so the
        # checkpoint's RNG states are exactly those an uninterrupted run has here
        if D.any_flags([stop.signal is not None], dist, device)[0]:
            part = D.all_reduce_sum(torch.tensor([totals.loss_sum, totals.correct, totals.seen], dtype=torch.float64,
                                                 device=device), dist)
            state.checkpoint(epoch, i, (part[0].item(), int(part[1]), int(part[2])))
            raise Interrupted(f"interrupted by signal {stop.signal or 'on another rank'}: saved {state.last} "
                              f"(epoch {epoch + 1}, step {i}); resume with --resume {state.last}")
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = augment_batch(x, crop_padding=cfg.crop_padding if "crop" in cfg.augment else 0,
                          hflip="flip" in cfg.augment, erase=cfg.erase_prob if "erase" in cfg.augment else 0.0,
                          generator=state.gen)
        x = normalize_batch(x, state.spec.mean, state.spec.std, size=state.spec.image_size,
                            channels_last=cfg.channels_last)
        out, loss = forward_loss(state.net, x, y, state.criterion, state.amp)
        if D.any_flags([not torch.isfinite(loss).item()], dist, device)[0]:
            raise TrainingError(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped without saving "
                f"it (last good checkpoint: {state.last if state.last.exists() else 'none yet'}). Try a lower --lr.")
        backward_step(loss, state.optimizer, state.scaler, state.core, cfg.grad_clip)
        state.scheduler.step()
        state.step += 1
        if state.ema is not None:
            state.ema.update_parameters(state.core)
        if after_step is not None:
            after_step()
        totals.seen += y.numel()
        totals.loss_sum += loss.item() * y.numel()
        totals.correct += int((out.argmax(1) == y).sum())
        if callbacks and dist.is_main:
            callbacks.on_step(i + 1, loss.item(), 100 * totals.correct / totals.seen,
                              (totals.seen - totals.seen_at_start) * dist.world_size / (time.perf_counter() - t0))
    state.skip = 0
    totals.seconds = time.perf_counter() - t0
    return totals


def end_epoch(state: RunState, epoch: int, totals: EpochTotals, callbacks: Callbacks | None) -> dict[str, Any]:
    """Evaluate, record the epoch's metrics, write ``last.pt`` (and ``best.pt`` when it is the best)."""
    cfg, dist = state.cfg, state.dist
    res = evaluate(state.eval_model, state.test_ds, state.spec, batch_size=cfg.eval_batch_size, device=state.device,
                   channels_last=cfg.channels_last, dist=dist, workers=cfg.workers)
    sums = torch.tensor([totals.loss_sum, totals.correct, totals.seen], dtype=torch.float64, device=state.device)
    D.all_reduce_sum(sums, dist)
    ips = (totals.seen - totals.seen_at_start) * dist.world_size / max(totals.seconds, 1e-9)
    state.ips.append(ips)
    best_before = state.best_top1
    m = {"epoch": epoch + 1, "train_loss": sums[0].item() / max(sums[2].item(), 1),
         "train_top1": 100 * sums[1].item() / max(sums[2].item(), 1), "test_top1": res.top1,
         "test_top5": res.top5, "test_loss": res.loss, "test_images": res.n,
         "lr": state.optimizer.param_groups[0]["lr"], "epoch_seconds": round(time.perf_counter() - totals.started, 3),
         "evaluated": "ema" if state.ema_ready else "raw",
         "images_per_s": round(ips, 1)}
    state.metrics.append(m)
    state.checkpoint(epoch + 1, 0)
    if state.writes:
        with open(state.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        if res.top1 > best_before:
            tmp = state.best.with_suffix(".pt.tmp")
            tmp.unlink(missing_ok=True)
            os.link(state.last, tmp)  # last.pt is only ever replaced, never rewritten: share its bytes
            os.replace(tmp, state.best)
    if callbacks and dist.is_main:
        callbacks.on_epoch_end(m)
    return m


def refuse_earlier_run(out_dir: Path) -> None:
    """Raise OutputError if ``out_dir`` holds an earlier run's results (a new run would replace them)."""
    if existing_run(out_dir):
        raise OutputError(f"{out_dir} already holds a training run ({', '.join(existing_run(out_dir))}): "
                          f"pass --force to replace it, --resume {out_dir / 'last.pt'} to continue it, "
                          "or another --out")


def fit(cfg: TrainConfig, callbacks: Callbacks | None = None, *, model: nn.Module | None = None,
        after_step: Callable[[], None] | None = None, save: bool = True,
        resume: str | Path | None = None, overwrite: bool = False) -> FitResult:
    """Train ``cfg.model`` (or the given ``model``) on ``cfg.data``; see the module docstring.

    ``resume``: a checkpoint of this run to continue from. ``after_step``: called after every
    optimizer step (compression keeps masks and shared weights with it). ``save=False``
    writes nothing. A folder that already holds a run's results is refused (OutputError)
    unless ``overwrite`` or ``resume``; the folder is checked to be writable before training.
    """
    t_start = time.perf_counter()
    if save and os.environ.get("RANK", "0") == "0":
        if not resume and not overwrite:
            refuse_earlier_run(cfg.out_dir)
        check_writable_dir(cfg.out_dir, "training run")
    device = select_device(cfg.device)
    dist = D.setup(device.type)
    try:  # every way out (the end, an error, Ctrl-C / SIGTERM) leaves the process group
        state = setup_run(cfg, model=model, save=save, pretrained=not resume, device=device, dist=dist)
        if resume:
            restore(state, resume)
        if callbacks and state.dist.is_main and hasattr(callbacks, "on_start"):
            callbacks.on_start(state.notes)
        if state.writes:
            state.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(state.out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in state.metrics))
            atomic_write_text(state.out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        with _StopFlag() as stop:
            for epoch in range(state.start_epoch, cfg.epochs):
                totals = train_epoch(state, epoch, stop, callbacks, after_step)
                end_epoch(state, epoch, totals, callbacks)
                if stop.signal is not None:
                    raise Interrupted(f"interrupted by signal {stop.signal}: saved {state.last} (epoch {epoch + 1} "
                                      f"complete); resume with --resume {state.last}")
    finally:
        D.teardown(dist)
    final = state.metrics[-1]["test_top1"] if state.metrics else float("nan")
    return FitResult(state.name, cfg.epochs, state.best_top1, final, sum(p.numel() for p in state.core.parameters()),
                     time.perf_counter() - t_start, str(state.last), str(state.best),
                     sum(state.ips) / len(state.ips) if state.ips else 0.0, state.metrics)
