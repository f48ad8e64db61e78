"""Small file helpers shared by every layer (no torch): atomic writes, output-path checks, file hashes.

Every file pocketcnn writes (checkpoints, results, plots, exported models) goes through
:func:`atomic_write`: the content is written to a temporary file in the same folder and
renamed over the target, so a reader never sees half a file and an interrupted write
leaves the old file intact.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import OutputError


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: files get the permissions an ordinary open() would give them


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; a served model must be readable by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def file_digest(path: str | Path, algorithm: str = "sha256") -> hashlib._Hash:
    """The ``hashlib`` digest (``algorithm``: sha256, sha512, ...) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex (read in blocks: a large model file is never read whole)."""
    return file_digest(path).hexdigest()


def check_output(path: str | Path, *, inputs: Iterable[str | Path | None] = (), suffixes: Iterable[str] = (),
                 what: str = "output") -> Path:
    """Check an output path BEFORE any work is done, so that no long run fails at its end.

    Refuses (one-line :class:`OutputError` naming the path): a path equal to one of ``inputs``
    (the command would write over what it reads), a suffix not in ``suffixes`` (when given),
    a folder, and a place that cannot be written (tried for real: a temporary file is created
    and removed in the nearest existing folder). Creates nothing.
    """
    path = Path(path)
    allowed = tuple(s.lower() for s in suffixes)
    if allowed and path.suffix.lower() not in allowed:
        raise OutputError(f"{path}: the {what} must end in {' or '.join(allowed)}, received {path.suffix or 'no suffix'!r}")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; the {what} must be a file path")
    target = path.resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            raise OutputError(f"{path}: the {what} would replace the input {source}; choose another --out")
    check_writable_dir(path.parent, what)
    return path


def check_writable_dir(folder: str | Path, what: str = "output") -> Path:
    """Check that files can be created in ``folder`` (or, when it does not exist yet, in its nearest
    existing ancestor), by creating and removing a temporary file; a one-line OutputError if not."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{folder}: cannot write the {what} there ({probe} is not a folder)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pocketcnn-write-check.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the {what} there ({exc.strerror or exc})") from None
    return folder
