"""``quantize_source``: what ``pocketcnn quantize`` runs: calibrate on real images, convert to INT8,
then score fp32 against int8 on a balanced test subset (top-1, file size, images/s at batch 32).

One function per back end: :func:`quantize_onnxruntime` (ONNX Runtime QDQ, writes an
``.int8.onnx`` file) and :func:`quantize_pytorch` (FX or PT2E, optionally QAT first; writes an
int8 checkpoint when asked). The algorithms are in :mod:`pocketcnn.compress.quantize`.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts.formats import BY_NAME
from ..artifacts.source import ModelSource, default_out
from ..compress.quantize import (ACTIVATION_TYPE, BACKENDS, qat_torch, quantize_onnx, quantize_torch,
                                 state_dict_bytes)
from ..data.spec import DATASETS
from ..data.transforms import load_images
from ..train.data_prep import run_splits
from ..errors import ConfigError
from ..validate import check_int
from ..fileio import check_output

SPEED_BATCH = 32


@dataclass(frozen=True)
class Score:
    top1: float  # percent, on the test subset
    size_bytes: int  # the ONNX file, or torch.save(state_dict) for the torch back end
    images_per_s: float  # at batch SPEED_BATCH, median of interleaved timed calls (bench.timing.measure_many)


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


@dataclass(frozen=True)
class Images:
    """Normalized calibration and test images of one data set, ready for both back ends."""

    name: str
    calib: torch.Tensor  # (N, C, H, W) float32, balanced training images
    test_x: torch.Tensor
    test_y: torch.Tensor

    def calib_batches(self) -> list[torch.Tensor]:
        return [self.calib[i:i + SPEED_BATCH] for i in range(0, len(self.calib), SPEED_BATCH)]


def top1(run: Callable[[np.ndarray], np.ndarray], x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent of ``run`` (numpy batch -> logits) over normalized ``x``."""
    hits = 0
    for i in range(0, len(x), batch_size):
        logits = np.asarray(run(x[i:i + batch_size].numpy()))
        hits += int((logits.argmax(1) == y[i:i + batch_size].numpy()).sum())
    return 100.0 * hits / max(len(x), 1)


def speeds(runs: dict[str, Callable[[np.ndarray], Any]], batch: torch.Tensor, threads: int | None = None
           ) -> dict[str, float]:
    """images/s of each numpy runner on ``batch``, timed interleaved by :func:`pocketcnn.bench.timing.measure_many`."""
    from ..bench.timing import measure_many

    fns = {k: (lambda x, run=run: run(x.numpy())) for k, run in runs.items()}
    records = measure_many(fns, batch_size=len(batch), input_size=tuple(batch.shape[1:]), threads=threads,
                           warmup=1, min_time=1.0, repeats=4, batch=batch)
    return {r.runtime: r.images_per_s for r in records}


