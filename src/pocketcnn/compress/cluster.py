"""Weight sharing by 1-D k-means, the second stage of Deep Compression (Han et al., 2016).

Each conv/linear layer keeps ``2**bits`` shared values (its *codebook*); every kept weight
becomes ``codebook[index]``, every pruned weight stays exactly 0.0::

    weight = torch.where(mask, codebook[indices], 0.0)

Centroids start evenly spaced between the smallest and largest kept weight ("linear
initialization", which Han et al. found best: it keeps the rare large weights). Centroid
fine-tuning (:class:`SharedWeights`) moves each centroid by the mean gradient of its members.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..artifacts.pcz import MAX_BITS  # 4096 centroids at most; indices fit int16
from ..errors import ConfigError
from ..validate import check_int
from .prune import MaskGuard, prunable_layers



@dataclass(frozen=True)
class Cluster:
    """Weight sharing of one layer.

    ``codebook``: ``(2**bits,)`` float32 on CPU, ascending after clustering.
    ``indices``: the weight's shape, uint8 (bits <= 8) or int16, on CPU; 0 where pruned.
    """

    codebook: torch.Tensor
    indices: torch.Tensor
    bits: int


def check_bits(name: str, bits: int) -> None:
    check_int(name, bits, 1, MAX_BITS)


def index_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int16


def _boundaries(xs: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``xs (n,)`` ascending, ``centroids (k,)`` ascending -> ``(k + 1,)`` int64 cluster starts in ``xs``.

    Cluster ``j`` is ``xs[b[j]:b[j + 1]]``: the values nearest to centroid ``j`` (a value
    exactly between two centroids goes to the lower one).
    """
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    inner = torch.searchsorted(xs, midpoints, right=True)
    return torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), xs.numel())])


