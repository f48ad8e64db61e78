"""A run's data: the training and test sets, their preprocessing, this rank's share and its batches."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..data import DataSpec, TensorImageDataset, balanced_subset, dataset_spec, load_dataset, split_balanced
from ..errors import ConfigError
from . import distributed as D
from .config import TrainConfig


@dataclass
class RunData:
    """The data one process trains and evaluates on."""

    spec: DataSpec  # the preprocessing (and class names) every checkpoint carries
    train: Any  # the training set (a subset when train_samples)
    test: Any  # the test split, or the held-out share of val_split
    sampler: DistributedSampler  # this rank's shuffled share of the training set, by (seed, epoch)
    local_batch: int  # the global batch / the processes
    steps_per_epoch: int
    gen: torch.Generator  # this rank's augmentation randomness (saved in checkpoints)


def prepare_data(cfg: TrainConfig, dist: D.DistInfo) -> RunData:
    """Load ``cfg``'s data and cut this rank's share into batches of ``batch_size / world_size``."""
    train, test, spec = load_data(cfg)
    local_batch = cfg.batch_size // dist.world_size
    sampler = DistributedSampler(train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=False)
    steps_per_epoch = len(sampler) // local_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(train)} training samples")
    return RunData(spec, train, test, sampler, local_batch, steps_per_epoch,
                   torch.Generator().manual_seed(cfg.seed + 7919 * dist.rank))


def load_data(cfg: TrainConfig) -> tuple[Any, Any, DataSpec]:
    """Training and test sets (or a class-balanced ``val_split`` of the training images) and the run's
    preprocessing: the data set's, resized to ``input_size``, or the pretrained weights' (``weights``)."""
    from .finetune import pretrained_data_spec, pretrained_state

    weights_spec = pretrained_state(cfg)[1] if cfg.weights else None
    size = cfg.input_size or (weights_spec.image_size if weights_spec else None)
    kw = {"image_size": size} if cfg.data == "imagefolder" and size else {}
    train, test = _splits(cfg, kw)
    for key, ds, split in (("train_samples", train, "training"), ("test_samples", test, "test")):
        n = getattr(cfg, key)
        if n is not None and n > len(ds):
            raise ConfigError(f"{key}={n} is more than the {len(ds):,} {split} images of {cfg.data}; "
                              f"pass at most {len(ds)} (or leave it out for all of them)")
    spec = dataset_spec(cfg.data, train)
    if weights_spec is not None:
        spec = pretrained_data_spec(spec, weights_spec, cfg.input_size)
    elif cfg.input_size:
        spec = DataSpec(spec.name, spec.num_classes, spec.in_chans, cfg.input_size, spec.mean, spec.std, spec.classes)
    return balanced_subset(train, cfg.train_samples, cfg.seed), balanced_subset(test, cfg.test_samples, cfg.seed), spec


def run_splits(config: dict[str, Any], image_size: int, data_dir: str | None = None) -> tuple[Any, Any]:
    """The whole training and test sets as the run recorded in a checkpoint's ``config`` saw them (its own
    ``val_split`` hold-out included), at ``image_size``: what compression and INT8 calibrate and score on."""
    cfg = TrainConfig.from_dict(dict(config)).replace(data_dir=data_dir or config.get("data_dir"))
    return _splits(cfg, {"image_size": image_size} if cfg.data == "imagefolder" else {})


def _splits(cfg: TrainConfig, kw: dict[str, Any]) -> tuple[Any, Any]:
    """The whole training and test sets (``val_split``: a seeded class-balanced share held out of the training images)."""
    if cfg.val_split:
        whole = load_dataset(cfg.data, "train" if _has_train_split(cfg) else "all", cfg.data_dir, **kw)
        return split_balanced(whole, cfg.val_split, cfg.seed)
    return load_dataset(cfg.data, "train", cfg.data_dir, **kw), load_dataset(cfg.data, "test", cfg.data_dir, **kw)


def train_image_count(cfg: TrainConfig) -> int:
    """How many training images a run of ``cfg`` sees per epoch (``train_samples``, else the whole training
    set after ``val_split``), for the short-run rule (:meth:`TrainConfig.decide_run_length`)."""
    if cfg.train_samples is not None:
        return cfg.train_samples
    if cfg.val_split:
        return len(_splits(cfg, {})[0])
    return len(load_dataset(cfg.data, "train", cfg.data_dir))


def _has_train_split(cfg: TrainConfig) -> bool:
    """Whether an image folder has a train/ subfolder (else its class folders are the data set itself)."""
    from ..data import resolve_data_dir

    return cfg.data != "imagefolder" or (resolve_data_dir(cfg.data, cfg.data_dir) / "train").is_dir()


def iterate(dataset, indices: list[int], batch_size: int, workers: int, skip: int = 0,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(uint8 (B, C, H, W), int64 (B,))`` over ``indices`` in order, skipping ``skip`` batches."""
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    start = skip * batch_size
    if isinstance(dataset, TensorImageDataset):
        for i in range(start, stop, batch_size):
            idx = torch.as_tensor(indices[i:i + batch_size])
            yield dataset.data[idx], dataset.targets[idx]
        return
    loader = DataLoader(torch.utils.data.Subset(dataset, indices[start:stop]), batch_size=batch_size,
                        num_workers=workers, persistent_workers=False)
    for x, y in loader:
        yield x, torch.as_tensor(y)
