"""Data: local image data sets (no downloads) and batched transforms for the training device.

Attributes are loaded on first use, so that ``pocketcnn.data.spec`` (the torch-free
:class:`DataSpec`) can be imported without PyTorch.
"""
from __future__ import annotations

from ..lazy import lazy_getattr

_LAZY = {
    "DataSpec": "spec", "IMAGENET_MEAN": "spec", "IMAGENET_STD": "spec", "imagenet_classes": "spec",
    "imagenet_spec": "spec",
    "DATASETS": "spec", "DEFAULT_FASHION_MNIST_DIR": "datasets", "ENV_VAR": "datasets",
    "LabeledSubset": "datasets", "TensorImageDataset": "datasets", "balanced_subset": "datasets",
    "dataset_spec": "datasets", "split_balanced": "datasets", "load_dataset": "datasets", "resolve_data_dir": "datasets",
    "verify_fashion_mnist": "datasets",
    "augment_batch": "transforms", "normalize_batch": "transforms", "pil_to_input": "transforms",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
