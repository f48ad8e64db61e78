"""The one preprocessing record, :class:`DataSpec`, shared by training, export and the runtimes.

Torch-free on purpose: the light runtime (``pocketcnn.runtime``) reads it from exported
files on machines without PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import DataError

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder")  # the local readers (data.datasets)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in torchvision's order (packaged ``data/imagenet_classes.txt``)."""
    from importlib.resources import files

    return tuple(files("pocketcnn.data").joinpath("imagenet_classes.txt").read_text().splitlines())


@dataclass(frozen=True)
class DataSpec:
    """What a model, exporter or predictor must know about a data set's inputs and labels."""

    name: str
    num_classes: int
    in_chans: int  # 1 for (Fashion-)MNIST, 3 otherwise
    image_size: int  # inputs are (in_chans, image_size, image_size)
    mean: tuple[float, ...]  # per channel, [0, 1] units
    std: tuple[float, ...]
    classes: tuple[str, ...]
    # a user's image: shorter side resized to this, then center-cropped to image_size
    # (None: image_size itself; torchvision's ImageNet weights use 256 for 224)
    resize_size: int | None = None

    def __post_init__(self) -> None:
        if self.resize_size is None:
            object.__setattr__(self, "resize_size", self.image_size)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in checkpoints under ``"data"``); includes ``input_size`` [C, H, W]."""
        return {"name": self.name, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "image_size": self.image_size, "input_size": [self.in_chans, self.image_size, self.image_size],
                "resize_size": self.resize_size,
                "mean": list(self.mean), "std": list(self.std), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        try:
            in_chans, image_size = (d["in_chans"], d["image_size"]) if "in_chans" in d else d["input_size"][:2]
            classes = tuple(str(c) for c in d["classes"])
            resize = int(d.get("resize_size") or image_size)
            spec = cls(str(d["name"]), int(d.get("num_classes", len(classes))), int(in_chans), int(image_size),
                       tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]), classes, resize)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"not a data description (need name, in_chans, image_size, mean, std, classes): "
                            f"{type(exc).__name__} {exc} in {sorted(d) if isinstance(d, dict) else d!r}") from None
        if resize < spec.image_size:
            raise DataError(f"resize_size must be at least image_size={spec.image_size}, received resize_size={resize}")
        return spec


def imagenet_spec(image_size: int = 224, resize_size: int | None = None) -> DataSpec:
    """The preprocessing of torchvision's ImageNet weights: shorter side to ``resize_size``
    (default: 256 for 224, the 0.875 crop ratio scaled to other sizes), center crop
    ``image_size``, ImageNet mean/std, the 1000 class names."""
    classes = imagenet_classes()
    resize = resize_size if resize_size is not None else round(image_size * 256 / 224)
    return DataSpec("imagenet", len(classes), 3, image_size, IMAGENET_MEAN, IMAGENET_STD, classes, resize)