def quantize_source(source: ModelSource, *, backend: str = "onnxruntime", calib_data: str | None = None,
                    calib_samples: int = 512, test_samples: int = 2000, per_channel: bool = True,
                    activation_type: str = ACTIVATION_TYPE, method: str = "fx", out: str | Path | None = None,
                    data_dir: str | Path | None = None, qat_epochs: int = 0, qat_samples: int = 10000,
                    qat_lr: float = 1e-5, threads: int | None = None,
                    on_epoch: Callable[[int, float], None] | None = None) -> QuantizeReport:
    """Quantize ``source`` and score fp32 against int8.

    Calibration uses ``calib_samples`` balanced training images of ``calib_data`` (default:
    the model's own data set); the score uses ``test_samples`` balanced test images.
    ``backend="onnxruntime"`` writes ``out`` (default ``<source>.int8.onnx``); ``backend="torch"``
    writes ``out`` only when given, as a checkpoint holding the int8 state dict. The output
    path is checked before any work.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, received backend={backend!r}")
    check_int("calib_samples", calib_samples)
    check_int("test_samples", test_samples)
    if backend == "torch" and not per_channel:
        raise ConfigError("per-tensor weights (per_channel=False) are offered by the onnxruntime back end only; "
                          "the torch back end uses the engine's per-channel default")
    if backend == "torch" and method == "pt2e" and (out is not None or qat_epochs):
        raise ConfigError("PT2E int8 models can be measured but not saved or QAT-trained here; "
                          "use method='fx' (or backend='onnxruntime') with --out / --qat")
    if qat_epochs and backend != "torch":
        raise ConfigError(f"QAT (qat_epochs={qat_epochs}) needs backend='torch'; ONNX Runtime quantizes after training")
    name = calib_data or source.data.name
    if name not in DATASETS:
        raise ConfigError(f"no local reader for data set {name!r}: pass calib_data (--calib-data) as one of "
                          f"{', '.join(DATASETS)}, e.g. imagefolder with a data_dir of ImageNet-style folders")
    if backend == "onnxruntime":
        out = check_output(out or default_out(source, ".int8" + BY_NAME["onnx"].suffix), inputs=[source.path],
                           suffixes=list(BY_NAME["onnx"].suffixes),
                           what="int8 ONNX file")
    elif out is not None:
        out = check_output(out, inputs=[source.path], suffixes=[BY_NAME["checkpoint"].suffix], what="int8 checkpoint")
    train_ds = test_ds = None
    config = trained_config(source) if name == source.data.name else {}
    if config.get("data") == name:  # the run's own images: its data folder and its val_split hold-out
        train_ds, test_ds = run_splits(config, source.data.image_size, str(data_dir) if data_dir else None)
    calib, _ = load_images(name, "train", calib_samples, source.data, data_dir, seed=1, dataset=train_ds)
    test_x, test_y = load_images(name, "test", test_samples, source.data, data_dir, seed=0, dataset=test_ds)
    images = Images(name, calib, test_x, test_y)
    if backend == "onnxruntime":
        return quantize_onnxruntime(source, images, Path(out), per_channel=per_channel,
                                    activation_type=activation_type, threads=threads)
    return quantize_pytorch(source, images, out=Path(out) if out else None, method=method, qat_epochs=qat_epochs,
                            qat_samples=qat_samples, qat_lr=qat_lr, data_dir=data_dir, on_epoch=on_epoch)


def quantize_onnxruntime(source: ModelSource, images: Images, out: Path, *, per_channel: bool = True,
                         activation_type: str = ACTIVATION_TYPE, threads: int | None = None) -> QuantizeReport:
    """ONNX Runtime static QDQ quantization of ``source`` into ``out``, scored against its fp32 graph."""
    from ..export.onnx import export_onnx
    from ..runtime.onnx import OnnxRunner

    batch = images.test_x[:SPEED_BATCH]
    with tempfile.TemporaryDirectory(prefix="pocketcnn-fp32-") as tmp:
        fp32_path = export_onnx(source.model, Path(tmp) / "fp32.onnx", input_size=source.input_size,
                                dynamic_batch=True, metadata=source.metadata())
        quantize_onnx(fp32_path, out, [c.numpy() for c in images.calib_batches()], per_channel=per_channel,
                      activation_type=activation_type, label=str(source.path or source.name))
        fp32_run, int8_run = OnnxRunner(fp32_path, threads=threads), OnnxRunner(out, threads=threads)
        speed = speeds({"fp32": fp32_run.run, "int8": int8_run.run}, batch, threads)
        fp32 = Score(top1(fp32_run.run, images.test_x, images.test_y), fp32_path.stat().st_size, speed["fp32"])
    int8 = Score(top1(int8_run.run, images.test_x, images.test_y), out.stat().st_size, speed["int8"])
    return QuantizeReport(source.name, "onnxruntime", "qdq-static", out, per_channel, activation_type, images.name,
                          len(images.calib), len(images.test_x), 0, fp32, int8)


def quantize_pytorch(source: ModelSource, images: Images, *, out: Path | None = None, method: str = "fx",
                     qat_epochs: int = 0, qat_samples: int = 10000, qat_lr: float = 1e-5,
                     data_dir: str | Path | None = None,
                     on_epoch: Callable[[int, float], None] | None = None) -> QuantizeReport:
    """PyTorch int8 (FX, or PT2E; ``qat_epochs`` > 0: FX QAT first), scored against the fp32 model."""
    from ..artifacts.checkpoint import save_int8_checkpoint
    from ..runtime.torch_runners import TorchRunner

    if qat_epochs:
        train_x, train_y = load_images(images.name, "train", qat_samples, source.data, data_dir, seed=2)

        def batches():
            perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(len(train_x)))
            for i in range(0, len(perm) - 1, 64):
                idx = perm[i:i + 64]
                yield train_x[idx], train_y[idx]

        qmodel = qat_torch(source.model, batches, epochs=qat_epochs, lr=qat_lr, on_epoch=on_epoch)
        method = "fx-qat"
    else:
        qmodel = quantize_torch(source.model, images.calib_batches(), method=method)
    fp32_run, int8_run = TorchRunner(source.model), TorchRunner(qmodel)
    speed = speeds({"fp32": fp32_run.run, "int8": int8_run.run}, images.test_x[:SPEED_BATCH])
    fp32 = Score(top1(fp32_run.run, images.test_x, images.test_y), state_dict_bytes(source.model), speed["fp32"])
    int8 = Score(top1(int8_run.run, images.test_x, images.test_y), state_dict_bytes(qmodel), speed["int8"])
    if out is not None:
        out = save_int8_checkpoint(out, source.name, source.model_kwargs, source.data.to_dict(), qmodel, method=method)
    return QuantizeReport(source.name, "torch", method, out, True, "quint8", images.name, len(images.calib),
                          len(images.test_x), qat_epochs, fp32, int8)


def trained_config(source: ModelSource) -> dict[str, Any]:
    """The training config a checkpoint recorded (data set, folder, val_split); empty for other sources."""
    if source.kind != "checkpoint" or source.path is None:
        return {}
    from ..artifacts.checkpoint import load_checkpoint

    return dict(load_checkpoint(source.path).get("config") or {})
