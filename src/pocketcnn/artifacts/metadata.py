"""The metadata every exported model carries, so that whoever runs it cannot get preprocessing wrong.

Torch-free: the light runtime reads it on machines without PyTorch.

Keys (each stored as a JSON string in ONNX ``metadata_props``, as one JSON document in a
``.pt2`` extra file, a ``.pte`` constant method, a ``.tflite`` metadata buffer, ...)::

    pocketcnn_version, model, model_kwargs, params
    dataset, input_size [C, H, W], in_chans, image_size, resize_size, mean, std, classes
    layout ("NCHW" unless the format says otherwise), quantization (int8 files only)
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data.spec import DataSpec
from ..errors import CheckpointError, PocketCNNError, first_line

PT2_METADATA_FILE = "pocketcnn_metadata.json"  # extra file inside a .pt2 archive
PTE_METADATA_METHOD = "pocketcnn_metadata"  # constant method of an ExecuTorch program
REQUIRED = ("in_chans", "image_size", "mean", "std", "classes")


def build_metadata(name: str, model_kwargs: Mapping[str, Any], data: DataSpec, *, params: int | None = None,
                   layout: str = "NCHW") -> dict[str, Any]:
    """What every exported file carries (JSON-able values)."""
    from .. import __version__

    return {"pocketcnn_version": __version__, "model": name, "model_kwargs": dict(model_kwargs), "params": params,
            "dataset": data.name, "input_size": [data.in_chans, data.image_size, data.image_size],
            "in_chans": data.in_chans, "image_size": data.image_size, "resize_size": data.resize_size,
            "mean": list(data.mean), "std": list(data.std), "classes": list(data.classes), "layout": layout}


def data_from_metadata(meta: Mapping[str, Any]) -> DataSpec | None:
    """The preprocessing stored by :func:`build_metadata`, or None when the file carries none."""
    if not all(k in meta for k in REQUIRED):
        return None
    return DataSpec.from_dict({"name": meta.get("dataset", "?"), "in_chans": meta["in_chans"],
                               "image_size": meta["image_size"], "resize_size": meta.get("resize_size"),
                               "mean": meta["mean"], "std": meta["std"], "classes": meta["classes"]})


def require_data(meta: Mapping[str, Any], source: str) -> DataSpec:
    """:func:`data_from_metadata`, or a one-line CheckpointError naming ``source``."""
    try:
        data = data_from_metadata(meta)
    except PocketCNNError as exc:
        raise CheckpointError(f"{source}: bad pocketcnn metadata: {exc}") from None
    if data is None:
        raise CheckpointError(f"{source}: carries no pocketcnn metadata (input size, mean, std, classes); "
                              "export it with 'pocketcnn export'")
    return data


def parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """String properties (JSON strings) -> values; a value that is not JSON stays a string."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def write_onnx_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Replace ``metadata_props`` entries of an ``onnx.ModelProto`` with ``key: json.dumps(value)``."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*keep, *((k, json.dumps(v)) for k, v in metadata.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The pocketcnn metadata of an ONNX file, read with the ``onnx`` package (``{}`` when it has none)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and file errors alike: the file's fault
        raise CheckpointError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    return parse_metadata({p.key: p.value for p in proto.metadata_props})
