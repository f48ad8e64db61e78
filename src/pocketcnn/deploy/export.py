"""Export to deployment formats, each file verified against PyTorch before it is reported.

Formats:

* ``onnx``: the TorchScript exporter (``dynamo=False``; measured ~1.5 s per model here
  against ~8-12 s for ``dynamo=True``, which also cannot down-convert to opset 17; it is
  the fallback for graphs TorchScript cannot express, at opset 18), checked
  with ``onnx.checker`` and run in ONNX Runtime. Preprocessing and labels travel in the
  file's ``metadata_props``, one JSON string per key (see :func:`build_metadata`).
* ``pt2``: ``torch.export.export`` + ``torch.export.save``; metadata in the archive's
  ``extra_files`` (``pocketcnn_metadata.json``), run back with ``torch.export.load``.
* ``pte``: ExecuTorch with the XNNPACK partitioner (optional extra ``pocketcnn[mobile]``);
  metadata in the constant method ``pocketcnn_metadata``, run back with ``executorch.runtime``.

Verification runs the exported file and the PyTorch model on the same inputs (a few test
images of the checkpoint's data set when they are on disk, else fixed random inputs):
the largest absolute logit difference must be ``<= atol`` (1e-4) and the top-1 classes
must agree wherever PyTorch's top two logits are further apart than that difference.
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, ExportError, PocketCNNError

FORMATS = ("onnx", "pt2", "pte")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "pte": ".pte"}
ATOL = 1e-4
PTE_MAX_BATCH = 32  # ExecuTorch plans memory for the largest batch, so a dynamic batch is bounded
PT2_METADATA_FILE = "pocketcnn_metadata.json"
PTE_METADATA_METHOD = "pocketcnn_metadata"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------ sources
@dataclass(frozen=True)
class ModelSource:
    """A model ready to export or run, with what it needs to preprocess inputs."""

    model: nn.Module  # eval mode, CPU
    name: str  # registry name
    model_kwargs: dict[str, Any]
    data: dict[str, Any]  # DataSpec.to_dict(): name, in_chans, image_size, mean, std, classes
    path: Path | None  # the file it came from (checkpoint, .pcz or weight file)
    kind: str = "checkpoint"  # "checkpoint", "pcz", "weights" (a name + ImageNet weights) or "model"

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (int(self.data["in_chans"]), int(self.data["image_size"]), int(self.data["image_size"]))


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (packaged ``data/imagenet_classes.txt``)."""
    from importlib.resources import files

    return files("pocketcnn.data").joinpath("imagenet_classes.txt").read_text().splitlines()


def imagenet_data(image_size: int = 224) -> dict[str, Any]:
    """The preprocessing dict of torchvision's ImageNet weights: shorter side to 256, center crop 224
    (the 0.875 crop ratio, scaled for other sizes), ImageNet mean/std, the 1000 class names."""
    classes = imagenet_classes()
    return {"name": "imagenet", "num_classes": len(classes), "in_chans": 3, "image_size": image_size,
            "input_size": [3, image_size, image_size], "resize_size": round(image_size * 256 / 224),
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "classes": classes}


def load_model_source(source: str | Path, weights: str | Path | None = None) -> ModelSource:
    """A checkpoint (``.pt``), a compressed model (``.pcz``), or a model name with ``weights``.

    A registry name with ``weights`` means torchvision ImageNet weights (1000 classes,
    3 channels, the model's default input size, ImageNet mean/std and class names).
    """
    from ..registry import create_model, list_models, model_info
    from ..weights import load_weights

    src = str(source)
    if weights is not None:
        info = model_info(src)  # an unknown name raises, naming close matches
        model = load_weights(create_model(src), weights).eval()
        return ModelSource(model, src, {"num_classes": 1000, "in_chans": 3}, imagenet_data(info.input_size[1]),
                           Path(weights), "weights")
    path = Path(src)
    if not path.exists() and src in list_models():
        raise ConfigError(f"model name {src!r} needs --weights FILE (a local torchvision weight file; "
                          "nothing is downloaded)")
    if path.suffix == ".pcz":
        from ..compress.coding import load_pcz

        model, meta = load_pcz(path)
        data = meta.get("data") if isinstance(meta, dict) else None
        name = getattr(model, "pocketcnn_name", None) or meta.get("model", "?")
        kwargs = dict(getattr(model, "pocketcnn_kwargs", {}) or {})
        return ModelSource(model.eval(), str(name), kwargs, _check_data(data, path), path, "pcz")
    from ..train.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    return ModelSource(model, str(ckpt["model"]), dict(ckpt["model_kwargs"]), _check_data(ckpt.get("data"), path),
                       path)


