"""MobileNetV3 (Howard et al., 2019): MobileNetV2 blocks plus squeeze-excite and hard-swish.

Layer names match torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .registry import Weights, register_model
from .layers import ClassifierMixin, ConvBNAct, SqueezeExcite, init_weights, make_divisible
from ..validate import check_number


class Bneck(NamedTuple):
    """One row of the paper's Tables 1 and 2."""

    k: int  # depthwise kernel
    exp: int  # expansion size
    out: int  # output channels
    se: bool  # squeeze-excite
    hs: bool  # hard-swish (else ReLU)
    s: int  # stride


STEM_CHANNELS = 16
LARGE = (  # Table 1; last conv 960, head 1280
    Bneck(3, 16, 16, False, False, 1),
    Bneck(3, 64, 24, False, False, 2), Bneck(3, 72, 24, False, False, 1),
    Bneck(5, 72, 40, True, False, 2), Bneck(5, 120, 40, True, False, 1), Bneck(5, 120, 40, True, False, 1),
    Bneck(3, 240, 80, False, True, 2), Bneck(3, 200, 80, False, True, 1),
    Bneck(3, 184, 80, False, True, 1), Bneck(3, 184, 80, False, True, 1),
    Bneck(3, 480, 112, True, True, 1), Bneck(3, 672, 112, True, True, 1),
    Bneck(5, 672, 160, True, True, 2), Bneck(5, 960, 160, True, True, 1), Bneck(5, 960, 160, True, True, 1),
)
SMALL = (  # Table 2; last conv 576, head 1024
    Bneck(3, 16, 16, True, False, 2),
    Bneck(3, 72, 24, False, False, 2), Bneck(3, 88, 24, False, False, 1),
    Bneck(5, 96, 40, True, True, 2), Bneck(5, 240, 40, True, True, 1), Bneck(5, 240, 40, True, True, 1),
    Bneck(5, 120, 48, True, True, 1), Bneck(5, 144, 48, True, True, 1),
    Bneck(5, 288, 96, True, True, 2), Bneck(5, 576, 96, True, True, 1), Bneck(5, 576, 96, True, True, 1),
)
HEADS = {"large": (LARGE, 1280), "small": (SMALL, 1024)}


class InvertedResidualSE(nn.Module):
    """Expand (if exp != in) -> depthwise k x k -> optional SE -> linear 1x1 projection, + identity.

    ``(N, in_ch, H, W) -> (N, out_ch, H / s, W / s)``.
    """

    def __init__(self, in_ch: int, row: Bneck, width_mult: float, bn: dict) -> None:
        super().__init__()
        exp, out = make_divisible(row.exp * width_mult), make_divisible(row.out * width_mult)
        act = nn.Hardswish if row.hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != in_ch:
            layers.append(ConvBNAct(in_ch, exp, 1, act=act, **bn))
        layers.append(ConvBNAct(exp, exp, row.k, row.s, groups=exp, act=act, **bn))
        if row.se:
            layers.append(SqueezeExcite(exp, make_divisible(exp // 4)))
        layers.append(ConvBNAct(exp, out, 1, act=None, **bn))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = row.s == 1 and in_ch == out
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MobileNetV3(ClassifierMixin, nn.Module):
    """Stem (hard-swish), bneck blocks, 1x1 conv (6x last width), pool, FC-hswish-dropout-FC.

    ``small_input=True`` makes the stem stride 1 (total stride 16). ``bn_momentum`` defaults
    to torchvision's 0.01, made for long ImageNet runs; short runs want 0.1, or the running
    statistics lag far behind the weights.
    """

    def __init__(self, arch: str = "large", *, num_classes: int = 1000, in_chans: int = 3,
                 width_mult: float = 1.0, drop_rate: float = 0.2, small_input: bool = False,
                 bn_momentum: float = 0.01) -> None:
        super().__init__()
        check_number("width_mult", width_mult, 0, low_open=True)
        check_number("bn_momentum", bn_momentum, 0, low_open=True)
        bn = {"bn_eps": 0.001, "bn_momentum": bn_momentum}
        rows, self.head_channels = HEADS[arch]
        ch = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_chans, ch, 3, 1 if small_input else 2, act=nn.Hardswish, **bn)]
        for row in rows:
            layers.append(InvertedResidualSE(ch, row, width_mult, bn))
            ch = layers[-1].out_channels
        self.num_features = 6 * ch
        layers.append(ConvBNAct(ch, self.num_features, 1, act=nn.Hardswish, **bn))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop_rate = drop_rate
        self._make_classifier(num_classes)
        self.num_classes = num_classes
        init_weights(self)

    def _make_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Sequential(
            nn.Linear(self.num_features, self.head_channels),
            nn.Hardswish(inplace=True),
            nn.Dropout(self.drop_rate, inplace=True),
            nn.Linear(self.head_channels, num_classes),
        )
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W) -> (N, num_features, H/32, W/32)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, num_features, h, w) -> (N, num_classes)``."""
        return self.classifier(torch.flatten(self.avgpool(x), 1))


_PAPER = "Howard et al., Searching for MobileNetV3 (arXiv:1905.02244)"


# Training recipe for small images (TrainConfig fields; the CLI's flags override them): batch norm,
# AdamW; torchvision's BN momentum (0.01) is too slow for short runs, so 0.1; fp32 (depthwise
# convolutions run slower in bf16 on the CPUs measured).
RECIPE = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "model_kwargs": {"bn_momentum": 0.1}}
_CONFIG = {"paper": _PAPER, "first_conv": "features.0.0", "classifier": "classifier.3", "recipe": RECIPE}


@register_model(MobileNetV3, torchvision="mobilenet_v3_large", paper_params=5_483_032, paper_macs=216_589_760,
                weights=[Weights("IMAGENET1K_V1", "mobilenet_v3_large-8738ca79.pth", "8738ca79", 74.042, 91.340),
                         Weights("IMAGENET1K_V2", "mobilenet_v3_large-5c1a4163.pth", "5c1a4163", 75.274, 92.566,
                                 resize_size=232)], **_CONFIG)
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large 1.0: 5,483,032 params."""
    return MobileNetV3("large", **kwargs)


@register_model(MobileNetV3, torchvision="mobilenet_v3_small", paper_params=2_542_856, paper_macs=56_510_400,
                weights=[Weights("IMAGENET1K_V1", "mobilenet_v3_small-047dcff4.pth", "047dcff4", 67.668, 87.402)],
                **_CONFIG)
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small 1.0: 2,542,856 params."""
    return MobileNetV3("small", **kwargs)
