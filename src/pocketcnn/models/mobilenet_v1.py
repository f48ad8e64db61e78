"""MobileNet v1 (Howard et al., 2017): depthwise separable convolutions.

The width multiplier ``width_mult`` (alpha) thins every layer; the resolution multiplier
(rho) is simply the input size, since the network is fully convolutional up to the
global average pool.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .registry import register_model
from .layers import ClassifierMixin, ConvBNAct, init_weights, make_divisible
from ..validate import check_number


class Row(NamedTuple):
    """One depthwise separable layer of the paper's Table 1."""

    out_ch: int  # pointwise filters at width 1.0
    stride: int  # stride of the depthwise conv


STEM_CHANNELS = 32  # Table 1, first row: Conv 3x3 / s2, 32 filters
TABLE1 = (
    Row(64, 1),
    Row(128, 2), Row(128, 1),
    Row(256, 2), Row(256, 1),
    Row(512, 2), Row(512, 1), Row(512, 1), Row(512, 1), Row(512, 1), Row(512, 1),
    Row(1024, 2), Row(1024, 1),  # the paper prints s2 for the last one; its output is 7x7, so s1
)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU.

    ``(N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride)``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pw = ConvBNAct(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(ClassifierMixin, nn.Module):
    """Stem conv, 13 depthwise separable layers, global average pool, dropout, FC.

    ``small_input=True`` makes the stem stride 1 (total stride 16 instead of 32), so a
    28x28 image still ends at 2x2 rather than 1x1.
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 drop_rate: float = 0.001, small_input: bool = False) -> None:
        super().__init__()
        check_number("width_mult", width_mult, 0, low_open=True)
        ch = make_divisible(STEM_CHANNELS * width_mult)
        self.stem = ConvBNAct(in_chans, ch, 3, 1 if small_input else 2)
        blocks = []
        for row in TABLE1:
            out = make_divisible(row.out_ch * width_mult)
            blocks.append(DepthwiseSeparable(ch, out, row.stride))
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.num_features = ch
        self._make_classifier(num_classes)
        self.num_classes = num_classes
        init_weights(self)

    def _make_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)``."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, num_features, h, w) -> (N, num_classes)``."""
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))


_PAPER = "Howard et al., MobileNets (arXiv:1704.04861)"


# Training recipe for small images (TrainConfig fields; the CLI's flags override them): batch norm,
# AdamW; fp32, since depthwise convolutions run slower in bf16 on the CPUs measured.
RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "model_kwargs": {}}
_CONFIG = {"paper": _PAPER, "first_conv": "stem.0", "classifier": "classifier", "recipe": RECIPE}


@register_model(MobileNetV1, paper_params=4_231_976, paper_macs=568_740_352, **_CONFIG)
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """MobileNet v1, width 1.0 by default (``width_mult`` takes any float > 0)."""
    return MobileNetV1(**kwargs)


def _alias(width: float):
    def builder(**kwargs) -> MobileNetV1:
        kwargs.setdefault("width_mult", width)
        return MobileNetV1(**kwargs)

    builder.__doc__ = f"MobileNet v1 at width {width}."
    return builder


# the paper's Table 6 (width multipliers): 2.6M / 1.3M / 0.5M parameters, 325M / 149M / 41M mult-adds
for _w, _name, _params, _macs in ((0.75, "mobilenet_v1_075", 2_585_560, 325_400_448),
                                  (0.5, "mobilenet_v1_050", 1_331_592, 149_497_088),
                                  (0.25, "mobilenet_v1_025", 470_072, 41_030_272)):
    _b = _alias(_w)
    _b.__name__ = _b.__qualname__ = _name
    register_model(MobileNetV1, paper_params=_params, paper_macs=_macs, **_CONFIG)(_b)
