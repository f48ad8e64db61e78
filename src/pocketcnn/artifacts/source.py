"""A model and its preprocessing, read from any file pocketcnn writes (or a name with weights).

:func:`load_model_source` is what ``export``, ``quantize`` and ``predict`` start from:
a checkpoint (``.pt``), a compressed model (``.pcz``), or a registered name with a
weight file (a path, or the name of known weights such as ``IMAGENET1K_V1``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..data.spec import DataSpec
from ..errors import CheckpointError, ConfigError, PocketCNNError
from .checkpoint import load_checkpoint, model_from_checkpoint
from .formats import BY_NAME, format_of, suffixes
from .metadata import build_metadata

MODEL_SUFFIXES = suffixes(kind="weights")  # a model held as PyTorch weights (the format table)


@dataclass(frozen=True)
class ModelSource:
    """A model ready to export or run, with what it needs to preprocess inputs."""

    model: nn.Module  # eval mode, CPU
    name: str  # registry name
    model_kwargs: dict[str, Any]
    data: DataSpec
    path: Path | None  # the file it came from (checkpoint, .pcz or weight file)
    kind: str = "checkpoint"  # "checkpoint", "pcz", "weights" (a name + ImageNet weights) or "model"

    def __post_init__(self) -> None:
        if not isinstance(self.data, DataSpec):  # a DataSpec.to_dict() record is accepted too
            object.__setattr__(self, "data", check_data(self.data, self.path or self.name))

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.data.in_chans, self.data.image_size, self.data.image_size)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def metadata(self, **extra: Any) -> dict[str, Any]:
        """What an exported file of this model carries (:func:`~pocketcnn.artifacts.metadata.build_metadata`)."""
        return build_metadata(self.name, self.model_kwargs, self.data, params=self.params, **extra)


def check_data(data: Any, path: Path | str) -> DataSpec:
    """The stored preprocessing record as a DataSpec, or a one-line CheckpointError naming ``path``."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: no preprocessing description (the 'data' entry: image size, mean, std, "
                              "classes); it was not written by pocketcnn train/compress")
    try:
        return DataSpec.from_dict(dict(data))
    except PocketCNNError as exc:
        raise CheckpointError(f"{path}: bad 'data' entry: {exc}") from None


def load_model_source(source: str | Path, weights: str | Path | None = None, *,
                      weights_dir: str | Path | None = None) -> ModelSource:
    """A checkpoint (``.pt``), a compressed model (``.pcz``), or a model name with ``weights``.

    A registry name with ``weights`` means ImageNet weights (1000 classes, 3 channels, the
    weights' preprocessing and the ImageNet class names). ``weights`` is a file path, or the
    name of known weights (``pocketcnn weights``) looked up in ``weights_dir``.
    """
    from ..models.registry import create_model, list_models, model_config
    from ..models.weights import load_weights

    src = str(source)
    if weights is not None:
        cfg = model_config(src)  # an unknown name raises, naming close matches
        if Path(weights).is_file() or not any(w.name == str(weights) for w in cfg.weights):
            model = load_weights(create_model(src), weights).eval()
            spec = cfg.weights[0].spec if cfg.weights else _imagenet_default(cfg.input_size[1])
            return ModelSource(model, src, {"num_classes": 1000, "in_chans": 3}, spec, Path(weights), "weights")
        entry = cfg.get_weights(str(weights))
        model = create_model(src, weights=entry.name, weights_dir=weights_dir).eval()
        return ModelSource(model, src, {"num_classes": 1000, "in_chans": 3}, entry.spec, None, "weights")
    path = Path(src)
    if not path.exists() and src in list_models():
        raise ConfigError(f"model name {src!r} needs --weights FILE or a weights name (see `pocketcnn weights`); "
                          "nothing is downloaded")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a model file ({', '.join(MODEL_SUFFIXES)})")
    fmt = format_of(path)
    if fmt is BY_NAME["pcz"]:
        from .pcz import load_pcz

        model, meta = load_pcz(path)
        from ..models.registry import require_build

        build = require_build(model, str(path))
        return ModelSource(model.eval(), build.name, dict(build.kwargs), check_data(meta.get("data"), path), path,
                           "pcz")
    if fmt is not None and fmt.kind != "weights":
        raise CheckpointError(f"{path}: {fmt.description}: an exported model cannot be exported or quantized "
                              f"again; give the checkpoint (.pt) or .pcz file it came from")
    ckpt = load_checkpoint(path)
    data = check_data(ckpt.get("data"), path)
    model = model_from_checkpoint(ckpt, source=str(path))
    return ModelSource(model, str(ckpt["model"]), dict(ckpt["model_kwargs"]), data, path)


def _imagenet_default(image_size: int) -> DataSpec:
    from ..data.spec import imagenet_spec

    return imagenet_spec(image_size)


def default_out(source: ModelSource, suffix: str) -> Path:
    """``<checkpoint stem><suffix>`` next to a checkpoint or ``.pcz`` file, else ``<model name><suffix>`` here."""
    if source.path is not None and source.kind in ("checkpoint", "pcz"):
        return source.path.with_name(source.path.stem + suffix)
    return Path(source.name + suffix)