def default_out(source: ModelSource, suffix: str) -> Path:
    """``<checkpoint stem><suffix>`` next to a checkpoint or ``.pcz`` file, else ``<model name><suffix>`` here."""
    if source.path is not None and source.kind in ("checkpoint", "pcz"):
        return source.path.with_name(source.path.stem + suffix)
    return Path(source.name + suffix)


def _check_data(data: Any, path: Path) -> dict[str, Any]:
    from ..data import DataSpec

    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: no preprocessing description (the 'data' entry: image size, mean, std, "
                              "classes); it was not written by pocketcnn train/compress")
    try:
        return DataSpec.from_dict(data).to_dict()
    except PocketCNNError as exc:
        raise CheckpointError(f"{path}: bad 'data' entry: {exc}") from None


def build_metadata(source: ModelSource) -> dict[str, Any]:
    """What every exported file carries (each value is stored as a JSON string in ONNX)."""
    from .. import __version__

    d = source.data
    return {"pocketcnn_version": __version__, "model": source.name, "model_kwargs": source.model_kwargs,
            "dataset": d["name"], "input_size": list(source.input_size), "in_chans": int(d["in_chans"]),
            "image_size": int(d["image_size"]), "resize_size": int(d.get("resize_size") or d["image_size"]),
            "mean": list(d["mean"]), "std": list(d["std"]), "classes": list(d["classes"])}


