"""Training configuration: one frozen dataclass, checked on creation; per-model recipes come from the registry."""
from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, close_matches
from ..validate import check_int, check_number

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULES = ("cosine", "step", "constant")
AUGMENTS = ("crop", "flip", "erase")
DEVICES = ("auto", "cpu", "cuda")
FREEZE = ("none", "features")
SHORT_RUN = ("auto", "on", "off")  # TrainConfig.short_run: the rule decides, always short, never short


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint.

    ``batch_size`` is the GLOBAL batch: with N processes each takes ``batch_size / N``
    samples per step, so the optimisation (and the learning rate that goes with it) is the
    same for every N. ``lr`` is for that global batch.
    """

    model: str = "squeezenet1_1"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: tuple[str, ...] = ("crop", "flip")
    crop_padding: int = 2
    erase_prob: float = 0.25  # with "erase" in augment: chance that an image gets one erased rectangle
    # mixed precision: True, False or "auto" (fp16 on CUDA; bf16 on a CPU with native bf16
    # instructions, AVX512-BF16 or AMX, where it is measured faster; off elsewhere)
    amp: bool | str = False
    channels_last: bool = True  # oneDNN's fast path on CPU, tensor cores' on CUDA
    ema: bool = False
    ema_decay: float = 0.998
    seed: int = 0
    workers: int = 0
    train_samples: int | None = None
    test_samples: int | None = None
    input_size: int | None = None  # resize images to this side (default: the data set's own)
    eval_batch_size: int = 512
    device: str = "auto"
    sync_bn: bool = False
    grad_clip: float | None = 5.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    out: str | None = None  # default: runs/<model>
    # fine-tuning (train/finetune.py): start from a weight file (path) or named weights (IMAGENET1K_V1)
    weights: str | None = None
    weights_dir: str | None = None  # where named weights are looked up (default: torch hub's cache)
    freeze: str = "none"  # "features": only the classifier trains (a linear probe)
    lr_features: float = 1.0  # the pretrained body's learning rate, as a multiple of lr
    val_split: float | None = None  # hold out this class-balanced share of the training images as the test split
    # the short-run changes (decide_run_length): "auto" decides from the run's length; a decided run
    # records "on" or "off" (config.json, checkpoints)
    short_run: str = "auto"

    def __post_init__(self) -> None:
        from ..models.registry import model_config  # imports PyTorch: kept out of `--help`
        model_config(self.model)  # unknown name -> UnknownModelError with close matches
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        object.__setattr__(self, "augment", tuple(a for a in self.augment if a != "none"))
        for a in self.augment:
            _choice("augment", a, AUGMENTS + ("none",))
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_int(name, getattr(self, name))
        for name in ("train_samples", "test_samples", "input_size"):
            check_int(name, getattr(self, name), optional=True)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        check_number("warmup_epochs", self.warmup_epochs, 0)
        if not (isinstance(self.amp, bool) or self.amp == "auto"):
            raise ConfigError(f"amp must be true, false or \"auto\", received amp={self.amp!r}")
        check_number("erase_prob", self.erase_prob, 0, 1)
        check_number("ema_decay", self.ema_decay, 0, 1, low_open=True, high_open=True)
        _choice("freeze", self.freeze, FREEZE)
        _choice("short_run", self.short_run, SHORT_RUN)
        check_number("lr_features", self.lr_features, 0)
        check_number("val_split", self.val_split, 0, 1, low_open=True, high_open=True, optional=True)
        if self.freeze != "none" and self.weights is None:
            raise ConfigError(f"freeze={self.freeze!r} keeps pretrained features: it needs weights (--weights)")
        check_int("workers", self.workers, 0)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"{source}: unknown field {key!r}.{close_matches(key, known)}")
        d = dict(d)
        if "augment" in d:
            d["augment"] = tuple(d["augment"]) if not isinstance(d["augment"], str) else tuple(d["augment"].split(","))
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def steps(self, train_images: int) -> int:
        """Optimizer steps of a run over ``train_images`` images per epoch at this batch size."""
        return self.epochs * (train_images // self.batch_size)

    def is_short(self, train_images: int) -> bool:
        """The short-run rule (``short_run="auto"``): fewer than :data:`MIN_STEPS` optimizer steps, or each
        image seen at most :data:`SHORT_RUN_EPOCHS` times. ``"on"`` / ``"off"`` override it."""
        if self.short_run != "auto":
            return self.short_run == "on"
        return self.steps(train_images) < MIN_STEPS or self.epochs <= SHORT_RUN_EPOCHS

    def for_run_length(self, train_images: int, fixed: Collection[str] = ()) -> TrainConfig:
        """This config fitted to its run over ``train_images`` images per epoch, except the ``fixed`` fields
        (the ones a user set), when the run is short (:meth:`is_short`): a smaller batch until the run has
        :data:`MIN_STEPS` steps (:meth:`batch_for_steps`); and when each image is seen at most
        :data:`SHORT_RUN_EPOCHS` times (or ``short_run="on"``), no augmentation, since such a run cannot
        over-fit, and the model's ``short_recipe`` (:class:`~pocketcnn.models.registry.ModelConfig`). The
        measurements behind it are in docs/training.md ("Short runs learn")."""
        if not self.is_short(train_images):
            return self
        changes: dict[str, Any] = {}
        if "batch_size" not in fixed:
            changes["batch_size"] = self.batch_for_steps(train_images)
        if self.epochs <= SHORT_RUN_EPOCHS or self.short_run == "on":
            if "augment" not in fixed:
                changes["augment"] = ()
            from ..models.registry import model_config  # imports PyTorch: kept out of `--help`
            short = model_config(self.model).short_recipe  # e.g. AlexNet's higher peak learning rate
            changes.update({k: v for k, v in short.items() if k not in fixed})
        return self.replace(**changes)

    def decide_run_length(self, train_images: int, fixed: Collection[str] = ()) -> RunLength:
        """The short-run rule applied (:meth:`for_run_length`), the decision recorded in ``short_run``
        ("on" or "off"), and a one-line account of it."""
        short = self.is_short(train_images)
        tuned = self.for_run_length(train_images, fixed).replace(short_run="on" if short else "off")
        changed = tuple((f.name, getattr(self, f.name), getattr(tuned, f.name)) for f in fields(self)
                        if f.name != "short_run" and getattr(tuned, f.name) != getattr(self, f.name))
        return RunLength(tuned, short, self.short_run, train_images, self.steps(train_images), changed)

    def batch_for_steps(self, train_images: int) -> int:
        """The batch size for a run over ``train_images`` images: ``batch_size`` halved (never below
        :data:`MIN_BATCH`) until the run has at least :data:`MIN_STEPS` optimizer steps. A short run
        learns from steps, not from images: squeezenet1_1 on 5,000 images for 1 epoch reached 55.7%
        top-1 at its recipe's batch 64 (78 steps) and 64.7% at batch 32 (156 steps)."""
        return batch_for_steps(self.batch_size, self.epochs, train_images)


