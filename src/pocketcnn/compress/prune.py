"""Magnitude pruning, the first stage of Deep Compression (Han et al., 2016).

The smallest weights (by absolute value) of every conv and linear layer are set to zero.
Only the ``weight`` of ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` and ``nn.Linear``
is pruned; biases and normalization parameters stay dense.

A *mask* dict maps a parameter name (its state-dict key, e.g. ``"features.0.weight"``) to
a bool tensor of the weight's shape: ``True`` = kept, ``False`` = pruned (exactly 0.0).

``sparsity`` is the fraction of weights set to zero. Beware: the SqueezeNet paper's
"33% sparsity" keeps 33% of the weights, i.e. ``sparsity=0.67`` here (its 0.47 MB at
6 bits is impossible if 67% of the weights are kept: 0.67 * 6 bits alone is 4 bits/param).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..validate import check_number

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.Linear)
SCOPES = ("layer", "global")


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{"features.0.weight": conv, ...}``: weight name -> layer, for every conv and linear layer."""
    out: dict[str, nn.Module] = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE) and isinstance(getattr(module, "weight", None), nn.Parameter):
            out[f"{mod_name}.weight" if mod_name else "weight"] = module
    return out


def check_sparsity(sparsity: float) -> None:
    check_number("sparsity", sparsity, 0.0, 1.0, high_open=True)


