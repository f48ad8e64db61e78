"""The main job: train the zoo's key members on Fashion-MNIST within a time budget and rank them.

``run_demo`` measures each model's training speed, picks the largest (subset, epochs) from a
ladder that fits the budget for ALL models (one recipe each, the same data for all), trains,
evaluates on the full test split, measures CPU latency and throughput, and writes the
leaderboard, a report and plots. Finished runs are reused unless ``fresh``.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..analysis import profile
from ..artifacts.checkpoint import model_from_checkpoint
from ..bench.timing import matmul_peak_gflops, measure
from ..data import DataSpec, balanced_subset, dataset_spec, load_dataset
from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..models.registry import model_config
from ..train.config import TrainConfig, recipe
from ..train.engine import Callbacks, amp_enabled, backward_step, build_model, evaluate, fit, forward_loss
from ..train.engine import make_optimizer

DEFAULT_MODELS = ("alexnet", "squeezenet1_1", "mobilenet_v1", "mobilenet_v3_small")
# (train images, epochs), most to least; the first that fits the budget is used for every model
LADDER = ((60000, 10), (60000, 6), (60000, 4), (60000, 3), (40000, 3), (30000, 3), (20000, 3), (15000, 3),
          (12000, 3), (10000, 3), (8000, 3), (6000, 3), (4000, 3), (3000, 2), (2000, 2), (1000, 2), (500, 1))
FMNIST_TEST_IMAGES = 10_000
TRAIN_TEST_SAMPLES = 1000  # per-epoch evaluation during training; the leaderboard uses the full test split
SAFETY = 0.8  # plan for 80% of the budget: the machine is shared and measurements are short
BATCH = 128


@dataclass(frozen=True)
class Plan:
    train_samples: int
    epochs: int
    estimated_seconds: float
    speeds: dict[str, float]  # measured training images/s per model (the engine's step)


def batch_size(model_name: str) -> int:
    """The recipe's batch size, else :data:`BATCH` (SqueezeNet's recipe takes 64: more steps)."""
    return int(recipe(model_name).get("batch_size", BATCH))


def measure_speeds(model_name: str, spec: DataSpec, steps: int = 5) -> tuple[float, float]:
    """(training, evaluation) images/s of the engine's own step (:func:`forward_loss`,
    :func:`backward_step`) with the recipe's optimizer, loss, mixed precision and gradient
    clipping, channels-last, at the recipe's batch size (:func:`batch_size`).
    One warm-up step is not timed; the median of ``steps`` timed steps (and of 3 evaluation
    passes) is used, so that one step slowed by another process does not shrink the plan."""
    cfg = TrainConfig.from_dict({**recipe(model_name), "model": model_name, "batch_size": batch_size(model_name)})
    cpu = torch.device("cpu")
    amp = amp_enabled(cfg.amp, cpu)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # bf16 on CPU needs no loss scaling
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    bs = cfg.batch_size
    model = build_model(cfg, spec).train().to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    x = torch.randn(bs, spec.in_chans, spec.image_size, spec.image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (bs,))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        _, loss = forward_loss(model, x, y, criterion, amp)
        backward_step(loss, opt, scaler, model, cfg.grad_clip)
        loss.item()
        times.append(time.perf_counter() - t0)
    train_ips = bs / statistics.median(times[1:])
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(4):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return train_ips, bs / statistics.median(times[1:])


def estimate_seconds(n: int, epochs: int, train_ips: float, eval_ips: float, params: int, test_images: int) -> float:
    """One model's demo: training, per-epoch and final evaluation, speed measurements, checkpoints."""
    train = epochs * n / train_ips
    evaluation = (epochs * TRAIN_TEST_SAMPLES + test_images) / eval_ips
    timing = 2 * 0.5 + 20 * 64 / eval_ips  # bench.measure: 0.5 s per batch size, plus warm-up
    checkpoints = epochs * params * 12 / 150e6  # weights + two AdamW moments, ~150 MB/s
    return 10.0 + train + evaluation + timing + checkpoints


