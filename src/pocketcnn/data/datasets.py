"""Image data sets read from local files; nothing is ever downloaded.

* Fashion-MNIST / MNIST: the four IDX files, gzipped or not (Fashion-MNIST checked by MD5).
* CIFAR-10 / CIFAR-100: the binary or the python (pickle) version, read without running code.
* imagefolder: ``data_dir/{train,test|val}/<class>/*.png|jpg`` through torchvision.

The array data sets are :class:`TensorImageDataset` (uint8 ``(N, C, H, W)`` in memory);
augmentation and normalization run batched on the training device (see ``transforms``).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import pickle
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError, close_matches
from ..validate import check_int, check_number
from .spec import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DataSpec

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
ENV_VAR = "POCKETCNN_DATA_DIR"
DEFAULT_IMAGE_SIZE = 224  # imagefolder, when no image_size is given

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split())

# per-channel mean and std in [0, 1] units
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}

# MD5 and size of the DECOMPRESSED IDX files (Debian re-compressed the .gz files)
FASHION_MNIST_MD5: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", 47_040_016),
    "train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", 60_008),
    "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", 7_840_016),
    "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", 10_008),
}


class TensorImageDataset(Dataset):
    """All images in memory: ``data`` uint8 ``(N, C, H, W)``, ``targets`` int64 ``(N,)``."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, classes: list[str] | tuple[str, ...]):
        if data.dtype != torch.uint8 or data.dim() != 4 or targets.shape != (data.shape[0],):
            raise DataError(f"TensorImageDataset needs uint8 (N, C, H, W) data and (N,) targets, "
                            f"received {data.dtype} {tuple(data.shape)} and {tuple(targets.shape)}")
        self.data = data.contiguous()
        self.targets = targets.to(torch.int64).contiguous()
        self.classes = list(classes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i], int(self.targets[i])

    def __len__(self) -> int:
        return self.data.shape[0]


