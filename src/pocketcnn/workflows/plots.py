"""matplotlib figures written as PNG (Agg backend: no display needed)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    _plt().close(fig)
    return path


def learning_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Train loss and test top-1 per epoch, one line per run (``runs``: name -> metrics rows)."""
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in runs.items():
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label=name)
        ax_acc.plot(epochs, [r["test_top1"] for r in rows], marker="o", label=name)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_matrix(conf: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                     title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts annotated."""
    import numpy as np

    plt = _plt()
    c = np.asarray(conf, dtype=float)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


def pareto(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test top-1 against mult-adds and against model size (log x), one labelled point per model."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "macs", "mult-adds per image"), (axes[1], "size_mb", "model size (MB, fp32)")):
        for r in rows:
            ax.scatter(r[key], r["top1"], s=40)
            ax.annotate(r["model"], (r[key], r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set(xlabel=label, ylabel="test top-1 (%)")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title or "accuracy vs cost")
    return _save(fig, path)


def bench_chart(results: Sequence[Any], path: str | Path) -> Path:
    """Bar chart of images/s per runtime, grouped by model, one panel per batch size (PNG)."""
    from ..bench.runtimes import REFERENCE_RUNTIMES

    plt = _plt()
    if not results:
        raise ConfigError("nothing to plot: the benchmark produced no records")
    batches = sorted({r.batch_size for r in results})
    models = list(dict.fromkeys(r.model for r in results))
    runtimes = list(dict.fromkeys(r.runtime for r in results))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(batches), 1, squeeze=False,
                             figsize=(2.5 + max(4.0, 0.45 * len(models) * len(runtimes)), 3.4 * len(batches)))
    width = 0.8 / len(runtimes)
    for ax, bs in zip(axes[:, 0], batches):
        for j, rt in enumerate(runtimes):
            xs, ys = [], []
            for i, m in enumerate(models):
                cell = next((r for r in results if r.model == m and r.runtime == rt and r.batch_size == bs), None)
                if cell is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(cell.images_per_s)
            is_ref = rt in REFERENCE_RUNTIMES
            ax.bar(xs, ys, width, label=rt, color="0.55" if is_ref else colors(j % 10),
                   hatch="//" if rt == "torchvision-onnxruntime" else None, edgecolor="black", linewidth=0.5)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel("images / s")
        th = results[0].threads
        ax.set_title(f"batch {bs}, {th} thread{'s' if th != 1 else ''}, input {'x'.join(map(str, results[0].input_size))}")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)
