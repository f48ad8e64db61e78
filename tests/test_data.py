"""Data layer: IDX / CIFAR / ImageFolder readers, MD5 verification, subsets and batched transforms."""
from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pocketcnn.data import (
    DataSpec,
    TensorImageDataset,
    augment_batch,
    balanced_subset,
    dataset_spec,
    load_dataset,
    normalize_batch,
    pil_to_input,
    resolve_data_dir,
    verify_fashion_mnist,
)
from pocketcnn.data import datasets as D
from pocketcnn.errors import ConfigError, DataError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own verification cache and no data-dir environment variable."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(D.ENV_VAR, raising=False)


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    header = (2048 + arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx_set(root: Path, n_train=12, n_test=5, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / stem).write_bytes(raw)
    return arrays


def fake_md5_table(arrays, monkeypatch):
    import hashlib

    table = {s: (hashlib.md5(idx_bytes(a)).hexdigest(), len(idx_bytes(a))) for s, a in arrays.items()}
    monkeypatch.setattr(D, "FASHION_MNIST_MD5", table)
    return table


# ---------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", split, tmp_path)
        assert isinstance(ds, TensorImageDataset)
        assert ds.data.dtype == torch.uint8 and ds.data.is_contiguous()
        assert torch.equal(ds.data[:, 0], torch.from_numpy(arrays[f"{prefix}-images-idx3-ubyte"]))
        assert torch.equal(ds.targets, torch.from_numpy(arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64)))
        x, y = ds[3]
        assert x.shape == (1, 28, 28) and y == 3 and isinstance(y, int)
    assert ds.classes == [str(i) for i in range(10)]
    spec = dataset_spec("mnist", ds)
    assert (spec.in_chans, spec.image_size, spec.num_classes, spec.mean, spec.std) == (1, 28, 10, (0.1307,), (0.3081,))


def test_idx_truncated_names_file_and_sizes(tmp_path):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated: header says 12x28x28 \(9,424 bytes\), found 1,000"):
        load_dataset("mnist", "train", tmp_path)


def test_idx_trailing_bytes_and_tiny_file(tmp_path):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: trailing bytes"):
        load_dataset("mnist", "test", tmp_path)
    path.write_bytes(b"\0\0")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: truncated"):
        load_dataset("mnist", "test", tmp_path)


def test_idx_wrong_magic(tmp_path):
    arrays = write_idx_set(tmp_path, gz=False)
    # a labels file where an images file is expected: magic 2049, not 2051
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX3 ubyte file: magic 2049, expected 2051"):
        load_dataset("mnist", "train", tmp_path)


def test_idx_missing_file(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\]: missing"):
        load_dataset("mnist", "test", tmp_path)
    assert len(load_dataset("mnist", "train", tmp_path)) == 12  # the other split is intact


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_idx_corrupt_gzip(tmp_path, damage):
    write_idx_set(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(b"\x1f\x8bnot really gzip at all" if damage == "garbage" else raw[: len(raw) // 2])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: corrupt gzip"):
        load_dataset("mnist", "train", tmp_path)


def test_idx_label_out_of_range_and_count_mismatch(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 2, 3, 11])))
    with pytest.raises(DataError, match="label 11 out of range for 10 classes"):
        load_dataset("mnist", "test", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1])))
    with pytest.raises(DataError, match="2 labels for 5 images"):
        load_dataset("mnist", "test", tmp_path)


# ---------------------------------------------------------------- Fashion-MNIST MD5 + cache
def test_fashion_mnist_md5_and_cache(tmp_path, monkeypatch):
    arrays = write_idx_set(tmp_path / "fm")
    fake_md5_table(arrays, monkeypatch)
    ds = load_dataset("fashion-mnist", "train", tmp_path / "fm")
    assert len(ds) == 12 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    cache = json.loads((tmp_path / "cache" / "pocketcnn" / "verified.json").read_text())
    assert len(cache) == 2 and all(str((tmp_path / "fm").resolve()) in k for k in cache)

    def no_hashing(data):
        raise AssertionError("re-hashed a file whose verdict is cached")

    monkeypatch.setattr(D, "_md5", no_hashing)
    assert torch.equal(load_dataset("fashion-mnist", "train", tmp_path / "fm").data, ds.data)
    with pytest.raises(AssertionError, match="re-hashed"):  # the test split was never verified
        load_dataset("fashion-mnist", "test", tmp_path / "fm")


