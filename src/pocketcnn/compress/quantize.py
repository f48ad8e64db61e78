"""INT8 post-training quantization (and quantization-aware training) calibrated on real images.

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

:func:`quantize_source` is what ``pocketcnn quantize`` runs: calibrate, convert, then
score fp32 against int8 on a balanced test subset (top-1, file size, images/s at batch 32).
"""
from __future__ import annotations

import copy
import io
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, ExportError

BACKENDS = ("onnxruntime", "torch")
TORCH_METHODS = ("fx", "pt2e")
ACTIVATION_TYPES = ("qint8", "quint8")
ACTIVATION_TYPE = "quint8"  # measured: see quantize_onnx
SPEED_BATCH = 32


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


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
                  per_channel: bool = True, activation_type: str = ACTIVATION_TYPE) -> Path:
    """Static INT8 quantization of an fp32 ONNX file (QDQ format, int8 weights).

    ``calib_batches``: normalized float32 ``(N, C, H, W)`` batches of real images.
    ``activation_type``: ``"quint8"`` (default) or ``"qint8"``. Measured on SqueezeNet 1.1 /
    Fashion-MNIST (AVX512-VNNI CPU, ORT 1.32, batch 32): the same top-1 either way, but
    uint8 activations (U8S8 kernels) ran 2.0x the fp32 speed and int8 ones (S8S8) 0.46x. The fp32 file's
    metadata is copied, plus a ``quantization`` entry.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..deploy.export import set_onnx_metadata
    from ..deploy.runtime import read_onnx_metadata

    if activation_type not in ACTIVATION_TYPES:
        raise ConfigError(f"activation_type must be one of {', '.join(ACTIVATION_TYPES)}, "
                          f"received activation_type={activation_type!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise ExportError(f"{fp32_path}: no such ONNX file")
    batches = _materialize(calib_batches)
    try:
        proto = onnx.load(str(fp32_path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{fp32_path}: not a readable ONNX model ({_first_line(exc)})") from None
    inp = proto.graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0]
    fixed = dim0.dim_value if dim0.HasField("dim_value") else None
    meta = read_onnx_metadata(fp32_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pocketcnn-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
                quantize_static(
                    str(pre), str(out_path), _calibration_reader(inp.name, batches, fixed),
                    quant_format=QuantFormat.QDQ, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8 if activation_type == "qint8" else QuantType.QUInt8,
                    per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
                )
        except Exception as exc:  # onnxruntime.quantization raises many types
            raise ExportError(f"{fp32_path}: ONNX Runtime quantization failed: {_first_line(exc)}") from None
    q = onnx.load(str(out_path))
    meta["quantization"] = {"format": "QDQ", "weights": "int8", "activations": activation_type,
                            "per_channel": per_channel, "calibration": "minmax",
                            "calibration_samples": int(sum(len(b) for b in batches))}
    set_onnx_metadata(q, meta)
    onnx.save(q, str(out_path))
    return out_path


# ------------------------------------------------------------------------------ PyTorch
def quantized_engine() -> str:
    """The quantized kernel library for this CPU: ``x86`` (fbgemm + onednn) or ``qnnpack`` (ARM)."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise ExportError(f"this PyTorch build has no quantized CPU engine (supported: {engines})")


def _use_engine() -> str:
    engine = quantized_engine()
    torch.backends.quantized.engine = engine  # the kernels are chosen at run time by this global
    return engine


def _fx_prepare(model: nn.Module, example: torch.Tensor, *, qat: bool) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    engine = _use_engine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if qat:
            return prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping(engine), (example,))
        return prepare_fx(model.eval(), get_default_qconfig_mapping(engine), (example,))


def _fx_convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared.eval())


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
            prepared = _fx_prepare(model, batches[0], qat=False)
            for b in batches:
                prepared(b)
            return _fx_convert(prepared)
        try:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
        except ImportError as exc:
            raise ExportError(f"method='pt2e' needs the torchao package ({_first_line(exc)}); "
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

    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"QAT epochs must be a positive integer, received epochs={epochs!r}")
    first = next(iter(train_batches()), None)
    if first is None:
        raise DataError("QAT needs training batches, received none")
    model = copy.deepcopy(model).cpu()
    prepared = _fx_prepare(model, _as_tensor(first[0]), qat=True)
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
    return _fx_convert(prepared)


