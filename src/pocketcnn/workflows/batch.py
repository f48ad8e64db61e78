"""Streaming batch inference: ``pocketcnn predict MODEL SOURCE... --out FILE``.

A SOURCE is an image file, a folder (walked recursively, images picked by suffix), a glob
(``photos/**/*.png``) or a manifest (``.txt``: one path a line; ``.csv``: a ``path`` or
``image`` column; relative paths are relative to the manifest's folder). Paths are listed
lazily: nothing holds the whole list.

:func:`run_batch` hands batches of paths to ``workers`` processes, each with the model
opened once (ONNX Runtime on one thread): a worker decodes and preprocesses its batch (the
light runtime's :func:`~pocketcnn.runtime.images.preprocess`, so every row equals
``predict --json``) and classifies it. This process appends each batch's rows to the output
(JSON Lines, CSV or Parquet: :data:`OUTPUT_FORMATS`) in the order of the listing, flushed
and fsynced, as they are produced. At most ``2 x workers + 2`` batches are in flight, so
memory stays flat whatever the number of images. (Decoding in workers and running the model
here was measured slower on 2 cores: the model is the larger share of the work, and one
process running it on 2 threads scales worse than two on one.) A bad image (corrupt, truncated, empty, not an image, a
decompression bomb) is an error row; the run goes on.

Resume: the rows already in the output are read back (a torn last line, from a killed run,
is dropped and its image done again) and their images are skipped, so after ``SIGKILL`` a
``resume=True`` run ends with every image exactly once. Parquet keeps a footer at the end,
so its rows stream to a JSON Lines journal beside it (``OUT.parquet.partial.jsonl``) and the
Parquet file is written from it when the run ends or is interrupted (atomically).

This module imports no PyTorch: an ``.onnx`` or ``.tflite`` model runs in the light install.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts.formats import format_of
from ..data.spec import DataSpec
from ..errors import DataError, MissingDependencyError, OutputError, PocketCNNError, install_hint
from ..fileio import check_output
from ..runtime.images import preprocess
from ..validate import check_int

# Every suffix this module knows, in one place.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MANIFEST_SUFFIXES = (".txt", ".csv")
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}  # --out suffix -> format
MANIFEST_COLUMNS = ("path", "image", "file", "filename")  # a .csv manifest's path column, first found
JOURNAL_SUFFIX = ".partial.jsonl"  # beside OUT.parquet while rows are being written
CSV_COLUMNS = ("image", "index", "label", "prob", "topk_indices", "topk_labels", "topk_probs", "error")
BATCH_SIZE = 32
GLOB_CHARS = "*?["


class UsageError(PocketCNNError):
    """A command line refused before any image is classified (exit status 2)."""

    exit_code = 2


class WorkerError(PocketCNNError):
    """A worker process died during the run (exit status 1; ``--resume`` continues)."""


@dataclass(frozen=True)
class BatchResult:
    """What a batch run did. ``rows``: written by this run; ``failed``: of those, error rows;
    ``skipped``: images found in the output already (resume); ``seconds``: classification time."""

    out: str
    format: str
    engine: str
    rows: int
    failed: int
    skipped: int
    seconds: float
    workers: int
    batch_size: int
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run between two batches

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "format": self.format, "engine": self.engine, "rows": self.rows,
                "failed": self.failed, "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 1), "workers": self.workers, "batch_size": self.batch_size,
                "interrupted": self.interrupted}


@dataclass(frozen=True)
class Progress:
    """Reported after each batch: images done by this run, of which failed, seconds since the start."""

    done: int
    failed: int
    skipped: int
    seconds: float


# ---------------------------------------------------------------------------------------------- sources

def is_glob(source: str) -> bool:
    return any(c in source for c in GLOB_CHARS) and not Path(source).exists()


def check_sources(sources: Iterable[str | Path]) -> list[str]:
    """Each SOURCE exists and yields at least one path; else a one-line :class:`UsageError`."""
    sources = [str(s) for s in sources]
    if not sources:
        raise UsageError("no SOURCE given: name image files, folders, globs or .txt/.csv manifests")
    for source in sources:
        if is_glob(source):
            if next(glob.iglob(source, recursive=True), None) is None:
                raise UsageError(f"{source}: the glob matches no file")
            if next(iter_source(source), None) is None:
                raise UsageError(f"{source}: the glob matches no image file ({', '.join(IMAGE_SUFFIXES)})")
            continue
        path = Path(source)
        if not path.exists():
            raise UsageError(f"{source}: no such file or folder")
        if next(iter_source(source), None) is None:
            what = (f"holds no image file ({', '.join(IMAGE_SUFFIXES)})" if path.is_dir()
                    else "lists no image path")
            raise UsageError(f"{source}: {what}")
    return sources


def iter_source(source: str) -> Iterator[str]:
    """The image paths of one SOURCE, lazily (see the module docstring)."""
    if is_glob(source):
        for match in glob.iglob(source, recursive=True):
            if os.path.isdir(match):
                yield from walk_folder(match)
            else:
                yield match
        return
    path = Path(source)
    if path.is_dir():
        yield from walk_folder(source)
    elif path.suffix.lower() in MANIFEST_SUFFIXES:
        yield from read_manifest(path)
    else:
        yield source  # a file named on the command line is classified whatever its suffix


def iter_sources(sources: Iterable[str]) -> Iterator[str]:
    for source in sources:
        yield from iter_source(str(source))


def walk_folder(folder: str) -> Iterator[str]:
    """Image files under ``folder``, recursively, streamed as the folder is read (a folder of a
    million files is not listed into memory); sub-folders in name order, hidden ones skipped."""
    stack = [folder]
    while stack:
        top = stack.pop()
        subdirs = []
        try:
            with os.scandir(top) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        if entry.is_dir():
                            subdirs.append(entry.path)
                        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                            yield entry.path
                    except OSError:
                        continue
        except OSError as exc:
            raise DataError(f"{top}: cannot read the folder ({exc.strerror or exc})") from None
        stack.extend(sorted(subdirs, reverse=True))


def read_manifest(path: Path) -> Iterator[str]:
    """Paths listed in a ``.txt`` (one a line; blank lines and ``#`` comments skipped) or ``.csv``
    manifest (its ``path`` / ``image`` / ``file`` / ``filename`` column), relative to its folder."""
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    return
                names = [h.strip().lower() for h in header]
                column = next((names.index(c) for c in MANIFEST_COLUMNS if c in names), None)
                if column is None:
                    raise UsageError(f"{path}: a .csv manifest needs a column named one of "
                                     f"{', '.join(MANIFEST_COLUMNS)}, received {header}")
                for row in reader:
                    if len(row) > column and row[column].strip():
                        yield _resolve(base, row[column].strip())
            else:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        yield _resolve(base, line)
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a UTF-8 text manifest") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None


def _resolve(base: Path, entry: str) -> str:
    if os.path.isabs(entry) or str(base) in ("", "."):
        return entry
    return os.path.join(base, entry)


# ---------------------------------------------------------------------------------------------- rows

def record(path: str, topk: Any = None, error: str | None = None) -> dict[str, Any]:
    """The row of one image, as ``predict --json``: ``{image, topk: [{index, label, prob}]}`` or ``{image, error}``."""
    return {"image": path, "error": error} if error is not None else {"image": path, "topk": topk}


def to_csv_row(rec: dict[str, Any]) -> list[str]:
    if "error" in rec and rec["error"] is not None:
        return [rec["image"], "", "", "", "", "", "", rec["error"]]
    topk = rec["topk"]
    return [rec["image"], str(topk[0]["index"]), topk[0]["label"], repr(topk[0]["prob"]),
            json.dumps([t["index"] for t in topk]), json.dumps([t["label"] for t in topk]),
            json.dumps([t["prob"] for t in topk]), ""]


def from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    if row.get("error"):
        return record(row["image"], error=row["error"])
    return record(row["image"], [{"index": i, "label": la, "prob": p} for i, la, p in
                                 zip(json.loads(row["topk_indices"]), json.loads(row["topk_labels"]),
                                     json.loads(row["topk_probs"]))])


def normalize_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A row read from any output (Ray's folders too, with ``error: null``) in ``predict --json`` form."""
    if rec.get("error") is not None:
        return record(str(rec["image"]), error=str(rec["error"]))
    return record(str(rec["image"]), [{"index": int(t["index"]), "label": str(t["label"]), "prob": float(t["prob"])}
                                      for t in rec["topk"]])


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The format of an output path: ``fmt`` when given, else by suffix (:data:`OUTPUT_FORMATS`)."""
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS.values():
            raise UsageError(f"format must be one of {', '.join(OUTPUT_FORMATS.values())}, received {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"{path}: --out must end in {' or '.join(OUTPUT_FORMATS)} (JSON Lines, CSV, Parquet), "
                         f"received {suffix or 'no suffix'!r}")
    return OUTPUT_FORMATS[suffix]


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of an output file, or of a folder of output files (the Ray engine's), in
    ``predict --json`` form, streamed. A torn last line (a killed run) is skipped."""
    path = Path(path)
    if path.is_dir():
        for part in sorted(p for p in path.iterdir() if p.suffix.lower() in OUTPUT_FORMATS):
            yield from read_records(part)
        return
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt == "parquet":
        pq = _pyarrow_parquet()
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                yield normalize_record(rec)
        return
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(_complete_lines(f)):
                yield from_csv_row(row)
        return
    if fmt is None and not str(path).endswith(JOURNAL_SUFFIX):
        raise UsageError(f"{path}: not an output file ({', '.join(OUTPUT_FORMATS)})")
    with open(path, encoding="utf-8") as f:
        for line in _complete_lines(f):
            if line.strip():
                yield normalize_record(json.loads(line))


def _complete_lines(f: io.TextIOBase) -> Iterator[str]:
    for line in f:
        if line.endswith("\n"):
            yield line


def completed_paths(path: Path, fmt: str) -> set[str]:
    """Images with a row in the output (and the Parquet journal): what ``resume`` skips."""
    done: set[str] = set()
    journal = journal_path(path)
    for source in (path, journal if fmt == "parquet" else None):
        if source is not None and source.is_file():
            try:
                done.update(r["image"] for r in read_records(source))
            except (ValueError, KeyError, OSError) as exc:
                raise UsageError(f"{source}: cannot be resumed, its rows do not read back ({exc})") from None
    return done


def journal_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + JOURNAL_SUFFIX)


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("Parquet output needs pyarrow, which is not installed: "
                                     f"{install_hint('parquet')} (or write .jsonl / .csv)") from None
    return pq