def batch_for_steps(batch_size: int, epochs: int, train_images: int) -> int:
    """``batch_size`` halved (never below :data:`MIN_BATCH`) until ``epochs`` over ``train_images``
    images take at least :data:`MIN_STEPS` optimizer steps (see :meth:`TrainConfig.batch_for_steps`)."""
    bs = batch_size
    while bs // 2 >= MIN_BATCH and epochs * (train_images // bs) < MIN_STEPS:
        bs //= 2
    return bs


@dataclass(frozen=True)
class RunLength:
    """The short-run decision for one run (:meth:`TrainConfig.decide_run_length`)."""

    config: TrainConfig  # what to train with; its short_run is "on" or "off"
    short: bool
    mode: str  # the short_run asked for: auto, on or off
    train_images: int  # per epoch
    steps: int  # optimizer steps at the batch size asked for
    changed: tuple[tuple[str, Any, Any], ...]  # (field, asked for, trained with)

    def note(self) -> str:
        """One line: the rule's verdict, why, and what it changed."""
        cfg = self.config
        why = (f"{self.train_images:,} images x {cfg.epochs} epoch(s), {self.steps:,} optimizer steps at batch "
               f"{dict((f, a) for f, a, _ in self.changed).get('batch_size', cfg.batch_size)}")
        head = f"{'a short run' if self.short else 'not a short run'} ({why}; --short-run {self.mode})"
        if not self.short:
            return head + ": the settings as given"
        if not self.changed:
            return head + ": nothing to change (the flags set what it would change)"
        return head + ": " + ", ".join(f"{f}={new!r} instead of {old!r}" for f, old, new in self.changed) + \
            " (pass the flag to choose, or --short-run off)"


SHORT_RUN_EPOCHS = 2  # runs of at most this many epochs train without augmentation (for_run_length)
MIN_STEPS = 150  # a run with fewer optimizer steps gets a smaller batch (TrainConfig.batch_for_steps)
MIN_BATCH = 16
RESUME_NEUTRAL = ("out", "device")  # fields a resumed run may change without changing what it computes


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, cfg's value)`` for each field where ``cfg`` differs from a
    checkpoint's saved config, sorted by field; a field added since the checkpoint was written
    counts as its default (so an older checkpoint resumes as it ran). ``RESUME_NEUTRAL`` fields
    are not compared."""
    saved = {**TrainConfig(model=cfg.model).to_dict(), **saved}
    now = cfg.to_dict()
    return [(f, saved.get(f), now.get(f)) for f in sorted((set(saved) | set(now)) - set(RESUME_NEUTRAL))
            if saved.get(f) != now.get(f)]


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; received {name}={value!r}.{close_matches(value, choices)}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (keys = TrainConfig fields)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object of TrainConfig fields, found {type(d).__name__}")
    return d


def recipe(model: str) -> dict[str, Any]:
    """The model's training recipe for small images (its :class:`~pocketcnn.models.registry.ModelConfig`'s
    ``recipe``), as a copy: the flags a user gives win."""
    from ..models.registry import model_config  # imports PyTorch: kept out of `--help`
    return json.loads(json.dumps(dict(model_config(model).recipe)))
