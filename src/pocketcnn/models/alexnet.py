"""AlexNet (Krizhevsky et al., 2012), torchvision's single-tower variant: the baseline.

Layer names match torchvision's ``alexnet``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..validate import check_number
from .registry import Weights, register_model
from .layers import ClassifierMixin

# (out_ch, kernel, stride, padding, max-pool after) for conv1..conv5
CONVS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False), (256, 3, 1, 1, False),
         (256, 3, 1, 1, True))
HIDDEN = 4096


class AlexNet(ClassifierMixin, nn.Module):
    """Five convs with three max-pools, 6x6 adaptive average pool, three FC layers.

    ``small_input=True`` makes conv1 a 3x3 stride-1 conv, so 28x28 images survive the
    three max-pools (28 -> 13 -> 6 -> 2) instead of vanishing after the second.
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5,
                 small_input: bool = False) -> None:
        super().__init__()
        # the smallest side that leaves the last max-pool a non-empty map (set by the kernels and strides)
        self.min_input_size, self.small_input_min = (15 if small_input else 63), 15
        check_number("drop_rate", drop_rate, 0, 1, high_open=True)
        layers: list[nn.Module] = []
        ch = in_chans
        for i, (out, k, s, p, pool) in enumerate(CONVS):
            if i == 0 and small_input:
                k, s, p = 3, 1, 1
            layers += [nn.Conv2d(ch, out, k, s, p), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(3, 2))
            ch = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.num_features = ch
        self.drop_rate = drop_rate
        self._make_classifier(num_classes)
        self.num_classes = num_classes

    def _make_classifier(self, num_classes: int) -> None:
        self.classifier = nn.Sequential(
            nn.Dropout(self.drop_rate), nn.Linear(self.num_features * 36, HIDDEN), nn.ReLU(inplace=True),
            nn.Dropout(self.drop_rate), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W) -> (N, 256, h, w)``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 256, h, w) -> (N, num_classes)``; the head holds 96% of the weights."""
        return self.classifier(torch.flatten(self.avgpool(x), 1))


# Training recipe for small images (TrainConfig fields; the CLI's flags override them). No batch
# norm: Adam keeps the deep plain stack moving. bf16 autocast where the CPU has it ("auto"): faster
# at the same accuracy (docs/training.md, "Mixed precision (AMP)").
RECIPE = {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.05, "amp": "auto", "model_kwargs": {"drop_rate": 0.5}}
# A run of 1-2 epochs learns faster at a higher peak (measured: docs/training.md, "Recipes and settings").
SHORT_RECIPE = {"lr": 1e-3}


@register_model(AlexNet, torchvision="alexnet", paper="Krizhevsky et al., ImageNet Classification with Deep CNNs (2012)",
                first_conv="features.0", classifier="classifier.6", paper_params=61_100_840, paper_macs=714_188_480,
                recipe=RECIPE, short_recipe=SHORT_RECIPE,
                weights=[Weights("IMAGENET1K_V1", "alexnet-owt-7be5be79.pth", "7be5be79", 56.522, 79.066)])
def alexnet(**kwargs) -> AlexNet:
    """torchvision's AlexNet: 61,100,840 params."""
    return AlexNet(**kwargs)
