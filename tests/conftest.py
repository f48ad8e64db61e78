import gzip
import os
import struct
from pathlib import Path

import numpy as np

import pytest

try:  # the light-install tests (tests/light) run where PyTorch is not installed
    import torch
except ImportError:  # pragma: no cover - light environment
    torch = None
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _seed():
    if torch is not None:
        torch.manual_seed(0)


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = 2051 if arr.ndim == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """IDX files (MNIST layout) holding 320 train / 160 test REAL Fashion-MNIST images when the
    Debian package is installed (CI installs it), else random images with learnable labels."""
    root = tmp_path_factory.mktemp("tiny")
    if FMNIST.is_dir():
        from pocketcnn.data import balanced_subset, load_dataset

        for split, n, stem in (("train", 320, "train"), ("test", 160, "t10k")):
            ds = balanced_subset(load_dataset("fashion-mnist", split), n, seed=1)
            _write_idx(root / f"{stem}-images-idx3-ubyte.gz", ds.data[:, 0].numpy())
            _write_idx(root / f"{stem}-labels-idx1-ubyte.gz", ds.targets.numpy())
    else:
        rng = np.random.default_rng(0)
        for stem, n in (("train", 320), ("t10k", 160)):
            labels = np.arange(n) % 10
            images = rng.integers(0, 60, (n, 28, 28)) + (labels * 19)[:, None, None]
            _write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
            _write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return str(root)
