"""Core ML export through coremltools (it comes with the extra ``pocketcnn[mobile]``): an ``.mlpackage``.

The package is an ML program (iOS 15 / macOS 12 and later) and a classifier:

* input ``image``: a gray or RGB image of the model's side, normalized inside the model. Core
  ML's image preprocessing is ``scale * pixel + bias`` with one scale for all channels, so
  with one std (Fashion-MNIST, or equal stds) ``scale = 1 / (255 std)`` and
  ``bias_c = -mean_c / std``; with per-channel stds (ImageNet) ``scale = 1 / 255``,
  ``bias_c = -mean_c`` and the model starts with a per-channel multiply by ``1 / std_c``.
  Resizing and center cropping to that side are the app's (Vision's) job; the metadata
  carries ``resize_size``.
* outputs ``classLabel`` (the top class name) and ``classLabel_probs`` (softmax
  probabilities by class name);
* fp16 weights and compute (default) or fp32 (``precision``);
* pocketcnn's metadata in the model's user-defined metadata, one JSON string per key as in
  ONNX files (:func:`read_coreml_metadata`).

Core ML predicts only on Apple systems: elsewhere :func:`check_coreml` reads the package
back without loading it into Core ML (``skip_model_load=True``) and checks its spec.
"""
from __future__ import annotations

import json
import platform
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ExportError, MissingDependencyError, first_line
from .tflite import layer_using, quiet_converter

PRECISIONS = ("fp16", "fp32")
INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
INSTALL = "pip install 'pocketcnn[mobile]'"
_OWN_KEYS = "com.github.apple.coremltools."  # coremltools' own user-defined metadata


class _Classifier(nn.Module):
    """The exported graph: optional per-channel ``1 / std`` multiply, the model, softmax."""

    def __init__(self, model: nn.Module, inv_std: list[float] | None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inv_std", torch.tensor(inv_std).view(1, -1, 1, 1) if inv_std else torch.ones(1))
        self.scaled = inv_std is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x * self.inv_std if self.scaled else x), dim=1)


@dataclass(frozen=True)
class ImageScaling:
    """Core ML's ``scale * pixel + bias`` and the per-channel multiply the model starts with (None: folded)."""

    scale: float
    bias: tuple[float, ...]
    inv_std: tuple[float, ...] | None


def image_scaling(mean: list[float], std: list[float], in_chans: int) -> ImageScaling:
    """What reproduces ``(pixel / 255 - mean) / std`` for an ``in_chans``-channel image."""
    mean = [float(m) for m in mean] * (in_chans if len(mean) == 1 else 1)
    std = [float(s) for s in std] * (in_chans if len(std) == 1 else 1)
    if len(set(std)) == 1:
        return ImageScaling(1.0 / (255.0 * std[0]), tuple(-m / std[0] for m in mean), None)
    return ImageScaling(1.0 / 255.0, tuple(-m for m in mean), tuple(1.0 / s for s in std))


def _coremltools() -> Any:
    try:
        with quiet_converter():  # its import announces missing native parts (Linux) and untested versions
            import coremltools
    except ImportError as exc:
        raise MissingDependencyError(f"exporting Core ML needs coremltools ({first_line(exc)}): {INSTALL}") from None
    return coremltools


def export_coreml(model: nn.Module, path: str | Path, *, metadata: Mapping[str, Any], precision: str = "fp16") -> Path:
    """Write ``model`` as the ``.mlpackage`` folder ``path`` (see the module docstring); nothing is run.

    ``metadata`` must carry ``in_chans``, ``image_size``, ``mean``, ``std`` and ``classes``
    (:func:`~pocketcnn.artifacts.metadata.build_metadata`).
    """
    ct = _coremltools()
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, received precision={precision!r}")
    c, side, classes = int(metadata["in_chans"]), int(metadata["image_size"]), [str(k) for k in metadata["classes"]]
    if c not in (1, 3):
        raise ConfigError(f"Core ML image inputs are gray (1 channel) or RGB (3), the model takes in_chans={c}")
    scaling = image_scaling(metadata["mean"], metadata["std"], c)
    net = _Classifier(model.eval().cpu(), list(scaling.inv_std) if scaling.inv_std else None).eval()
    example = torch.zeros(1, c, side, side)
    layout = ct.colorlayout.GRAYSCALE if c == 1 else ct.colorlayout.RGB
    try:
        with quiet_converter(), torch.no_grad():
            program = torch.export.export(net, (example,)).run_decompositions({})
            mlmodel = ct.convert(
                program, inputs=[ct.ImageType(name=INPUT_NAME, shape=example.shape, scale=scaling.scale,
                                              bias=list(scaling.bias), color_layout=layout)],
                classifier_config=ct.ClassifierConfig(classes), convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                minimum_deployment_target=ct.target.iOS15)
    except Exception as exc:  # coremltools raises many types; the user needs one line
        raise ExportError(_convert_error(model, net, example, exc)) from None
    meta = {**metadata, "precision": precision, "outputs": "probabilities", "image_scale": scaling.scale,
            "image_bias": list(scaling.bias)}
    for key, value in meta.items():
        mlmodel.user_defined_metadata[key] = json.dumps(value)
    mlmodel.short_description = f"{metadata.get('model', 'model')} ({metadata.get('dataset', '?')}), written by pocketcnn"
    mlmodel.input_description[INPUT_NAME] = (f"{'gray' if c == 1 else 'RGB'} image, {side}x{side} (resize the shorter "
                                             f"side to {metadata.get('resize_size') or side}, then center-crop)")
    mlmodel.output_description[LABEL_OUTPUT] = "most likely class"
    mlmodel.save(str(path))
    return Path(path)