def test_fashion_mnist_md5_mismatch(tmp_path, monkeypatch):
    arrays = write_idx_set(tmp_path)
    table = fake_md5_table(arrays, monkeypatch)
    table["train-images-idx3-ubyte"] = ("0" * 32, 9424)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: MD5 .* is [0-9a-f]{32} .*expected 0{32}"):
        load_dataset("fashion-mnist", "train", tmp_path)
    assert not (tmp_path / "cache" / "pocketcnn" / "verified.json").exists()
    assert len(load_dataset("fashion-mnist", "test", tmp_path)) == 5
    with pytest.raises(DataError, match="MD5"):
        verify_fashion_mnist(tmp_path)


def test_cache_invalidated_by_change_and_write_failure_ignored(tmp_path, monkeypatch):
    arrays = write_idx_set(tmp_path / "fm")
    fake_md5_table(arrays, monkeypatch)
    load_dataset("fashion-mnist", "test", tmp_path / "fm")
    calls = []
    monkeypatch.setattr(D, "_md5", lambda data, real=D._md5: calls.append(1) or real(data))
    labels = tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz"
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: must be checked again
    load_dataset("fashion-mnist", "test", tmp_path / "fm")
    assert len(calls) == 1
    # an unwritable cache location is not an error
    blocker = tmp_path / "blocked"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert len(load_dataset("fashion-mnist", "test", tmp_path / "fm")) == 5
    verify_fashion_mnist(tmp_path / "fm")


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    train = load_dataset("fashion-mnist", "train")  # the default folder
    test = load_dataset("fashion-mnist", "test", REAL_FMNIST)
    assert train.data.shape == (60000, 1, 28, 28) and test.data.shape == (10000, 1, 28, 28)
    assert train.targets.bincount().tolist() == [6000] * 10
    assert test.targets.bincount().tolist() == [1000] * 10
    spec = dataset_spec("fashion-mnist", train)
    assert spec.num_classes == 10 and spec.classes[0] == "T-shirt/top"
    assert abs(train.data.float().mean().item() / 255 - spec.mean[0]) < 1e-3


# ---------------------------------------------------------------- names, dirs, spec
def test_unknown_name_split_and_data_dir(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="unknown data set 'fashion_mnist'.*Did you mean: fashion-mnist"):
        load_dataset("fashion_mnist")
    with pytest.raises(DataError, match="unknown split 'valid'.*train, test"):
        load_dataset("mnist", "valid", tmp_path)
    with pytest.raises(DataError, match="no data folder for 'cifar10'.*--data-dir"):
        resolve_data_dir("cifar10")
    with pytest.raises(DataError, match="nope: no such folder"):
        load_dataset("mnist", "train", tmp_path / "nope")
    assert resolve_data_dir("fashion-mnist") == D.DEFAULT_FASHION_MNIST_DIR
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))
    assert resolve_data_dir("cifar10") == tmp_path
    (tmp_path / "mnist").mkdir()
    assert resolve_data_dir("mnist") == tmp_path / "mnist"
    assert resolve_data_dir("mnist", tmp_path / "x") == tmp_path / "x"


def test_data_spec_round_trip():
    spec = DataSpec("cifar10", 10, 3, 32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), D.CIFAR10_CLASSES)
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d and d["input_size"] == [3, 32, 32]
    assert DataSpec.from_dict(d) == spec
    assert DataSpec.from_dict({k: v for k, v in d.items() if k not in ("in_chans", "image_size")}) == spec
    with pytest.raises(DataError, match="std"):
        DataSpec.from_dict({k: v for k, v in d.items() if k != "std"})
    assert d["resize_size"] == 32 and DataSpec.from_dict({k: v for k, v in d.items() if k != "resize_size"}) == spec
    assert DataSpec.from_dict({**d, "resize_size": 36}).resize_size == 36
    with pytest.raises(DataError, match="resize_size must be at least image_size=32, received resize_size=30"):
        DataSpec.from_dict({**d, "resize_size": 30})
    assert len(D.CIFAR100_CLASSES) == 100 == len(set(D.CIFAR100_CLASSES))


