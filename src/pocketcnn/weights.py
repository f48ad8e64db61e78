"""Loading weight files safely: ``.safetensors`` or ``.pth`` read with ``weights_only=True``.

Neither path can execute code stored in the file (no arbitrary unpickling).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, a torchvision ``.pth`` or a pocketcnn checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of an untrusted file is the file's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable weight file ({first[:200]})") from None
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
