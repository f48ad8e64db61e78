"""The main job: the SqueezeNet paper's title on real data, within a time budget.

``run_demo`` trains AlexNet (the baseline), SqueezeNet and a MobileNet on Fashion-MNIST,
ranks them on the full test split, then takes SqueezeNet through Deep Compression and INT8,
exports the result and classifies real test images from the exported file with the light
runtime (:mod:`pocketcnn.workflows.chain`). It writes the leaderboard, a report and plots.

The plan's rule, stated in the report: every model gets the same share of the training
time, trains with its own family's recipe on class-balanced subsets of the same 60,000
images, and takes the largest (images, epochs) rung of one ladder that fits its share (up to two
epochs of all 60,000), so a fast model sees more images than a slow one instead of the slowest
setting everyone's pace.
Finished runs are reused unless ``fresh``.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.analysis import profile
from ..artifacts.checkpoint import model_from_checkpoint
from ..bench.cpu import cpu_info
from ..bench.timing import matmul_peak_gflops, measure
from ..data import DataSpec, balanced_subset, dataset_spec, load_dataset
from ..fileio import atomic_write_text, check_writable_dir
from ..validate import check_number
from ..models.registry import model_config
from ..train.config import TrainConfig, batch_for_steps, recipe
from ..train.engine import Callbacks, build_model, evaluate, fit

DEFAULT_MODELS = ("alexnet", "squeezenet1_1", "mobilenet_v3_small")  # the baseline and one model per family
DEFAULT_BUDGET_MINUTES = 14.5
# (train images, epochs), most to least work; each model takes the first that fits its share. The top is
# two epochs of all images: the short-run recipe (no augmentation) is meant for at most two, and a third
# did not pay (docs/speed.md, "The main job's plan")
LADDER = ((60000, 2), (50000, 2), (60000, 1), (50000, 1),
          (40000, 1), (35000, 1), (30000, 1), (28000, 1), (26000, 1), (24000, 1), (22000, 1), (20000, 1),
          (18000, 1), (16000, 1), (14000, 1), (12000, 1), (10000, 1), (8000, 1), (6000, 1), (4000, 1), (3000, 1),
          (2000, 1), (1000, 1))
FMNIST_TEST_IMAGES = 10_000
TRAIN_TEST_SAMPLES = 1000  # per-epoch evaluation during training; the leaderboard uses the full test split
BATCH = 128
CHAIN_SHARE = 0.18  # of the budget, for Deep Compression, INT8, export and prediction after the ranking


@dataclass(frozen=True)
class ModelPlan:
    """What one model gets: its training subset and epochs, and the measured speed they come from."""

    train_samples: int
    epochs: int
    images_per_s: float  # measured training images/s (the engine's loop, at the batch the run uses)
    estimated_seconds: float  # training and evaluation


@dataclass(frozen=True)
class Plan:
    share_seconds: float  # training time each model may take
    chain_seconds: float  # reserved for the compression and deployment chain
    models: dict[str, ModelPlan]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(d["share_seconds"], d["chain_seconds"], {k: ModelPlan(**v) for k, v in d["models"].items()})


def batch_size(model_name: str) -> int:
    """The recipe's batch size, else :data:`BATCH` (SqueezeNet's recipe takes 64: more steps)."""
    return int(recipe(model_name).get("batch_size", BATCH))


class _StepClock(Callbacks):
    """Engine callbacks that note the time of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def on_step(self, step: int, loss: float, acc: float, images_per_s: float) -> None:
        self.times.append(time.perf_counter())

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        pass


