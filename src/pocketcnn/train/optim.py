"""How a run learns: the optimizer, the learning-rate schedule, the EMA of the weights, mixed precision's scaler."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig
from .finetune import param_groups
from .hardware import amp_dtype, amp_enabled

WARMUP_MAX_SHARE = 0.1  # warm-up takes at most this share of a run's steps


@dataclass
class Optimization:
    """What one optimizer step uses besides the model."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per optimizer step
    scaler: torch.amp.GradScaler  # loss scaling for fp16 (CUDA); a disabled no-op wrapper otherwise
    amp: bool  # autocast on (TrainConfig.amp resolved for the device)
    criterion: nn.Module


def make_optimization(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int, device: torch.device) -> Optimization:
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    amp = amp_enabled(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    return Optimization(optimizer, scheduler, scaler, amp, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over :func:`~pocketcnn.train.finetune.param_groups` (no weight decay on
    biases and batch norm; the pretrained body at ``lr * lr_features``; frozen parameters left out)."""
    groups = param_groups(cfg, model)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        try:  # one fused kernel per step: AlexNet's update is several times faster (docs/training.md)
            return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        except RuntimeError:  # a device or dtype without the fused kernel
            return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=0.0316, momentum=cfg.momentum)


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """``warmup_epochs`` of steps, but at most :data:`WARMUP_MAX_SHARE` of the run: a 30-epoch run
    warms up for its first epoch (3%), a 3-epoch run for 10% of its steps instead of a third, a
    1-epoch run for 10% instead of all of them (it used to end still warming up)."""
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
