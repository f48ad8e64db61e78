"""LiteRT ``.tflite`` export through Google's PyTorch converter (``litert-torch``, extra ``pocketcnn[litert]``).

* **fp32**: ``litert_torch.convert`` on the model behind a channels-last input: the file takes
  ``(1, H, W, C)`` float32 (the metadata's ``layout`` is ``"NHWC"``, what LiteRT's kernels and
  Android pixel buffers use, so the graph starts without a transpose) and gives
  ``(1, classes)`` logits; the LiteRT interpreter resizes the batch at run time.
* **int8**: the converter's own quantization path: PT2E with litert-torch's
  ``PT2EQuantizer`` (int8 activations per tensor from histogram observers, int8 weights
  symmetric per output channel), calibrated on real images, then converted with
  ``QuantConfig(pt2e_quantizer=...)``: a full-integer file whose input and output are int8
  tensors with their scale and zero point (:class:`~pocketcnn.runtime.litert.LiteRtRunner`
  converts). :func:`verify_int8` scores it against the fp32 model on the test split.

The metadata is a TFLite metadata entry (:func:`~pocketcnn.runtime.litert.add_tflite_metadata`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError, ExportError, MissingDependencyError, first_line
from ..fileio import atomic_write_bytes
from ..runtime.litert import INSTALL, add_tflite_metadata, quiet_native_logs

LAYOUT = "NHWC"
MAX_DROP = 2.0  # top-1 points an int8 file may lose before the export warns
QUANT_SCHEME = "PT2E static int8: activations per tensor (histogram), weights symmetric per channel"


class ChannelsLastInput(nn.Module):
    """``(N, H, W, C)`` -> ``model`` on ``(N, C, H, W)``: the permute the converter folds into the graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


@dataclass(frozen=True)
class Int8Verification:
    """An int8 file run against fp32 PyTorch on the same test images: top-1 of each, and their agreement."""

    runtime: str
    inputs: str  # the test images, e.g. "2000 mnist test images"
    n: int
    max_abs_diff: float  # largest |logit diff| against fp32: int8 rounding, not a pass/fail limit
    top1_agreement: float  # fraction of test images with the same top-1 class as fp32
    passed: bool  # the file ran and gave finite logits of the right shape
    calibration: str  # e.g. "512 mnist train images"
    fp32_top1: float  # percent, PyTorch fp32 on the test images
    int8_top1: float  # percent, the .tflite file in LiteRT
    top1_drop: float  # points
    max_drop: float = MAX_DROP
    warning: str | None = None  # set when top1_drop > max_drop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _litert() -> Any:
    try:
        import litert_torch
    except ImportError as exc:
        raise MissingDependencyError(f"exporting .tflite needs litert-torch ({first_line(exc)}): {INSTALL}") from None
    return litert_torch


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """The converter's progress lines, warnings and log records stay out of the caller's output."""
    settings = {"LITERT_TORCH_SHOW_PROGRESS": "n"}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), quiet_native_logs():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def export_tflite(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int],
                  metadata: Mapping[str, Any] | None = None, calib_batches: Sequence[torch.Tensor] | None = None,
                  calibration: str = "") -> Path:
    """Convert ``model`` to a ``.tflite`` file with an NHWC batch-1 input; int8 when ``calib_batches`` are given.

    ``calib_batches``: normalized float32 ``(N, C, H, W)`` batches the int8 observers see;
    ``calibration`` describes them in the metadata. Missing litert-torch is a
    MissingDependencyError naming the extra; an operator the converter refuses is an
    ExportError naming the layer that uses it.
    """
    c, h, w = input_size
    net = ChannelsLastInput(copy.deepcopy(model).eval().cpu()).eval()
    example = torch.zeros(1, h, w, c)
    meta = {**(metadata or {}), "layout": LAYOUT}
    with quiet_converter():
        litert_torch = _litert()
    try:
        with quiet_converter(), torch.no_grad():
            if calib_batches is None:
                edge = litert_torch.convert(net, (example,))
            else:
                quantized, config = _pt2e_int8(net, example, calib_batches)
                edge = litert_torch.convert(quantized, (example,), quant_config=config)
                meta["quantization"] = {"scheme": QUANT_SCHEME, "calibration": calibration, "converter": "litert-torch"}
            content = edge.model_content()
    except (MissingDependencyError, DataError):
        raise
    except Exception as exc:  # the converter raises many types; the user needs one line
        raise ExportError(_convert_error(model, net, example, exc, int8=calib_batches is not None)) from None
    return atomic_write_bytes(path, add_tflite_metadata(content, meta))


