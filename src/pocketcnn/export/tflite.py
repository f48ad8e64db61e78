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
  ``interface="float32"`` (what the browser page ships, :func:`int8_interface`): the same
  int8 graph behind a QUANTIZE op at its input and a DEQUANTIZE op at its output, so that it
  takes and gives float32 like the fp32 file: LiteRT.js 2.5.3 refuses int8 input tensors
  ("Element type INT8 is not supported"; its JavaScript tensors are float32, int32 or uint8).
  Either way the metadata's ``quantization`` records the int8 tensors' ``scale`` and
  ``zero_point`` (``input``, ``output``) and the file's ``interface``.

The metadata is a TFLite metadata entry (:func:`~pocketcnn.runtime.litert.add_tflite_metadata`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..envvars import environ
from ..errors import ConfigError, DataError, ExportError, MissingDependencyError, first_line
from ..fileio import atomic_write_bytes
from ..runtime.litert import INSTALL, add_tflite_metadata, quiet_native_logs

if TYPE_CHECKING:
    from ..data.spec import DataSpec

LAYOUT = "NHWC"
MAX_DROP = 2.0  # top-1 points an int8 file may lose before the export warns
QUANT_SCHEME = "PT2E static int8: activations per tensor (histogram), weights symmetric per channel"
INTERFACES = ("int8", "float32")  # an int8 file's input and output tensors: int8, or float32 (QUANTIZE/DEQUANTIZE inside)
CALIB_SAMPLES = 512  # balanced training images the int8 observers see
TEST_SAMPLES = 2000  # balanced test images an int8 file is scored on


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
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with environ({"LITERT_TORCH_SHOW_PROGRESS": "n"}), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                quiet_native_logs():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def export_tflite(model: nn.Module, path: str | Path, *, input_size: tuple[int, int, int],
                  metadata: Mapping[str, Any] | None = None, calib_batches: Sequence[torch.Tensor] | None = None,
                  calibration: str = "", interface: str = "int8") -> Path:
    """Convert ``model`` to a ``.tflite`` file with an NHWC batch-1 input; int8 when ``calib_batches`` are given.

    ``calib_batches``: normalized float32 ``(N, C, H, W)`` batches the int8 observers see;
    ``calibration`` describes them in the metadata; ``interface``: an int8 file's input and
    output tensors, ``"int8"`` (full integer) or ``"float32"`` (see the module docstring).
    Missing litert-torch is a MissingDependencyError naming the extra; an operator the
    converter refuses is an ExportError naming the layer that uses it.
    """
    if interface not in INTERFACES:
        raise ConfigError(f"interface must be one of {', '.join(INTERFACES)}, received interface={interface!r}")
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
            if calib_batches is not None:
                content, io = int8_interface(content, float_io=interface == "float32")
                meta["quantization"].update(io)
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


def int8_interface(content: bytes, *, float_io: bool) -> tuple[bytes, dict[str, Any]]:
    """An int8 ``.tflite`` file's input and output quantization (``{"interface", "input": {"scale",
    "zero_point"}, "output": {...}}``), and the file with a float32 interface when ``float_io``:
    a QUANTIZE op (float32 -> int8, the input's scale and zero point) in front of the int8
    input and a DEQUANTIZE op after the int8 output; the graph between them is unchanged, and
    the float tensors take the names (and signature entries) the int8 ones had."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    io = {"interface": "float32" if float_io else "int8",
          "input": _quant_params(graph.tensors[graph.inputs[0]]), "output": _quant_params(graph.tensors[graph.outputs[0]])}
    if not float_io:
        return content, io
    model.buffers.append(fb.BufferT())  # the float tensors' (empty) buffer
    moved: dict[int, int] = {}
    for where, op in (("inputs", fb.BuiltinOperator.QUANTIZE), ("outputs", fb.BuiltinOperator.DEQUANTIZE)):
        ends = getattr(graph, where)
        for k, index in enumerate(ends):
            if graph.tensors[index].type == fb.TensorType.INT8:
                ends[k] = moved[index] = _float_end(model, graph, index, op, first=where == "inputs")
    for signature in model.signatureDefs or []:
        for entry in [*signature.inputs, *signature.outputs]:
            entry.tensorIndex = moved.get(entry.tensorIndex, entry.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), io


def _quant_params(tensor: Any) -> dict[str, Any]:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        raise ExportError(f"the int8 file's tensor {_text(tensor.name)!r} has no per-tensor scale and zero point")
    return {"scale": float(q.scale[0]), "zero_point": int(q.zeroPoint[0])}


def _float_end(model: Any, graph: Any, index: int, builtin: int, *, first: bool) -> int:
    """A float32 twin of int8 tensor ``index`` joined to it by ``builtin`` (QUANTIZE before, DEQUANTIZE after)."""
    from ai_edge_litert import schema_py_generated as fb

    int8 = graph.tensors[index]
    twin = fb.TensorT()
    twin.name, twin.shape, twin.shapeSignature = _text(int8.name), copy.copy(int8.shape), copy.copy(int8.shapeSignature)
    twin.type, twin.buffer = fb.TensorType.FLOAT32, len(model.buffers) - 1
    int8.name = f"{_text(int8.name)}_int8"
    graph.tensors.append(twin)
    op = fb.OperatorT()
    op.opcodeIndex = _opcode(model, builtin)
    if first:
        op.inputs, op.outputs = [len(graph.tensors) - 1], [index]
        graph.operators.insert(0, op)
    else:
        op.inputs, op.outputs = [index], [len(graph.tensors) - 1]
        graph.operators.append(op)
    return len(graph.tensors) - 1


def _opcode(model: Any, builtin: int) -> int:
    """The index of ``builtin``'s operator code in ``model``, added (version 2: int8) when it has none."""
    from ai_edge_litert import schema_py_generated as fb

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _text(name: Any) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, (bytes, bytearray)) else str(name)


