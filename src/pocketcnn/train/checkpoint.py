"""Checkpoints: one dict saved atomically, read back without unpickling code.

Layout (every value is a tensor, a number, a string, or a list/dict of those, so that
``torch.load(weights_only=True)`` reads it)::

    format: "pocketcnn-checkpoint", version: 1
    model: registry name, model_kwargs: keywords for create_model
    state_dict: model weights           ema: EMA weights or None
    optimizer, scheduler, scaler: state dicts or None
    rng: {"torch": ByteTensor, "cuda": [ByteTensor...], "python": tuple}
    epoch: last finished epoch (1-based), step: optimizer steps so far
    config: the training configuration as a dict
    metrics: list of per-epoch metric dicts
    data: {"name", "input_size" [C, H, W], "mean", "std", "classes"}   (preprocessing)
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..registry import create_model

FORMAT, VERSION = "pocketcnn-checkpoint", 1


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a pocketcnn checkpoint safely; a bad file is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # int8 checkpoints: a TypedStorage deprecation note
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of an untrusted file is the file's fault
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pocketcnn checkpoint (expected format={FORMAT!r})")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this pocketcnn reads ({VERSION})")
    for key in ("model", "model_kwargs", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks the field {key!r}")
    return ckpt


def is_int8(ckpt: dict[str, Any]) -> bool:
    """Whether ``ckpt`` holds the int8 weights of ``pocketcnn quantize --backend torch`` (CPU only)."""
    return bool(ckpt.get("quantized"))


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path, *, use_ema: bool = True) -> nn.Module:
    """Build the checkpoint's model and load its weights (EMA weights when present).

    An int8 checkpoint (:func:`is_int8`) gives the PyTorch int8 model, which runs on the CPU.
    """
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    if is_int8(ckpt):
        return _int8_model(ckpt)
    model = create_model(ckpt["model"], **ckpt["model_kwargs"])
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit model {ckpt['model']!r}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def _int8_model(ckpt: dict[str, Any]) -> nn.Module:
    from ..compress.quantize import rebuild_fx_int8

    data = ckpt.get("data") or {}
    try:
        size = (int(data["in_chans"]), int(data["image_size"]), int(data["image_size"]))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError("int8 checkpoint lacks its input size "
                              "(fields data.in_chans and data.image_size)") from None
    try:
        model = rebuild_fx_int8(create_model(ckpt["model"], **ckpt["model_kwargs"]), ckpt["state_dict"], size)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"int8 weights do not fit model {ckpt['model']!r}: "
                              f"{str(exc).strip().splitlines()[0][:200]}") from None
    return model.eval()
