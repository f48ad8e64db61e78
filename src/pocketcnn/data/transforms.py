"""Batched augmentation and normalization on the training device, and preprocessing of user images.

``augment_batch`` works on a whole ``(N, C, H, W)`` batch at once (no Python loop over
samples), on CPU or CUDA, and is deterministic given a ``torch.Generator``: the random
numbers are drawn on the generator's device, so a CPU generator gives the same
augmentation on CPU and CUDA.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError, DataError
from .datasets import DataSpec

ERASE_SCALE = (0.02, 0.33)  # erased area, as a fraction of the image (as torchvision RandomErasing)
ERASE_RATIO = (0.3, 3.3)  # erased rectangle's aspect ratio h / w


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` uniform [0, 1) floats drawn on the generator's device, returned on ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where).to(device)


def _randint(n: int, high: torch.Tensor | int, generator, device) -> torch.Tensor:
    """``n`` integers uniform in ``[0, high)`` (``high`` scalar or per-sample), int64 on ``device``."""
    high = torch.as_tensor(high, device=device)
    return (_rand(n, generator, device) * high).long().clamp_(max=high - 1)


def augment_batch(x: torch.Tensor, *, crop_padding: int = 0, hflip: bool | float = False, erase: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop, horizontal flip and erasing, chosen per sample.

    x: uint8 or float ``(N, C, H, W)`` -> same dtype, shape and device.

    * ``crop_padding=p``: pad with ``p`` zeros on each side, then crop ``H x W`` at a random
      offset in ``[0, 2p]`` (the content shifts by up to ``p`` pixels each way).
    * ``hflip``: True flips each sample with probability 0.5; a float is the probability.
    * ``erase``: probability that a sample gets one zero-filled rectangle (2-33% of the area,
      aspect ratio 0.3-3.3).
    """
    if x.dim() != 4:
        raise DataError(f"augment_batch expects an (N, C, H, W) batch, received shape {tuple(x.shape)}")
    p_flip = 0.5 if hflip is True else float(hflip)
    for key, value, ok in (("crop_padding", crop_padding, isinstance(crop_padding, int) and crop_padding >= 0),
                           ("hflip", hflip, 0.0 <= p_flip <= 1.0), ("erase", erase, 0.0 <= erase <= 1.0)):
        if not ok:
            raise ConfigError(f"augment_batch: invalid {key}={value!r}")
    n, c, h, w = x.shape
    dev = x.device
    if crop_padding > 0:
        p = crop_padding
        padded = x.new_zeros(n, c, h + 2 * p, w + 2 * p)
        padded[:, :, p:p + h, p:p + w] = x
        rows = _randint(n, 2 * p + 1, generator, dev)[:, None] + torch.arange(h, device=dev)  # (N, H)
        cols = _randint(n, 2 * p + 1, generator, dev)[:, None] + torch.arange(w, device=dev)  # (N, W)
        x = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    if p_flip > 0:
        flip = (_rand(n, generator, dev) < p_flip)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    if erase > 0:
        chosen = _rand(n, generator, dev) < erase
        area = h * w * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * _rand(n, generator, dev))
        lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        ratio = torch.exp(lo + (hi - lo) * _rand(n, generator, dev))
        eh = (area * ratio).sqrt().round().long().clamp(1, h)  # (N,)
        ew = (area / ratio).sqrt().round().long().clamp(1, w)
        top = _randint(n, h - eh + 1, generator, dev)[:, None]
        left = _randint(n, w - ew + 1, generator, dev)[:, None]
        r, q = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
        in_rows = (r >= top) & (r < top + eh[:, None])  # (N, H)
        in_cols = (q >= left) & (q < left + ew[:, None])  # (N, W)
        mask = chosen[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
        x = x.masked_fill(mask[:, None], 0)
    return x.contiguous()


def normalize_batch(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                    size: int | None = None, channels_last: bool = False) -> torch.Tensor:
    """``(x / 255 - mean) / std`` as float32 ``(N, C, H, W)``, optionally resized first.

    x_uint8: uint8 ``(N, C, H, W)`` (a float tensor is read on the same 0..255 scale).
    ``size``: resize to ``size x size`` (bilinear, antialiased) before normalizing.
    ``mean``, ``std``: one value per channel (or one for all), in [0, 1] units.
    """
    if x_uint8.dim() != 4:
        raise DataError(f"normalize_batch expects an (N, C, H, W) batch, received shape {tuple(x_uint8.shape)}")
    c = x_uint8.shape[1]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise DataError(f"normalize_batch: {c} channels but mean={tuple(mean)} and std={tuple(std)}")
    x = x_uint8.to(torch.float32)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = x.mul_(1.0 / (255.0 * s)).sub_(m / s)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def pil_to_input(img: Image.Image, spec: DataSpec) -> torch.Tensor:
    """A user's image -> float32 normalized ``(spec.in_chans, S, S)``, ``S = spec.image_size``.

    The image is converted to L (1 channel) or RGB (3), its shorter side resized to
    ``spec.resize_size`` (default ``S``: the same preprocessing as ``imagefolder`` data; 256
    for torchvision's ImageNet weights at 224), then center-cropped to ``S x S``.
    """
    from torchvision.transforms import v2

    if spec.in_chans not in (1, 3):
        raise DataError(f"pil_to_input supports 1 or 3 input channels, received in_chans={spec.in_chans}")
    img = img.convert("L" if spec.in_chans == 1 else "RGB")
    resize = v2.Compose([v2.Resize(spec.resize_size, antialias=True), v2.CenterCrop(spec.image_size),
                         v2.PILToTensor()])
    return normalize_batch(resize(img)[None], spec.mean, spec.std)[0]


def load_images(name: str, split: str, n: int | None, data: DataSpec, data_dir: str | Path | None = None, *,
                seed: int = 0, dataset: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` class-balanced images of ``split`` (all with None), or of ``dataset`` when given, normalized with
    ``data``'s preprocessing (float32 ``(n, C, S, S)``), and their labels: what calibration and scoring use."""
    from .datasets import balanced_subset, load_dataset

    kwargs = {"image_size": data.image_size} if name == "imagefolder" else {}
    ds = balanced_subset(dataset if dataset is not None else load_dataset(name, split, data_dir, **kwargs), n,
                         seed=seed)
    if hasattr(ds, "data"):
        x, y = ds.data, torch.as_tensor(ds.targets)
    else:
        items = [ds[i] for i in range(len(ds))]
        x, y = torch.stack([t for t, _ in items]), torch.tensor([int(t) for _, t in items])
    if x.shape[1] != data.in_chans:
        raise DataError(f"data set {name!r} has {x.shape[1]} channels but the model takes {data.in_chans}")
    return normalize_batch(x, data.mean, data.std, size=data.image_size), y
