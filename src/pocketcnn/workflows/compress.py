"""Deep Compression of a trained checkpoint into a ``.pcz`` file: the job behind ``pocketcnn compress``
and the main job's chain (:mod:`pocketcnn.workflows.chain`).

:func:`compress_checkpoint` checks the output before any work, reads the checkpoint, builds the
fine-tuning run from the checkpoint's own training config, runs
:func:`~pocketcnn.compress.pipeline.deep_compress` (pruning rounds with a per-layer sensitivity
scan on held-out training images, weight sharing, Huffman coding) and writes the file. It
returns a :class:`CompressReport`; it never prints (``callbacks`` draw the fine-tuning progress,
``log`` takes the pipeline's lines).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts.checkpoint import load_checkpoint, model_from_checkpoint
from ..artifacts.formats import BY_NAME
from ..compress.pipeline import CompressResult, deep_compress
from ..data import DataSpec, balanced_subset
from ..errors import CheckpointError
from ..fileio import check_output
from ..train.config import TrainConfig
from ..train.data_prep import run_splits
from ..train.engine import Callbacks, evaluate, fit


@dataclass(frozen=True)
class CompressSettings:
    """What ``pocketcnn compress`` asks for; ``None`` takes the checkpoint's own value."""

    sparsity: float = 0.67  # fraction pruned (0.67 keeps 33%, the SqueezeNet paper's setting)
    prune_steps: int = 3
    probe_samples: int = 2000  # training images of the sensitivity scan (0: none)
    tolerance: float = 1.0  # points a layer may cost when pruned alone
    bits: int = 6
    bits_fc: int | None = None
    finetune_epochs: int = 2  # after each pruning round and after clustering (0: none)
    finetune_samples: int | None = None  # training images per fine-tuning epoch
    lr: float | None = None
    data_dir: str | None = None
    test_samples: int | None = None  # None: the whole test split; 0: no scores per stage
    short_run: bool = False  # the fine-tuning epochs take the short-run rule (the chain's one-epoch rounds)


@dataclass
class CompressReport:
    checkpoint: str
    model: str
    file: Path
    result: CompressResult
    settings: CompressSettings
    test_images: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def file_bytes(self) -> int:
        return self.file.stat().st_size

    @property
    def bits_per_param(self) -> float:
        return 8 * self.file_bytes / self.result.n_params

    def to_dict(self) -> dict[str, Any]:
        s, r = self.settings, self.result
        return {"checkpoint": self.checkpoint, "model": self.model, "file": str(self.file),
                "file_bytes": self.file_bytes, "params": r.n_params, "bits_per_param": self.bits_per_param,
                "sparsity": r.sparsity, "bits": s.bits, "bits_fc": s.bits_fc or s.bits, "prune_steps": s.prune_steps,
                "finetune_epochs": s.finetune_epochs, "test_images": self.test_images,
                "stages": [st.__dict__ for st in r.stages], "prune_rounds": [pr.__dict__ for pr in r.prune_rounds],
                "probe_samples": s.probe_samples, "tolerance": s.tolerance, "layer_sparsity": r.layer_sparsity}


def compress_checkpoint(checkpoint: str | Path, out: str | Path | None = None,
                        settings: CompressSettings = CompressSettings(), *, callbacks: Callbacks | None = None,
                        log: Callable[[str], None] | None = None) -> CompressReport:
    """Deep-compress ``checkpoint`` into ``out`` (default: the checkpoint's name with ``.pcz``)."""
    pcz = BY_NAME["pcz"]
    path = check_output(Path(out) if out else Path(checkpoint).with_suffix(pcz.suffix), inputs=[checkpoint],
                        suffixes=list(pcz.suffixes), what=".pcz file")  # before minutes of work, not after
    ckpt = load_checkpoint(checkpoint)
    if not ckpt.get("data") or not ckpt.get("config"):
        raise CheckpointError(f"{checkpoint}: no data description or training config in the checkpoint")
    spec = DataSpec.from_dict(ckpt["data"])
    base = TrainConfig.from_dict(ckpt["config"])
    data_dir = settings.data_dir or base.data_dir
    train_set, test_set = run_splits(ckpt["config"], spec.image_size, data_dir)  # val_split hold-out included
    test = balanced_subset(test_set, settings.test_samples, seed=0) if settings.test_samples != 0 else None
    ft_cfg = _finetune_config(base, settings, data_dir)
    if log is not None:
        log(f"{ckpt['model']}: sparsity {settings.sparsity} in {settings.prune_steps} round(s), {settings.bits}-bit "
            f"codebooks, {settings.finetune_epochs} fine-tuning epoch(s) per round and stage")

    def finetune(m, after_step) -> None:
        fit(ft_cfg, callbacks, model=m, after_step=after_step, save=False)

    def accuracy(m, data=test) -> float:
        return evaluate(m, data, spec, batch_size=512, device=next(m.parameters()).device).top1

    probe = None
    if settings.probe_samples:  # training images: choosing per-layer sparsities on the test split would tune on it
        probe_set = balanced_subset(train_set, settings.probe_samples, seed=7)
        probe = lambda m: accuracy(m, probe_set)  # noqa: E731
    model = model_from_checkpoint(ckpt, source=str(checkpoint))
    result = deep_compress(model.cpu(), sparsity=settings.sparsity, prune_steps=settings.prune_steps,
                           bits=settings.bits, bits_fc=settings.bits_fc,
                           finetune=finetune if settings.finetune_epochs else None,
                           evaluate=accuracy if test is not None else None, probe=probe, tolerance=settings.tolerance,
                           chance=100.0 / spec.num_classes, log=log)
    result.save(path, name=ckpt["model"], model_kwargs=ckpt["model_kwargs"], metadata={"data": spec.to_dict()})
    return CompressReport(str(checkpoint), str(ckpt["model"]), path, result, settings,
                          len(test) if test is not None else 0)


def _finetune_config(base: TrainConfig, s: CompressSettings, data_dir: str | None) -> TrainConfig:
    """The checkpoint's own training config, for ``finetune_epochs`` epochs per round without warm-up or EMA."""
    n = s.finetune_samples or base.train_samples
    cfg = base.replace(epochs=s.finetune_epochs or 1, lr=s.lr or base.lr, warmup_epochs=0.0, ema=False,
                       data_dir=data_dir, train_samples=n, test_samples=min(s.test_samples or 1000, 1000), out=None)
    return cfg.for_run_length(n) if s.short_run and n else cfg
