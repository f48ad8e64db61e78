"""The paper's chain in the main job: SqueezeNet dense -> Deep Compression (.pcz) -> INT8 ONNX ->
predictions from the exported file with the light runtime.

"AlexNet-level accuracy with 50x fewer parameters and <0.5 MB model size" (Iandola et al.):
:func:`paper_chain` takes the demo's trained SqueezeNet through pruning, weight sharing and
Huffman coding (:func:`pocketcnn.compress.pipeline.deep_compress`, fine-tuning on the
demo's training images), INT8 (ONNX Runtime QDQ, calibrated on real images), and classifies
real test images, written as PNG files, from the INT8 file through
:mod:`pocketcnn.runtime` (no PyTorch in that step). Every stage is scored on the same test images.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts.formats import BY_NAME
from ..artifacts.source import load_model_source
from ..compress.quantize import state_dict_bytes
from ..data import DataSpec
from ..train.config import TrainConfig
from ..train.engine import evaluate

SQUEEZENETS = ("squeezenet1_1", "squeezenet1_0")
SPARSITY, BITS, PRUNE_STEPS = 0.67, 6, 3  # the paper's "33% of the weights kept, 6-bit" setting
CALIB_SAMPLES, PROBE_SAMPLES, SAMPLE_IMAGES = 512, 1000, 10
FINETUNE_ROUNDS = PRUNE_STEPS + 1  # after each pruning round and after weight sharing
# the chain's work besides fine-tuning on 2 CPU cores: the sensitivity scan (about 100 scores of 1,000
# images), scores of the test split, k-means, INT8 calibration, scoring and timing, files, predictions
# (measured: docs/speed.md, "The main job's plan").
FIXED_SECONDS = 100.0


def squeezenet_of(models: tuple[str, ...]) -> str | None:
    return next((m for m in SQUEEZENETS if m in models), None)


def finetune_samples(ckpt_cfg: TrainConfig, images_per_s: float, seconds: float) -> int:
    """Training images per fine-tuning epoch so that all rounds fit ``seconds`` less :data:`FIXED_SECONDS`
    (at least 1,000)."""
    budget = max(0.0, seconds - FIXED_SECONDS)
    n = int(budget * images_per_s / FINETUNE_ROUNDS)
    return max(1000, min(n, ckpt_cfg.train_samples or 60_000))


def paper_chain(ckpt: Path, out: Path, test: Any, spec: DataSpec, seconds: float, *, dense_top1: float,
                train_images_per_s: float, baseline: tuple[Path, float] | None = None, data_dir: str | None = None,
                log: Callable[[str], None] = lambda msg: None) -> dict:
    """Run the chain on the checkpoint ``ckpt`` (whose model scored ``dense_top1`` on ``test``) within about
    ``seconds``; ``baseline``: AlexNet's checkpoint and top-1. Returns the stages (bytes, x smaller than
    AlexNet, top-1) and the sample predictions. Dense sizes are ``torch.save(state_dict)`` bytes (fp32)."""
    from ..data.transforms import load_images
    from .compress import CompressSettings, compress_checkpoint
    from .quantize import Images, quantize_onnxruntime

    t0 = time.perf_counter()
    source = load_model_source(ckpt)
    base = TrainConfig.from_dict(source_config(ckpt))
    n_ft = finetune_samples(base, train_images_per_s, seconds)
    settings = CompressSettings(sparsity=SPARSITY, prune_steps=PRUNE_STEPS, bits=BITS, finetune_epochs=1,
                                finetune_samples=n_ft, probe_samples=min(PROBE_SAMPLES, max(200, n_ft // 4)),
                                data_dir=data_dir, test_samples=0, short_run=True)
    log(f"Deep Compression of {source.name}: {SPARSITY:.0%} pruned in {PRUNE_STEPS} rounds, {BITS}-bit codebooks, "
        f"1 fine-tuning epoch of {n_ft:,} images per round")
    pcz_path = out / f"{source.name}{BY_NAME['pcz'].suffix}"
    result = compress_checkpoint(ckpt, pcz_path, settings, log=lambda msg: log(f"compress: {msg}")).result
    pcz_top1 = evaluate(load_model_source(pcz_path).model, test, spec, batch_size=512).top1
    log(f"{pcz_path}: {pcz_path.stat().st_size:,} bytes, top-1 {pcz_top1:.2f}%")

    int8_path = out / f"{source.name}.int8.onnx"
    calib, _ = load_images("fashion-mnist", "train", CALIB_SAMPLES, spec, data_dir, seed=1)
    test_x, test_y = _normalized(test, spec)
    q = quantize_onnxruntime(source, Images("fashion-mnist", calib, test_x, test_y), int8_path)
    log(f"{int8_path}: {int8_path.stat().st_size:,} bytes, top-1 {q.int8.top1:.2f}%")
    samples = predict_samples(int8_path, test, spec, out / "samples")

    alex_bytes = state_dict_bytes(load_model_source(baseline[0]).model) if baseline else None
    dense_bytes = state_dict_bytes(source.model)

    def stage(name: str, path: str | None, nbytes: int, top1: float) -> dict[str, Any]:
        return {"stage": name, "file": path, "bytes": nbytes, "top1": round(top1, 2),
                "x_smaller": round(alex_bytes / nbytes, 1) if alex_bytes else None}

    stages = ([stage("AlexNet dense (fp32)", "alexnet/last.pt", alex_bytes, baseline[1])] if baseline else []) + [
        stage(f"{source.name} dense (fp32)", f"{source.name}/last.pt", dense_bytes, dense_top1),
        stage(f"{source.name} Deep Compression (.pcz)", pcz_path.name, pcz_path.stat().st_size, pcz_top1),
        stage(f"{source.name} INT8 ONNX", int8_path.name, int8_path.stat().st_size, q.int8.top1),
    ]
    if not baseline:
        stages.insert(0, {"stage": "AlexNet dense (fp32)", "file": None, "bytes": None, "top1": None,
                          "x_smaller": None})
    return {"model": source.name, "sparsity": round(result.sparsity, 4), "bits": BITS, "prune_steps": PRUNE_STEPS,
            "finetune_samples": n_ft, "bits_per_param": round(8 * pcz_path.stat().st_size / result.n_params, 3),
            "int8_onnx_fp32_top1": round(q.fp32.top1, 2), "int8_speedup": round(q.speedup, 2),
            "stages": stages, "samples": samples, "seconds": round(time.perf_counter() - t0, 1)}


def source_config(ckpt: Path) -> dict[str, Any]:
    from ..artifacts.checkpoint import load_checkpoint

    return dict(load_checkpoint(ckpt)["config"])


def _normalized(test: Any, spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import normalize_batch

    return normalize_batch(test.data, spec.mean, spec.std), torch.as_tensor(test.targets)


def predict_samples(model_file: Path, test: Any, spec: DataSpec, folder: Path, n: int = SAMPLE_IMAGES) -> list[dict]:
    """Write ``n`` test images (one per class first) as PNG and classify them from ``model_file`` with the
    light runtime, as a deployed app would: ``[{image, label, predicted, prob}]``."""
    from PIL import Image

    from ..runtime.predictor import open_model

    folder.mkdir(parents=True, exist_ok=True)
    targets = np.asarray(test.targets)
    picks = [int(np.flatnonzero(targets == c)[0]) for c in range(min(n, len(spec.classes))) if (targets == c).any()]
    paths, labels = [], []
    for i in picks[:n]:
        path = folder / f"test{i:05d}.png"
        Image.fromarray(test.data[i, 0].numpy()).save(path)
        paths.append(path)
        labels.append(spec.classes[int(targets[i])])
    predictions = open_model(model_file).predict(paths, topk=1)
    return [{"image": f"samples/{p.name}", "label": label, "predicted": r.topk[0].label, "prob": round(r.topk[0].prob, 4)}
            for p, label, r in zip(paths, labels, predictions)]


def chain_report(chain: dict[str, Any]) -> list[str]:
    """The report's headline table and the sample predictions, as markdown lines."""
    lines = ["## The paper's title, measured", "",
             f"\"AlexNet-level accuracy with 50x fewer parameters and <0.5 MB model size\": {chain['model']} "
             f"pruned to {chain['sparsity']:.0%} sparsity in {chain['prune_steps']} rounds, {chain['bits']}-bit "
             f"weight sharing and Huffman coding ({chain['bits_per_param']:.2f} bits per parameter, fine-tuned on "
             f"{chain['finetune_samples']:,} images per round), and INT8 ONNX (ONNX Runtime, calibrated on "
             f"{CALIB_SAMPLES} training images).", "",
             "| model file | bytes | x smaller than AlexNet | test top-1 % |", "| --- | ---: | ---: | ---: |"]
    for s in chain["stages"]:
        nbytes = f"{s['bytes']:,}" if s["bytes"] else "-"
        ratio = f"{s['x_smaller']:.0f}x" if s["x_smaller"] else "-"
        top1 = f"{s['top1']:.2f}" if s["top1"] is not None else "-"
        lines.append(f"| {s['stage']} | {nbytes} | {ratio} | {top1} |")
    lines += ["", "Predictions from the INT8 file by the light runtime (numpy, ONNX Runtime, Pillow; no PyTorch), "
              "on test images written as PNG:", "", "| image | true class | predicted | probability |",
              "| --- | --- | --- | ---: |"]
    for s in chain["samples"]:
        lines.append(f"| {s['image']} | {s['label']} | {s['predicted']} | {s['prob']:.3f} |")
    return lines + [""]