def make_plan(models: tuple[str, ...], budget_s: float, spec: DataSpec, test_images: int) -> Plan:
    speeds = {m: measure_speeds(m, spec) for m in models}
    params = {m: sum(p.numel() for p in build_model(TrainConfig(model=m), spec).parameters()) for m in models}
    usable = SAFETY * budget_s - 4.0 * len(models)  # the measuring itself (6 steps + 4 passes per model)

    def total(n: int, epochs: int) -> float:
        return sum(estimate_seconds(n, epochs, *speeds[m], params[m], test_images) for m in models)

    n, epochs = next(((n, e) for n, e in LADDER if total(n, e) <= usable), LADDER[-1])
    return Plan(n, epochs, total(n, epochs), {m: round(s[0], 1) for m, s in speeds.items()})


def run_demo(models: tuple[str, ...] = DEFAULT_MODELS, *, budget_minutes: float = 10.0, out: str | Path = "runs/demo",
             data_dir: str | None = None, fresh: bool = False, test_samples: int | None = None,
             make_callbacks: Callable[[str], Callbacks | None] = lambda name: None,
             log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Train, evaluate and measure ``models``; returns the leaderboard dict (also written to ``out``)."""
    from .. import plots

    if budget_minutes <= 0:
        raise ConfigError(f"budget_minutes must be > 0, received {budget_minutes!r}")
    for m in models:
        model_config(m)
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # verifies the files (the verdict is cached); the leaderboard uses the whole split by default
    test_full = balanced_subset(load_dataset("fashion-mnist", "test", data_dir), test_samples)
    spec = dataset_spec("fashion-mnist", test_full)
    plan_file = out / "plan.json"
    if plan_file.exists() and not fresh and set(json.loads(plan_file.read_text())["speeds"]) == set(models):
        plan = Plan(**json.loads(plan_file.read_text()))
        log(f"reusing plan {plan_file}: {plan.train_samples} images x {plan.epochs} epochs")
    else:
        log("measuring training speed of each model to fit the budget...")
        plan = make_plan(models, budget_minutes * 60, spec, len(test_full))
        atomic_write_text(plan_file, json.dumps(asdict(plan), indent=2))
        log(f"plan: {plan.train_samples} training images x {plan.epochs} epochs per model "
            f"(estimated {plan.estimated_seconds / 60:.1f} min)")
    rows, curves = [], {}
    peak = None  # the machine's matmul peak, measured once when the first model is timed
    for name in models:
        run_dir = out / name
        result_file = run_dir / "result.json"
        cfg = TrainConfig.from_dict({**recipe(name), "model": name, "data_dir": data_dir, "epochs": plan.epochs,
                                     "batch_size": batch_size(name), "train_samples": plan.train_samples,
                                     "test_samples": min(TRAIN_TEST_SAMPLES, len(test_full)), "out": str(run_dir),
                                     "warmup_epochs": min(1.0, plan.epochs / 5)})
        if result_file.exists() and not fresh and json.loads(result_file.read_text()).get("config") == cfg.to_dict():
            log(f"{name}: reusing finished run {run_dir}")
            rows.append(json.loads(result_file.read_text())["row"])
            curves[name] = json.loads(result_file.read_text())["metrics"]
            continue
        log(f"{name}: training")
        res = fit(cfg, make_callbacks(name), overwrite=True)  # the demo's own folder: an unfinished run is redone
        model = model_from_checkpoint(res.checkpoint)
        full = evaluate(model, test_full, spec, batch_size=512)
        size = (spec.in_chans, spec.image_size, spec.image_size)
        prof = profile(model, size, name=name)
        peak = peak if peak is not None else matmul_peak_gflops(torch.get_num_threads())
        speed = {bs: measure(model, batch_size=bs, input_size=size, min_time=0.5, macs=prof.macs, peak_gflops=peak,
                             model_name=name) for bs in (1, 64)}
        row = {"model": name, "top1": round(full.top1, 2), "top5": round(full.top5, 2), "params": prof.params,
               "size_mb": round(prof.size_mb, 3), "macs": prof.macs, "latency_ms": round(speed[1].median_ms, 3),
               "images_per_s": round(speed[64].images_per_s, 1), "train_seconds": round(res.wall_seconds, 1),
               "best_top1_subset": round(res.best_top1, 2), "batch_size": cfg.batch_size}
        atomic_write_text(result_file, json.dumps({"config": cfg.to_dict(), "row": row, "metrics": res.metrics}, indent=2))
        rows.append(row)
        curves[name] = res.metrics
        log(f"{name}: top-1 {row['top1']:.2f}% on {_split_words(len(test_full))}")
    board = {"wall_seconds": round(time.perf_counter() - t_start, 1), "budget_minutes": budget_minutes,
             "data": "fashion-mnist", "train_samples": plan.train_samples, "epochs": plan.epochs,
             "test_samples": len(test_full), "input_size": [1, 28, 28], "threads": torch.get_num_threads(),
             "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
             "rows": sorted(rows, key=lambda r: -r["top1"])}
    atomic_write_text(out / "leaderboard.json", json.dumps(board, indent=2))
    plots.pareto(board["rows"], out / "pareto.png", title="Fashion-MNIST test top-1 vs cost")
    plots.learning_curves(curves, out / "curves.png")
    atomic_write_text(out / "report.md", report(board))
    return board


def _split_words(n: int) -> str:
    return f"the full {n:,}-image test split" if n == FMNIST_TEST_IMAGES else f"a balanced subset of {n:,} test images"


def _claim(board: dict[str, Any]) -> str:
    rows = {r["model"]: r for r in board["rows"]}
    alex = rows.get("alexnet")
    sq = next((rows[m] for m in ("squeezenet1_1", "squeezenet1_0") if m in rows), None)
    if not (alex and sq):
        return "(train alexnet and a SqueezeNet to compare them)"
    diff = sq["top1"] - alex["top1"]
    return (f"On real Fashion-MNIST test images, {sq['model']} reaches {sq['top1']:.2f}% top-1 against AlexNet's "
            f"{alex['top1']:.2f}% ({diff:+.2f} points) with {alex['params'] / sq['params']:.0f}x fewer parameters "
            f"({sq['size_mb']:.2f} MB vs {alex['size_mb']:.1f} MB) and {alex['macs'] / sq['macs']:.1f}x fewer "
            f"mult-adds, on the same images, epochs and time budget (one recipe per model family).")


def _batches(board: dict[str, Any]) -> str:
    sizes = {r["model"]: r.get("batch_size", BATCH) for r in board["rows"]}
    odd = [f"{m} {b}" for m, b in sizes.items() if b != BATCH]
    return f"batch {BATCH}" + (f"; {', '.join(odd)} per its recipe" if odd else "")


def report(board: dict[str, Any]) -> str:
    lines = [
        "# pocketcnn demo: pocket-sized CNNs on Fashion-MNIST", "",
        f"Each model trained on a class-balanced subset of {board['train_samples']:,} training images for "
        f"{board['epochs']} epochs ({_batches(board)}, 28x28 grayscale, small-input stems), chosen so that all models "
        f"fit a {board['budget_minutes']:g}-minute budget on this machine ({board['machine']}). "
        f"Top-1 is on {_split_words(board['test_samples'])}. Total wall time: "
        f"{board['wall_seconds'] / 60:.1f} min.", "",
        "## The claim", "", _claim(board), "",
        "## Leaderboard", "",
        "| model | test top-1 % | params | size MB | mult-adds | batch-1 latency ms | images/s (batch 64) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in board["rows"]:
        lines.append(f"| {r['model']} | {r['top1']:.2f} | {r['params']:,} | {r['size_mb']:.2f} | "
                     f"{r['macs'] / 1e6:.1f}M | {r['latency_ms']:.2f} | {r['images_per_s']:,.0f} |")
    lines += ["", "Latency and throughput: eager PyTorch on the CPU (pocketcnn.bench.measure: warm-up, median).",
              "", "![accuracy vs cost](pareto.png)", "", "![learning curves](curves.png)", ""]
    return "\n".join(lines)