def rebuild_fx_int8(model: nn.Module, state_dict: dict[str, torch.Tensor], input_size: tuple[int, int, int]) -> nn.Module:
    """An FX int8 model from its fp32 architecture and a saved int8 state dict (no calibration needed)."""
    prepared = _fx_prepare(copy.deepcopy(model).cpu().eval(), torch.zeros(1, *input_size), qat=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # observers that saw no data announce it; the state dict sets qparams
        q = _fx_convert(prepared)
    q.load_state_dict(state_dict)
    return q


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the on-disk size of a PyTorch model."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


# ------------------------------------------------------------------------------ measuring
def top1(run: Callable[[np.ndarray], np.ndarray], x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``run`` (numpy batch -> logits) over normalized ``x``."""
    hits = 0
    for i in range(0, len(x), batch_size):
        logits = np.asarray(run(x[i:i + batch_size].numpy()))
        hits += int((logits.argmax(1) == y[i:i + batch_size].numpy()).sum())
    return 100.0 * hits / max(len(x), 1)


def images_per_s(run: Callable[[np.ndarray], Any], batch: np.ndarray, *, min_time: float = 0.25,
                 warmup: int = 2, max_iters: int = 200) -> float:
    """Throughput of ``run`` on ``batch``: warm-up calls, then repeated calls for at least ``min_time`` s."""
    for _ in range(warmup):
        run(batch)
    n, t0 = 0, time.perf_counter()
    while n < max_iters and (n < 2 or time.perf_counter() - t0 < min_time):
        run(batch)
        n += 1
    return n * len(batch) / (time.perf_counter() - t0)


def compare_speed(runs: list[Callable[[np.ndarray], Any]], batch: np.ndarray, *, rounds: int = 4,
                  min_time: float = 0.25) -> list[float]:
    """Best images/s of each ``run`` over ``rounds`` interleaved rounds (robust to a busy machine)."""
    best = [0.0] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            best[i] = max(best[i], images_per_s(run, batch, min_time=min_time, warmup=1))
    return best


@dataclass(frozen=True)
class Score:
    top1: float  # percent, on the test subset
    size_bytes: int  # the ONNX file, or torch.save(state_dict) for the torch back end
    images_per_s: float  # at batch SPEED_BATCH, best of interleaved rounds (see compare_speed)


@dataclass(frozen=True)
class QuantizeReport:
    """fp32 against int8 on the same test images, with what was done to get there."""

    model: str
    backend: str  # "onnxruntime" or "torch"
    method: str  # "qdq-static", "fx", "pt2e" or "fx-qat"
    path: Path | None  # the int8 file written
    per_channel: bool
    activation_type: str
    calib_data: str
    calib_samples: int
    test_samples: int
    qat_epochs: int
    fp32: Score
    int8: Score

    @property
    def size_ratio(self) -> float:
        return self.fp32.size_bytes / max(self.int8.size_bytes, 1)

    @property
    def speedup(self) -> float:
        return self.int8.images_per_s / max(self.fp32.images_per_s, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        d["size_ratio"], d["speedup"] = self.size_ratio, self.speedup
        d["top1_drop"] = self.fp32.top1 - self.int8.top1
        return d


def _load_images(name: str, split: str, n: int, data: dict[str, Any], data_dir, seed: int):
    from ..data import balanced_subset, load_dataset, normalize_batch

    kwargs = {"image_size": int(data["image_size"])} if name == "imagefolder" else {}
    ds = balanced_subset(load_dataset(name, split, data_dir, **kwargs), n, seed=seed)
    if hasattr(ds, "data"):
        x, y = ds.data, torch.as_tensor(ds.targets)
    else:
        items = [ds[i] for i in range(len(ds))]
        x, y = torch.stack([t for t, _ in items]), torch.tensor([int(t) for _, t in items])
    if x.shape[1] != int(data["in_chans"]):
        raise DataError(f"data set {name!r} has {x.shape[1]} channels but the model takes {data['in_chans']}")
    return normalize_batch(x, data["mean"], data["std"], size=int(data["image_size"])), y


def quantize_source(source: Any, *, backend: str = "onnxruntime", calib_data: str | None = None,
                    calib_samples: int = 512, test_samples: int = 2000, per_channel: bool = True,
                    activation_type: str = ACTIVATION_TYPE, method: str = "fx", out: str | Path | None = None,
                    data_dir: str | Path | None = None, qat_epochs: int = 0, qat_samples: int = 10000,
                    qat_lr: float = 1e-5, threads: int | None = None,
                    on_epoch: Callable[[int, float], None] | None = None) -> QuantizeReport:
    """Quantize a :class:`~pocketcnn.deploy.export.ModelSource` and score fp32 against int8.

    Calibration uses ``calib_samples`` balanced training images of ``calib_data`` (default:
    the model's own data set); the score uses ``test_samples`` balanced test images.
    ``backend="onnxruntime"`` writes ``out`` (default ``<source>.int8.onnx``); ``backend="torch"``
    writes ``out`` only when given, as a checkpoint holding the int8 state dict.
    """
    from ..deploy.export import export_onnx
    from ..deploy.runtime import OnnxRunner, TorchRunner

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, received backend={backend!r}")
    for key, value in (("calib_samples", calib_samples), ("test_samples", test_samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, received {key}={value!r}")
    if backend == "torch" and not per_channel:
        raise ConfigError("per-tensor weights (per_channel=False) are offered by the onnxruntime back end only; "
                          "the torch back end uses the engine's per-channel default")
    if backend == "torch" and method == "pt2e" and (out is not None or qat_epochs):
        raise ConfigError("PT2E int8 models can be measured but not saved or QAT-trained here; "
                          "use method='fx' (or backend='onnxruntime') with --out / --qat")
    if qat_epochs and backend != "torch":
        raise ConfigError(f"QAT (qat_epochs={qat_epochs}) needs backend='torch'; ONNX Runtime quantizes after training")
    from ..data import DATASETS

    data = source.data
    name = calib_data or data["name"]
    if name not in DATASETS:
        raise ConfigError(f"no local reader for data set {name!r}: pass calib_data (--calib-data) as one of "
                          f"{', '.join(DATASETS)}, e.g. imagefolder with a data_dir of ImageNet-style folders")
    calib_x, _ = _load_images(name, "train", calib_samples, data, data_dir, seed=1)
    test_x, test_y = _load_images(name, "test", test_samples, data, data_dir, seed=0)
    speed_batch = test_x[:SPEED_BATCH].numpy()
    calib = [calib_x[i:i + SPEED_BATCH] for i in range(0, len(calib_x), SPEED_BATCH)]

    if backend == "onnxruntime":
        from ..deploy.export import build_metadata, default_out

        out = Path(out) if out else default_out(source, ".int8.onnx")
        with tempfile.TemporaryDirectory(prefix="pocketcnn-fp32-") as tmp:
            fp32_path = export_onnx(source.model, Path(tmp) / "fp32.onnx", input_size=source.input_size,
                                    dynamic_batch=True, metadata=build_metadata(source))
            quantize_onnx(fp32_path, out, [c.numpy() for c in calib], per_channel=per_channel,
                          activation_type=activation_type)
            fp32_run, int8_run = OnnxRunner(fp32_path, threads=threads), OnnxRunner(out, threads=threads)
            speed = compare_speed([fp32_run.run, int8_run.run], speed_batch)
            fp32 = Score(top1(fp32_run.run, test_x, test_y), fp32_path.stat().st_size, speed[0])
        int8 = Score(top1(int8_run.run, test_x, test_y), out.stat().st_size, speed[1])
        return QuantizeReport(source.name, backend, "qdq-static", out, per_channel, activation_type, name,
                              len(calib_x), len(test_x), 0, fp32, int8)

    if qat_epochs:
        train_x, train_y = _load_images(name, "train", qat_samples, data, data_dir, seed=2)

        def batches():
            perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(len(train_x)))
            for i in range(0, len(perm) - 1, 64):
                idx = perm[i:i + 64]
                yield train_x[idx], train_y[idx]

        qmodel = qat_torch(source.model, batches, epochs=qat_epochs, lr=qat_lr, on_epoch=on_epoch)
        method = "fx-qat"
    else:
        qmodel = quantize_torch(source.model, calib, method=method)
    fp32_run, int8_run = TorchRunner(source.model), TorchRunner(qmodel)
    speed = compare_speed([fp32_run.run, int8_run.run], speed_batch)
    fp32 = Score(top1(fp32_run.run, test_x, test_y), state_dict_bytes(source.model), speed[0])
    int8 = Score(top1(int8_run.run, test_x, test_y), state_dict_bytes(qmodel), speed[1])
    if out is not None:
        out = save_int8_checkpoint(out, source, qmodel, method=method)
    return QuantizeReport(source.name, backend, method, Path(out) if out else None, per_channel, "quint8",
                          name, len(calib_x), len(test_x), qat_epochs, fp32, int8)


def save_int8_checkpoint(path: str | Path, source: Any, qmodel: nn.Module, *, method: str = "fx") -> Path:
    """A pocketcnn checkpoint whose ``state_dict`` is the FX int8 model's (``quantized`` says how to rebuild)."""
    from ..train.checkpoint import save_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return save_checkpoint(path, {"model": source.name, "model_kwargs": source.model_kwargs,
                                      "state_dict": qmodel.state_dict(), "data": source.data,
                                      "quantized": {"method": method, "engine": torch.backends.quantized.engine,
                                                    "dtype": "int8"}})