def kmeans_1d(values: torch.Tensor, k: int, *, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on a 1-D tensor, deterministic (CPU, float64 sums).

    ``values (n,) -> (centroids (k,) float32 ascending, assignment (n,) int64)``. Centroids
    start evenly spaced over ``[min, max]``. The values are sorted once, so an iteration
    is ``k`` binary searches and prefix-sum differences. Stops after ``iters`` iterations
    or when no value changes cluster; an empty cluster keeps its centroid. The assignment
    is recomputed against the final float32 centroids.
    """
    xs = torch.sort(values.detach().flatten().to("cpu", torch.float64)).values
    if xs.numel() == 0:
        return torch.zeros(k), torch.zeros(0, dtype=torch.int64)
    prefix = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
    c = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)
    bounds = None
    for _ in range(iters):
        new = _boundaries(xs, c)
        if bounds is not None and torch.equal(new, bounds):
            break
        bounds = new
        counts = bounds[1:] - bounds[:-1]
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        c = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), c)).values
    c32 = c.float()
    midpoints = (c32[1:].double() + c32[:-1].double()) / 2
    return c32, torch.bucketize(values.detach().flatten().to("cpu", torch.float64), midpoints)


def cluster_weights(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None, *, bits: int = 6,
                    bits_fc: int | None = None, iters: int = 50) -> dict[str, Cluster]:
    """Share the weights of every conv/linear layer in place; return ``{weight name: Cluster}``.

    ``bits`` for conv layers, ``bits_fc`` (default ``bits``) for ``nn.Linear`` (the paper
    used 8 / 5 for AlexNet). Only kept weights (mask True) are clustered; a layer without
    a mask is clustered whole.
    """
    bits_fc = bits if bits_fc is None else bits_fc
    check_bits("bits", bits)
    check_bits("bits_fc", bits_fc)
    masks = dict(masks or {})
    layers = prunable_layers(model)
    for name in masks:
        if name not in layers:
            raise ConfigError(f"mask for {name!r} matches no conv or linear weight of the model")
    out: dict[str, Cluster] = {}
    with torch.no_grad():
        for name, layer in layers.items():
            w = layer.weight
            b = bits_fc if isinstance(layer, nn.Linear) else bits
            mask = masks.get(name)
            mask = torch.ones(w.shape, dtype=torch.bool) if mask is None else mask.detach().cpu()
            if mask.shape != w.shape or mask.dtype != torch.bool:
                raise ConfigError(f"mask for {name!r} must be a bool tensor of shape {tuple(w.shape)}, "
                                  f"received {mask.dtype} {tuple(mask.shape)}")
            codebook, assign = kmeans_1d(w.detach().cpu()[mask], 2**b, iters=iters)
            indices = torch.zeros(w.shape, dtype=index_dtype(b))
            indices[mask] = assign.to(indices.dtype)
            w.copy_(torch.where(mask, codebook[indices.long()], 0.0).to(w.device))
            out[name] = Cluster(codebook, indices, b)
    return out


class SharedWeights:
    """Keeps each layer's weights shared (and pruned ones at zero) during fine-tuning.

    Call :meth:`after_step` after every ``optimizer.step()``: each cluster's weights are
    replaced by their mean, which for plain SGD is the centroid moved by the average
    gradient of its members; pruned weights are set back to 0.0 (their gradients are
    zeroed by hooks, as in :class:`~pocketcnn.compress.prune.MaskGuard`). Build it after the
    model is on its device; use as a context manager or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module, clusters: Mapping[str, Cluster],
                 masks: Mapping[str, torch.Tensor] | None = None) -> None:
        params = dict(model.named_parameters())
        masks = dict(masks or {})
        self._layers: dict[str, tuple[nn.Parameter, torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}
        guard_masks = {}
        for name, cl in clusters.items():
            p = params.get(name)
            if p is None or cl.indices.shape != p.shape:
                raise ConfigError(f"cluster for {name!r} matches no parameter of that shape "
                                  f"(indices shape {tuple(cl.indices.shape)})")
            mask = masks.get(name)
            mask = torch.ones(p.shape, dtype=torch.bool) if mask is None else mask
            guard_masks[name] = mask
            keep = mask.to(p.device).flatten()
            idx = cl.indices.to(p.device).long().flatten()
            codebook = cl.codebook.to(p.device, torch.float32)
            self._layers[name] = (p, keep, idx, codebook, cl.bits)
        self._guard = MaskGuard(model, guard_masks)
        with torch.no_grad():
            for p, keep, idx, codebook, _ in self._layers.values():
                self._write(p, keep, idx, codebook)

    @staticmethod
    def _write(p: torch.Tensor, keep: torch.Tensor, idx: torch.Tensor, codebook: torch.Tensor) -> None:
        p.copy_(torch.where(keep, codebook[idx], 0.0).view(p.shape))

    def after_step(self) -> None:
        with torch.no_grad():
            for name, (p, keep, idx, codebook, bits) in self._layers.items():
                members = idx[keep]
                sums = torch.zeros(codebook.numel(), dtype=torch.float64, device=p.device)
                sums.index_add_(0, members, p.detach().flatten()[keep].double())
                counts = torch.bincount(members, minlength=codebook.numel())
                codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook.double()).float()
                self._layers[name] = (p, keep, idx, codebook, bits)
                self._write(p, keep, idx, codebook)

    def codebooks(self) -> dict[str, torch.Tensor]:
        """The current centroids: ``{weight name: (2**bits,) float32 on CPU}``."""
        return {name: layer[3].detach().cpu().clone() for name, layer in self._layers.items()}

    def clusters(self) -> dict[str, Cluster]:
        """The current :class:`Cluster` of every layer (fine-tuned codebooks, same indices)."""
        return {name: Cluster(codebook.detach().cpu().clone(),
                              idx.view(p.shape).cpu().to(index_dtype(bits)), bits)
                for name, (p, _, idx, codebook, bits) in self._layers.items()}

    def remove(self) -> None:
        self._guard.remove()

    def __enter__(self) -> SharedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