def n_pruned(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a layer loses: ``round(sparsity * numel)``, keeping at least one."""
    return max(0, min(round(sparsity * numel), numel - 1))


def _keep_largest(magnitude: torch.Tensor, n_prune: int) -> torch.Tensor:
    """``(n,)`` magnitudes -> ``(n,)`` bool, False for the ``n_prune`` smallest (ties: lower index first)."""
    if n_prune == 0:
        return torch.ones(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
    threshold = torch.kthvalue(magnitude, n_prune).values
    below, tie = magnitude < threshold, magnitude == threshold
    need = n_prune - int(below.sum())  # how many of the ties at the threshold go too
    return ~(below | (tie & (torch.cumsum(tie, 0) <= need)))


def _magnitude(weight: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Flat float magnitudes; weights a ``prior`` mask pruned count as -1, below every live one."""
    mag = weight.detach().abs().flatten().float()
    if prior is not None:
        mag = torch.where(prior.to(mag.device).flatten(), mag, torch.full_like(mag, -1.0))
    return mag


def magnitude_mask(weight: torch.Tensor, sparsity: float, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of ``weight``'s shape: False for its ``round(sparsity * n)`` smallest magnitudes
    (what ``prior`` pruned first)."""
    check_sparsity(sparsity)
    mag = _magnitude(weight, prior)
    return _keep_largest(mag, n_pruned(mag.numel(), sparsity)).view(weight.shape)


def magnitude_prune(model: nn.Module, sparsity: float | Mapping[str, float], *, scope: str = "layer",
                    prior: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Zero the smallest weights of every conv/linear layer in place; return the masks.

    ``scope="layer"`` (Han's choice) prunes ``round(sparsity * n)`` weights of each layer;
    ``sparsity`` may then be a dict ``{weight name: sparsity}`` covering every prunable layer
    (see :func:`balanced_sparsities`). ``scope="global"`` prunes that fraction of all
    prunable weights together, by one magnitude threshold, so layers end up with different
    sparsities. ``prior``: masks of an earlier round (iterative pruning); what they pruned
    is pruned first, so the new masks only ever remove more (no layer's sparsity may drop).
    """
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, received scope={scope!r}")
    weights = {name: layer.weight for name, layer in prunable_layers(model).items()}
    per_layer = _per_layer(sparsity, weights, scope)
    prior = dict(prior or {})
    if prior:
        _resolve(model, prior)  # checks names and shapes
        if scope == "layer":
            for name, mask in prior.items():
                if name in per_layer:
                    _check_prunes_more(name, per_layer[name], {name: mask})
        else:
            _check_prunes_more("all layers", float(sparsity), prior)  # type: ignore[arg-type]

    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if scope == "layer":
            for name, w in weights.items():
                masks[name] = magnitude_mask(w, per_layer[name], prior.get(name))
        elif weights:
            mags = torch.cat([_magnitude(w, prior.get(name)).cpu() for name, w in weights.items()])
            keep = _keep_largest(mags, n_pruned(mags.numel(), float(sparsity)))  # type: ignore[arg-type]
            for (name, w), part in zip(weights.items(), keep.split([w.numel() for w in weights.values()])):
                masks[name] = part.view(w.shape).to(w.device)
    apply_masks(model, masks)
    return masks


def _check_prunes_more(label: str, target: float, prior: Mapping[str, torch.Tensor]) -> None:
    """Iterative pruning may not ask for fewer pruned weights than ``prior`` already has."""
    if n_pruned(sum(m.numel() for m in prior.values()), target) < sum(int((~m).sum()) for m in prior.values()):
        raise ConfigError(f"sparsity {target:.4f} ({label}) is below the prior masks' {sparsity_of(prior):.4f}: "
                          "iterative pruning only removes more weights")


def _per_layer(sparsity: float | Mapping[str, float], weights: Mapping[str, torch.Tensor],
               scope: str) -> dict[str, float]:
    """``{weight name: sparsity}`` for every prunable layer, after checking ``sparsity``."""
    if not isinstance(sparsity, Mapping):
        check_sparsity(sparsity)
        return {name: float(sparsity) for name in weights}
    if scope != "layer":
        raise ConfigError("per-layer sparsities (a dict) need scope='layer'")
    unknown, missing = set(sparsity) - set(weights), set(weights) - set(sparsity)
    if unknown or missing:
        raise ConfigError(f"per-layer sparsities must name every prunable layer exactly: "
                          f"unknown {sorted(unknown)}, missing {sorted(missing)}")
    for value in sparsity.values():
        check_sparsity(value)
    return {name: float(sparsity[name]) for name in weights}


MAX_BALANCED = 0.9  # the most the other layers are asked to lose when the error suggests a reachable target


def balanced_sparsities(model: nn.Module, sparsity: float, fixed: Mapping[str, float]) -> dict[str, float]:
    """Per-layer sparsities that prune ``sparsity`` of all prunable weights overall.

    The layers in ``fixed`` keep their own (lower) sparsity, e.g. the sensitive stem of a
    small network; every other layer prunes the same, slightly higher, fraction so that the
    total number of pruned weights is unchanged.
    """
    check_sparsity(sparsity)
    sizes = {name: layer.weight.numel() for name, layer in prunable_layers(model).items()}
    _per_layer({**dict.fromkeys(sizes, 0.0), **fixed}, sizes, "layer")  # names and values
    rest = sum(n for name, n in sizes.items() if name not in fixed)
    owed = sparsity * sum(sizes.values()) - sum(fixed[name] * sizes[name] for name in fixed)
    if rest == 0 or owed / rest >= 1.0:
        total = sum(sizes.values())
        reachable = (sum(fixed[name] * sizes[name] for name in fixed) + MAX_BALANCED * rest) / total
        raise ConfigError(f"cannot prune {sparsity:.0%} overall with {len(fixed)} layer(s) held lower by the "
                          f"sensitivity scan: the other layers would have to lose every weight. With them at "
                          f"{MAX_BALANCED:.0%}, at most --sparsity {max(0.0, reachable) - 0.005:.2f} is reachable; "
                          "or raise --tolerance so that fewer layers are held, or skip the scan (--probe-samples 0)")
    other = max(0.0, owed / rest)
    return {name: fixed.get(name, other) for name in sizes}


def _resolve(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Match each mask to its parameter: ``[(param, bool mask on the param's device)]``."""
    params = dict(model.named_parameters())
    pairs = []
    for name, mask in masks.items():
        if name not in params:
            raise ConfigError(f"mask for {name!r} matches no parameter of the model")
        p = params[name]
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != p.shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ConfigError(f"mask for {name!r} must be a bool tensor of shape {tuple(p.shape)}, received {got}")
        pairs.append((p, mask.to(p.device)))
    return pairs


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set every pruned weight (mask False) to exactly +0.0, in place."""
    with torch.no_grad():
        for p, mask in _resolve(model, masks):
            p.masked_fill_(~mask, 0.0)


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of pruned weights over all masked tensors (0.0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


class MaskGuard:
    """Keeps pruned weights at exactly zero while a model is fine-tuned.

    A tensor hook zeroes the gradient of every pruned weight (so momentum and Adam states
    stay zero there), and :meth:`after_step`, called after each ``optimizer.step()``,
    re-applies the masks (weight decay or a custom optimizer may still move them).
    Build it after the model is on its device. Use as a context manager or call
    :meth:`remove` to take the hooks off::

        with MaskGuard(model, masks) as guard:
            for x, y in loader:
                loss = ...; loss.backward(); opt.step(); guard.after_step()
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
        self._pairs = _resolve(model, masks)
        self._handles = [p.register_hook(_zero_where(~mask)) for p, mask in self._pairs]
        self.after_step()

    def after_step(self) -> None:
        with torch.no_grad():
            for p, mask in self._pairs:
                p.masked_fill_(~mask, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> MaskGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _zero_where(pruned: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(pruned, 0.0)

    return hook
