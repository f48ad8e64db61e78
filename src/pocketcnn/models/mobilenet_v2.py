"""MobileNetV2 (Sandler et al., 2018): inverted residuals with linear bottlenecks.

Layer names match torchvision's ``mobilenet_v2`` so its weight files load as is.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .registry import Weights, register_model
from .layers import ClassifierMixin, ConvBNAct, init_weights, make_divisible
from ..validate import check_number


class Stage(NamedTuple):
    """One row of the paper's Table 2."""

    t: int  # expansion factor
    c: int  # output channels at width 1.0
    n: int  # repeats
    s: int  # stride of the first repeat


STEM_CHANNELS, LAST_CHANNELS = 32, 1280
TABLE2 = (
    Stage(1, 16, 1, 1),
    Stage(6, 24, 2, 2),
    Stage(6, 32, 3, 2),
    Stage(6, 64, 4, 2),
    Stage(6, 96, 3, 1),
    Stage(6, 160, 3, 2),
    Stage(6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection, + identity.

    ``(N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride)``; the shortcut is used when
    ``stride == 1 and in_ch == out_ch``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(ClassifierMixin, nn.Module):
    """Stem, 17 inverted residual blocks, 1x1 conv to 1280, pool, dropout, FC.

    ``small_input=True`` makes the stem stride 1 (total stride 16).
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 drop_rate: float = 0.2, small_input: bool = False) -> None:
        super().__init__()
        check_number("width_mult", width_mult, 0, low_open=True)
        ch = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_chans, ch, 3, 1 if small_input else 2, act=nn.ReLU6)]
        for st in TABLE2:
            out = make_divisible(st.c * width_mult)
            for i in range(st.n):
                layers.append(InvertedResidual(ch, out, st.s if i == 0 else 1, st.t))
                ch = out
        self.num_features = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers.append(ConvBNAct(ch, self.num_features, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.drop_rate = drop_rate
        self._make_classifier(num_classes)
        self.num_classes = num_classes
        init_weights(self)

    def _make_classifier(self, num_classes: int) -> None:
        fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(fc.weight, 0, 0.01)
        nn.init.zeros_(fc.bias)
        self.classifier = nn.Sequential(nn.Dropout(self.drop_rate), fc)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, num_features, h, w) -> (N, num_classes)``."""
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# Training recipe for small images (TrainConfig fields; the CLI's flags override them): as MobileNet v1's.
RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "model_kwargs": {}}


@register_model(MobileNetV2, torchvision="mobilenet_v2", paper="Sandler et al., MobileNetV2 (arXiv:1801.04381)",
                first_conv="features.0.0", classifier="classifier.1", paper_params=3_504_872,
                paper_macs=300_774_272, recipe=RECIPE,
                weights=[Weights("IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", "b0353104", 71.878, 90.286),
                         Weights("IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", "7ebf99e0", 72.154, 90.822,
                                 resize_size=232)])
def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNetV2 at width 1.0 by default: 3,504,872 params."""
    return MobileNetV2(**kwargs)