def measure_speeds(model_name: str, spec: DataSpec, batch: int, steps: int = 12, *,
                   data_dir: str | None = None) -> tuple[float, float]:
    """(training, evaluation) images/s. Training: the engine's own loop (:func:`fit`, nothing saved) over
    ``steps + 2`` real batches of ``batch`` images with the recipe's settings for a short run, timed
    step to step after the first two, median: what a run will see, data handling, scheduler, EMA
    and metrics included (a timing of the bare passes was far off: docs/speed.md, "The main job's plan").
    Twelve steps are timed because single steps vary (same page). Evaluation: the median of 3 timed passes."""
    base = TrainConfig.from_dict({**recipe(model_name), "model": model_name, "data_dir": data_dir, "epochs": 1,
                                  "batch_size": batch, "train_samples": batch * (steps + 2), "test_samples": 10,
                                  "warmup_epochs": 0.0})
    cfg = base.for_run_length(base.train_samples, fixed={"batch_size"})
    clock = _StepClock()
    model = build_model(cfg, spec)
    fit(cfg, clock, model=model, save=False)
    train_ips = batch / statistics.median(b - a for a, b in zip(clock.times[1:], clock.times[2:]))
    model.eval()
    x = torch.randn(batch, spec.in_chans, spec.image_size, spec.image_size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(4):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return train_ips, batch / statistics.median(times[1:])


def fixed_seconds(eval_ips: float, test_images: int) -> float:
    """One model's demo time besides its epochs: start-up, the final evaluation on the test split and the
    speed measurement (bench.measure: 0.5 s per batch size, plus warm-up)."""
    return 5.0 + test_images / eval_ips + 2 * 0.5 + 20 * 64 / eval_ips


def epoch_seconds(n: int, train_ips: float, eval_ips: float, params: int) -> float:
    """One epoch over ``n`` images: training, the 1,000-image check, the checkpoint (weights and two AdamW
    moments at about 150 MB/s)."""
    return n / train_ips + TRAIN_TEST_SAMPLES / eval_ips + params * 12 / 150e6


Speed = Callable[[str, int], tuple[float, float]]  # (model, batch) -> (training, evaluation) images/s


def plan_models(models: Sequence[str], speed: Speed, batches: Mapping[str, int], params: Mapping[str, int],
                share_s: float, test_images: int) -> dict[str, ModelPlan]:
    """The rule: each model takes the first ladder rung whose epochs (:func:`epoch_seconds`) fit the training
    share ``share_s`` (the last rung when none does), timed at the batch that rung will train with (the
    recipe's ``batches[m]``, halved for short runs: :func:`~pocketcnn.train.config.batch_for_steps`). The
    final evaluation and speed measurement (:func:`fixed_seconds`) come on top, outside the share, so a
    model slow to evaluate (AlexNet) does not lose training time for it. Pure given ``speed``."""
    out = {}
    for m in models:
        for n, epochs in LADDER:  # largest first; the smallest rung when none fits
            train_ips, eval_ips = speed(m, batch_for_steps(batches[m], epochs, n))
            seconds = epochs * epoch_seconds(n, train_ips, eval_ips, params[m])
            if seconds <= share_s:
                break
        out[m] = ModelPlan(n, epochs, round(train_ips, 1), round(seconds + fixed_seconds(eval_ips, test_images), 1))
    return out


def make_plan(models: tuple[str, ...], budget_s: float, spec: DataSpec, test_images: int, *,
              chain: bool = True, data_dir: str | None = None) -> Plan:
    """Measure, then share ``budget_s``: the chain's part (:data:`CHAIN_SHARE`), each model's fixed costs
    and the measuring come off, and the rest is split equally into training shares. No safety factor: the
    measured speeds are the margin, below what the runs then reach (docs/speed.md, "The main job's plan")."""
    t0 = time.perf_counter()
    measured: dict[tuple[str, int], tuple[float, float]] = {}

    def speed(m: str, batch: int) -> tuple[float, float]:
        if (m, batch) not in measured:
            measured[(m, batch)] = measure_speeds(m, spec, batch, data_dir=data_dir)
        return measured[(m, batch)]

    params = {m: sum(p.numel() for p in build_model(TrainConfig(model=m), spec).parameters()) for m in models}
    batches = {m: batch_size(m) for m in models}
    fixed = sum(fixed_seconds(speed(m, batches[m])[1], test_images) for m in models)
    chain_s = CHAIN_SHARE * budget_s if chain else 0.0
    measuring = 2 * (time.perf_counter() - t0)  # so far, and about as much again for smaller batches
    share = (budget_s - chain_s - fixed - measuring) / len(models)
    return Plan(round(share, 1), round(chain_s, 1), plan_models(models, speed, batches, params, share, test_images))


def run_demo(models: tuple[str, ...] = DEFAULT_MODELS, *, budget_minutes: float = DEFAULT_BUDGET_MINUTES, out: str | Path = "runs/demo",
             data_dir: str | None = None, fresh: bool = False, test_samples: int | None = None, chain: bool = True,
             make_callbacks: Callable[[str, ModelPlan], Callbacks | None] = lambda name, plan: None,
             log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Train, rank and measure ``models``, then run the compression and deployment chain on the
    SqueezeNet among them (``chain``); returns the leaderboard dict (also written to ``out``)."""
    from .chain import squeezenet_of

    check_number("budget_minutes", budget_minutes, 0, low_open=True)
    for m in models:
        model_config(m)
    t_start = time.perf_counter()
    out = check_writable_dir(Path(out), "demo results")
    out.mkdir(parents=True, exist_ok=True)
    # verifies the files (the verdict is cached); the leaderboard uses the whole split by default
    test_full = balanced_subset(load_dataset("fashion-mnist", "test", data_dir), test_samples)
    run = _DemoRun(out, test_full, dataset_spec("fashion-mnist", test_full), data_dir, fresh, log)
    chain = chain and squeezenet_of(models) is not None
    plan = _plan(out, models, budget_minutes, run.spec, len(test_full), chain, fresh, log, data_dir)
    rows, curves = [], {}
    for name in models:
        row, curves[name] = _model_row(run, name, plan.models[name], make_callbacks)
        rows.append(row)
    board = _leaderboard(budget_minutes, plan, rows, len(test_full))
    if chain:
        board["chain"] = _chain_board(run, squeezenet_of(models), rows, plan)
    board["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    _write_results(out, board, curves)
    return board


@dataclass(frozen=True)
class _DemoRun:
    """What every step of one demo shares: its folder, the test split and its spec, the caller's settings."""

    out: Path
    test: Any  # the (balanced subset of the) test split
    spec: DataSpec
    data_dir: str | None
    fresh: bool
    log: Callable[[str], None]


def _train_config(run: _DemoRun, name: str, mp: ModelPlan) -> TrainConfig:
    """``name``'s recipe for the images and epochs of its plan, in its own folder of the demo's."""
    cfg = TrainConfig.from_dict({**recipe(name), "model": name, "data_dir": run.data_dir, "epochs": mp.epochs,
                                 "batch_size": batch_size(name), "train_samples": mp.train_samples,
                                 "test_samples": min(TRAIN_TEST_SAMPLES, len(run.test)), "out": str(run.out / name)})
    return cfg.for_run_length(mp.train_samples)


def _model_row(run: _DemoRun, name: str, mp: ModelPlan,
               make_callbacks: Callable[[str, ModelPlan], Callbacks | None]) -> tuple[dict[str, Any], Any]:
    """``name``'s leaderboard row and learning curves: a finished run of the same configuration is reused,
    else the model is trained, scored on the test split and timed (and the result saved for reuse)."""
    cfg = _train_config(run, name, mp)
    result_file = run.out / name / "result.json"
    saved = json.loads(result_file.read_text()) if result_file.exists() and not run.fresh else {}
    if saved.get("config") == cfg.to_dict():
        run.log(f"{name}: reusing finished run {run.out / name}")
        return saved["row"], saved["metrics"]
    run.log(f"{name}: {mp.train_samples:,} images x {mp.epochs} epoch(s), batch {cfg.batch_size}")
    res = fit(cfg, make_callbacks(name, mp), overwrite=True)  # the demo's own folder: an unfinished run is redone
    row = {**_score(run, name, model_from_checkpoint(res.checkpoint)), "train_seconds": round(res.wall_seconds, 1),
           "train_samples": mp.train_samples, "epochs": mp.epochs, "images_seen": mp.train_samples * mp.epochs,
           "best_top1_subset": round(res.best_top1, 2), "batch_size": cfg.batch_size}
    atomic_write_text(result_file, json.dumps({"config": cfg.to_dict(), "row": row, "metrics": res.metrics}, indent=2))
    run.log(f"{name}: top-1 {row['top1']:.2f}% on {_split_words(len(run.test))}")
    return row, res.metrics


def _score(run: _DemoRun, name: str, model: torch.nn.Module) -> dict[str, Any]:
    """A trained model's accuracy on the test split, its size and cost, and its eager speed at batch 1 and 64."""
    full = evaluate(model, run.test, run.spec, batch_size=512)
    size = (run.spec.in_chans, run.spec.image_size, run.spec.image_size)
    prof = profile(model, size, name=name)
    peak = matmul_peak_gflops(torch.get_num_threads())  # measured for the first model, cached after
    speed = {bs: measure(model, batch_size=bs, input_size=size, min_time=0.5, macs=prof.macs, peak_gflops=peak,
                         model_name=name) for bs in (1, 64)}
    return {"model": name, "top1": round(full.top1, 2), "top5": round(full.top5, 2), "params": prof.params,
            "size_mb": round(prof.size_mb, 3), "macs": prof.macs, "latency_ms": round(speed[1].median_ms, 3),
            "images_per_s": round(speed[64].images_per_s, 1)}


def _leaderboard(budget_minutes: float, plan: Plan, rows: list[dict[str, Any]], test_images: int) -> dict[str, Any]:
    """The ranking, the rule and the machine; what the budget could not give (:func:`top_rung_budget`)."""
    board = {"budget_minutes": budget_minutes, "data": "fashion-mnist", "rule": RULE,
             "share_seconds": plan.share_seconds, "test_samples": test_images, "input_size": [1, 28, 28],
             "threads": torch.get_num_threads(),
             "machine": f"{cpu_info().summary()}; {torch.get_num_threads()} threads, torch {torch.__version__}",
             "rows": sorted(rows, key=lambda r: -r["top1"])}
    board["top_rung"] = top_rung_budget(board, plan)
    return board


def _chain_board(run: _DemoRun, sq: str, rows: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """The paper's chain on SqueezeNet ``sq`` (that of an earlier demo on the same checkpoints when it is
    still there), keyed by the checkpoints it started from."""
    from .chain import paper_chain

    top1 = {r["model"]: r["top1"] for r in rows}
    out = run.out
    chain = _cached_chain(out, sq, run.fresh, run.log) or paper_chain(
        out / sq / "last.pt", out, run.test, run.spec, plan.chain_seconds, dense_top1=top1[sq],
        train_images_per_s=plan.models[sq].images_per_s, data_dir=run.data_dir, log=run.log,
        baseline=(out / "alexnet" / "last.pt", top1["alexnet"]) if "alexnet" in top1 else None)
    chain["key"] = _chain_key(out, sq)
    return chain


def _write_results(out: Path, board: dict[str, Any], curves: dict[str, Any]) -> None:
    """The leaderboard, its plots and the report, in ``out``."""
    from . import plots

    atomic_write_text(out / "leaderboard.json", json.dumps(board, indent=2))
    plots.pareto(board["rows"], out / "pareto.png", title="Fashion-MNIST test top-1 vs cost")
    plots.learning_curves(curves, out / "curves.png")
    atomic_write_text(out / "report.md", report(board))


def _chain_key(out: Path, model: str) -> list:
    """What a finished chain depends on: the checkpoints it started from (and AlexNet's, for the ratios)."""
    return [[p.name, p.stat().st_mtime_ns, p.stat().st_size] for p in (out / model / "last.pt", out / "alexnet" / "last.pt")
            if p.exists()]


def _cached_chain(out: Path, model: str, fresh: bool, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The chain of an earlier demo on the same checkpoints, when its files are still there."""
    board = out / "leaderboard.json"
    if fresh or not board.exists():
        return None
    chain = json.loads(board.read_text()).get("chain")
    if not chain or chain.get("key") != _chain_key(out, model):
        return None
    if not all((out / s["file"]).exists() for s in chain["stages"] if s.get("file")):
        return None
    log("reusing the compression chain of the earlier run")
    return chain


def _plan(out: Path, models: tuple[str, ...], budget_minutes: float, spec: DataSpec, test_images: int, chain: bool,
          fresh: bool, log: Callable[[str], None], data_dir: str | None) -> Plan:
    plan_file = out / "plan.json"
    if plan_file.exists() and not fresh:
        saved = json.loads(plan_file.read_text())
        if set(saved.get("models", {})) == set(models) and saved.get("budget_minutes") == budget_minutes:
            log(f"reusing plan {plan_file}")
            return Plan.from_dict(saved)
    log("measuring the training speed of each model to share the budget...")
    plan = make_plan(models, budget_minutes * 60, spec, test_images, chain=chain, data_dir=data_dir)
    atomic_write_text(plan_file, json.dumps({**asdict(plan), "budget_minutes": budget_minutes}, indent=2))
    log(f"plan: {plan.share_seconds:.0f} s of training per model: " + ", ".join(
        f"{m} {p.train_samples:,} x {p.epochs}" for m, p in plan.models.items()))
    return plan


def top_rung_budget(board: dict[str, Any], plan: Plan) -> dict[str, Any] | None:
    """When a model could not take the ladder's top rung (two epochs of all 60,000 images, what the README's
    accuracy targets were measured with for the small models) in its share on this machine: which models,
    and the budget that would give every model that rung, from the speeds measured here (the plan's training
    images/s, the run's evaluation images/s). None when every model got it. The budget grows by the models'
    extra shares, and the chain's part (:data:`CHAIN_SHARE`) grows with it."""
    n, epochs = LADDER[0]
    rows = {r["model"]: r for r in board["rows"]}
    short = {m: p for m, p in plan.models.items() if (p.train_samples, p.epochs) != (n, epochs) and m in rows}
    if not short:
        return None
    need = max(epochs * epoch_seconds(n, p.images_per_s, rows[m]["images_per_s"], rows[m]["params"])
               for m, p in plan.models.items() if m in rows)
    extra = len(plan.models) * max(0.0, need - plan.share_seconds) / (1 - CHAIN_SHARE)
    return {"models": {m: {"train_samples": p.train_samples, "epochs": p.epochs, "images_per_s": p.images_per_s}
                       for m, p in short.items()},
            "share_needed_seconds": round(need, 1), "budget_minutes": round(board["budget_minutes"] + extra / 60, 1)}


def _shortfall_lines(board: dict[str, Any]) -> list[str]:
    gap = board.get("top_rung")
    if not gap:
        return []
    n, epochs = LADDER[0]
    got = ", ".join(f"{m} {g['train_samples']:,} x {g['epochs']} at {g['images_per_s']:,.0f} training images/s"
                    for m, g in gap["models"].items())
    return ["## What this machine could not do in the budget", "",
            f"In its {board['share_seconds']:.0f}-s share, not every model reached the full short run ({n:,} images x "
            f"{epochs} epochs, the setting behind the README's accuracies): {got}. Its accuracy is therefore below "
            f"what that setting reaches. From the speeds measured here, giving every model that run takes a "
            f"{gap['share_needed_seconds']:.0f}-s share: `pocketcnn demo --budget-minutes "
            f"{math.ceil(gap['budget_minutes'])}` (about {gap['budget_minutes']:.1f} minutes).", ""]


RULE = ("Every model gets the same share of the training time and trains with its own family's recipe on "
        "class-balanced subsets of the same 60,000 images, taking the largest (images, epochs) of one ladder "
        "that fits its share, up to two epochs of all of them: a faster model sees more images.")


def _split_words(n: int) -> str:
    return f"the full {n:,}-image test split" if n == FMNIST_TEST_IMAGES else f"a balanced subset of {n:,} test images"


def _claim(board: dict[str, Any]) -> str:
    rows = {r["model"]: r for r in board["rows"]}
    alex = rows.get("alexnet")
    sq = next((rows[m] for m in ("squeezenet1_1", "squeezenet1_0") if m in rows), None)
    if not (alex and sq):
        return "(train alexnet and a SqueezeNet to compare them)"
    diff = sq["top1"] - alex["top1"]
    text = (f"On real Fashion-MNIST test images, {sq['model']} reaches {sq['top1']:.2f}% top-1 against AlexNet's "
            f"{alex['top1']:.2f}% ({diff:+.2f} points) with {alex['params'] / sq['params']:.0f}x fewer parameters "
            f"({sq['size_mb']:.2f} MB vs {alex['size_mb']:.1f} MB) and {alex['macs'] / sq['macs']:.1f}x fewer "
            f"mult-adds, within the same share of training time ({sq['model']} used {sq['train_seconds']:.0f} s, "
            f"AlexNet {alex['train_seconds']:.0f} s).")
    chain = board.get("chain")
    if chain:
        pcz = chain["stages"][2]
        text += (f" Deep Compression makes it a {pcz['bytes'] / 1e6:.2f} MB file, {pcz['x_smaller']:.0f}x smaller "
                 f"than AlexNet, at {pcz['top1']:.2f}% top-1.")
    return text


def report(board: dict[str, Any]) -> str:
    lines = [
        "# pocketcnn demo: pocket-sized CNNs on Fashion-MNIST", "",
        f"{RULE} The share was {board['share_seconds']:.0f} s of a {board['budget_minutes']:g}-minute budget on this "
        f"machine ({board['machine']}); 28x28 grayscale images, small-input stems. Top-1 is on "
        f"{_split_words(board['test_samples'])}. Total wall time: {board['wall_seconds'] / 60:.1f} min.", "",
        "## The claim", "", _claim(board), "",
        *_shortfall_lines(board),
    ]
    if board.get("chain"):
        from .chain import chain_report

        lines += chain_report(board["chain"])
    lines += [
        "## Leaderboard", "",
        "| model | test top-1 % | params | size MB | mult-adds | train images x epochs | batch | train s | "
        "batch-1 latency ms | images/s (batch 64) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in board["rows"]:
        lines.append(f"| {r['model']} | {r['top1']:.2f} | {r['params']:,} | {r['size_mb']:.2f} | "
                     f"{r['macs'] / 1e6:.1f}M | {r['train_samples']:,} x {r['epochs']} | {r['batch_size']} | "
                     f"{r['train_seconds']:.0f} | {r['latency_ms']:.2f} | {r['images_per_s']:,.0f} |")
    lines += ["", "Latency and throughput: eager PyTorch on the CPU (pocketcnn.bench.timing.measure: warm-up, "
              "median).", "", "![accuracy vs cost](pareto.png)", "", "![learning curves](curves.png)", ""]
    return "\n".join(lines)
