"""Checkpoints: one dict saved atomically, read back without unpickling code.

Every value is a tensor, a number, a string, or a list/dict of those, so that
``torch.load(weights_only=True)`` reads it. Every file carries ``format: "pocketcnn-checkpoint"``
and ``version`` (the schema version, :data:`VERSION`; a file without it reads as version 0).
A training run's ``last.pt`` / ``best.pt`` is a :class:`TrainingCheckpoint`, whose fields are the
file's other keys, each documented in docs/checkpoint.md (a test holds a written file to exactly
those keys). The int8 checkpoints of ``pocketcnn quantize --backend torch`` hold ``model``,
``model_kwargs``, ``state_dict``, ``data`` and ``quantized: {"method", "engine", "dtype"}``.

A file is untrusted until proven otherwise: the stored model settings are checked against
sane bounds and the stored tensor shapes against the model built on PyTorch's ``meta``
device (no memory) before anything is allocated (:func:`build_recorded`).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, PocketCNNError, first_line
from .formats import format_of
from ..fileio import atomic_write
from ..models.registry import create_model

FORMAT, VERSION = "pocketcnn-checkpoint", 1  # VERSION: the schema this pocketcnn writes, and the newest it reads
MAX_PARAMS = 200_000_000  # 3x AlexNet: far above any pocket-sized network; a larger record is refused
KINDS = "a pocketcnn checkpoint (.pt from train, compress's source, quantize --backend torch)"


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


RNG_KEYS = ("torch", "augment")  # TrainingCheckpoint.rng; "cuda" too where CUDA is available


@dataclass
class TrainingCheckpoint:
    """What a training run saves in ``last.pt`` and ``best.pt`` (besides ``format`` and ``version``).

    A checkpoint taken anywhere (an epoch's end, or mid-epoch on SIGINT/SIGTERM) resumes to the
    weights an uninterrupted run reaches. A file written before a field existed reads with the
    field's default (:meth:`from_dict`), so every older checkpoint still loads and resumes.
    """

    model: str  # registry name
    model_kwargs: dict[str, Any]  # keywords for create_model
    state_dict: dict[str, torch.Tensor]  # the raw weights (the unwrapped model, whatever the process count)
    optimizer: dict[str, Any]  # optimizer.state_dict()
    scheduler: dict[str, Any]  # the learning-rate schedule's state_dict()
    rng: dict[str, Any]  # "torch": CPU generator state, "augment": this rank's augmentation generator, "cuda": [...]
    epoch: int  # epochs finished
    ema: dict[str, torch.Tensor] | None = None  # the EMA weights (None without EMA)
    ema_n_averaged: int = 1  # EMA updates so far (0 without EMA)
    ema_ready: bool = True  # the EMA has averaged over its window: evaluate and export the EMA weights
    scaler: dict[str, Any] | None = None  # the fp16 GradScaler's state (CUDA with AMP), else None
    batch_in_epoch: int = 0  # batches of the next epoch already trained (0: at an epoch's end)
    step: int = 0  # optimizer steps so far
    epoch_partial: list[float] = field(default_factory=lambda: [0.0, 0, 0])  # loss sum, correct, seen so far
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_dict()
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one dict per finished epoch (metrics.jsonl)
    data: dict[str, Any] | None = None  # DataSpec.to_dict(): preprocessing and class names

    def to_dict(self) -> dict[str, Any]:
        """The file's keys (no copies of the tensors); :func:`save_checkpoint` adds ``format`` and ``version``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, ckpt: Mapping[str, Any], source: str = "checkpoint") -> TrainingCheckpoint:
        """A loaded checkpoint as this record; CheckpointError if it is not a training checkpoint."""
        missing = [f.name for f in fields(cls) if f.name not in ckpt and f.default is f.default_factory is MISSING]
        if missing:
            raise CheckpointError(f"{source}: not a training checkpoint of pocketcnn (no {', '.join(missing)})")
        out = cls(**{f.name: ckpt[f.name] for f in fields(cls) if f.name in ckpt})
        out.epoch_partial = list(out.epoch_partial or [0.0, 0, 0])  # None (or absent) in older files
        return out


def save_training_checkpoint(path: str | Path, ckpt: TrainingCheckpoint) -> Path:
    return save_checkpoint(path, ckpt.to_dict())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a pocketcnn checkpoint safely; a bad file is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected {KINDS}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # int8 checkpoints: a TypedStorage deprecation note
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of an untrusted file is the file's fault
        raise CheckpointError(f"{path}: not a readable checkpoint: expected {KINDS}{_kind_hint(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pocketcnn checkpoint (expected format={FORMAT!r})")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than this pocketcnn reads ({VERSION})")
    for key in ("model", "model_kwargs", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks the field {key!r}")
    return ckpt


def _kind_hint(path: Path, exc: BaseException) -> str:
    """What the file looks like instead, from its first bytes (never torch's advice to unpickle it)."""
    try:
        head = path.read_bytes()[:8]
    except OSError as err:
        return f" (cannot read: {err.strerror or err})"
    for magic, kind in ((b"PCZ1", "a .pcz file: pass it to predict or export"),
                        (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                        (b"\x08", "probably an ONNX model: pass it to predict or serve")):
        if head.startswith(magic):
            return f"; this is {kind}"
    fmt = format_of(path)
    if b"torch.export" in head or (fmt is not None and fmt.kind == "exported"):
        return f"; a {path.suffix} file is an exported model: pass it to predict"
    text = first_line(exc, 120)
    return "" if "weights_only" in text or "Weights only" in text else f" ({text})"


def is_int8(ckpt: Mapping[str, Any]) -> bool:
    """Whether ``ckpt`` holds the int8 weights of ``pocketcnn quantize --backend torch`` (CPU only)."""
    return bool(ckpt.get("quantized"))


def build_recorded(name: Any, kwargs: Any, shapes: Mapping[str, tuple[int, ...]] | None, source: str) -> nn.Module:
    """Build the model a file records, after checking it: a registered ``name``, ``kwargs`` that
    ``create_model`` takes, at most :data:`MAX_PARAMS` parameters, and (with ``shapes``) the
    stored tensor shapes equal to the model's. The checks run on the ``meta`` device, so a
    hostile record (say ``width_mult=200``) is refused before any memory is allocated."""
    if not isinstance(name, str) or not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{source}: bad model record (name {name!r}, model_kwargs {kwargs!r})")
    try:
        with torch.device("meta"):
            probe = create_model(name, **kwargs)
    except PocketCNNError as exc:
        raise CheckpointError(f"{source}: records model {name!r} with settings this pocketcnn cannot build: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: records model {name!r} with unusable settings {dict(kwargs)}: "
                              f"{first_line(exc, 200)}") from None
    n = sum(p.numel() for p in probe.parameters())
    if n > MAX_PARAMS:
        raise CheckpointError(f"{source}: records {name!r} with {dict(kwargs)}, {n:,} parameters; refused "
                              f"(more than {MAX_PARAMS:,}: not a pocket-sized model, or a hostile file)")
    if shapes is not None:
        expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
        _check_shapes(expected, {k: tuple(v) for k, v in shapes.items()}, name, source)
    return create_model(name, **kwargs)


def _check_shapes(expected: Mapping[str, tuple[int, ...]], stored: Mapping[str, tuple[int, ...]], name: str,
                  source: str) -> None:
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit model {name!r}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for key, shape in expected.items():
        if stored[key] != shape:
            raise CheckpointError(f"{source}: weights do not fit model {name!r}: {key} is {list(stored[key])} in "
                                  f"the file, {list(shape)} in the model")


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path, *, use_ema: bool = True,
                          source: str = "checkpoint") -> nn.Module:
    """Build the checkpoint's model and load its weights (the EMA weights when present and ready:
    a run saves ``ema_ready`` False until its EMA has averaged over its window).

    An int8 checkpoint (:func:`is_int8`) gives the PyTorch int8 model, which runs on the CPU.
    """
    if not isinstance(ckpt, dict):
        source = str(ckpt)
        ckpt = load_checkpoint(ckpt)
    if is_int8(ckpt):
        return _int8_model(ckpt, source)
    use_ema = use_ema and ckpt.get("ema") is not None and ckpt.get("ema_ready", True)
    state = ckpt["ema"] if use_ema else ckpt["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: the state dict is not a mapping of names to tensors")
    model = build_recorded(ckpt["model"], ckpt["model_kwargs"], {k: v.shape for k, v in state.items()}, source)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit model {ckpt['model']!r}: {first_line(exc)}") from None
    return model.eval()


def _int8_model(ckpt: dict[str, Any], source: str) -> nn.Module:
    from ..models.int8 import rebuild_fx_int8

    data = ckpt.get("data") or {}
    try:
        size = (int(data["in_chans"]), int(data["image_size"]), int(data["image_size"]))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{source}: int8 checkpoint lacks its input size "
                              "(fields data.in_chans and data.image_size)") from None
    model = build_recorded(ckpt["model"], ckpt["model_kwargs"], None, source)
    try:
        model = rebuild_fx_int8(model, ckpt["state_dict"], size)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: int8 weights do not fit model {ckpt['model']!r}: "
                              f"{first_line(exc, 200)}") from None
    return model.eval()


def save_int8_checkpoint(path: str | Path, name: str, model_kwargs: Mapping[str, Any], data: Mapping[str, Any],
                         qmodel: nn.Module, *, method: str = "fx") -> Path:
    """A pocketcnn checkpoint whose ``state_dict`` is the FX int8 model's (``quantized`` says how to rebuild)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_checkpoint(path, {"model": name, "model_kwargs": dict(model_kwargs),
                                      "state_dict": qmodel.state_dict(), "data": dict(data),
                                      "quantized": {"method": method, "engine": torch.backends.quantized.engine,
                                                    "dtype": "int8"}})
