"""SqueezeNet (Iandola et al., 2016): Fire modules, no fully connected layer.

Layer names and shapes match torchvision's ``squeezenet1_0`` / ``squeezenet1_1``,
so their weight files load with ``strict=True``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..validate import check_number
from .registry import Weights, register_model
from .layers import ClassifierMixin


@dataclass(frozen=True)
class Stem:
    """conv1 of each version, and where the max-pools sit (before these Fire indices)."""

    out_ch: int
    kernel: int
    pool_before_fire: tuple[int, ...]


VERSIONS = {
    # conv1            Fire modules 2..9 are indices 0..7; max-pool after conv1 always
    "1_0": Stem(96, 7, pool_before_fire=(3, 7)),
    "1_1": Stem(64, 3, pool_before_fire=(2, 4)),
}
BYPASS_MODES = (None, "simple", "complex")


def fire_widths(base_e: int = 128, incr_e: int = 128, pct3x3: float = 0.5, freq: int = 2,
                squeeze_ratio: float = 0.125, n: int = 8) -> list[tuple[int, int, int]]:
    """The paper's design-space metaparameters (section 5) -> ``(squeeze, e1x1, e3x3)`` per Fire.

    ``e_i = base_e + incr_e * floor(i / freq)``, ``s_i = squeeze_ratio * e_i``,
    ``e3x3_i = pct3x3 * e_i``. The defaults give SqueezeNet 1.0 exactly.
    """
    check_number("pct3x3", pct3x3, 0, 1)
    for name, value in (("base_e", base_e), ("freq", freq), ("squeeze_ratio", squeeze_ratio)):
        check_number(name, value, 0, low_open=True)
    check_number("incr_e", incr_e, 0)
    widths = []
    for i in range(n):
        e = base_e + incr_e * (i // freq)
        e3 = int(round(e * pct3x3))
        s = max(1, int(round(e * squeeze_ratio)))
        widths.append((s, e - e3, e3))
    return widths


class Fire(nn.Module):
    """Squeeze (1x1) then expand (1x1 and padded 3x3, concatenated).

    ``(N, in_ch, H, W) -> (N, expand1x1 + expand3x3, H, W)``.
    """

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1) if expand1x1 else None
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1) if expand3x3 else None
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.out_channels = expand1x1 + expand3x3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        outs = []
        if self.expand1x1 is not None:
            outs.append(self.expand1x1_activation(self.expand1x1(x)))
        if self.expand3x3 is not None:
            outs.append(self.expand3x3_activation(self.expand3x3(x)))
        return torch.cat(outs, 1)


class SqueezeNet(ClassifierMixin, nn.Module):
    """conv1 -> 8 Fire modules with late max-pools -> dropout, conv10, global average pool.

    ``bypass``: None, ``"simple"`` (identity shortcuts around fire3/5/7/9) or ``"complex"``
    (also 1x1-conv shortcuts around fire2/4/6/8). ``small_input=True`` makes conv1 a
    3x3 stride-1 conv, so 28x28 and 32x32 images keep spatial detail (it ends at 3x3
    instead of 1x1); the layer names stay the same.

    ``final_relu=False`` drops the ReLU after conv10 (no parameters change). With the ReLU, a
    class whose conv10 channel goes negative on every input outputs 0 forever and receives no
    gradient: with few classes one dead channel loses a whole class (docs/models.md, "Model
    keywords"). The default keeps the paper's network.
    """

    def __init__(self, version: str = "1_0", *, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.5, bypass: str | None = None, small_input: bool = False,
                 base_e: int = 128, incr_e: int = 128, pct3x3: float = 0.5, freq: int = 2,
                 squeeze_ratio: float = 0.125, final_relu: bool = True) -> None:
        super().__init__()
        self.final_relu = bool(final_relu)
        if version not in VERSIONS:
            raise ConfigError(f"version must be one of {sorted(VERSIONS)}, received version={version!r}")
        if bypass not in BYPASS_MODES:
            raise ConfigError(f"bypass must be one of None, 'simple', 'complex', received bypass={bypass!r}")
        check_number("drop_rate", drop_rate, 0, 1, high_open=True)
        stem = VERSIONS[version]
        # the smallest side that leaves the last max-pool a non-empty map (set by the kernels and strides)
        self.min_input_size = 8 if small_input else {"1_0": 21, "1_1": 17}[version]
        self.small_input_min = 8
        kernel, stride = (3, 1) if small_input else (stem.kernel, 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, stem.out_ch, kernel, stride, padding=1 if small_input else 0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
        self.bypass = nn.ModuleDict()
        in_ch = stem.out_ch
        for i, (s, e1, e3) in enumerate(fire_widths(base_e, incr_e, pct3x3, freq, squeeze_ratio)):
            if i in stem.pool_before_fire:
                layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            fire = Fire(in_ch, s, e1, e3)
            key = str(len(layers))
            if bypass and in_ch == fire.out_channels and i % 2 == 1:
                self.bypass[key] = nn.Identity()
            elif bypass == "complex":
                self.bypass[key] = nn.Conv2d(in_ch, fire.out_channels, 1) if in_ch != fire.out_channels else nn.Identity()
            layers.append(fire)
            in_ch = fire.out_channels
        self.features = nn.Sequential(*layers)
        self.num_features = in_ch
        self.drop_rate = drop_rate
        self._make_classifier(num_classes)
        self.num_classes = num_classes
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.startswith("classifier"):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_classifier(self, num_classes: int) -> None:
        final_conv = nn.Conv2d(self.num_features, num_classes, 1)
        nn.init.normal_(final_conv.weight, 0.0, 0.01)
        nn.init.zeros_(final_conv.bias)
        self.classifier = nn.Sequential(
            nn.Dropout(self.drop_rate), final_conv, nn.ReLU(inplace=True) if self.final_relu else nn.Identity(),
            nn.AdaptiveAvgPool2d(1)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W) -> (N, num_features, H', W')``."""
        if not self.bypass:
            return self.features(x)
        for i, layer in enumerate(self.features):
            shortcut = self.bypass[str(i)] if str(i) in self.bypass else None
            x = layer(x) + shortcut(x) if shortcut is not None else layer(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, num_features, H', W') -> (N, num_classes)`` (conv10 then global average)."""
        return torch.flatten(self.classifier(x), 1)


_PAPER = "Iandola et al., SqueezeNet (arXiv:1602.07360)"


# Training recipe for small images (TrainConfig fields; the CLI's flags override them); the runs behind
# each choice are in the docs. SqueezeNet (no batch norm) starts slowly and erratically, so it takes
# batch 64, twice the steps (docs/results/fashion-mnist.md). Without the ReLU after conv10 no class
# channel can die (docs/models.md, "Model keywords"); its final ReLU dies at higher learning rates.
# bf16 autocast where the CPU has it ("auto"): faster at the same accuracy (docs/training.md,
# "Mixed precision (AMP)").
RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "amp": "auto", "batch_size": 64,
          "model_kwargs": {"drop_rate": 0.2, "final_relu": False}}


@register_model(SqueezeNet, torchvision="squeezenet1_0", paper=_PAPER, first_conv="features.0",
                classifier="classifier.1", paper_params=1_248_424, paper_macs=818_924_576, recipe=RECIPE,
                weights=[Weights("IMAGENET1K_V1", "squeezenet1_0-b66bff10.pth", "b66bff10", 58.092, 80.420)])
def squeezenet1_0(**kwargs) -> SqueezeNet:
    """SqueezeNet 1.0: the paper's network (Table 1). 1,248,424 params."""
    return SqueezeNet("1_0", **kwargs)


@register_model(SqueezeNet, torchvision="squeezenet1_1", paper=_PAPER, first_conv="features.0",
                classifier="classifier.1", paper_params=1_235_496, paper_macs=349_151_936, recipe=RECIPE,
                weights=[Weights("IMAGENET1K_V1", "squeezenet1_1-b8a52dc0.pth", "b8a52dc0", 58.178, 80.624)])
def squeezenet1_1(**kwargs) -> SqueezeNet:
    """SqueezeNet 1.1: 3x3/64 conv1 and earlier pooling; 2.4x fewer mult-adds, same accuracy."""
    return SqueezeNet("1_1", **kwargs)