# ---------------------------------------------------------------- CIFAR
def cifar_arrays(n: int, num_classes: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), (np.arange(n) * 7 % num_classes).astype(np.int64)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary(tmp_path, name):
    n_classes = 10 if name == "cifar10" else 100
    folder = tmp_path / ("cifar-10-batches-bin" if name == "cifar10" else "cifar-100-binary")
    folder.mkdir()
    files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    expected = []
    for i, stem in enumerate(files + ["test_batch" if name == "cifar10" else "test"]):
        data, labels = cifar_arrays(4, n_classes, i)
        lab = labels[:, None].astype(np.uint8)
        rows = np.hstack([lab, data] if name == "cifar10" else [lab // 20, lab, data])  # cifar100: coarse, fine
        (folder / f"{stem}.bin").write_bytes(rows.tobytes())
        expected.append((data, labels))
    train = load_dataset(name, "train", tmp_path)  # the parent of the extracted folder
    test = load_dataset(name, "test", folder)  # the extracted folder itself
    assert train.data.shape == (4 * len(files), 3, 32, 32) and test.data.shape == (4, 3, 32, 32)
    want = np.concatenate([d for d, _ in expected[:-1]]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.data.numpy(), want)
    assert train.targets.tolist() == np.concatenate([t for _, t in expected[:-1]]).tolist()
    assert test.targets.tolist() == expected[-1][1].tolist()
    assert len(train.classes) == n_classes
    spec = dataset_spec(name, test)
    assert (spec.in_chans, spec.image_size, len(spec.mean)) == (3, 32, 3)
    (folder / "test_batch.bin" if name == "cifar10" else folder / "test.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(DataError, match=r"test(_batch)?\.bin: truncated"):
        load_dataset(name, "test", tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python(tmp_path, name, protocol):
    n_classes = 10 if name == "cifar10" else 100
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir()
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    expected = {}
    for i, stem in enumerate(files + ["test_batch" if name == "cifar10" else "test"]):
        data, labels = cifar_arrays(3, n_classes, i)
        d = {b"data": data, label_key: labels.tolist(), b"batch_label": b"batch"}
        if name == "cifar100":
            d[b"coarse_labels"] = (labels // 5).tolist()
        (folder / stem).write_bytes(pickle.dumps(d, protocol=protocol))
        expected[stem] = (data, labels)
    names = [f"class{i}".encode() for i in range(n_classes)]
    meta = {b"label_names": names} if name == "cifar10" else {b"fine_label_names": names, b"coarse_label_names": []}
    (folder / ("batches.meta" if name == "cifar10" else "meta")).write_bytes(pickle.dumps(meta, protocol=protocol))
    test = load_dataset(name, "test", tmp_path)
    data, labels = expected["test_batch" if name == "cifar10" else "test"]
    assert np.array_equal(test.data.numpy(), data.reshape(-1, 3, 32, 32))
    assert test.targets.tolist() == labels.tolist()
    assert test.classes == [f"class{i}" for i in range(n_classes)]
    assert len(load_dataset(name, "train", folder)) == 3 * len(files)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_python_refuses_malicious_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    data, labels = cifar_arrays(2, 10, 0)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": _Evil(marker)}))
    with pytest.raises(DataError, match=r"test_batch: refused to unpickle (posix|nt|os)\.system"):
        load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR python batch"):
        load_dataset("cifar10", "test", tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data.reshape(-1, 3, 32, 32), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"test_batch: expected uint8 data \(N, 3072\)"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError, match="no cifar100 train data.*cifar-100-python/train"):
        load_dataset("cifar100", "train", tmp_path)


# ---------------------------------------------------------------- ImageFolder
def write_image_folder(root: Path) -> None:
    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, per_class in (("train", 3), ("val", 2)):
        for cls, color in colors.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                mode, ext = ("L", "jpg") if i == 2 else ("RGB", "png")
                img = Image.new("RGB", (40 + 10 * i, 30), color).convert(mode)
                img.save(root / split / cls / f"{i}.{ext}")


def test_image_folder(tmp_path):
    write_image_folder(tmp_path)
    ds = load_dataset("imagefolder", "train", tmp_path, image_size=16)
    assert ds.classes == ["cat", "dog"] and list(ds.targets) == [0, 0, 0, 1, 1, 1]
    x, y = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and y == 0
    assert x[:, 8, 8].tolist() == [255, 0, 0]
    assert ds[2][0].shape == (3, 16, 16)  # a grayscale JPEG comes back as RGB
    test = load_dataset("imagefolder", "test", tmp_path, image_size=16)  # no test/: falls back to val/
    assert len(test) == 4
    spec = dataset_spec("imagefolder", test)
    assert (spec.in_chans, spec.image_size, spec.classes, spec.mean) == (3, 16, ("cat", "dog"), (0.485, 0.456, 0.406))
    assert load_dataset("imagefolder", "train", tmp_path)[0][0].shape == (3, 224, 224)
    sub = balanced_subset(ds, 2, seed=0)
    assert sorted(sub.targets.tolist()) == [0, 1] and sub.classes == ["cat", "dog"]
    assert dataset_spec("imagefolder", sub).image_size == 16


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="train: no such folder"):
        load_dataset("imagefolder", "train", tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="train: no images found"):
        load_dataset("imagefolder", "train", tmp_path)
    with pytest.raises(DataError, match="image_size=0"):
        load_dataset("imagefolder", "train", tmp_path, image_size=0)


# ---------------------------------------------------------------- balanced_subset
def make_tensor_dataset(n=100, num_classes=5) -> TensorImageDataset:
    data = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    targets = torch.arange(n) % num_classes
    return TensorImageDataset(data, targets, [str(c) for c in range(num_classes)])


def test_balanced_subset():
    ds = make_tensor_dataset()
    sub = balanced_subset(ds, 13, seed=1)
    assert isinstance(sub, TensorImageDataset) and len(sub) == 13
    assert sub.targets.bincount().tolist() == [3, 3, 3, 2, 2]  # remainder to the lowest class ids
    assert torch.equal(sub.targets, ds.targets[sub.data[:, 0, 0, 0].long()])  # images still match labels
    again = balanced_subset(ds, 13, seed=1)
    assert torch.equal(sub.data, again.data) and torch.equal(sub.targets, again.targets)
    assert not torch.equal(balanced_subset(ds, 13, seed=2).data, sub.data)
    idx = sub.data[:, 0, 0, 0]
    assert torch.equal(idx, idx.sort().values)  # data set order kept
    assert balanced_subset(ds, None) is ds and balanced_subset(ds, 100) is ds and balanced_subset(ds, 500) is ds
    with pytest.raises(DataError, match="n=0"):
        balanced_subset(ds, 0)
    with pytest.raises(DataError, match="n='5'"):
        balanced_subset(ds, "5")
    small = balanced_subset(TensorImageDataset(ds.data[:7], ds.targets[:7], ds.classes), 5)
    assert small.targets.bincount().tolist() == [1, 1, 1, 1, 1]


# ---------------------------------------------------------------- transforms
def test_augment_batch_shapes_dtype_determinism():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    kw = dict(crop_padding=2, hflip=True, erase=0.5)
    a = augment_batch(x, **kw, generator=torch.Generator().manual_seed(0))
    b = augment_batch(x, **kw, generator=torch.Generator().manual_seed(0))
    c = augment_batch(x, **kw, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    f = augment_batch(x.float(), **kw, generator=torch.Generator().manual_seed(0))
    assert f.dtype == torch.float32 and torch.equal(f, a.float())  # same randomness for any dtype
    assert torch.equal(augment_batch(x), x)  # no options: unchanged
    with pytest.raises(ConfigError, match="crop_padding=-1"):
        augment_batch(x, crop_padding=-1)
    with pytest.raises(ConfigError, match="erase=2"):
        augment_batch(x, erase=2)
    with pytest.raises(DataError, match=r"\(3, 8, 8\)"):
        augment_batch(x[0])


def test_augment_hflip():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3)  # rows [0 1 2], [3 4 5], ...
    flipped = augment_batch(x, hflip=1.0)
    assert flipped[0, 0].tolist() == [[2, 1, 0], [5, 4, 3]] and flipped[1, 0].tolist() == [[8, 7, 6], [11, 10, 9]]
    assert torch.equal(augment_batch(x, hflip=0.0), x)
    y = torch.arange(1, 65, dtype=torch.float32).view(64, 1, 1, 1).expand(64, 1, 2, 3) * torch.tensor([1.0, 2.0, 3.0])
    out = augment_batch(y, hflip=True, generator=torch.Generator().manual_seed(0))
    is_flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, y)])
    is_same = torch.tensor([torch.equal(o, i) for o, i in zip(out, y)])
    assert bool((is_flipped ^ is_same).all())  # each sample is whole: either flipped or not
    assert 16 < int(is_flipped.sum()) < 48  # about half


def test_augment_crop_shifts_content():
    x = torch.zeros(200, 1, 9, 9, dtype=torch.uint8)
    x[:, 0, 4, 4] = 255  # one bright pixel in the middle
    out = augment_batch(x, crop_padding=2, generator=torch.Generator().manual_seed(0))
    assert (out.flatten(1).sum(1) == 255).all()  # never cropped away (|shift| <= 2 < 4)
    pos = out[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert dy.abs().max() == 2 and dx.abs().max() == 2
    assert set(dy.tolist()) == {-2, -1, 0, 1, 2} == set(dx.tolist())
    edge = torch.full((1, 1, 3, 3), 7, dtype=torch.uint8)
    padded = augment_batch(edge.expand(50, 1, 3, 3), crop_padding=1, generator=torch.Generator().manual_seed(0))
    assert (padded == 0).any() and set(padded.unique().tolist()) == {0, 7}  # zero padding comes in


def test_augment_erase():
    x = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    out = augment_batch(x, erase=1.0, generator=torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1)  # (N, H, W): erased in every channel at once
    frac = zeros.flatten(1).float().mean(1)
    assert (frac > 0).all() and (frac <= 0.5).all()
    assert torch.equal((out == 0), zeros[:, None].expand_as(out))
    rows, cols = zeros.any(2), zeros.any(1)  # one rectangle: erased area = rows x cols
    assert torch.equal(zeros.flatten(1).sum(1), rows.sum(1) * cols.sum(1))
    assert torch.equal(augment_batch(x, erase=0.0), x)


def test_normalize_batch():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 3, 2, 3).contiguous()
    mean, std = (0.1, 0.2, 0.5), (0.5, 0.25, 1.0)
    y = normalize_batch(x, mean, std)
    assert y.dtype == torch.float32 and y.shape == x.shape
    want = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(1, 3, 1, 1)
    assert torch.allclose(y.double(), want, atol=1e-6)
    assert torch.allclose(y[0, 1, 0], torch.tensor([-0.8, 0.0, 3.2]), atol=1e-6)
    r = normalize_batch(torch.full((2, 1, 28, 28), 51, dtype=torch.uint8), (0.2,), (0.5,), size=32, channels_last=True)
    assert r.shape == (2, 1, 32, 32) and torch.allclose(r, torch.zeros(()), atol=1e-6)
    r = normalize_batch(torch.full((2, 3, 28, 28), 51, dtype=torch.uint8), (0.2,), (0.5,), channels_last=True)
    assert r.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(DataError, match="3 channels"):
        normalize_batch(x, (0.1, 0.2), (0.3, 0.4))


def test_pil_to_input():
    gray_spec = DataSpec("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), D.FASHION_MNIST_CLASSES)
    gray = Image.new("L", (56, 84), 255)
    x = pil_to_input(gray, gray_spec)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, (1 - 0.2860) / 0.3530), atol=1e-5)
    color_spec = DataSpec("cifar10", 10, 3, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), D.CIFAR10_CLASSES)
    img = Image.new("RGB", (96, 64), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 8, 64))  # a blue strip on the left, cropped away by the center crop
    x = pil_to_input(img, color_spec)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 16, 16], torch.tensor([1.0, -1.0, -1.0]), atol=1e-5)
    assert torch.allclose(x[:, :, 0], torch.tensor([1.0, -1.0, -1.0]).view(3, 1).expand(3, 32), atol=1e-5)
    rgba = Image.new("RGBA", (20, 20), (0, 255, 0, 255))
    assert pil_to_input(rgba, color_spec).shape == (3, 32, 32)
    assert pil_to_input(rgba, gray_spec).shape == (1, 28, 28)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transforms_cuda_match_cpu():
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    kw = dict(crop_padding=3, hflip=True, erase=0.5)
    cpu = augment_batch(x, **kw, generator=torch.Generator().manual_seed(0))
    gpu = augment_batch(x.cuda(), **kw, generator=torch.Generator().manual_seed(0))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    g = torch.Generator(device="cuda").manual_seed(0)
    assert augment_batch(x.cuda(), **kw, generator=g).shape == x.shape
    n_cpu = normalize_batch(x, (0.5,), (0.25,), size=24)
    n_gpu = normalize_batch(x.cuda(), (0.5,), (0.25,), size=24)
    assert torch.allclose(n_gpu.cpu(), n_cpu, atol=1e-4)
