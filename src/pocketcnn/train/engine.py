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
from ..data import normalize_batch
from ..errors import CheckpointError, ConfigError, PocketCNNError, TrainingError
from ..registry import create_model
from . import distributed as D
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .config import TrainConfig


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
    train = load_dataset(cfg.data, "train", cfg.data_dir)
    test = load_dataset(cfg.data, "test", cfg.data_dir)
    spec = dataset_spec(cfg.data, train)
    if cfg.input_size:
        spec = DataSpec(spec.name, spec.num_classes, spec.in_chans, cfg.input_size, spec.mean, spec.std, spec.classes)
    return balanced_subset(train, cfg.train_samples, cfg.seed), balanced_subset(test, cfg.test_samples, cfg.seed), spec


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
    kwargs.setdefault("small_input", spec.image_size <= SMALL_INPUT_MAX)
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
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on biases and BN
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=0.0316, momentum=cfg.momentum)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine to zero or x0.1 steps at 50% and 75%, per optimizer step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

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


def fit(cfg: TrainConfig, callbacks: Callbacks | None = None, *, model: nn.Module | None = None,
        after_step: Callable[[], None] | None = None, save: bool = True,
        resume: str | Path | None = None) -> FitResult:
    """Train ``cfg.model`` (or the given ``model``) on ``cfg.data``; see the module docstring.

    ``resume``: a checkpoint of this run to continue from. ``after_step``: called after every
    optimizer step (compression keeps masks and shared weights with it). ``save=False``
    writes nothing.
    """
    t_start = time.perf_counter()
    device = select_device(cfg.device)
    dist = D.setup(device.type)
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
    name = getattr(model, "pocketcnn_name", cfg.model)
    model_kwargs = getattr(model, "pocketcnn_kwargs", {})
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    core = model
    optimizer = make_optimizer(cfg, core)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    ema = AveragedModel(core, multi_avg_fn=ema_update(cfg.ema_decay), use_buffers=True) if cfg.ema else None
    amp = amp_enabled(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * dist.rank)
    out_dir = cfg.out_dir
    metrics: list[dict[str, Any]] = []
    start_epoch, skip, step = 0, 0, 0
    partial: tuple = (0.0, 0, 0)

    if resume:
        ckpt = load_checkpoint(resume)
        if ckpt["model"] != name or "optimizer" not in ckpt:
            raise CheckpointError(f"{resume}: not a training checkpoint of {name!r} (found {ckpt['model']!r})")
        core.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
            ema.n_averaged.fill_(int(ckpt.get("ema_n_averaged", 1)))
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], gen)
        start_epoch, skip, step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt.get("step", 0)
        if dist.is_main:  # the saved sums are over all ranks: count them once
            partial = tuple(ckpt.get("epoch_partial") or (0.0, 0, 0))
        metrics = list(ckpt.get("metrics", []))

    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.enabled else model
    eval_model = ema.module if ema is not None else core
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    if dist.is_main and save:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
        atomic_write_text(out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))

    def checkpoint(epoch: int, batch_in_epoch: int, partial: tuple[float, int, int] = (0.0, 0, 0)) -> None:
        if not (dist.is_main and save):
            return
        save_checkpoint(last, {
            "model": name, "model_kwargs": model_kwargs, "state_dict": core.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": _rng_state(gen), "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step,
            "epoch_partial": list(partial),  # train loss sum, correct, seen so far in an interrupted epoch
            "config": cfg.to_dict(), "metrics": metrics, "data": spec.to_dict(),
        })

    best_top1 = max((m["test_top1"] for m in metrics), default=-1.0)
    ips_all: list[float] = []
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            indices = list(sampler)
            net.train()
            if callbacks and dist.is_main:
                callbacks.on_epoch_start(epoch + 1, cfg.epochs, steps_per_epoch)
            t0 = time.perf_counter()
            loss_sum, correct, seen = (float(partial[0]), int(partial[1]), int(partial[2])) if skip else (0.0, 0, 0)
            seen_at_start = seen
            for i, (x, y) in enumerate(iterate(train_ds, indices, local_bs, cfg.workers, skip, drop_last=True), skip):
                # a stop request is honoured before this batch draws any random numbers, so the
                # checkpoint's RNG states are exactly those an uninterrupted run has here
                if D.any_flags([stop.signal is not None], dist, device)[0]:
                    part = D.all_reduce_sum(torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=device), dist)
                    checkpoint(epoch, i, (part[0].item(), int(part[1]), int(part[2])))
                    raise Interrupted(f"interrupted by signal {stop.signal or 'on another rank'}: saved {last} "
                                      f"(epoch {epoch + 1}, step {i}); resume with --resume {last}")
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                x = augment_batch(x, crop_padding=cfg.crop_padding if "crop" in cfg.augment else 0,
                                  hflip="flip" in cfg.augment, erase=cfg.erase_prob if "erase" in cfg.augment else 0.0,
                                  generator=gen)
                x = normalize_batch(x, spec.mean, spec.std, size=cfg.input_size, channels_last=cfg.channels_last)
                out, loss = forward_loss(net, x, y, criterion, amp)
                if D.any_flags([not torch.isfinite(loss).item()], dist, device)[0]:
                    raise TrainingError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped without saving "
                        f"it (last good checkpoint: {last if last.exists() else 'none yet'}). Try a lower --lr.")
                backward_step(loss, optimizer, scaler, core, cfg.grad_clip)
                scheduler.step()
                step += 1
                if ema is not None:
                    ema.update_parameters(core)
                if after_step is not None:
                    after_step()
                seen += y.numel()
                loss_sum += loss.item() * y.numel()
                correct += int((out.argmax(1) == y).sum())
                if callbacks and dist.is_main:
                    callbacks.on_step(i + 1, loss.item(), 100 * correct / seen,
                                      (seen - seen_at_start) * dist.world_size / (time.perf_counter() - t0))
            train_seconds = time.perf_counter() - t0
            skip = 0
            res = evaluate(eval_model, test_ds, spec, batch_size=cfg.eval_batch_size, device=device,
                           channels_last=cfg.channels_last, dist=dist, workers=cfg.workers)
            totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=device)
            D.all_reduce_sum(totals, dist)
            ips = (seen - seen_at_start) * dist.world_size / max(train_seconds, 1e-9)
            ips_all.append(ips)
            m = {"epoch": epoch + 1, "train_loss": totals[0].item() / max(totals[2].item(), 1),
                 "train_top1": 100 * totals[1].item() / max(totals[2].item(), 1), "test_top1": res.top1,
                 "test_top5": res.top5, "test_loss": res.loss, "test_images": res.n, "lr": optimizer.param_groups[0]["lr"],
                 "epoch_seconds": round(time.perf_counter() - t0, 3), "images_per_s": round(ips, 1)}
            metrics.append(m)
            checkpoint(epoch + 1, 0)
            if dist.is_main and save:
                with open(out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(m) + "\n")
                if res.top1 > best_top1:
                    tmp = best.with_suffix(".pt.tmp")
                    tmp.unlink(missing_ok=True)
                    os.link(last, tmp)  # last.pt is only ever replaced, never rewritten: share its bytes
                    os.replace(tmp, best)
            best_top1 = max(best_top1, res.top1)
            if callbacks and dist.is_main:
                callbacks.on_epoch_end(m)
            if stop.signal is not None:
                raise Interrupted(f"interrupted by signal {stop.signal}: saved {last} (epoch {epoch + 1} complete); "
                                  f"resume with --resume {last}")
    final = metrics[-1]["test_top1"] if metrics else float("nan")
    return FitResult(name, cfg.epochs, best_top1, final, sum(p.numel() for p in core.parameters()),
                     time.perf_counter() - t_start, str(last), str(best),
                     sum(ips_all) / len(ips_all) if ips_all else 0.0, metrics)
