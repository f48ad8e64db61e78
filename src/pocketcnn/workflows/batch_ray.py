"""The Ray engine of batch inference: ``pocketcnn predict MODEL SOURCE... --out FOLDER --engine ray``.

The same job as :mod:`pocketcnn.workflows.batch` on a Ray cluster through Ray Data: the
paths the SOURCEs list (same rules) become a dataset of ``image`` rows, an actor pool maps
batches of them (:class:`BatchPredictor`: the model opened once per actor in the light
runtime; each batch decoded with :func:`~pocketcnn.runtime.images.preprocess` and classified,
so the rows equal the local engine's and ``predict --json``), and Ray writes the rows as
Parquet or JSON Lines, one file per block, into the output folder.

Without ``address`` (nor ``RAY_ADDRESS`` in the environment) a local Ray runtime is started
(``num_cpus`` = ``workers``, no dashboard) and stopped at the end; with ``address`` (``auto``,
``HOST:6379`` or ``ray://HOST:10001``) the job runs on that cluster, whose nodes must read the model and the images at the same
paths (a shared file system) and have pocketcnn installed.

Each actor reserves :data:`ACTOR_CPUS` of a CPU and runs ONNX Runtime on one thread: on a
2-CPU machine two actors with a whole CPU each leave none for Ray's write tasks and the job
never starts. Needs ``pip install 'pocketcnn[ray]'``; imports no PyTorch.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, install_hint
from .batch import (BATCH_SIZE, OUTPUT_FORMATS, BatchResult, UsageError, arrow_schema, check_options, check_sources,
                    decode_chunk, iter_sources, load_model, rows_for)

ACTOR_CPUS = 0.5  # logical CPUs each actor reserves (see the module docstring)
ROWS_PER_BLOCK = 2048  # images per block, so per output file (at least 4 blocks per actor: no idle tail)
RAY_FORMATS = ("parquet", "jsonl")
RAY_BATCH = 1024  # rows per actor call (Ray's per-call cost spread over more images); the model runs --batch-size


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"--engine ray needs Ray Data, which is not installed: {install_hint('ray')}") from None
    return ray


class BatchPredictor:
    """A Ray Data actor: the model opened once; ``pyarrow.Table`` of ``image`` paths -> rows."""

    def __init__(self, model: str, topk: int, batch_size: int = BATCH_SIZE, threads: int = 1) -> None:
        self.predictor = load_model(model, threads=threads)
        self.topk = topk
        self.batch_size = batch_size
        self.schema = arrow_schema()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        names = [str(p) for p in batch.column("image").to_pylist()]
        files = [str(p) for p in batch.column("file").to_pylist()]
        rows = []
        for i in range(0, len(names), self.batch_size):  # the model runs on --batch-size images at a time
            decoded = decode_chunk(self.predictor.spec, files[i:i + self.batch_size], names=names[i:i + self.batch_size])
            rows += rows_for(self.predictor, *decoded, topk=self.topk)
        return pa.Table.from_pylist([{"image": r["image"], "topk": r.get("topk"), "error": r.get("error")}
                                     for r in rows], schema=self.schema)


def ray_format(out: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = OUTPUT_FORMATS.get(out.suffix.lower(), "parquet")
    if fmt not in RAY_FORMATS:
        raise UsageError(f"--engine ray writes {' or '.join(RAY_FORMATS)} files, received format {fmt!r}")
    return fmt


def check_out_folder(out: str | Path, *, force: bool, resume: bool) -> Path:
    """The output folder: refused when it is a file, holds files and ``force`` is not given, or
    holds anything but earlier output files (which ``force`` removes); nothing is created."""
    from ..fileio import check_writable_dir

    out = Path(out)
    if resume:
        raise UsageError("--resume is for the local engine (one file); the Ray engine writes a folder in one go: "
                         "rerun with --force")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: is a file; --engine ray writes a folder of files (name a new folder)")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UsageError(f"{out}: exists and is not empty; pass --force to replace its output files")
        others = [p.name for p in out.iterdir() if p.suffix.lower() not in OUTPUT_FORMATS or p.is_dir()]
        if others:
            raise UsageError(f"{out}: holds other files than output files ({', '.join(sorted(others)[:3])}); "
                             "--force replaces output files only: name another folder")
    try:
        check_writable_dir(out, "--out folder")
    except Exception as exc:
        raise UsageError(str(exc)) from None
    return out


def _start_ray(ray: Any, address: str | None, workers: int | None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local runtime with ``workers`` CPUs
    (default: this machine's); nothing when Ray is already up. Whether this call started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None  # as ray.init itself reads it
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    else:
        from .batch import default_workers

        ray.init(num_cpus=workers or default_workers(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    return True


def predict_batch_ray(model: str | Path, sources: list[str], out: str | Path, *, fmt: str | None = None,
                      address: str | None = None, workers: int | None = None, batch_size: int = BATCH_SIZE,
                      topk: int = 5, resume: bool = False, force: bool = False,
                      show_progress: bool = False) -> BatchResult:
    """Classify every image of ``sources`` on Ray into the folder ``out`` (see the module docstring).

    ``workers``: actors (default: the cluster's CPUs). Refusals before any work are :class:`UsageError`.
    """
    ray = _ray()
    workers_given = workers
    check_options(batch_size, workers, topk)
    out = Path(out)
    fmt = ray_format(out, fmt)
    out = check_out_folder(out, force=force, resume=resume)
    sources = check_sources(sources)
    model = str(Path(model).resolve())
    load_model(model, threads=1)  # a model that does not open is one line here, not an actor's traceback
    # rows name the images as listed; actors open them by absolute path (their working folder is not ours)
    items = [{"image": p, "file": os.path.abspath(p)} for p in iter_sources(sources)]

    started = _start_ray(ray, address, workers_given)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = show_progress
        ctx.print_on_execution_start = False
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        actors = workers_given or max(1, int(ray.cluster_resources().get("CPU", 1)))
        blocks = max(4 * actors, math.ceil(len(items) / ROWS_PER_BLOCK))
        # a call takes at most a block: a larger one would wait for blocks to bundle and leave actors idle
        per_call = max(batch_size, min(RAY_BATCH, math.ceil(len(items) / blocks)))
        for old in (out.iterdir() if out.is_dir() else ()):  # --force (checked above): earlier output files
            old.unlink()
        start = time.perf_counter()
        ds = ray.data.from_items(items, override_num_blocks=min(blocks, len(items)))
        del items
        ds = ds.map_batches(BatchPredictor, fn_constructor_kwargs={"model": model, "topk": topk,
                                                                  "batch_size": batch_size, "threads": 1},
                            batch_size=per_call, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=ACTOR_CPUS)
        if fmt == "parquet":
            ds.write_parquet(str(out.resolve()))
        else:
            ds.write_json(str(out.resolve()), double_precision=15, force_ascii=False)
            for part in out.glob("*.json"):  # Ray names JSON Lines files .json
                part.rename(part.with_suffix(".jsonl"))
        seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    rows, failed = count_rows(out, fmt)
    return BatchResult(str(out), fmt, "ray", rows, failed, 0, seconds, actors, batch_size)


def count_rows(out: Path, fmt: str) -> tuple[int, int]:
    """Rows and error rows in an output folder (read back from the files Ray wrote)."""
    rows = failed = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for part in sorted(out.glob("*.parquet")):
            column = pq.read_table(part, columns=["error"]).column("error")
            rows += len(column)
            failed += len(column) - column.null_count
        return rows, failed
    from .batch import read_records

    for rec in read_records(out):
        rows += 1
        failed += "error" in rec
    return rows, failed