def arrow_schema() -> Any:
    """The Parquet schema of both engines: image, topk (list of {index, label, prob}), error."""
    import pyarrow as pa

    topk = pa.list_(pa.struct([("index", pa.int64()), ("label", pa.string()), ("prob", pa.float64())]))
    return pa.schema([("image", pa.string()), ("topk", topk), ("error", pa.string())])


# ---------------------------------------------------------------------------------------------- writers

def jsonl_lines(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def csv_lines(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(to_csv_row(r) for r in rows)
    return buf.getvalue()


# rows -> the text an output appends (Parquet's rows go to its JSON Lines journal)
LINES: dict[str, Callable[[list[dict[str, Any]]], str]] = {"jsonl": jsonl_lines, "csv": csv_lines,
                                                          "parquet": jsonl_lines}


class _LineWriter:
    """Appends rows to a text file, each batch flushed and fsynced; a torn last line is cut first."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        if resume and path.is_file():
            _cut_torn_tail(path)
        fresh = not path.is_file() or path.stat().st_size == 0
        self.f = open(path, "a", encoding="utf-8", newline="")
        if fresh:
            self._header()

    def _header(self) -> None:
        pass

    def write_text(self, text: str) -> None:
        """Append rows already in this file's text form (:data:`LINES`, made by the workers)."""
        self.f.write(text)
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


class _CsvWriter(_LineWriter):
    def _header(self) -> None:
        self.f.write(",".join(CSV_COLUMNS) + "\n")


class _ParquetWriter(_LineWriter):
    """Rows go to the JSON Lines journal; :meth:`close` writes ``OUT.parquet`` from an earlier
    Parquet file (resume) plus the journal, atomically, in row groups, then removes the journal."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.target = path
        self.pq = _pyarrow_parquet()
        super().__init__(journal_path(path), resume)

    def close(self) -> None:
        if self.f.closed:
            return
        super().close()
        import pyarrow as pa

        from ..fileio import atomic_write

        schema = arrow_schema()

        def write(tmp: str) -> None:
            with self.pq.ParquetWriter(tmp, schema) as out:
                if self.target.is_file():
                    for batch in self.pq.ParquetFile(self.target).iter_batches(batch_size=4096):
                        out.write_batch(batch.cast(schema) if batch.schema != schema else batch)
                chunk: list[dict[str, Any]] = []
                for rec in read_records(self.path):
                    chunk.append({"image": rec["image"], "topk": rec.get("topk"), "error": rec.get("error")})
                    if len(chunk) == 4096:
                        out.write_table(pa.Table.from_pylist(chunk, schema))
                        chunk = []
                if chunk:
                    out.write_table(pa.Table.from_pylist(chunk, schema))

        atomic_write(self.target, write)
        self.path.unlink(missing_ok=True)


WRITERS = {"jsonl": _LineWriter, "csv": _CsvWriter, "parquet": _ParquetWriter}


def _cut_torn_tail(path: Path) -> None:
    """Drop the bytes after the last newline (half a row from a killed run)."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                pos = pos - step + nl + 1
                break
            pos -= step
        if pos != size:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------- decoding

def decode_chunk(spec: DataSpec, paths: list[str], *, names: list[str] | None = None,
                 ) -> tuple[list[str], np.ndarray | None, list[tuple[int, str]]]:
    """Preprocess ``paths``: (names, float32 (n_ok, C, S, S) of the readable ones in order, [(position, error)]).
    ``names``: how rows and errors name the images (default: the paths)."""
    names = paths if names is None else names
    arrays, errors = [], []
    for i, (path, name) in enumerate(zip(paths, names)):
        try:
            arrays.append(preprocess(path, spec, name=name))
        except PocketCNNError as exc:
            errors.append((i, str(exc)))
    return names, (np.stack(arrays) if arrays else None), errors


def rows_for(predictor: Any, paths: list[str], arrays: np.ndarray | None, errors: list[tuple[int, str]], *,
             topk: int) -> list[dict[str, Any]]:
    """The rows of one decoded chunk (:func:`decode_chunk`), in the order of ``paths``: the model
    runs once on the readable images; the others get their error."""
    rows: list[dict[str, Any] | None] = [None] * len(paths)
    for i, message in errors:
        rows[i] = record(paths[i], error=message)
    if arrays is not None:
        probs = predictor.probabilities(arrays)
        for i, p in zip((i for i in range(len(paths)) if rows[i] is None), probs):
            rows[i] = predictor.top(paths[i], p, topk).to_dict()
    return rows  # type: ignore[return-value]


_WORKER: dict[str, Any] = {}  # in a worker process: its own predictor


def _worker_init(model: str, threads: int | None, runtime: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent handles it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER["predictor"] = load_model(model, threads=threads, runtime=runtime)


def classify_chunk(predictor: Any, paths: list[str], topk: int, fmt: str) -> tuple[str, int, int]:
    """Decode, preprocess and classify one chunk -> (its rows as the output's text (:data:`LINES`), rows,
    error rows). The text is made where the rows are: the writing process only appends it."""
    decoded = decode_chunk(predictor.spec, paths)
    rows = rows_for(predictor, *decoded, topk=topk)
    return LINES[fmt](rows), len(rows), len(decoded[2])


def _worker_chunk(paths: list[str], topk: int, fmt: str) -> tuple[str, int, int]:
    """In a worker: :func:`classify_chunk` with the worker's own predictor."""
    return classify_chunk(_WORKER["predictor"], paths, topk, fmt)


def _chunks(paths: Iterator[str], size: int, skip: set[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for path in paths:
        if path in skip:
            continue
        chunk.append(path)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _forkable(job: "BatchJob") -> bool:
    """Whether this process holds nothing a forked child must not inherit: a model of the light runtime,
    opened on one thread (ONNX Runtime and LiteRT start no thread pool for one thread)."""
    fmt = format_of(job.model)
    return fmt is not None and fmt.light and (job.threads or 1) == 1


def _mp_context(forkable: bool) -> Any:
    """How the workers start. ``fork`` where it is safe and fastest: on Linux, when this process is
    :func:`_forkable` and has one Python thread; the workers then start with everything imported,
    sooner than from a fork server (which imports it all again). Otherwise a fork server (no
    threads inherited: PyTorch's OpenMP pool must not be forked), or ``spawn`` where there is none."""
    import threading

    methods = multiprocessing.get_all_start_methods()
    if forkable and sys.platform.startswith("linux") and "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:  # children fork from a clean server: no threads of ONNX Runtime inherited
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


# ---------------------------------------------------------------------------------------------- the job

@dataclass
class BatchJob:
    """A checked job, ready to run (:func:`plan_batch`); nothing classified or written yet."""

    predictor: Any  # opened here (a model that does not open is refused before any work)
    model: str
    sources: list[str]
    out: Path
    format: str
    workers: int
    batch_size: int
    topk: int
    resume: bool
    skip: set[str]
    threads: int | None = None  # ONNX Runtime threads of each worker (None: 1 with workers, else the CPUs)
    runtime: str = "auto"


def check_options(batch_size: int, workers: int | None, topk: int) -> int:
    check_int("batch_size", batch_size, error=UsageError)
    check_int("topk", topk, error=UsageError)
    return default_workers() if workers is None else check_int("workers", workers, 0, error=UsageError)


def check_out(out: str | Path, fmt: str, *, model: str | Path, resume: bool, force: bool) -> Path:
    """Refuse an output that exists without ``resume`` or ``force``, or cannot be written; before any work."""
    out = Path(out)
    if resume and force:
        raise UsageError("--resume and --force exclude each other: --resume continues --out, --force replaces it")
    try:
        check_output(out, inputs=[model], what="--out file")
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    exists = out.exists() or (fmt == "parquet" and journal_path(out).exists())
    if exists and not (resume or force):
        raise UsageError(f"{out}: exists; pass --resume to continue it or --force to replace it")
    if out.exists() and not os.access(out, os.W_OK):
        raise UsageError(f"{out}: cannot write the --out file there (permission denied)")
    return out


def plan_batch(model: str | Path, sources: Iterable[str | Path], out: str | Path, *, fmt: str | None = None,
               workers: int | None = None, batch_size: int = BATCH_SIZE, topk: int = 5, threads: int | None = None,
               resume: bool = False, force: bool = False, runtime: str = "auto") -> BatchJob:
    """Check everything before any work: options, --out (suffix, writable, exists without
    resume/force), each source (exists, not empty), the model (opened). Raises :class:`UsageError`
    for a refused command line; a model that cannot be read raises its own error."""
    workers = check_options(batch_size, workers, topk)
    fmt = output_format(out, fmt)
    if fmt == "parquet":
        _pyarrow_parquet()
    out = check_out(out, fmt, model=model, resume=resume, force=force)
    sources = check_sources(sources)
    worker_threads = threads or (1 if workers else None)  # workers: one core each
    predictor = load_model(model, threads=worker_threads, runtime=runtime)
    skip = completed_paths(out, fmt) if resume else set()
    return BatchJob(predictor, str(model), sources, out, fmt, workers, batch_size, topk, resume, skip,
                    worker_threads, runtime)


def load_model(model: str | Path, *, threads: int | None = None, runtime: str = "auto") -> Any:
    """The :class:`~pocketcnn.runtime.predictor.Predictor` of a model file; ``.onnx`` / ``.tflite``
    in the light runtime (ONNX Runtime's idle threads sleep: the decoders need the cores)."""
    fmt = format_of(model)
    if fmt is not None and fmt.light:
        from ..runtime.predictor import open_model

        return open_model(model, threads=threads, spinning=False)
    from .predict import load_predictor  # .pt / .pcz / .pte / .pt2: needs PyTorch, imported there

    return load_predictor(model, threads=threads, runtime=runtime)


def run_batch(job: BatchJob, progress: Callable[[Progress], None] | None = None, *,
              handle_signals: bool = True) -> BatchResult:
    """Classify every image of ``job`` into its output, streaming (see the module docstring).

    ``handle_signals``: SIGINT (Ctrl-C) and SIGTERM stop the run after the batch being written,
    with ``interrupted`` set in the result; the output is left readable and ``resume`` finishes it."""
    out, predictor = job.out, job.predictor
    if not job.resume:
        out.unlink(missing_ok=True)  # --force (checked in plan_batch): the old rows go
        journal_path(out).unlink(missing_ok=True)
    writer = WRITERS[job.format](out, job.resume)
    chunks = _chunks(iter_sources(job.sources), job.batch_size, job.skip)
    done = failed = 0
    start = time.perf_counter()
    pool = None
    stop = _Stop() if handle_signals else None
    try:
        if job.workers == 0:
            results: Iterator[tuple[str, int, int]] = (classify_chunk(predictor, chunk, job.topk, job.format)
                                                       for chunk in chunks)
        else:
            pool = ProcessPoolExecutor(job.workers, mp_context=_mp_context(_forkable(job)), initializer=_worker_init,
                                       initargs=(str(job.model), job.threads, job.runtime))
            results = _in_order(pool, chunks, (job.topk, job.format), limit=2 * job.workers + 2, out=out)
        for text, rows, errors in results:
            writer.write_text(text)
            done += rows
            failed += errors
            if progress is not None:
                progress(Progress(done, failed, len(job.skip), time.perf_counter() - start))
            if stop is not None and stop.signal is not None:
                break
    finally:
        if stop is not None:
            stop.restore()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # the batches being classified finish (a second or less)
        writer.close()
    return BatchResult(str(out), job.format, "local", done, failed, len(job.skip), time.perf_counter() - start,
                       job.workers, job.batch_size, stop.signal if stop is not None else None)


def _in_order(pool: Any, chunks: Iterator[list[str]], args: tuple[Any, ...], limit: int, out: Path) -> Iterator[Any]:
    """The workers' results in the order of ``chunks``, at most ``limit`` chunks in flight
    (bounded memory; the workers never wait for work). A worker that dies (killed, out of
    memory, a crash in a decoder) ends the run with one line, not a hang."""
    pending: deque[Any] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_worker_chunk, chunk, *args))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise WorkerError(f"a worker process died (killed, or out of memory) while classifying; the rows so far are "
                          f"in {out}: rerun with --resume to finish") from None


class _Stop:
    """SIGINT / SIGTERM handlers that ask the run to stop after the batch being written (a second
    signal stops at once); only in the main thread, where Python delivers signals."""

    def __init__(self) -> None:
        import threading

        self.signal: str | None = None
        self.saved: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def predict_batch(model: str | Path, sources: Iterable[str | Path], out: str | Path, *,
                  progress: Callable[[Progress], None] | None = None, handle_signals: bool = True,
                  **options: Any) -> BatchResult:
    """:func:`plan_batch` then :func:`run_batch`: the library call of ``pocketcnn predict ... --out``."""
    return run_batch(plan_batch(model, sources, out, **options), progress, handle_signals=handle_signals)


__all__ = ["predict_batch", "plan_batch", "run_batch", "BatchJob", "BatchResult", "Progress", "UsageError",
           "iter_sources", "check_sources", "read_records", "completed_paths", "IMAGE_SUFFIXES", "MANIFEST_SUFFIXES",
           "OUTPUT_FORMATS"]
