"""Data: local image data sets (no downloads) and batched transforms for the training device."""
from __future__ import annotations

from .datasets import (
    DATASETS,
    DEFAULT_FASHION_MNIST_DIR,
    ENV_VAR,
    DataSpec,
    LabeledSubset,
    TensorImageDataset,
    balanced_subset,
    dataset_spec,
    load_dataset,
    resolve_data_dir,
    verify_fashion_mnist,
)
from .transforms import augment_batch, normalize_batch, pil_to_input

__all__ = [
    "DATASETS", "DEFAULT_FASHION_MNIST_DIR", "ENV_VAR", "DataSpec", "LabeledSubset", "TensorImageDataset",
    "balanced_subset", "dataset_spec", "load_dataset", "resolve_data_dir", "verify_fashion_mnist",
    "augment_batch", "normalize_batch", "pil_to_input",
]
