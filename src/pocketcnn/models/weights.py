"""Loading weight files safely: ``.safetensors`` or ``.pth`` read with ``weights_only=True``.

Neither path can execute code stored in the file (no arbitrary unpickling). Named weights
(:class:`~pocketcnn.models.registry.Weights`) are found by file name in a local folder and checked
by their SHA-256 prefix; nothing is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import CheckpointError, first_line
from ..fileio import sha256_file as sha256_of  # the name this module has always offered

if TYPE_CHECKING:
    from .registry import ModelConfig, Weights


def default_weights_dir() -> Path:
    """torch hub's cache folder (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``),
    where torchvision itself keeps the files it downloads."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch"
    return Path(home).expanduser() / "hub" / "checkpoints"


def find_weights(cfg: ModelConfig, entry: Weights, *, path: str | Path | None = None,
                 folder: str | Path | None = None) -> Path:
    """The local file of named weights: ``path``, else ``folder / entry.filename`` (default folder:
    :func:`default_weights_dir`), its SHA-256 checked against the prefix torchvision publishes."""
    where = Path(path) if path is not None else Path(folder or default_weights_dir()) / entry.filename
    if not where.is_file():
        raise CheckpointError(f"{where}: weights {cfg.name} {entry.name} not found; put torchvision's file "
                              f"{entry.filename} there (or pass its path); pocketcnn downloads nothing")
    found = sha256_of(where)
    if not found.startswith(entry.sha256):
        raise CheckpointError(f"{where}: SHA-256 {found[:12]}... does not match weights {cfg.name} {entry.name} "
                              f"(expected {entry.sha256}..., torchvision's {entry.filename}): wrong or damaged file")
    return where


def _is_safetensors(path: Path) -> bool:
    """By the content, whatever the name: a safetensors file opens with its JSON header's length (8 bytes,
    little-endian) and the header's ``{``; a ``.pth`` file is a zip archive (or a pickle)."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, a torchvision ``.pth`` or a pocketcnn checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of an untrusted file is the file's fault
        why = first_line(exc, 200)  # never torch's advice to unpickle an untrusted file
        why = "" if "weights_only" in why.lower() or "weights only" in why.lower() else f" ({why})"
        raise CheckpointError(f"{path}: not a readable weight file: expected a state dict in a .pth (tensors only) "
                              f"or .safetensors file{why}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    return obj


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a local weight file into ``model`` and return it.

    Shapes must match exactly; with ``strict`` the key sets must too. The error names
    the first keys that differ.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{path}: {len(bad)} tensors have the wrong shape, e.g. {k}: file {tuple(state[k].shape)}, "
            f"model {tuple(own[k].shape)} (num_classes, in_chans or small_input may differ)"
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path}: keys do not match the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    model.load_state_dict(state, strict=strict)
    return model
