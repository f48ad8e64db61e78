"""INT8 post-training quantization (and quantization-aware training): the algorithms.

Two back ends:

* ``onnxruntime``: :func:`quantize_onnx` runs ``quant_pre_process`` (symbolic shape
  inference + graph cleanup) then ``quantize_static`` in QDQ format: int8 weights (per
  channel by default), uint8 activations by default (``ACTIVATION_TYPE``, chosen by
  measurement, see quantize_onnx), min-max calibration over the batches given.
* ``torch``: :func:`quantize_torch` with FX graph mode (``torch.ao.quantization.quantize_fx``,
  x86/fbgemm kernels; qnnpack on ARM): real int8 kernels in eager PyTorch. ``method="pt2e"``
  uses PT2E with torchao's ``X86InductorQuantizer`` when torchao is installed; its result
  is a reference q/dq graph that is only fast after ``torch.compile`` (measured slower than
  FX here), so FX is the default. :func:`qat_torch` fine-tunes with fake quantization
  (FX QAT) before converting.

:func:`pocketcnn.workflows.quantize.quantize_source` is what ``pocketcnn quantize`` runs:
calibrate on real images, convert, then score fp32 against int8.
"""
from __future__ import annotations

import copy
import io
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, ExportError, first_line
from ..validate import check_int
from ..fileio import atomic_write
from ..models.int8 import fx_convert, fx_prepare
from .options import ACTIVATION_TYPE, ACTIVATION_TYPES, BACKENDS, TORCH_METHODS  # noqa: F401 (re-exported)


