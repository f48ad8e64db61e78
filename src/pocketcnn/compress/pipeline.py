"""Deep Compression end to end (Han et al., 2016): prune -> share weights -> Huffman code.

::

    result = deep_compress(model, sparsity=0.67, prune_steps=3, bits=6, finetune=train, evaluate=accuracy)
    result.stages            # dense / pruned / quantized / coded: bytes, ratio, bits/param, accuracy
    result.prune_rounds      # sparsity and accuracy before/after each round's fine-tuning
    result.save("net.pcz", metadata={"classes": classes})

``finetune(model, after_step)`` is the caller's training loop: it must call
``after_step()`` after every optimizer step (that keeps pruned weights at zero, and
shared weights shared). ``evaluate(model) -> float`` is any accuracy measure.

``sparsity`` is the fraction of weights pruned. The SqueezeNet paper's "33% sparsity,
6-bit, 0.47 MB" keeps 33% of the weights: ``sparsity=0.67``.

Pruning is iterative, as Han et al. do it: ``prune_steps`` rounds of prune-then-fine-tune,
each removing the same share of the weights still alive (:func:`prune_schedule`), so the
network never loses two thirds of its weights at once (what one-shot pruning costs a
Fashion-MNIST SqueezeNet: docs/compression.md, "Measured on Fashion-MNIST").

Per-layer sensitivity (``probe``, Han et al.'s per-layer thresholds): each layer is pruned
alone to the target and scored; a layer that loses more than ``tolerance`` points is held
at the largest of 3/4, 1/2, 1/4 or none of the target that stays within it, and the other
layers prune a little more so that the overall sparsity (and the file size) is unchanged
(:func:`sensitivity_scan`). Which layers of that SqueezeNet the scan holds, and what each
costs pruned alone, is on the same page.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..validate import check_int, check_number
from ..models.registry import build_of
from .cluster import Cluster, SharedWeights, check_bits, cluster_weights
from .coding import GAP_BITS, PczStats, encode_pcz, save_pcz, to_entries
from .prune import (SCOPES, MaskGuard, balanced_sparsities, check_sparsity, magnitude_mask, magnitude_prune,
                    prunable_layers, sparsity_of)

Finetune = Callable[[nn.Module, Callable[[], None]], None]
Evaluate = Callable[[nn.Module], float]


@dataclass(frozen=True)
class Stage:
    """One row of the size table, like the paper's.

    ``nbytes``: storage at this stage (``None`` for "coded" when the model lacks a registry
    name); ``ratio``: dense bytes / nbytes; ``bits_per_param``: ``8 * nbytes / n_params``
    over all parameters of the dense model; ``accuracy``: after the stage's fine-tuning
    (``accuracy_before_finetune``: right after pruning or clustering), ``None`` without
    ``evaluate``.
    """

    name: str
    nbytes: int | None
    ratio: float | None
    bits_per_param: float | None
    accuracy: float | None = None
    accuracy_before_finetune: float | None = None


@dataclass(frozen=True)
class PruneRound:
    """One round of iterative pruning: the sparsity reached, accuracy right after pruning and after fine-tuning."""

    sparsity: float
    accuracy_before_finetune: float | None
    accuracy: float | None


def prune_schedule(sparsity: float, steps: int) -> list[float]:
    """Target sparsity after each of ``steps`` rounds: ``1 - (1 - sparsity) ** (k / steps)``.

    Every round prunes the same fraction of the weights still kept; the last reaches
    ``sparsity`` exactly. ``prune_schedule(0.67, 3)`` -> ``[0.309, 0.523, 0.67]``.
    """
    check_sparsity(sparsity)
    check_int("prune_steps", steps)
    keep = 1.0 - sparsity
    return [1.0 - keep ** (k / steps) for k in range(1, steps)] + [float(sparsity)]


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer of the scan: top-1 with only this layer pruned to each tried sparsity, and the choice."""

    name: str
    weights: int
    tried: dict[float, float]  # sparsity -> accuracy
    chosen: float  # before balancing


SENSITIVITY_LADDER = (1.0, 0.75, 0.5, 0.25)  # fractions of the target tried, largest first; else 0
CHANCE_MARGIN = 5.0  # points: a model scoring less than this above chance has learned nothing to protect