def data_from_metadata(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The preprocessing dict (DataSpec.to_dict layout) stored by :func:`build_metadata`, or None."""
    if not all(k in meta for k in ("in_chans", "image_size", "mean", "std", "classes")):
        return None
    return {"name": meta.get("dataset", "?"), "num_classes": len(meta["classes"]), "in_chans": meta["in_chans"],
            "image_size": meta["image_size"], "input_size": [meta["in_chans"], meta["image_size"], meta["image_size"]],
            "resize_size": meta.get("resize_size") or meta["image_size"], "mean": meta["mean"], "std": meta["std"],
            "classes": meta["classes"]}


# ------------------------------------------------------------------------------ writers
def _prepare(path: str | Path, model: nn.Module) -> tuple[Path, nn.Module]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, model.eval().cpu()


def export_onnx(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int], opset: int = 17,
                dynamic_batch: bool = False, metadata: Mapping[str, Any] | None = None,
                dynamo: bool | None = None) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX with input ``input`` (N, C, H, W) and output ``logits``.

    ``metadata``: stored in ``metadata_props``, each value as a JSON string.
    ``dynamo``: False uses the TorchScript exporter, True the torch.export-based one (slower
    here, and at least opset 18, its native one); None (default) tries TorchScript first
    and falls back to dynamo for what TorchScript cannot express (e.g. AlexNet's 6x6
    adaptive pool over a 2x2 map at 28x28 inputs). Read the file's opset with :func:`onnx_opset`.
    """
    import onnx

    if not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= 23:
        raise ConfigError(f"opset must be an integer in [7, 23], received opset={opset!r}")
    path, model = _prepare(path, model)
    errors = []
    for use_dynamo in ([False, True] if dynamo is None else [bool(dynamo)]):
        try:
            _onnx_export(model, path, input_size, opset, dynamic_batch, use_dynamo)
            break
        except Exception as exc:  # the exporters raise many types; the user needs one line
            errors.append(f"{'dynamo' if use_dynamo else 'TorchScript'} exporter: {_first_line(exc)}")
    else:
        raise ExportError(f"ONNX export of {type(model).__name__} (opset {opset}) failed: {'; '.join(errors)}")
    if metadata:
        proto = onnx.load(str(path))
        set_onnx_metadata(proto, metadata)
        onnx.save(proto, str(path))
    return path


def _onnx_export(model: nn.Module, path: Path, input_size, opset: int, dynamic_batch: bool, dynamo: bool) -> None:
    import contextlib
    import io
    import logging

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        if not dynamo:
            torch.onnx.export(
                model, (torch.zeros(1, *input_size),), str(path), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            )
            return
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
            example = torch.zeros(2 if dynamic_batch else 1, *input_size)
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=max(opset, 18),
                              input_names=["input"], output_names=["logits"], dynamic_shapes=shapes,
                              external_data=False, verbose=False)
        finally:
            logging.getLogger("torch.onnx").setLevel(level)


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def set_onnx_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Replace ``metadata_props`` entries of an ``onnx.ModelProto`` with ``key: json.dumps(value)``."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*keep, *((k, json.dumps(v)) for k, v in metadata.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_pt2(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int], dynamic_batch: bool = False,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """``torch.export`` the model and save it as a ``.pt2`` archive (metadata as an extra file)."""
    path, model = _prepare(path, model)
    meta = {**(metadata or {}), "max_batch": None if dynamic_batch else 1}
    try:
        ep = _torch_export(model, input_size, dynamic_batch, max_batch=None)
        torch.export.save(ep, str(path), extra_files={PT2_METADATA_FILE: json.dumps(meta)})
    except PocketCNNError:
        raise
    except Exception as exc:
        raise ExportError(f"torch.export of {type(model).__name__} failed: {_first_line(exc)}") from None
    return path


def export_pte(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int], dynamic_batch: bool = False,
               metadata: Mapping[str, Any] | None = None) -> Path:
    """Lower the model to ExecuTorch with XNNPACK and write a ``.pte`` program.

    A dynamic batch is bounded by ``PTE_MAX_BATCH`` (ExecuTorch plans memory for the upper bound).
    """
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise ExportError(f"exporting .pte needs ExecuTorch ({_first_line(exc)}): "
                          "install 'pocketcnn[mobile]'") from None
    path, model = _prepare(path, model)
    meta = {**(metadata or {}), "dynamic_batch": bool(dynamic_batch)}
    try:
        ep = _torch_export(model, input_size, dynamic_batch, max_batch=PTE_MAX_BATCH)
        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                              constant_methods={PTE_METADATA_METHOD: json.dumps(meta)}).to_executorch()
    except Exception as exc:
        raise ExportError(f"ExecuTorch export of {type(model).__name__} failed: {_first_line(exc)}") from None
    from ..train.checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_bytes(program.buffer))
    return path


def _torch_export(model: nn.Module, input_size, dynamic_batch: bool, max_batch: int | None):
    if dynamic_batch:  # example batch 2: torch.export specializes a size-1 dimension
        dim = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)
        return torch.export.export(model, (torch.zeros(2, *input_size),), dynamic_shapes=({0: dim},))
    return torch.export.export(model, (torch.zeros(1, *input_size),))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# ------------------------------------------------------------------------------ verification
@dataclass(frozen=True)
class Verification:
    """The exported file run against PyTorch on the same inputs."""

    runtime: str  # "onnxruntime", "executorch" or "torch.export"
    inputs: str  # where the inputs came from, e.g. "8 fashion-mnist test images" or "8 random inputs"
    n: int
    max_abs_diff: float
    top1_agreement: float  # fraction of inputs with the same top-1 class
    atol: float
    passed: bool


def verification_inputs(data: Mapping[str, Any] | None, input_size: tuple[int, int, int], n: int = 8, *,
                        data_dir: str | Path | None = None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n`` normalized test images of ``data``'s data set when they are on disk, else random inputs."""
    if data is not None:
        try:
            from ..data import DATASETS, balanced_subset, load_dataset, normalize_batch

            if data.get("name") in DATASETS:
                ds = load_dataset(data["name"], "test", data_dir, image_size=int(data["image_size"])) \
                    if data["name"] == "imagefolder" else load_dataset(data["name"], "test", data_dir)
                sub = balanced_subset(ds, n, seed=seed)
                x = torch.stack([sub[i][0] for i in range(min(n, len(sub)))])
                if x.shape[1] == input_size[0]:
                    x = normalize_batch(x, data["mean"], data["std"], size=input_size[1])
                    return x, f"{len(x)} {data['name']} test images"
        except (PocketCNNError, OSError):
            pass  # not on this machine: fall back to random inputs
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *input_size, generator=gen), f"{n} random inputs"