# ------------------------------------------------------------------------------ ONNX Runtime
def _materialize(batches: Iterable[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
    out = []
    for b in batches:
        b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
        if b.ndim != 4:
            raise DataError(f"calibration batches must be (N, C, H, W) arrays, received shape {b.shape}")
        out.append(np.ascontiguousarray(b, dtype=np.float32))
    if not out:
        raise DataError("quantization needs at least one calibration batch, received none")
    return out


def _calibration_reader(input_name: str, batches: list[np.ndarray], fixed_batch: int | None):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the batches (split to the model's fixed batch size when it has one)."""

        def __init__(self) -> None:
            self._items = [b[i:i + fixed_batch] for b in batches for i in range(0, len(b), fixed_batch)] \
                if fixed_batch else list(batches)
            self._it: Iterator[np.ndarray] = iter(self._items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._it, None)
            return None if item is None else {input_name: item}

        def rewind(self) -> None:
            self._it = iter(self._items)

    return Reader()


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calib_batches: Iterable[np.ndarray], *,
                  per_channel: bool = True, activation_type: str = ACTIVATION_TYPE, label: str | None = None) -> Path:
    """Static INT8 quantization of an fp32 ONNX file (QDQ format, int8 weights).

    ``calib_batches``: normalized float32 ``(N, C, H, W)`` batches of real images.
    ``activation_type``: ``"quint8"`` (default) or ``"qint8"``. Measured on SqueezeNet 1.1 /
    Fashion-MNIST (AVX512-VNNI CPU, ORT 1.32, batch 32): the same top-1 either way, but
    uint8 activations (U8S8 kernels) ran 2.0x the fp32 speed and int8 ones (S8S8) 0.46x. The fp32 file's
    metadata is copied, plus a ``quantization`` entry. ``label`` names the model in error
    messages (default: the fp32 file, which may be a temporary one the user never saw).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..artifacts.metadata import read_onnx_metadata, write_onnx_metadata

    if activation_type not in ACTIVATION_TYPES:
        raise ConfigError(f"activation_type must be one of {', '.join(ACTIVATION_TYPES)}, "
                          f"received activation_type={activation_type!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    label = label or str(fp32_path)
    if not fp32_path.is_file():
        raise ExportError(f"{fp32_path}: no such ONNX file")
    batches = _materialize(calib_batches)
    try:
        proto = onnx.load(str(fp32_path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{label}: not a readable ONNX model ({first_line(exc)})") from None
    inp = proto.graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0]
    fixed = dim0.dim_value if dim0.HasField("dim_value") else None
    meta = read_onnx_metadata(fp32_path)
    with tempfile.TemporaryDirectory(prefix="pocketcnn-quant-") as tmp:
        pre, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
                quantize_static(
                    str(pre), str(quantized), _calibration_reader(inp.name, batches, fixed),
                    quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8 if activation_type == "qint8" else QuantType.QUInt8,
                    per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
                )
        except Exception as exc:  # onnxruntime.quantization raises many types
            raise ExportError(f"{label}: ONNX Runtime quantization failed: {first_line(exc)}") from None
        q = onnx.load(str(quantized))
    meta["quantization"] = {"format": "QDQ", "weights": "int8", "activations": activation_type,
                            "per_channel": per_channel, "calibration": "minmax",
                            "calibration_samples": int(sum(len(b) for b in batches))}
    write_onnx_metadata(q, meta)
    return atomic_write(out_path, lambda tmp: onnx.save(q, tmp))


# ------------------------------------------------------------------------------ PyTorch
def _as_tensor(b: np.ndarray | torch.Tensor) -> torch.Tensor:
    return b.detach().cpu().float() if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b, np.float32))


def quantize_torch(model: nn.Module, calib_batches: Iterable[np.ndarray | torch.Tensor], *,
                   method: str = "fx") -> nn.Module:
    """Post-training static INT8 quantization of a copy of ``model`` (CPU, eval mode).

    ``method="fx"``: FX graph mode with the x86 (fbgemm) or qnnpack engine; runs int8 kernels
    in eager PyTorch. ``method="pt2e"``: PT2E with torchao's X86InductorQuantizer (needs the
    ``torchao`` package); the result is fast only under ``torch.compile``.
    """
    if method not in TORCH_METHODS:
        raise ConfigError(f"method must be one of {', '.join(TORCH_METHODS)}, received method={method!r}")
    batches = [_as_tensor(b) for b in _materialize(calib_batches)]
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        if method == "fx":
            prepared = fx_prepare(model, batches[0], qat=False)
            for b in batches:
                prepared(b)
            return fx_convert(prepared)
        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
        except ImportError as exc:
            raise ExportError(f"method='pt2e' needs the torchao package ({first_line(exc)}); "
                              "use method='fx'") from None
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = torch.cat([batches[0][:1]] * 2)  # batch 2 with a dynamic dim: any batch size later
            graph = torch.export.export(model, (example,),
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module()
            prepared = prepare_pt2e(graph, quantizer)
            for b in batches:
                prepared(b)
            return convert_pt2e(prepared)


def qat_torch(model: nn.Module, train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], *,
              epochs: int = 1, lr: float = 1e-5, freeze_bn_epoch: int | None = None,
              on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Quantization-aware fine-tuning (FX QAT, fake quantization) of a copy of ``model``, then INT8.

    ``train_batches()`` yields ``(normalized float (N, C, H, W), labels (N,))`` for one epoch.
    SGD (momentum 0.9, cosine ``lr`` decay); observers are frozen for the last epoch and
    batch norm statistics from ``freeze_bn_epoch`` (default: the last epoch) on.
    ``on_epoch(epoch, mean_loss)`` is called after each epoch (the CLI shows progress).
    """
    from torch.ao.quantization import disable_observer
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats

    check_int("epochs", epochs)  # of QAT
    first = next(iter(train_batches()), None)
    if first is None:
        raise DataError("QAT needs training batches, received none")
    model = copy.deepcopy(model).cpu()
    prepared = fx_prepare(model, _as_tensor(first[0]), qat=True)
    opt = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    freeze_bn_epoch = epochs - 1 if freeze_bn_epoch is None else freeze_bn_epoch
    for epoch in range(epochs):
        prepared.train()
        if epoch >= freeze_bn_epoch:
            prepared.apply(freeze_bn_stats)
        if epoch == epochs - 1 and epochs > 1:
            prepared.apply(disable_observer)
        total, count = 0.0, 0
        for x, y in train_batches():
            loss = F.cross_entropy(prepared(_as_tensor(x)), torch.as_tensor(y, dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(y), count + len(y)
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, total / max(count, 1))
    return fx_convert(prepared)


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the on-disk size of a PyTorch model."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buf)
    return len(buf.getvalue())