@dataclass(frozen=True)
class Int8Images:
    """What an int8 export calibrates on and is scored on: normalized float32 ``(N, C, H, W)`` batches."""

    calib: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    calibration: str = field(default="")  # e.g. "512 fashion-mnist train images"
    inputs: str = field(default="")  # e.g. "2000 fashion-mnist test images"

    def batches(self, size: int = 32) -> list[torch.Tensor]:
        return [self.calib[i:i + size] for i in range(0, len(self.calib), size)]


def int8_images(data: DataSpec, data_dir: str | Path | None = None, *, calib_data: str | None = None,
                calib_samples: int = CALIB_SAMPLES, test_samples: int | None = TEST_SAMPLES) -> Int8Images:
    """``calib_samples`` balanced training images and ``test_samples`` balanced test images (None:
    the whole split) of ``calib_data`` (default: ``data``'s data set) from ``data_dir``, with
    ``data``'s preprocessing. ConfigError for a data set without a local reader, DataError when
    its files are not on this machine."""
    from ..data.spec import DATASETS
    from ..data.transforms import load_images

    if data is None:
        raise ConfigError("int8 calibration needs real images: the model source records no data set")
    name = calib_data or data.name
    if name not in DATASETS:
        raise ConfigError(f"int8 calibration needs real images: no local reader for data set {name!r}; pass "
                          f"calib_data (--calib-data) as one of {', '.join(DATASETS)}")
    try:
        calib, _ = load_images(name, "train", calib_samples, data, data_dir, seed=1)
        test_x, test_y = load_images(name, "test", test_samples, data, data_dir, seed=0)
    except (DataError, OSError) as exc:
        raise DataError(f"int8 calibration needs {name} images on this machine: {exc}") from None
    return Int8Images(calib, test_x, test_y, f"{len(calib)} {name} train images", f"{len(test_x)} {name} test images")


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
