"""``pocketcnn predict``: top-k classes of image files with any pocketcnn model file; with
``--out``, streaming batch inference over files, folders, globs and manifests."""
from __future__ import annotations

import sys

import click
from rich.table import Table
from rich.text import Text

from ..workflows.predict import FP32_PATHS
from .common import echo_json, err_console, out_console, tagged

PROGRESS_EVERY = 10_000  # images between progress lines when stderr is not a terminal
BATCH_ONLY = ("workers", "batch_size", "resume", "force", "engine", "address", "fmt")


@click.command()
@click.argument("model")
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="With a model NAME as MODEL: a local torchvision ImageNet weight file.")
@click.option("--topk", type=click.IntRange(1), default=5, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=None, help="ONNX Runtime intra-op threads (0: default).")
@click.option("--runtime", type=click.Choice(FP32_PATHS), default="auto", show_default=True,
              help="For a .pt checkpoint, .pcz file or NAME --weights: auto runs the fastest path measured on "
                   "CPU (the BN-folded graph in ONNX Runtime); torch runs PyTorch eager.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list: per image {image, topk: [{index, label, prob}]} or {image, error}. "
                   "With --out: the run's summary.")
@click.option("--out", type=click.Path(), default=None,
              help="Stream one row per image into this file (.jsonl, .csv or .parquet) instead of printing; "
                   "SOURCEs may then be folders, globs and .txt/.csv manifests. With --engine ray: a folder.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default=None,
              help="With --out: the output format (default: by the suffix of --out; parquet for a Ray folder).")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="With --out: processes decoding images (default: the CPUs; 0: in this process). "
                   "With --engine ray: actors (default: the cluster's CPUs).")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="With --out: images per model run [32].")
@click.option("--resume", is_flag=True, help="With --out: skip the images already in --out and append the rest.")
@click.option("--force", is_flag=True, help="With --out: replace an existing --out (refused otherwise).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default=None,
              help="With --out: local (this machine, default) or ray (Ray Data; pip install 'pocketcnn[ray]').")
@click.option("--address", default=None,
              help="With --engine ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); default: a "
                   "local Ray runtime, stopped at the end.")
def predict(model, sources, weights, topk, threads, runtime, as_json, out, fmt, workers, batch_size, resume, force,
            engine, address) -> None:
    """Classify images with MODEL: a .pt checkpoint, .onnx (fp32/int8), .tflite, .pte, .pt2 or .pcz file,
    or a model NAME with --weights (ImageNet).

    Without --out, SOURCEs are image files and the results are printed (a table, or --json).
    An image that cannot be read gets a one-line error; the others are still classified,
    and the exit status is 1 if any image failed.

    With --out FILE, each SOURCE is an image file, a folder (recursive), a glob or a manifest
    (.txt: one path a line; .csv: a path column), and rows stream into FILE as they are made;
    memory stays flat however many images. Exit status: 0 every image classified, 1 some
    failed (error rows, counted), 2 the command line was refused before any work, 130/143
    stopped by Ctrl-C/SIGTERM (--resume finishes the run).
    """
    if out is None:
        given = [name for name in BATCH_ONLY if click.get_current_context().params.get(name) not in (None, False)]
        if given:
            option = "format" if given[0] == "fmt" else given[0].replace("_", "-")
            raise _refused(f"--{option} needs --out FILE (streaming batch inference)")
        _predict_files(model, sources, weights, topk, threads, runtime, as_json)
        return
    if weights is not None:
        raise _refused("--weights is for printed predictions; with --out, export the model first "
                       "(pocketcnn export) and give the .onnx file")
    if address is not None and engine != "ray":
        raise _refused("--address needs --engine ray")
    if engine == "ray":
        _predict_ray(model, sources, out, fmt, workers, batch_size, topk, resume, force, address, as_json)
    else:
        _predict_stream(model, sources, out, fmt, workers, batch_size, topk, threads, runtime, resume, force, as_json)


def _refused(exc: Exception | str) -> click.ClickException:
    """A PocketCNNError raised before any work: one line, exit status 2."""
    from . import UserError

    return UserError(str(exc), 2)


