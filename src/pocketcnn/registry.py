"""The model registry: the single source of truth for names.

``create_model``, the CLI's choices and the tests' parametrization all read it.
Builders are thin keyword-only functions registered with :func:`register_model`.
"""
from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import ConfigError, UnknownModelError, close_matches


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one name."""

    name: str
    builder: Callable[..., nn.Module]
    model_cls: type[nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)
    torchvision: str | None = None  # the torchvision builder with the same state dict
    paper: str = ""

    def accepted_kwargs(self) -> list[str]:
        """The keyword-only arguments of the model class (positional ones are fixed by the builder)."""
        params = inspect.signature(self.model_cls.__init__).parameters
        return [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    model_cls: type[nn.Module],
    *,
    input_size: tuple[int, int, int] = (3, 224, 224),
    torchvision: str | None = None,
    paper: str = "",
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name; a duplicate name raises."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, model_cls, dict(defaults), input_size, torchvision, paper)
        return fn

    return decorator


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}.{close_matches(name, _REGISTRY)} "
            f"Known models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_models(pattern: str | list[str] = "*") -> list[str]:
    """Registered names matching one or more fnmatch patterns, sorted."""
    _ensure_loaded()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(n for n in _REGISTRY if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    >>> m = create_model("squeezenet1_1", num_classes=10, in_chans=1, small_input=True)
    """
    info = model_info(name)
    accepted = info.accepted_kwargs()
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"model {name!r} takes no keyword {key!r}.{close_matches(key, accepted)} "
                f"Accepted: {', '.join(accepted)}"
            )
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, received {key}={value!r}")
    model = info.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.pocketcnn_name = name  # type: ignore[attr-defined]
    model.pocketcnn_kwargs = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}  # type: ignore[attr-defined]
    return model


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (importing registers the builders)