def sensitivity_scan(model: nn.Module, sparsity: float, probe: Evaluate, *, tolerance: float = 1.0,
                     chance: float | None = None,
                     log: Callable[[str], None] | None = None) -> tuple[float, list[LayerSensitivity]]:
    """Prune each layer alone and score it with ``probe``; pick each layer's sparsity.

    Returns ``(dense score, per layer)``. A layer's choice is the largest ``f * sparsity``
    (``f`` in :data:`SENSITIVITY_LADDER`) whose score is within ``tolerance`` of the dense
    score, or 0. ``probe`` should use held-out training images, not the test split that
    will report the result. ``model`` is left as it was. ``chance`` (the accuracy of a guess,
    100 / classes): a dense score within :data:`CHANCE_MARGIN` of it holds no layer, since
    the differences the scan would measure are noise.
    """
    check_sparsity(sparsity)
    check_number("tolerance", tolerance, 0)  # points of accuracy
    base = float(probe(model))
    rows: list[LayerSensitivity] = []
    if chance is not None and base < chance + CHANCE_MARGIN:
        if log is not None:
            log(f"sensitivity scan skipped: the dense model scores {base:.2f}% on the probe images, within "
                f"{CHANCE_MARGIN:g} points of chance ({chance:.2f}%); every layer is pruned to {sparsity:.0%}")
        return base, [LayerSensitivity(name, layer.weight.numel(), {}, sparsity)
                      for name, layer in prunable_layers(model).items()]
    for name, layer in prunable_layers(model).items():
        original = layer.weight.detach().clone()
        tried: dict[float, float] = {}
        chosen = 0.0
        try:
            for frac in SENSITIVITY_LADDER:
                s = frac * sparsity
                with torch.no_grad():
                    layer.weight.copy_(original * magnitude_mask(original, s))
                tried[s] = float(probe(model))
                if tried[s] >= base - tolerance:
                    chosen = s
                    break
        finally:
            with torch.no_grad():
                layer.weight.copy_(original)
        rows.append(LayerSensitivity(name, layer.weight.numel(), tried, chosen))
        if log is not None and chosen < sparsity:
            log(f"sensitive layer {name} ({layer.weight.numel():,} weights): {sparsity:.0%} alone gives "
                f"{tried[sparsity]:.2f}% (dense {base:.2f}%); held at {chosen:.0%}")
    return base, rows


@dataclass
class CompressResult:
    """The compressed model (a copy; the input is untouched), its masks and shared weights."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    shared: dict[str, Cluster]
    stages: tuple[Stage, ...]
    n_params: int
    sparsity: float  # achieved, over all prunable weights
    gap_bits: int = GAP_BITS
    prune_rounds: tuple[PruneRound, ...] = ()
    layer_sparsity: dict[str, float] | None = None  # per layer, when a sensitivity scan chose them
    sensitivity: tuple[LayerSensitivity, ...] = ()

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage {name!r}; stages are {[s.name for s in self.stages]}")

    @property
    def bits_per_param(self) -> float | None:
        """``8 * .pcz bytes / dense parameters`` (the file without caller metadata)."""
        return self.stage("coded").bits_per_param

    def save(self, path: str | Path, *, name: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
             metadata: Mapping[str, Any] | None = None) -> PczStats:
        """Write the ``.pcz`` file (see :func:`pocketcnn.compress.coding.save_pcz`)."""
        return save_pcz(path, self.model, name=name, model_kwargs=model_kwargs, masks=self.masks,
                        shared=self.shared, metadata=metadata, gap_bits=self.gap_bits)


def stage_sizes(model: nn.Module, masks: Mapping[str, torch.Tensor], shared: Mapping[str, Cluster],
                gap_bits: int = GAP_BITS) -> tuple[int, int, int]:
    """``(dense, pruned, quantized)`` bytes, as Han et al. count them.

    dense: 4 bytes per parameter. pruned: each masked weight tensor as sparse entries
    (kept weights plus the fillers of gaps over ``2**gap_bits - 1``), each a float32 value
    and a ``gap_bits`` relative index. quantized: each entry a ``bits`` index and a
    ``gap_bits`` relative index, plus a float32 codebook. Other parameters: 4 bytes each.
    """
    params = dict(model.named_parameters())
    n_params = sum(p.numel() for p in params.values())
    dense_bits = pruned_bits = quant_bits = 32 * n_params
    for name, mask in masks.items():
        keep = mask.detach().cpu().flatten().numpy()
        entries = len(to_entries(keep, np.zeros(keep.size, np.int64), gap_bits, filler=0)[0])
        pruned_bits += entries * (32 + gap_bits) - 32 * keep.size
        if name in shared:
            cl = shared[name]
            quant_bits += entries * (cl.bits + gap_bits) + 32 * cl.codebook.numel() - 32 * keep.size
        else:
            quant_bits += entries * (32 + gap_bits) - 32 * keep.size
    return tuple(-(-b // 8) for b in (dense_bits, pruned_bits, quant_bits))  # type: ignore[return-value]


@dataclass
class _Scorer:
    """``evaluate`` on the model being compressed (None without one) and the log line's accuracy text."""

    evaluate: Evaluate | None
    log: Callable[[str], None]

    def __call__(self, model: nn.Module) -> float | None:
        return float(self.evaluate(model)) if self.evaluate is not None else None

    @staticmethod
    def pct(acc: float | None) -> str:
        return "" if acc is None else f", top-1 {acc:.2f}%"


