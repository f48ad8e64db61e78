"""Verification of an exported file: run it in its own runtime against PyTorch on the same inputs.

The inputs are a few test images of the checkpoint's data set when they are on disk, else
fixed random inputs. The largest absolute logit difference must be ``<= atol`` (1e-4) and
the top-1 classes must agree wherever PyTorch's top two logits are further apart than that
difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts.formats import BY_NAME, format_of
from ..data.spec import DataSpec
from ..errors import ExportError, PocketCNNError, first_line

ATOL = 1e-4


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


def verification_inputs(data: DataSpec | None, input_size: tuple[int, int, int], n: int = 8, *,
                        data_dir: str | Path | None = None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n`` normalized test images of ``data``'s data set when they are on disk, else random inputs."""
    if data is not None:
        try:
            from ..data import DATASETS, balanced_subset, load_dataset, normalize_batch

            if data.name in DATASETS:
                kwargs = {"image_size": data.image_size} if data.name == "imagefolder" else {}
                sub = balanced_subset(load_dataset(data.name, "test", data_dir, **kwargs), n, seed=seed)
                x = torch.stack([sub[i][0] for i in range(min(n, len(sub)))])
                if x.shape[1] == input_size[0]:
                    x = normalize_batch(x, data.mean, data.std, size=input_size[1])
                    return x, f"{len(x)} {data.name} test images"
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
    from ..runtime.loader import open_runtime

    path = Path(path)
    if format_of(path) is BY_NAME["onnx"]:
        import onnx

        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as exc:
            raise ExportError(f"{path}: onnx.checker rejected the model: {first_line(exc)}") from None
    runner = open_runtime(path)
    with torch.no_grad():
        ref = model.eval()(inputs).numpy()
    try:
        out = runner.run(inputs.numpy())
    except PocketCNNError:
        raise
    except Exception as exc:
        raise ExportError(f"{path}: {runner.runtime} could not run the exported model: {first_line(exc)}") from None
    diff, agree, passed = compare_logits(ref, out, atol=atol)
    return Verification(runner.runtime, inputs_desc or f"{len(inputs)} inputs", len(inputs), diff, agree, atol, passed)


