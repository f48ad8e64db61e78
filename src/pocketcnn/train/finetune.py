"""Fine-tuning from pretrained weights: read them, adapt them to the data set, freeze or slow the body.

``TrainConfig.weights`` is a local weight file (torchvision's ``.pth`` read weights-only, a
``.safetensors`` file, or a pocketcnn checkpoint) or the name of known weights
(``IMAGENET1K_V1``, looked up in ``weights_dir`` and checked by hash; nothing is downloaded).
Then, as timm and torchvision do it:

* the last layer (the registry's ``classifier`` name) is re-initialised for the data set's
  class count when its shape differs; every other tensor loads strictly, and a mismatch is a
  one-line error naming the layer and both shapes;
* the first convolution is adapted to the data's channels: 3 -> 1 sums the filters over the
  input channels (a gray image then gives what the RGB model gives on that image repeated
  three times), 1 -> 3 repeats them and divides by 3;
* the data is resized to the weights' resolution (224 for ImageNet weights) with their mean and
  std (averaged over channels for gray data), unless ``input_size`` says otherwise; the
  small-input stem is not used (its first convolution has another shape);
* ``freeze="features"`` trains the classifier alone (a linear probe): the body is in eval mode,
  its parameters get no gradient, and its forward pass runs without autograd, so an epoch
  costs about a forward pass; ``lr_features`` scales the body's learning rate.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.spec import DataSpec, imagenet_spec
from ..errors import CheckpointError, ConfigError
from ..models.registry import ModelConfig, model_config
from .config import TrainConfig

HEAD = "classifier"  # every model's head is its ``classifier`` module (the uniform surface)


def pretrained_state(cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], DataSpec, str]:
    """``(state dict, the preprocessing the weights were trained with, a description)`` of ``cfg.weights``."""
    from ..models.weights import find_weights, read_state_dict

    mcfg = model_config(cfg.model)
    path = Path(str(cfg.weights)).expanduser()
    if not path.exists() and any(w.name == cfg.weights for w in mcfg.weights):
        entry = mcfg.get_weights(str(cfg.weights))
        found = find_weights(mcfg, entry, folder=cfg.weights_dir)
        return read_state_dict(found), entry.spec, f"{cfg.model} {entry.name} ({found}, SHA-256 checked)"
    if not path.is_file():
        known = ", ".join(w.name for w in mcfg.weights) or "none"
        raise CheckpointError(f"{path}: no such weight file, and not a weights name of {cfg.model} (known: {known}; "
                              "see `pocketcnn weights`)")
    from ..artifacts.checkpoint import FORMAT

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file (safetensors) or not readable: read_state_dict says which
        ckpt = None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT and isinstance(ckpt.get("data"), Mapping):
        state = ckpt["ema"] if ckpt.get("ema") is not None and ckpt.get("ema_ready", True) else ckpt["state_dict"]
        return dict(state), DataSpec.from_dict(dict(ckpt["data"])), f"the pocketcnn checkpoint {path}"
    spec = mcfg.weights[0].spec if mcfg.weights else imagenet_spec(mcfg.input_size[1])
    return read_state_dict(path), spec, f"the weight file {path}"


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-conv weight ``(out, c, k, k)`` for ``in_chans`` input channels: summed to 1 channel, or
    repeated (and scaled by ``c / in_chans``) to more, so that an input repeated over the channels
    gives the same output."""
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_chans // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def adapt_state(state: Mapping[str, torch.Tensor], model: nn.Module, mcfg: ModelConfig,
                source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` made to fit ``model``: the head re-initialised where its shape differs, the first
    convolution adapted to the input channels; anything else that does not fit is a CheckpointError."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit {mcfg.name}: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]} (weights of another architecture?)")
    out, notes = {}, []
    first = f"{mcfg.first_conv}.weight"
    for key, mine in own.items():
        theirs = state[key]
        if theirs.shape == mine.shape:
            out[key] = theirs
        elif key.startswith(f"{mcfg.classifier}."):
            out[key] = mine  # freshly initialised by the model
            if key.endswith("weight"):
                notes.append(f"classifier {mcfg.classifier} re-initialised for {mine.shape[0]} classes "
                             f"(the weights have {theirs.shape[0]})")
        elif key == first and theirs.dim() == 4 and theirs.shape[0] == mine.shape[0] \
                and theirs.shape[2:] == mine.shape[2:]:
            out[key] = adapt_input_conv(theirs, mine.shape[1])
            notes.append(f"first convolution {mcfg.first_conv} adapted from {theirs.shape[1]} to {mine.shape[1]} "
                         f"input channel(s) ({'summed' if mine.shape[1] == 1 else 'repeated'})")
        else:
            raise CheckpointError(f"{source}: layer {key} is {list(theirs.shape)} in the weights, {list(mine.shape)} "
                                  f"in the model")
    return out, notes


def pretrained_data_spec(data: DataSpec, weights_spec: DataSpec, input_size: int | None) -> DataSpec:
    """The data set's classes and channels with the weights' resolution, mean and std."""
    size = input_size or weights_spec.image_size
    mean, std = weights_spec.mean, weights_spec.std
    if data.in_chans != len(mean):
        mean = (sum(mean) / len(mean),) * data.in_chans
        std = (sum(std) / len(std),) * data.in_chans
    return DataSpec(data.name, data.num_classes, data.in_chans, size, tuple(mean), tuple(std), data.classes, size)


def load_pretrained(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Load ``cfg.weights`` into ``model`` (adapted); returns what was done, one line each."""
    state, _, what = pretrained_state(cfg)
    adapted, notes = adapt_state(state, model, model_config(cfg.model), str(cfg.weights))
    model.load_state_dict(adapted)
    return [f"started from {what}", *notes]


def is_head(name: str) -> bool:
    return name == HEAD or name.startswith(f"{HEAD}.")


def freeze_features(model: nn.Module) -> int:
    """Stop gradients to everything but the classifier; returns the number of frozen parameters."""
    frozen = 0
    for name, p in model.named_parameters():
        if not is_head(name):
            p.requires_grad_(False)
            frozen += p.numel()
    if frozen == sum(p.numel() for p in model.parameters()):
        raise ConfigError(f"{type(model).__name__} has no '{HEAD}' module to train with freeze='features'")
    return frozen


def features_to_eval(model: nn.Module) -> None:
    """Batch norm statistics and dropout of the frozen body as in evaluation (call after ``train()``)."""
    for name, child in model.named_children():
        if not is_head(name):
            child.eval()


class HeadOnly(nn.Module):
    """The model with its body run without autograd: ``(N, C, H, W) -> logits``, gradients for the head only.

    What a linear probe trains; DDP wraps it like any module (only the head's parameters need grad)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model.forward_features(x)
        return self.model.forward_head(features)


def param_groups(cfg: TrainConfig, model: nn.Module) -> list[dict[str, Any]]:
    """Optimizer groups: weight decay on weights only (not biases or batch norm), and the body's
    learning rate ``cfg.lr * cfg.lr_features``; frozen parameters are left out."""
    split = cfg.lr_features != 1.0  # else the two groups of a from-scratch run (older checkpoints resume)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((is_head(name) or not split, p.ndim > 1), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
             "lr": cfg.lr * (1.0 if head else cfg.lr_features), "name": f"{'head' if head else 'body'}"
             f"{'' if decay else ' (no decay)'}"} for (head, decay), ps in sorted(groups.items(), reverse=True)]