def prune_stage(model: nn.Module, sparsity: float, prune_steps: int, *, scope: str, finetune: Finetune | None,
                score: _Scorer, probe: Evaluate | None = None, tolerance: float = 1.0, chance: float | None = None,
                ) -> tuple[dict[str, torch.Tensor], list[PruneRound], dict[str, float] | None, list[LayerSensitivity]]:
    """Stage 1, in place on ``model``: the sensitivity scan (with ``probe``), then ``prune_steps`` rounds of
    magnitude pruning, each followed by fine-tuning with the masks held. Returns the masks, the
    rounds, the per-layer sparsities the scan chose and the scan itself."""
    schedule = prune_schedule(sparsity, prune_steps)
    layer_sparsity: dict[str, float] | None = None
    scan: list[LayerSensitivity] = []
    if probe is not None:
        _, scan = sensitivity_scan(model, sparsity, probe, tolerance=tolerance, chance=chance, log=score.log)
        layer_sparsity = balanced_sparsities(model, sparsity, {r.name: r.chosen for r in scan if r.chosen < sparsity})
    targets: list[float] | list[dict[str, float]] = schedule
    if layer_sparsity is not None:  # each layer follows the schedule towards its own sparsity
        per_layer = {n: prune_schedule(s, prune_steps) for n, s in layer_sparsity.items()}
        targets = [{n: steps[k] for n, steps in per_layer.items()} for k in range(prune_steps)]
    masks: dict[str, torch.Tensor] = {}
    rounds: list[PruneRound] = []
    for target in targets:
        masks = magnitude_prune(model, target, scope=scope, prior=masks)
        raw = acc = score(model)
        score.log(f"pruning round {len(rounds) + 1}/{len(schedule)}: {100 * sparsity_of(masks):.1f}% of the weights "
                  f"pruned{score.pct(raw)}" + (", fine-tuning" if finetune is not None else ""))
        if finetune is not None:
            with MaskGuard(model, masks) as guard:
                finetune(model, guard.after_step)
                guard.after_step()  # in case the loop's last step was not followed by after_step
            acc = score(model)
        rounds.append(PruneRound(sparsity_of(masks), raw, acc))
    return masks, rounds, layer_sparsity, scan


def share_stage(model: nn.Module, masks: dict[str, torch.Tensor], *, bits: int, bits_fc: int | None,
                kmeans_iters: int, finetune: Finetune | None, score: _Scorer
                ) -> tuple[dict[str, Cluster], float | None, float | None]:
    """Stage 2, in place: per-layer k-means weight sharing, then fine-tuning of the centroids.
    Returns the clusters and the accuracy before and after that fine-tuning."""
    shared = cluster_weights(model, masks, bits=bits, bits_fc=bits_fc, iters=kmeans_iters)
    acc_raw = acc = score(model)
    score.log(f"weight sharing: {bits}-bit codebooks{score.pct(acc_raw)}"
              + (", fine-tuning the centroids" if finetune is not None else ""))
    if finetune is not None:
        with SharedWeights(model, shared, masks) as sw:
            finetune(model, sw.after_step)
            sw.after_step()
            shared = sw.clusters()
        acc = score(model)
    return shared, acc_raw, acc


