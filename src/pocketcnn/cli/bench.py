"""``pocketcnn bench``: latency, throughput and memory per runtime, with torchvision references."""
from __future__ import annotations

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..validate import check_int
from .common import ModelName, echo_json, err_console, out_console, tagged


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``; anything but positive integers is a usage error naming the value."""
    try:
        sizes = tuple(check_int("batch size", int(v)) for v in value.split(",") if v.strip())
    except ValueError:  # not an integer, or one below 1 (check_int's ConfigError is a ValueError)
        sizes = ()
    if not sizes:
        raise click.BadParameter(f"expected positive integers separated by commas, received {value!r}")
    return sizes


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


@click.command()
@click.argument("names", nargs=-1, required=True, type=ModelName(), metavar="MODEL...")
@click.option("--runtimes", default=None, metavar="LIST",
              help="Comma-separated runtimes (default: eager,optimized,onnxruntime, plus the INT8 ones when "
                   "available). Valid: eager, channels_last, compiled, optimized, optimized-torch, onnxruntime, "
                   "onnxruntime-int8, torch-int8, litert, litert-int8 (LiteRT .tflite with XNNPACK, needs "
                   "pocketcnn[litert]), torchvision-eager, torchvision-onnxruntime.")
@click.option("--batch-sizes", default="1,32", show_default=True, callback=_int_list, metavar="LIST",
              help="Comma-separated batch sizes.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads for PyTorch and ONNX Runtime (default: PyTorch's current setting).")
@click.option("--input-size", type=click.IntRange(8), default=None, help="Square input side (default: each model's).")
@click.option("--reference", is_flag=True, help="Also measure torchvision's implementation (eager and ONNX Runtime).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records instead of a table.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a PNG bar chart of images/s per runtime and model.")
@click.option("--quick", is_flag=True, help="One warm-up call, at least 3 runs and 0.1 s per cell (smoke test).")
def bench(names, runtimes, batch_sizes, threads, input_size, reference, as_json, plot, quick) -> None:
    """Benchmark MODEL... per runtime and batch size: median latency, images/s, memory, GFLOP/s.

    Every record with --reference carries its speed ratio to torchvision's model measured
    in the same run (vs_torchvision_eager, vs_torchvision_onnxruntime).
    """
    from ..bench import BenchConfig, default_runtimes

    config = BenchConfig(models=tuple(names), runtimes=runtimes if runtimes is not None else default_runtimes(),
                         batch_sizes=batch_sizes, threads=threads, input_size=input_size, reference=reference,
                         quick=quick)
    report = _run_with_progress_bar(config)
    if plot:
        from ..workflows.plots import bench_chart

        bench_chart(report.results, plot)
    for line in report.skipped:
        tagged("skipped", "yellow", line)
    if as_json:
        echo_json(report.to_records())
        return
    out_console.print(_table(report))
    notes = {r.runtime: r.note for r in report.results if r.note}
    for rt, note in notes.items():
        err_console.print(Text(f"{rt}: {note}", style="dim"), highlight=False, soft_wrap=True)


def _run_with_progress_bar(config):
    """:func:`pocketcnn.bench.run_benchmark` with a progress bar on stderr when it is a terminal."""
    from ..bench import run_benchmark

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("bench", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        return run_benchmark(config, progress=progress)


def _table(report) -> Table:
    """One row per record, under the CPU and the matmul peak; ratio columns when references were measured."""
    table = Table("model", "runtime", "batch", "median ms", "min ms", "img/s", "peak MB", "GFLOP/s", "% peak",
                  title=f"{report.cpu.summary()}\n{report.threads} thread(s); fp32 matmul peak "
                        f"{report.peak_gflops:.0f} GFLOP/s")
    with_ref = any(r.vs_torchvision_eager or r.vs_torchvision_onnxruntime for r in report.results)
    if with_ref:
        table.add_column("vs tv eager")
        table.add_column("vs tv ORT")
    for r in report.results:
        row = [r.model, r.runtime, str(r.batch_size), f"{r.median_ms:.2f}", f"{r.min_ms:.2f}",
               f"{r.images_per_s:.1f}", _fmt(r.peak_mem_mb, ".0f"), _fmt(r.gflops, ".1f"),
               _fmt(None if r.peak_fraction is None else 100 * r.peak_fraction, ".0f")]
        if with_ref:
            row += [_fmt(r.vs_torchvision_eager, ".2f", "x"), _fmt(r.vs_torchvision_onnxruntime, ".2f", "x")]
        table.add_row(*row)
    return table
