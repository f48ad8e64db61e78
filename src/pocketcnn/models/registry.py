"""The model registry: one :class:`ModelConfig` per name, the single source of truth.

``create_model``, the CLI's choices, the training recipes, the known weight files and the
tests' parametrization all read it. Builders are thin keyword-only functions registered
with :func:`register_model` next to their architecture (``models/*.py``), which also gives
the model's config: input size, first conv and classifier names, training recipe, the
paper's numbers and the weight files pocketcnn knows (in the spirit of timm's
``PretrainedCfg`` and torchvision's weight enums; nothing is ever downloaded).

A model built here carries its :class:`ModelBuild` (name, keywords, weights) as
``model.pocketcnn_build``, so that checkpoints, exports and ``.pcz`` files can record how
to build it again.
"""
from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from ..data.spec import DataSpec, imagenet_spec
from ..errors import CheckpointError, ConfigError, UnknownModelError, close_matches
from ..validate import check_int

BUILD_ATTR = "pocketcnn_build"


@dataclass(frozen=True)
class Weights:
    """A weight file pocketcnn knows by name (torchvision's), found in a local folder, never downloaded.

    ``sha256`` is the hash prefix torchvision puts in the file name; a file whose SHA-256
    does not start with it is refused.
    """

    name: str  # e.g. "IMAGENET1K_V1"
    filename: str  # torchvision's file name, e.g. "squeezenet1_1-b8a52dc0.pth"
    sha256: str
    top1: float  # published ImageNet-1k top-1 / top-5 (torchvision's documentation)
    top5: float
    image_size: int = 224
    resize_size: int = 256

    @property
    def spec(self) -> DataSpec:
        """The preprocessing these weights were trained with (ImageNet mean/std, resize, center crop)."""
        return imagenet_spec(self.image_size, self.resize_size)


@dataclass(frozen=True)
class ModelConfig:
    """Everything the project knows about one registered model."""

    name: str
    builder: Callable[..., nn.Module]
    model_cls: type[nn.Module]
    input_size: tuple[int, int, int] = (3, 224, 224)  # default (C, H, W), the papers' ImageNet setting
    first_conv: str = "features.0"  # state-dict prefix of the first convolution (in_chans adaptation)
    classifier: str = "classifier"  # state-dict prefix of the last layer (replaced for a new class count)
    torchvision: str | None = None  # the torchvision builder with the same state dict
    paper: str = ""
    paper_params: int | None = None  # the paper's (or torchvision's) count at 1000 classes
    paper_macs: int | None = None  # mult-adds at 3x224x224 (convolutions and linear layers)
    recipe: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields for small images
    short_recipe: Mapping[str, Any] = field(default_factory=dict)  # changes for runs of 1-2 epochs (for_run_length)
    weights: tuple[Weights, ...] = ()

    def accepted_kwargs(self) -> list[str]:
        """The keyword-only arguments of the model class (positional ones are fixed by the builder)."""
        params = inspect.signature(self.model_cls.__init__).parameters
        return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]

    def get_weights(self, name: str) -> Weights:
        for w in self.weights:
            if w.name == name:
                return w
        known = [w.name for w in self.weights]
        raise ConfigError(f"model {self.name!r} has no weights named {name!r}.{close_matches(name, known)} "
                          f"Known: {', '.join(known) or 'none (train it, or pass a weight file)'}")


@dataclass(frozen=True)
class ModelBuild:
    """How a model was built: enough to build it again (checkpoints, exports and .pcz files store it)."""

    name: str
    kwargs: Mapping[str, Any]  # the create_model keywords, num_classes and in_chans included
    weights: Weights | None = None

    @property
    def config(self) -> ModelConfig:
        return model_config(self.name)


_REGISTRY: dict[str, ModelConfig] = {}


def register_model(model_cls: type[nn.Module], **config: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name with its :class:`ModelConfig` fields; a duplicate raises."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        cfg = dict(config)
        cfg["recipe"] = MappingProxyType(dict(cfg.get("recipe", {})))
        cfg["short_recipe"] = MappingProxyType(dict(cfg.get("short_recipe", {})))
        cfg["weights"] = tuple(cfg.get("weights", ()))
        _REGISTRY[name] = ModelConfig(name, fn, model_cls, **cfg)
        return fn

    return decorator


def model_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of a registered name; an unknown one names close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}.{close_matches(name, _REGISTRY)} "
            f"Known models: {', '.join(sorted(_REGISTRY))}"
        ) from None





def list_models(pattern: str | list[str] = "*") -> list[str]:
    """Registered names matching one or more fnmatch patterns, sorted."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(n for n in _REGISTRY if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, weights: str | None = None,
                 weights_path: str | Path | None = None, weights_dir: str | Path | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model by name, optionally with named weights from a local file.

    >>> m = create_model("squeezenet1_1", num_classes=10, in_chans=1, small_input=True)
    >>> m = create_model("mobilenet_v2", weights="IMAGENET1K_V1", weights_path="mobilenet_v2-b0353104.pth")

    ``weights``: a name from the model's config (``pocketcnn weights`` lists them); the file is
    ``weights_path``, else ``weights_dir / <torchvision's file name>`` (default folder: torch
    hub's cache). Its SHA-256 is checked and ``model.pocketcnn_build.weights`` says which
    preprocessing it needs. Named weights are ImageNet's: 1000 classes, 3 channels.
    """
    cfg = model_config(name)
    accepted = cfg.accepted_kwargs()
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"model {name!r} takes no keyword {key!r}.{close_matches(key, accepted)} "
                f"Accepted: {', '.join(accepted)}"
            )
    check_int("num_classes", num_classes)
    check_int("in_chans", in_chans)
    entry = None
    if weights is not None:
        entry = cfg.get_weights(weights)
        if (num_classes, in_chans) != (1000, 3):
            raise ConfigError(f"weights {weights!r} are ImageNet's (1000 classes, 3 channels), received "
                              f"num_classes={num_classes}, in_chans={in_chans}; build with them, then "
                              "reset_classifier (pocketcnn train --weights adapts both)")
    elif weights_path is not None or weights_dir is not None:
        raise ConfigError("weights_path and weights_dir need weights=NAME (see `pocketcnn weights`)")
    model = cfg.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    setattr(model, BUILD_ATTR, ModelBuild(name, {"num_classes": num_classes, "in_chans": in_chans, **kwargs}, entry))
    if entry is not None:
        from .weights import find_weights, load_weights

        load_weights(model, find_weights(cfg, entry, path=weights_path, folder=weights_dir))
    return model


def build_of(model: nn.Module) -> ModelBuild | None:
    """The :class:`ModelBuild` of a model made by :func:`create_model` (None for any other module)."""
    build = getattr(model, BUILD_ATTR, None)
    return build if isinstance(build, ModelBuild) else None


def require_build(model: nn.Module, what: str) -> ModelBuild:
    build = build_of(model)
    if build is None:
        raise CheckpointError(f"{what} needs a model made by pocketcnn.create_model (it records how to build "
                              f"it again), received a {type(model).__name__}")
    return build