def code_stage(model: nn.Module, masks: Mapping[str, torch.Tensor], shared: Mapping[str, Cluster],
               gap_bits: int) -> tuple[int, int, int, int | None]:
    """Stage 3: the sizes of every stage; the "coded" one is the real ``.pcz`` byte count (Huffman
    coding, without caller metadata) when the model came from ``create_model``, else None."""
    dense, pruned, quant = stage_sizes(model, masks, shared, gap_bits)
    coded = len(encode_pcz(model, masks=masks, shared=shared, gap_bits=gap_bits)[0]) \
        if build_of(model) is not None else None
    return dense, pruned, quant, coded


def deep_compress(model: nn.Module, *, sparsity: float = 0.67, prune_steps: int = 1, bits: int = 6,
                  bits_fc: int | None = None, finetune: Finetune | None = None, evaluate: Evaluate | None = None,
                  scope: str = "layer", kmeans_iters: int = 100, gap_bits: int = GAP_BITS,
                  probe: Evaluate | None = None, tolerance: float = 1.0, chance: float | None = None,
                  log: Callable[[str], None] | None = None) -> CompressResult:
    """Prune (in ``prune_steps`` rounds), fine-tune, cluster, fine-tune the centroids; measure every stage.

    Works on a deep copy of ``model``. ``finetune`` is called after each pruning round (with
    ``MaskGuard.after_step``) and once after clustering (with ``SharedWeights.after_step``);
    ``evaluate`` after every round and stage. The "pruned" stage's ``accuracy_before_finetune``
    is that of the first round (the largest single cut is the first). The "coded" size is the
    real ``.pcz`` byte count (without caller metadata) when the model came from ``create_model``.
    ``probe`` (an accuracy on held-out training images) turns on the per-layer sensitivity
    scan (:func:`sensitivity_scan`, ``tolerance`` and ``chance`` in points); ``scope`` must then be "layer".
    ``log`` receives one line per round and stage as the work proceeds.
    """
    prune_schedule(sparsity, prune_steps)  # checks both
    check_bits("bits", bits)
    if bits_fc is not None:
        check_bits("bits_fc", bits_fc)
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, received scope={scope!r}")
    for label, fn in (("finetune", finetune), ("evaluate", evaluate), ("probe", probe)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"{label} must be callable or None, received {label}={fn!r}")
    if probe is not None and scope != "layer":
        raise ConfigError("the sensitivity scan (probe) sets per-layer sparsities: it needs scope='layer'")
    model = copy.deepcopy(model)
    score = _Scorer(evaluate, log or (lambda msg: None))
    acc_dense = score(model)
    score.log(f"dense{score.pct(acc_dense)}")
    masks, rounds, layer_sparsity, scan = prune_stage(model, sparsity, prune_steps, scope=scope, finetune=finetune,
                                                      score=score, probe=probe, tolerance=tolerance,
                                                      chance=chance)
    shared, acc_quant_raw, acc_quant = share_stage(model, masks, bits=bits, bits_fc=bits_fc, kmeans_iters=kmeans_iters,
                                                   finetune=finetune, score=score)
    dense, pruned, quant, coded = code_stage(model, masks, shared, gap_bits)
    n_params = sum(p.numel() for p in model.parameters())

    def row(name: str, nbytes: int | None, acc: float | None, acc_raw: float | None = None) -> Stage:
        if nbytes is None:
            return Stage(name, None, None, None, acc, acc_raw)
        return Stage(name, nbytes, dense / nbytes, 8 * nbytes / n_params, acc, acc_raw)

    stages = (row("dense", dense, acc_dense),
              row("pruned", pruned, rounds[-1].accuracy, rounds[0].accuracy_before_finetune),
              row("quantized", quant, acc_quant, acc_quant_raw), row("coded", coded, acc_quant))
    return CompressResult(model, masks, shared, stages, n_params, sparsity_of(masks), gap_bits, tuple(rounds),
                          layer_sparsity, tuple(scan))
