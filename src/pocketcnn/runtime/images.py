"""Reading user images and turning them into model inputs, without PyTorch.

:func:`preprocess` is the training preprocessing (``pocketcnn.data.transforms.pil_to_input``,
torchvision ``v2.Resize(resize_size, antialias=True)``, ``v2.CenterCrop(image_size)``,
``v2.PILToTensor()``, then ``(x / 255 - mean) / std``) redone with Pillow and numpy, step
by step as torchvision runs it on a PIL image:

* resize: the shorter side becomes ``resize_size``, the longer one
  ``int(resize_size * long / short)`` (truncated, as torchvision's
  ``_compute_resized_output_size``); an image already that size is not resampled; else
  ``Image.resize(..., BILINEAR)`` (on PIL images torchvision always antialiases: it *is*
  Pillow's resize);
* center crop: offsets ``int(round((H - S) / 2.0))`` and ``int(round((W - S) / 2.0))``
  (Python's round, half to even, as ``_center_crop_compute_crop_anchor``);
* normalize in float32 as ``normalize_batch``: ``x * (1 / (255 * std)) - mean / std``.

Every failure a user can cause is a one-line :class:`~pocketcnn.errors.DataError` naming the image.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.spec import DataSpec
from ..errors import DataError, first_line

# Images with more pixels than this are refused before decoding (decompression bombs).
# PIL's own limit (Image.MAX_IMAGE_PIXELS) is honored too when it is lower.
MAX_IMAGE_PIXELS = 64_000_000
ImageSource = Union[str, Path, bytes, bytearray, memoryview, Image.Image]
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def image_name(image: object) -> str:
    """How an image is named in records and messages: its path, a PIL image's file name, ``<bytes>``."""
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or "<PIL image>"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(image)


def pixel_limit() -> int:
    """The number of pixels above which an image is refused: ours, or PIL's when lower."""
    pil = Image.MAX_IMAGE_PIXELS
    return min(MAX_IMAGE_PIXELS, int(pil)) if pil else MAX_IMAGE_PIXELS


def load_image(image: ImageSource, *, name: str | None = None) -> Image.Image:
    """Open and fully decode an image (a path, encoded bytes, or a PIL image returned as is),
    EXIF rotation applied. Every failure is a one-line DataError starting with ``name``
    (default: :func:`image_name`).

    Decompression bombs: more than :func:`pixel_limit` pixels is refused from the header,
    before decoding (PIL refuses twice its own limit while opening; that is caught too).
    No warning filters are touched, so this is safe to call from many threads at once.
    """
    if isinstance(image, Image.Image):
        return image
    label = name if name is not None else image_name(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise DataError(f"{label}: empty, not an image")
        source: object = io.BytesIO(bytes(image))
    elif isinstance(image, (str, Path)):
        source = image  # a missing file or a folder is told by open() below: no stat calls first
    else:
        raise DataError(f"{label}: expected a file path, bytes or a PIL image, received {type(image).__name__}")
    try:
        with Image.open(source) as img:  # type: ignore[arg-type]
            pixels = img.width * img.height
            if pixels > pixel_limit():
                raise DataError(f"{label}: image of {img.width}x{img.height} = {pixels:,} pixels is over the "
                                f"limit of {pixel_limit():,} (possible decompression bomb)")
            img.load()  # decode now: a truncated file fails here, not later
            ImageOps.exif_transpose(img, in_place=True)  # rotated as the camera meant, without a copy
            return img
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{label}: is a folder, not an image") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{label}: refused as a possible decompression bomb ({first_line(exc)})") from None
    except UnidentifiedImageError:
        raise DataError(f"{label}: not an image file PIL can read") from None
    except Exception as exc:  # truncated or corrupt data (OSError, SyntaxError, struct.error, ...), unreadable file
        reason = getattr(exc, "strerror", None) or first_line(exc)
        raise DataError(f"{label}: cannot decode image ({reason})") from None


def to_model_mode(img: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL mode -> ``L`` (``in_chans=1``) or ``RGB`` (3): alpha is dropped, palettes
    expanded (through RGBA when they carry transparency), CMYK / YCbCr / LAB converted,
    16-bit and float images scaled to 8 bits (``I;16*``: by 65535; ``I``, ``F``: by their
    maximum, at least 255)."""
    if img.mode in _HIGH_DEPTH_MODES:
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 255.0) if arr.size else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if in_chans == 1:
        return img if img.mode == "L" else img.convert("RGB").convert("L")  # via RGB: CMYK, YCbCr, LA, ...
    return img if img.mode == "RGB" else img.convert("RGB")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` after torchvision's ``Resize(size)``: shorter side ``size``, the other truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """PIL crop box ``(left, top, right, bottom)`` of torchvision's ``CenterCrop(size)``."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def preprocess(image: ImageSource, spec: DataSpec, *, name: str | None = None) -> np.ndarray:
    """One image -> float32 ``(spec.in_chans, S, S)``, ``S = spec.image_size``, normalized as in training.

    ``image``: a path, encoded bytes or a PIL image in any mode. DataError if it cannot be used.
    """
    label = name if name is not None else image_name(image)
    if spec.in_chans not in (1, 3):
        raise DataError(f"{label}: images give 1 or 3 channels, the model expects in_chans={spec.in_chans}")
    img = load_image(image, name=label)
    try:
        img = to_model_mode(img, spec.in_chans)
        width, height = resized_size(img.width, img.height, int(spec.resize_size or spec.image_size))
        if (width, height) != img.size:
            img = img.resize((width, height), resample=Image.BILINEAR)
        if spec.image_size > min(width, height):  # DataSpec forbids resize_size < image_size
            raise DataError(f"{label}: resized to {width}x{height}, smaller than the crop {spec.image_size}")
        if (width, height) != (spec.image_size, spec.image_size):
            img = img.crop(center_crop_box(width, height, spec.image_size))
        pixels = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # an exotic mode PIL cannot convert
        raise DataError(f"{label}: cannot convert image of mode {img.mode!r} ({first_line(exc)})") from None
    return normalize(pixels, spec)


def normalize(pixels: np.ndarray, spec: DataSpec) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, C)`` -> float32 ``(C, H, W)``: ``x * (1 / (255 * std)) - mean / std``
    in float32, the arithmetic of training's ``normalize_batch``."""
    x = pixels[None] if pixels.ndim == 2 else np.transpose(pixels, (2, 0, 1))
    c = x.shape[0]
    if len(spec.mean) not in (1, c) or len(spec.std) not in (1, c):
        raise DataError(f"{c} channels but mean={tuple(spec.mean)} and std={tuple(spec.std)}")
    mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    return np.ascontiguousarray(x.astype(np.float32) * scale - mean / std, dtype=np.float32)
