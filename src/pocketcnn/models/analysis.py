"""Per-layer analysis: parameters, multiply-adds and activation memory, from the model itself.

Mult-adds follow the papers' convention: convolutions and fully connected layers only
(batch norm, activations, pooling and additions are not counted), bias not counted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, first_line

LAYER_TYPES = ("conv1x1", "conv_dw", "conv_full", "linear", "other")


@dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    out_shape: tuple[int, ...]
    params: int
    macs: int
    act_bytes: int  # bytes of this layer's output activation (batch 1)


@dataclass(frozen=True)
class TypeShare:
    params: int
    macs: int
    params_pct: float
    macs_pct: float


@dataclass(frozen=True)
class Profile:
    """What :func:`profile` measured; ``to_dict`` gives the CLI's ``--json`` object."""

    model: str
    input_size: tuple[int, int, int]
    params: int
    macs: int
    size_mb: float  # fp32 weights, 1 MB = 2**20 bytes
    layers: list[LayerRow] = field(default_factory=list)
    by_type: dict[str, TypeShare] = field(default_factory=dict)

    @property
    def peak_act_bytes(self) -> int:
        return max((r.act_bytes for r in self.layers), default=0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        for row in d["layers"]:
            row["out_shape"] = list(row["out_shape"])
        return d


def layer_type(module: nn.Module) -> str:
    """Classify a leaf module as in the MobileNet paper's Table 2."""
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "conv_dw"
        if module.kernel_size == (1, 1) and module.groups == 1:
            return "conv1x1"
        return "conv_full"
    if isinstance(module, nn.Linear):
        return "linear"
    return "other"


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def profile(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), name: str | None = None) -> Profile:
    """Run one batch-1 forward pass with hooks on every leaf module and tabulate it."""
    if len(input_size) != 3 or any(int(v) < 1 for v in input_size):
        raise ConfigError(f"input_size must be (C, H, W) with positive values, received {input_size!r}")
    input_size = tuple(int(v) for v in input_size)  # type: ignore[assignment]
    rows: list[LayerRow] = []
    seen: set[str] = set()

    def hook(mod_name: str):
        def fn(module: nn.Module, _inp, out) -> None:
            if not isinstance(out, torch.Tensor):
                return
            params = 0 if mod_name in seen else sum(p.numel() for p in module.parameters(recurse=False))
            seen.add(mod_name)
            rows.append(LayerRow(mod_name, layer_type(module), tuple(out.shape[1:]), params,
                                 _macs(module, out), out.numel() * out.element_size()))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            try:
                model(torch.zeros(1, *input_size, device=device))
            except (RuntimeError, ConfigError) as exc:
                raise ConfigError(f"input_size {list(input_size)} does not fit the model: {first_line(exc)}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    total_params = sum(p.numel() for p in model.parameters())
    # parameters of non-leaf modules (none in our zoo) go to "other" so the shares add up
    unhooked = total_params - sum(r.params for r in rows)
    total_macs = sum(r.macs for r in rows)
    by_type: dict[str, TypeShare] = {}
    for t in LAYER_TYPES:
        p = sum(r.params for r in rows if r.type == t) + (unhooked if t == "other" else 0)
        m = sum(r.macs for r in rows if r.type == t)
        by_type[t] = TypeShare(p, m, 100.0 * p / max(total_params, 1), 100.0 * m / max(total_macs, 1))
    size_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    from .registry import build_of

    build = build_of(model)
    model_name = name or (build.name if build else type(model).__name__)
    return Profile(model_name, input_size, total_params, total_macs, size_mb, rows, by_type)