def compare_logits(reference: np.ndarray, other: np.ndarray, *, atol: float = ATOL) -> tuple[float, float, bool]:
    """``(max_abs_diff, top1_agreement, passed)``; a top-1 flip between near-tied logits is not a failure."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        return float("inf"), 0.0, False
    diff = float(np.abs(reference - other).max()) if reference.size else 0.0
    agree = reference.argmax(1) == other.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((len(reference), 2))
    tied = (top2[:, 1] - top2[:, 0]) <= 2 * max(diff, 1e-12)
    passed = bool(np.isfinite(diff) and diff <= atol and np.all(agree | tied))
    return diff, float(agree.mean()) if len(agree) else 1.0, passed


def verify_export(path: str | Path, model: nn.Module, inputs: torch.Tensor, *, atol: float = ATOL,
                  inputs_desc: str = "") -> Verification:
    """Run ``path`` in its runtime (checking ONNX files with ``onnx.checker`` first) against ``model``."""
    from .runtime import open_runtime

    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as exc:
            raise ExportError(f"{path}: onnx.checker rejected the model: {_first_line(exc)}") from None
    runner = open_runtime(path)
    with torch.no_grad():
        ref = model.eval()(inputs).numpy()
    try:
        out = runner.run(inputs.numpy())
    except PocketCNNError:
        raise
    except Exception as exc:
        raise ExportError(f"{path}: {runner.runtime} could not run the exported model: {_first_line(exc)}") from None
    diff, agree, passed = compare_logits(ref, out, atol=atol)
    return Verification(runner.runtime, inputs_desc or f"{len(inputs)} inputs", len(inputs), diff, agree, atol, passed)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how the file compared with PyTorch."""

    path: Path
    format: str
    model: str
    size_bytes: int
    input_size: tuple[int, int, int]
    dynamic_batch: bool
    opset: int | None
    seconds: float  # export time, verification excluded
    verification: Verification

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def export_model(source: ModelSource, path: str | Path, *, format: str = "onnx", opset: int = 17,
                 dynamic_batch: bool = False, verify_n: int = 8, data_dir: str | Path | None = None,
                 atol: float = ATOL) -> ExportResult:
    """Export ``source`` to ``path`` in ``format``, verify it, and raise ExportError if it fails the check."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, received format={format!r}")
    meta = build_metadata(source)
    size = source.input_size
    t0 = time.perf_counter()
    if format == "onnx":
        path = export_onnx(source.model, path, input_size=size, opset=opset, dynamic_batch=dynamic_batch, metadata=meta)
    elif format == "pt2":
        path = export_pt2(source.model, path, input_size=size, dynamic_batch=dynamic_batch, metadata=meta)
    else:
        path = export_pte(source.model, path, input_size=size, dynamic_batch=dynamic_batch, metadata=meta)
    seconds = time.perf_counter() - t0
    inputs, desc = verification_inputs(source.data, size, verify_n, data_dir=data_dir)
    check = verify_export(path, source.model, inputs, atol=atol, inputs_desc=desc)
    if not check.passed:
        raise ExportError(f"{path}: {check.runtime} disagrees with PyTorch on {desc}: max |logit diff| "
                          f"{check.max_abs_diff:.3g} (limit {atol:g}), top-1 agreement {100 * check.top1_agreement:.1f}% "
                          "(the file is kept for inspection)")
    return ExportResult(Path(path), format, source.name, Path(path).stat().st_size, size, dynamic_batch,
                        onnx_opset(path) if format == "onnx" else None, seconds, check)
