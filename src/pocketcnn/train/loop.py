"""The training loop: epochs of optimizer steps, each epoch evaluated, recorded and checkpointed."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import augment_batch, normalize_batch
from ..errors import TrainingError
from . import distributed as D
from .callbacks import Callbacks
from .data_prep import iterate
from .evaluation import evaluate
from .finetune import features_to_eval
from .hardware import amp_dtype
from .runfolder import record_epoch
from .signals import Interrupted, StopFlag
from .state import RunState


@dataclass
class EpochTotals:
    """One epoch's training sums on this rank (an interrupted epoch's saved sums included)."""

    loss_sum: float
    correct: int
    seen: int
    seen_at_start: int  # what the saved sums already counted (a resumed epoch)
    started: float = 0.0  # time.perf_counter() at the epoch's start
    seconds: float = 0.0  # training time (evaluation excluded)

    def reduced(self, dist: D.DistInfo, device: torch.device) -> tuple[float, int, int]:
        """Loss sum, correct and seen over all ranks."""
        t = D.all_reduce_sum(torch.tensor([self.loss_sum, self.correct, self.seen], dtype=torch.float64,
                                          device=device), dist)
        return t[0].item(), int(t[1]), int(t[2])


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


def run_epochs(state: RunState, callbacks: Callbacks | None, after_step: Callable[[], None] | None) -> None:
    """From the state's position to ``cfg.epochs``; Ctrl-C or SIGTERM saves a checkpoint and raises Interrupted."""
    with StopFlag() as stop:
        for epoch in range(state.pos.start_epoch, state.cfg.epochs):
            totals = train_epoch(state, epoch, stop, callbacks, after_step)
            end_epoch(state, epoch, totals, callbacks)
            if stop.signal is not None:
                raise Interrupted(f"interrupted by signal {stop.signal}: saved {state.last} (epoch {epoch + 1} "
                                  f"complete); resume with --resume {state.last}")


def train_epoch(state: RunState, epoch: int, stop: StopFlag, callbacks: Callbacks | None,
                after_step: Callable[[], None] | None) -> EpochTotals:
    """One pass over the training data (from batch ``state.pos.skip`` when resuming mid-epoch)."""
    cfg, dist, device, data, pos = state.cfg, state.dist, state.device, state.data, state.pos
    data.sampler.set_epoch(epoch)
    indices = list(data.sampler)
    state.model.net.train()
    if cfg.freeze == "features":
        features_to_eval(state.core)
    if callbacks and dist.is_main:
        callbacks.on_epoch_start(epoch + 1, cfg.epochs, data.steps_per_epoch)
    skip = pos.skip
    loss_sum, correct, seen = pos.partial if skip else (0.0, 0, 0)
    totals = EpochTotals(float(loss_sum), int(correct), int(seen), seen_at_start=int(seen), started=time.perf_counter())
    batches = data_iter(state, indices, skip)
    for i, (x, y) in enumerate(batches, skip):
        # a stop request is honoured before this batch draws any random numbers, so the
        # checkpoint's RNG states are exactly those an uninterrupted run has here
        if D.any_flags([stop.signal is not None], dist, device)[0]:
            state.checkpoint(epoch, i, totals.reduced(dist, device))
            raise Interrupted(f"interrupted by signal {stop.signal or 'on another rank'}: saved {state.last} "
                              f"(epoch {epoch + 1}, step {i}); resume with --resume {state.last}")
        out, loss = train_step(state, x, y, epoch, i)
        if after_step is not None:
            after_step()
        totals.seen += y.numel()
        totals.loss_sum += loss.item() * y.numel()
        totals.correct += int((out.argmax(1) == y.to(out.device)).sum())
        if callbacks and dist.is_main:
            callbacks.on_step(i + 1, loss.item(), 100 * totals.correct / totals.seen,
                              (totals.seen - totals.seen_at_start) * dist.world_size / (time.perf_counter() - totals.started))
    pos.skip = 0
    totals.seconds = time.perf_counter() - totals.started
    return totals


def data_iter(state: RunState, indices: list[int], skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's whole batches of the epoch, in ``indices`` order, from batch ``skip`` on."""
    return iterate(state.data.train, indices, state.data.local_batch, state.cfg.workers, skip, drop_last=True)


def train_step(state: RunState, x: torch.Tensor, y: torch.Tensor, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment and normalize one batch on the device, then one optimizer step (and the EMA's); the logits and loss."""
    cfg, device, spec, opt = state.cfg, state.device, state.spec, state.opt
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    x = augment_batch(x, crop_padding=cfg.crop_padding if "crop" in cfg.augment else 0,
                      hflip="flip" in cfg.augment, erase=cfg.erase_prob if "erase" in cfg.augment else 0.0,
                      generator=state.data.gen)
    x = normalize_batch(x, spec.mean, spec.std, size=spec.image_size, channels_last=cfg.channels_last)
    out, loss = forward_loss(state.model.net, x, y, opt.criterion, opt.amp)
    if D.any_flags([not torch.isfinite(loss).item()], state.dist, device)[0]:
        raise TrainingError(
            f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; stopped without saving "
            f"it (last good checkpoint: {state.last if state.last.exists() else 'none yet'}). Try a lower --lr.")
    backward_step(loss, opt.optimizer, opt.scaler, state.core, cfg.grad_clip)
    opt.scheduler.step()
    state.pos.step += 1
    if state.model.ema is not None:
        state.model.ema.update_parameters(state.core)
    return out, loss


def end_epoch(state: RunState, epoch: int, totals: EpochTotals, callbacks: Callbacks | None) -> dict[str, Any]:
    """Evaluate, record the epoch's metrics, write ``last.pt`` (and ``best.pt`` when it is the best)."""
    cfg, dist = state.cfg, state.dist
    res = evaluate(state.eval_model, state.data.test, state.spec, batch_size=cfg.eval_batch_size, device=state.device,
                   channels_last=cfg.channels_last, dist=dist, workers=cfg.workers)
    loss_sum, correct, seen = totals.reduced(dist, state.device)
    ips = (totals.seen - totals.seen_at_start) * dist.world_size / max(totals.seconds, 1e-9)
    state.pos.ips.append(ips)
    best_before = state.best_top1
    m = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(seen, 1),
         "test_top1": res.top1, "test_top5": res.top5, "test_loss": res.loss, "test_images": res.n,
         "lr": state.opt.optimizer.param_groups[0]["lr"],
         "epoch_seconds": round(time.perf_counter() - totals.started, 3),
         "evaluated": "ema" if state.ema_ready else "raw", "images_per_s": round(ips, 1)}
    state.pos.metrics.append(m)
    state.checkpoint(epoch + 1, 0)
    if state.writes:
        record_epoch(state.out_dir, m, best=res.top1 > best_before)
    if callbacks and dist.is_main:
        callbacks.on_epoch_end(m)
    return m