def _predict_stream(model, sources, out, fmt, workers, batch_size, topk, threads, runtime, resume, force,
                    as_json) -> None:
    from ..errors import PocketCNNError
    from ..workflows.batch import BATCH_SIZE, plan_batch, run_batch

    try:
        job = plan_batch(model, sources, out, fmt=fmt, workers=workers, batch_size=batch_size or BATCH_SIZE,
                         topk=topk, threads=threads, resume=resume, force=force, runtime=runtime)
    except PocketCNNError as exc:
        raise _refused(exc) from None
    if job.skip:
        err_console.print(f"resuming {out}: {len(job.skip):,} images done already", highlight=False)
    with _Reporter() as report:
        result = run_batch(job, report)
    _finish(result, as_json)


def _predict_ray(model, sources, out, fmt, workers, batch_size, topk, resume, force, address, as_json) -> None:
    from ..errors import MissingDependencyError, PocketCNNError
    from ..workflows.batch import BATCH_SIZE, UsageError
    from ..workflows.batch_ray import predict_batch_ray

    try:
        result = predict_batch_ray(model, list(sources), out, fmt=fmt, address=address, workers=workers,
                                   batch_size=batch_size or BATCH_SIZE, topk=topk, resume=resume, force=force,
                                   show_progress=sys.stderr.isatty())
    except (UsageError, MissingDependencyError) as exc:
        raise _refused(exc) from None
    except PocketCNNError:
        raise
    _finish(result, as_json)


def _finish(result, as_json: bool) -> None:
    if as_json:
        echo_json(result.to_dict())
    what = "rows" if result.engine == "ray" else "images"
    err_console.print(f"{result.rows:,} {what} -> {result.out} in {result.seconds:.1f} s "
                      f"({result.images_per_s:,.0f} images/s, {result.engine} engine, {result.workers} workers)"
                      + (f"; {result.skipped:,} done before" if result.skipped else ""), highlight=False,
                      soft_wrap=True)
    if result.interrupted:
        err_console.print(f"stopped by {result.interrupted}; {result.out} holds the rows so far: rerun with "
                          "--resume to finish", highlight=False, soft_wrap=True)
        raise click.exceptions.Exit(130 if result.interrupted == "SIGINT" else 143)
    if result.failed:
        err_console.print(f"{result.failed:,} of {result.rows:,} images failed (error rows in {result.out})",
                          highlight=False, soft_wrap=True)
        raise click.exceptions.Exit(1)


class _Reporter:
    """Progress of a streaming run on stderr: a live line with images/s on a terminal, else one
    line per :data:`PROGRESS_EVERY` images."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.next_line = PROGRESS_EVERY
        self.bar = None

    def __enter__(self) -> _Reporter:
        return self

    def _start_bar(self) -> None:
        """The live line, from the first batch on: its refresh thread starts after the workers (which
        fork from a process with one thread, see workflows.batch)."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=err_console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("classifying")

    def __call__(self, p) -> None:
        rate = p.done / p.seconds if p.seconds > 0 else 0.0
        text = f"{p.done:,} images, {rate:,.0f} images/s, {p.failed:,} failed"
        if self.tty and self.bar is None:
            self._start_bar()
        if self.bar is not None:
            self.bar.update(self.task, description=text)
        elif p.done >= self.next_line:
            err_console.print(text, highlight=False)
            self.next_line = (p.done // PROGRESS_EVERY + 1) * PROGRESS_EVERY

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _predict_files(model, images, weights, topk, threads, runtime, as_json) -> None:
    from ..workflows.predict import load_predictor, predictor_from_source

    if weights is not None:
        from ..artifacts.source import load_model_source

        predictor = predictor_from_source(load_model_source(model, weights), runtime=runtime, threads=threads)
    else:
        predictor = load_predictor(model, threads=threads, runtime=runtime)
    results = predictor.predict(list(images), topk=topk)
    failed = [r for r in results if not r.ok]
    if as_json:
        echo_json([r.to_dict() for r in results])
    else:
        for r in results:
            if not r.ok:
                tagged("error", "red", r.error or "")
                continue
            out_console.print(Text(r.image, style="bold"), soft_wrap=True)  # a long path stays one line
            table = Table("rank", "class", "index", "probability")
            for rank, t in enumerate(r.topk, 1):
                table.add_row(str(rank), t.label, str(t.index), f"{100 * t.prob:.2f}%")
            out_console.print(table)
    if failed:
        if not as_json:
            err_console.print(f"{len(failed)} of {len(results)} images failed", highlight=False)
        raise click.exceptions.Exit(1)