def _convert_error(model: nn.Module, net: nn.Module, example: torch.Tensor, exc: BaseException) -> str:
    """One line: the operator coremltools refused and the layer that uses it, when the message names one."""
    text = first_line(exc)
    what = f"Core ML conversion of {type(model).__name__} failed"
    # "Unsupported fx node erfinv, kind erfinv" (torch.export) or "... convert function for op 'erfinv' ..."
    found = re.search(r"Unsupported fx node (\w+)|convert function for op '(\w+)'", text)
    if found is None:
        return f"{what}: {text}"
    op = found.group(1) or found.group(2)
    layer = layer_using(net, example, op)
    return f"{what}: coremltools cannot convert operator {op}{f' in layer {layer}' if layer else ''}"


def read_coreml_metadata(path: str | Path) -> dict[str, Any]:
    """The pocketcnn metadata of an ``.mlpackage`` (read without Core ML)."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))
    out = {}
    for key, value in spec.description.metadata.userDefined.items():
        if not key.startswith(_OWN_KEYS):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
    return out


@dataclass(frozen=True)
class CoreMLCheck:
    """What was checked of an ``.mlpackage`` on a machine that cannot run it."""

    runtime: str
    ran: bool  # False: Core ML was not run (see not_run)
    not_run: str
    passed: bool  # every static check below held
    input_type: str  # "imageType"
    color: str  # "GRAYSCALE" or "RGB"
    image_size: tuple[int, int]
    scale: float | None  # found in the program's first ops
    bias: tuple[float, ...] | None
    labels: int  # class labels of the classifier
    precision: str  # "fp16" or "fp32": the dtype of the weight constants
    ops: int  # MIL operations of main, constants excluded
    op_types: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_coreml(path: str | Path, metadata: Mapping[str, Any], precision: str) -> CoreMLCheck:
    """Read the package back (``skip_model_load=True``) and check its spec against what was asked."""
    ct = _coremltools()
    from coremltools.proto import MIL_pb2

    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{path}: coremltools cannot read the package back: {first_line(exc)}") from None
    inp = spec.description.input[0]
    kind = inp.type.WhichOneof("Type") or "?"
    image = inp.type.imageType
    color = type(image).ColorSpace.Name(image.colorSpace) if kind == "imageType" else "?"
    fn = spec.mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    by_name = {o.name: op for op in ops for o in op.outputs}
    scale = _const_after(ops, by_name, "mul", INPUT_NAME)
    bias = _const_after(ops, by_name, "add", f"{INPUT_NAME}__scaled__") or _const_after(ops, by_name, "add", INPUT_NAME)
    labels = [v.immediateValue.tensor.strings.values[0] for op in ops if op.type == "classify"
              for v in op.inputs["classes"].arguments[0].value.immediateValue.list.values]
    weights = Counter(MIL_pb2.DataType.Name(op.attributes["val"].type.tensorType.dataType) for op in ops
                      if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue")
    found = "fp16" if weights and set(weights) == {"FLOAT16"} else "fp32" if set(weights) == {"FLOAT32"} else str(dict(weights))
    stored = read_coreml_metadata(path)
    want = image_scaling(metadata["mean"], metadata["std"], int(metadata["in_chans"]))
    problems = [p for p, bad in (
        (f"input is {kind}, not an image", kind != "imageType"),
        (f"color space {color}", color != ("GRAYSCALE" if int(metadata["in_chans"]) == 1 else "RGB")),
        (f"image {image.width}x{image.height}", (image.width, image.height) != (metadata["image_size"],) * 2),
        (f"scale {scale}, expected {want.scale}", scale is None or abs(scale[0] - want.scale) > 1e-6 * want.scale),
        (f"bias {bias}, expected {want.bias}", _bias_differs(bias, want.bias)),
        (f"{len(labels)} class labels, expected {list(metadata['classes'])}", labels != list(metadata["classes"])),
        (f"weights are {found}, expected {precision}", found != precision),
        ("the pocketcnn metadata did not round-trip", any(stored.get(k) != json.loads(json.dumps(v))
                                                          for k, v in metadata.items())),
    ) if bad]
    op_types = Counter(op.type for op in ops if op.type != "const")
    reason = (f"Core ML models run only on Apple systems; this is {platform.system()}" if platform.system() != "Darwin"
              else "pocketcnn does not run Core ML models itself; the spec was checked")
    return CoreMLCheck("coreml", False, reason, not problems, kind, color, (image.width, image.height),
                       scale[0] if scale else None, tuple(bias) if bias else None, len(labels), found,
                       sum(op_types.values()), dict(op_types.most_common()), tuple(problems))


def _const_after(ops: list, by_name: dict, kind: str, x_name: str) -> list[float] | None:
    """The values of the constant ``y`` of the first ``kind`` op whose ``x`` is ``x_name``."""
    for op in ops:
        if op.type == kind and op.inputs["x"].arguments[0].name == x_name:
            const = by_name.get(op.inputs["y"].arguments[0].name)
            if const is not None:
                tensor = const.attributes["val"].immediateValue.tensor
                if tensor.floats.values:
                    return [float(v) for v in tensor.floats.values]
                if tensor.bytes.values:  # fp16 constants are stored as bytes
                    return [float(v) for v in np.frombuffer(tensor.bytes.values, np.float16)]
    return None


def _bias_differs(found: list[float] | None, want: tuple[float, ...]) -> bool:
    if found is None:
        return any(want)  # a zero bias has no add op
    if len(found) not in (1, len(want)):
        return True
    return any(abs(f - w) > 1e-5 * max(1.0, abs(w)) for f, w in zip(found * len(want) if len(found) == 1 else found, want))
