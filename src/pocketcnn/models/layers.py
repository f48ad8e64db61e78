"""Blocks shared by several architecture files, and nothing else."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..validate import check_int


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never down by more than 10%.

    The rule of the TensorFlow MobileNet code that torchvision also uses.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation; "same" padding.

    ``(N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride))``.
    Its children are named ``0, 1, 2`` like torchvision's ``Conv2dNormActivation``,
    so state dicts match.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: Callable[..., nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_ch


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as in MobileNetV3 (torchvision's key names ``fc1``, ``fc2``).

    ``(N, C, H, W) -> (N, C, H, W)``: scales each channel by a gate computed from its mean.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU(inplace=True)
        self.scale_activation = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class ClassifierMixin:
    """The uniform model surface every architecture shares.

    Subclasses define ``forward_features`` and ``forward_head``, set ``num_features``
    and ``num_classes``, and implement ``_make_classifier(n)``.
    """

    num_features: int
    num_classes: int
    min_input_size: int = 1  # smallest square input side whose feature maps do not vanish
    small_input_min: int | None = None  # that side with small_input=True, where the model has the option

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (an FX proxy while quantization traces the model is not a tensor: nothing to check then)
        if isinstance(x, torch.Tensor) and x.dim() == 4 and min(int(x.shape[-2]), int(x.shape[-1])) < self.min_input_size:
            hint = (f"; build it with small_input=True for small images (minimum {self.small_input_min} px)"
                    if self.small_input_min is not None and self.small_input_min < self.min_input_size else "")
            raise ConfigError(f"{type(self).__name__} needs inputs of at least {self.min_input_size}x"
                              f"{self.min_input_size} pixels, received {int(x.shape[-2])}x{int(x.shape[-1])}{hint}")
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last layer with a freshly initialised one for ``num_classes``."""
        check_int("num_classes", num_classes)
        self._make_classifier(num_classes)  # type: ignore[attr-defined]
        self.num_classes = num_classes


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation: He (fan-out) convs, N(0, 0.01) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
