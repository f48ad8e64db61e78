"""Evaluation over a whole data set: top-1, top-5, loss, per-class accuracy and the confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSpec, normalize_batch
from . import distributed as D
from .data_prep import iterate


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float
    loss: float
    n: int
    per_class: list[float]  # top-1 per class, percent
    confusion: list[list[int]]  # [true][predicted]


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