def _pt2e_int8(net: nn.Module, example: torch.Tensor, calib_batches: Sequence[torch.Tensor]) -> tuple[Any, Any]:
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calib_batches:
        raise DataError("int8 calibration needs at least one batch of images, received none")
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    batches = [x.float().permute(0, 2, 3, 1).contiguous() for x in calib_batches]
    try:  # one graph for every batch size
        graph = torch.export.export(net, (batches[0][:1].expand(2, *example.shape[1:]).clone(),),
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module()
    except Exception:  # noqa: BLE001 - a graph fixed to its batch size (a reshape, say): one image at a time
        graph = torch.export.export(net, (example,)).module()
        batches = [x[i:i + 1] for x in batches for i in range(len(x))]
    prepared = prepare_pt2e(graph, quantizer)
    for x in batches:
        prepared(x)
    converted = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(converted)
    return converted, QuantConfig(pt2e_quantizer=quantizer)


def _convert_error(model: nn.Module, net: nn.Module, example: torch.Tensor, exc: BaseException, *, int8: bool) -> str:
    """One line: which operator the converter refused and the layer (module path and type) that uses it."""
    what = f"LiteRT {'int8 ' if int8 else ''}conversion of {type(model).__name__}"
    text = str(exc)
    marker = "Lowering not found: "
    if marker not in text:
        return f"{what} failed: {first_line(exc)}"
    op = text.split(marker, 1)[1].split()[0]
    layer = layer_using(net, example, op)
    where = f" in layer {layer}" if layer else ""
    return f"{what} failed: litert-torch cannot convert operator {op}{where}"


def layer_using(net: nn.Module, example: torch.Tensor, op: str) -> str | None:
    """``'features.3.squeeze' (Conv2d)``: the innermost module whose forward calls operator ``op``
    (``aten.erfinv.default``, ``aten.erfinv`` or ``erfinv``), from torch.export's module stack."""
    def matches(target: Any) -> bool:
        name = str(target)
        parts = name.split(".")
        return op in (name, name.rsplit(".", 1)[0], parts[1] if len(parts) > 1 and parts[0] == "aten" else name)

    try:
        with quiet_converter():
            program = torch.export.export(net, (example,))
            for graph in (program, program.run_decompositions()):
                for node in graph.graph.nodes:
                    stack = list((node.meta.get("nn_module_stack") or {}).values())
                    if node.op == "call_function" and matches(node.target) and stack:
                        path, kind = stack[-1]
                        path = str(path).removeprefix("L['self'].").removeprefix("model.")
                        name = getattr(kind, "__name__", None) or str(kind).rsplit(".", 1)[-1].strip("'>")
                        return f"{path!r} ({name})" if path and path != "model" else f"({name})"
    except Exception:  # noqa: BLE001 - the name is a courtesy; the operator is still reported
        return None
    return None


def verify_int8(path: str | Path, model: nn.Module, test_x: torch.Tensor, test_y: torch.Tensor, *, inputs_desc: str,
                calibration: str, batch_size: int = 256) -> Int8Verification:
    """Run the int8 file in LiteRT and fp32 PyTorch on the same test images: top-1 of each and their agreement."""
    from ..runtime.litert import LiteRtRunner

    runner = LiteRtRunner(path)
    model = model.eval()
    refs, outs = [], []
    try:
        with torch.no_grad():
            for i in range(0, len(test_x), batch_size):
                refs.append(model(test_x[i:i + batch_size]).numpy())
                outs.append(runner.run(test_x[i:i + batch_size].numpy()))
    except Exception as exc:  # noqa: BLE001 - a file that does not run is the export's failure
        raise ExportError(f"{path}: LiteRT could not run the int8 model: {first_line(exc)}") from None
    ref, out, y = np.concatenate(refs), np.concatenate(outs), test_y.numpy()
    ok = out.shape == ref.shape and len(out) > 0 and bool(np.isfinite(out).all())
    diff = float(np.abs(out - ref).max()) if ok else float(np.finfo(np.float32).max)
    agree = float((out.argmax(1) == ref.argmax(1)).mean()) if ok else 0.0
    fp32 = 100.0 * float((ref.argmax(1) == y).mean())
    int8 = 100.0 * float((out.argmax(1) == y).mean()) if ok else 0.0
    drop = fp32 - int8
    warning = (f"int8 top-1 {int8:.2f}% is {drop:.2f} points below fp32 {fp32:.2f}% on {len(y)} test images "
               f"(more than {MAX_DROP:g})") if drop > MAX_DROP else None
    return Int8Verification(runner.runtime, inputs_desc, len(y), diff, agree, ok, calibration, fp32, int8, drop,
                            MAX_DROP, warning)