class LabeledSubset(Subset):
    """A :class:`torch.utils.data.Subset` that keeps ``classes``, ``targets`` and ``image_size``."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        super().__init__(dataset, indices)
        self.classes = list(dataset.classes)
        self.targets = torch.as_tensor(dataset.targets)[torch.as_tensor(indices, dtype=torch.long)]
        self.image_size = getattr(dataset, "image_size", None)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}.{close_matches(name, DATASETS)} Choices: {', '.join(DATASETS)}")


def resolve_data_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """Explicit ``data_dir`` > ``$POCKETCNN_DATA_DIR`` (or its subfolder named ``name``) > default."""
    _check_name(name)
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        env = Path(os.environ[ENV_VAR]).expanduser()
        return env / name if (env / name).is_dir() else env
    if name == "fashion-mnist":
        return DEFAULT_FASHION_MNIST_DIR
    raise DataError(f"no data folder for {name!r}: pass --data-dir DIR or set {ENV_VAR} (nothing is downloaded)")


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, *,
                 image_size: int | None = None) -> Dataset:
    """Read a data set from local files.

    Returns a :class:`TensorImageDataset` for the array data sets (``image_size`` is ignored:
    resize on the device with ``normalize_batch(size=...)``); for ``imagefolder`` a torchvision
    ``ImageFolder`` yielding ``(uint8 (3, S, S), label)`` with ``S = image_size`` (default 224).
    """
    _check_name(name)
    splits = ("train", "test", "val", "all") if name == "imagefolder" else ("train", "test")
    if split not in splits:
        raise DataError(f"unknown split {split!r} for {name!r}. Choices: {', '.join(splits)}")
    root = resolve_data_dir(name, data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder for data set {name!r} (pass --data-dir or set {ENV_VAR})")
    if name in ("fashion-mnist", "mnist"):
        return _load_idx_dataset(name, root, split)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, root, split)
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    check_int("image_size", image_size, error=DataError)
    return _load_image_folder(root, split, image_size)


def dataset_spec(name: str, dataset: Dataset) -> DataSpec:
    """The :class:`DataSpec` of a data set returned by :func:`load_dataset` (or a subset of one)."""
    _check_name(name)
    if isinstance(dataset, TensorImageDataset):
        in_chans, image_size = dataset.data.shape[1], dataset.data.shape[2]
    elif getattr(dataset, "image_size", None):
        in_chans, image_size = 3, dataset.image_size
    else:
        in_chans, image_size = dataset[0][0].shape[0], dataset[0][0].shape[-1]
    mean, std = STATS[name]
    classes = tuple(str(c) for c in dataset.classes)
    return DataSpec(name, len(classes), int(in_chans), int(image_size), mean, std, classes)


def balanced_subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """``n // num_classes`` random samples per class (the remainder to the lowest class ids).

    Deterministic for a given ``seed``; indices keep the data set's order. A class with too few
    samples gives all it has. ``n`` None or ``>= len(dataset)`` returns ``dataset`` unchanged.
    """
    check_int("n", n, optional=True, error=DataError)  # the subset size
    if n is None or n >= len(dataset):
        return dataset
    targets = torch.as_tensor(dataset.targets, dtype=torch.long)
    num_classes = len(dataset.classes)
    perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    chosen = [perm[targets[perm] == c][: n // num_classes + (c < n % num_classes)] for c in range(num_classes)]
    indices = torch.cat(chosen).sort().values
    if isinstance(dataset, TensorImageDataset):
        return TensorImageDataset(dataset.data[indices], dataset.targets[indices], dataset.classes)
    return LabeledSubset(dataset, indices.tolist())


def split_balanced(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(train, held out)``: ``round(fraction * n_c)`` random images of each class ``c`` (at least one
    when the class has two or more) are held out. Deterministic for a given ``seed``; both keep
    the data set's order."""
    check_number("fraction", fraction, 0, 1, low_open=True, high_open=True, error=DataError)
    targets = torch.as_tensor(dataset.targets, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    held = []
    for c in range(len(dataset.classes)):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = max(1, round(fraction * len(idx))) if len(idx) >= 2 else 0
        held.append(idx[:k])
    out = torch.zeros(len(targets), dtype=torch.bool)
    out[torch.cat(held)] = True
    if out.all() or not out.any():
        raise DataError(f"cannot hold out {fraction:.0%} of {len(targets)} images: one side would be empty")
    parts = []
    for mask in (~out, out):
        indices = torch.nonzero(mask).flatten()
        parts.append(TensorImageDataset(dataset.data[indices], dataset.targets[indices], dataset.classes)
                     if isinstance(dataset, TensorImageDataset) else LabeledSubset(dataset, indices.tolist()))
    return parts[0], parts[1]


# ---------------------------------------------------------------- IDX (Fashion-MNIST, MNIST)
def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{path}: corrupt gzip file ({exc or type(exc).__name__})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _find_idx(root: Path, stem: str) -> Path:
    for path in (root / stem, root / f"{stem}.gz"):
        if path.is_file():
            return path
    raise DataError(f"{root / stem}[.gz]: missing (expected the IDX file {stem} or {stem}.gz in {root})")


def parse_idx(raw: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file with ``ndim`` dimensions (magic ``2048 + ndim``)."""
    magic, header = 2048 + ndim, 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: {len(raw):,} bytes, shorter than the {header}-byte IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: not an IDX{ndim} ubyte file: magic {found}, expected {magic}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    need = header + math.prod(dims)  # Python ints: a hostile header cannot overflow
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "trailing bytes"
        raise DataError(f"{path}: {what}: header says {'x'.join(map(str, dims))} ({need:,} bytes), found {len(raw):,}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pocketcnn" / "verified.json"


def _read_cache() -> dict[str, str]:
    try:
        cache = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(new: dict[str, str]) -> None:
    """Merge ``new`` into the cache file atomically; any failure is ignored (the cache is optional)."""
    path, tmp = _cache_file(), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({**_read_cache(), **new}, f, indent=0)
        os.replace(tmp, path)
    except OSError:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def _read_fashion_mnist(root: Path, stems: tuple[str, ...], *, use_cache: bool) -> dict[str, bytes]:
    """Read and MD5-check Fashion-MNIST IDX files; verdicts are cached by path, size and mtime."""
    cache, new, out = _read_cache() if use_cache else {}, {}, {}
    for stem in stems:
        path = _find_idx(root, stem)
        st = path.stat()
        key, raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}", _read_bytes(path)
        expected, size = FASHION_MNIST_MD5[stem]
        if cache.get(key) != expected:
            found = _md5(raw)
            if found != expected:
                raise DataError(f"{path}: MD5 of the decompressed content is {found} ({len(raw):,} bytes), "
                                f"expected {expected} ({size:,} bytes); the file is damaged or not Fashion-MNIST")
            new[key] = expected
        out[stem] = raw
    if new:
        _write_cache(new)
    return out


def verify_fashion_mnist(root: Path, *, use_cache: bool = False) -> None:
    """Check the four Fashion-MNIST files in ``root`` (MD5 of the decompressed content) or raise DataError."""
    _read_fashion_mnist(Path(root), tuple(FASHION_MNIST_MD5), use_cache=use_cache)


def _load_idx_dataset(name: str, root: Path, split: str) -> TensorImageDataset:
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if name == "fashion-mnist":
        raws = _read_fashion_mnist(root, stems, use_cache=True)
    else:
        raws = {s: _read_bytes(_find_idx(root, s)) for s in stems}
    images = parse_idx(raws[stems[0]], _find_idx(root, stems[0]), 3)
    labels = parse_idx(raws[stems[1]], _find_idx(root, stems[1]), 1)
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return _tensor_dataset(images[:, None], labels, classes, root / stems[1])


def _tensor_dataset(images: np.ndarray, labels: np.ndarray, classes, source: Path) -> TensorImageDataset:
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(labels):,} labels for {len(images):,} images")
    if len(labels) and int(labels.max()) >= len(classes):
        raise DataError(f"{source}: label {int(labels.max())} out of range for {len(classes)} classes")
    return TensorImageDataset(torch.from_numpy(np.ascontiguousarray(images)),
                              torch.from_numpy(labels.astype(np.int64)), classes)


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100
_CIFAR = {  # name: (binary folder, python folder, label bytes, files per split, python meta, meta key)
    "cifar10": ("cifar-10-batches-bin", "cifar-10-batches-py", 1,
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "batches.meta", "label_names"),
    "cifar100": ("cifar-100-binary", "cifar-100-python", 2,
                 {"train": ["train"], "test": ["test"]}, "meta", "fine_label_names"),
}


def _load_cifar(name: str, root: Path, split: str) -> TensorImageDataset:
    bin_dir, py_dir, label_bytes, files, meta, meta_key = _CIFAR[name]
    names, standard = files[split], CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    for folder in (root, root / bin_dir, root / py_dir):
        if (folder / f"{names[0]}.bin").is_file():
            parts = [_read_cifar_bin(folder / f"{f}.bin", label_bytes) for f in names]
            classes = standard
            break
        if (folder / names[0]).is_file():
            parts = [_read_cifar_py(folder / f, "labels" if name == "cifar10" else "fine_labels") for f in names]
            classes = standard
            if (folder / meta).is_file():
                classes = tuple(c.decode() if isinstance(c, bytes) else str(c)
                                for c in _get(_unpickle(folder / meta), meta_key, folder / meta))
            break
    else:
        raise DataError(f"{root}: no {name} {split} data (expected {bin_dir}/{names[0]}.bin or "
                        f"{py_dir}/{names[0]}, in this folder or directly in it)")
    images = np.concatenate([p[0] for p in parts])
    return _tensor_dataset(images, np.concatenate([p[1] for p in parts]), classes, folder)


def _read_cifar_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label bytes (CIFAR-100: coarse, fine) + 3072 pixel bytes."""
    raw, record = _read_bytes(path), label_bytes + 3072
    if not raw or len(raw) % record:
        raise DataError(f"{path}: truncated or not a CIFAR binary batch: "
                        f"{len(raw):,} bytes is not a multiple of the {record:,}-byte record")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].astype(np.int64)


def _read_cifar_py(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data, labels = np.asarray(_get(d, "data", path)), np.asarray(_get(d, label_key, path))
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),)
            or labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: expected uint8 data (N, 3072) and N integer labels, found {data.dtype} "
                        f"{data.shape} and {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: no {key!r} entry (found {sorted(map(str, d))[:6]})")


@functools.lru_cache(maxsize=1)
def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    import _codecs

    allowed = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                    ("_codecs", "encode"): _codecs.encode})  # protocol-2 pickles store bytes this way
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays; refuses every other global (so no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _numpy_globals().get((module, name))
        if obj is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return obj


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DataError(f"{path}: refused to unpickle {exc} (a CIFAR batch holds only numpy arrays)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # a damaged pickle can fail in many ways; none of them runs code
        raise DataError(f"{path}: not a readable CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- ImageFolder
def _load_image_folder(root: Path, split: str, image_size: int) -> Dataset:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    folder = root if split == "all" else root / split  # "all": root's own class folders (split with val_split)
    if not folder.is_dir() and split in ("test", "val"):
        folder = root / ("val" if split == "test" else "test")
    if not folder.is_dir():
        raise DataError(f"{root / split}: no such folder (imagefolder expects {root}/train and {root}/test "
                        f"or {root}/val, each with one subfolder of images per class)")
    transform = v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.PILToTensor()])
    try:
        dataset = ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as exc:
        raise DataError(f"{folder}: no images found ({exc}); expected <class>/*.png or *.jpg") from None
    dataset.image_size = image_size
    return dataset
