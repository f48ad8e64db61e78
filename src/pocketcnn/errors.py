"""User-facing errors.

Every error a user can cause (a bad model name, a missing file, a bad value) is a
:class:`PocketCNNError`. The CLI turns it into one line on stderr and a non-zero exit;
library callers can catch the specific subclass.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class PocketCNNError(Exception):
    """Base class of every error meant for the user, not the developer."""

    exit_code = 1


class UnknownModelError(PocketCNNError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(PocketCNNError, ValueError):
    """A keyword, option or configuration value that is not allowed."""


class DataError(PocketCNNError):
    """A data file that is missing, truncated, corrupt or of the wrong format."""


class CheckpointError(PocketCNNError):
    """A checkpoint or weight file that cannot be read or does not fit the model."""


class ExportError(PocketCNNError):
    """An export or runtime check that failed."""


class OutputError(PocketCNNError):
    """An output path that cannot be used: it is an input, has the wrong suffix, or cannot be written."""


class MissingDependencyError(PocketCNNError):
    """A feature whose optional package is not installed; the message names the extra to install."""


# The optional packages (top-level module -> the pyproject extra that installs it). The base install
# (numpy, onnxruntime, Pillow, click, rich, starlette, uvicorn) is the light, deployed side.
EXTRA_OF_MODULE = {
    "torch": "train", "torchvision": "train", "onnx": "train", "onnxscript": "train", "matplotlib": "train",
    "safetensors": "train", "executorch": "mobile", "coremltools": "mobile", "litert_torch": "litert",
    "ai_edge_litert": "litert", "ray": "ray", "pyarrow": "parquet",
}
PACKAGE_OF_MODULE = {"torch": "PyTorch", "ai_edge_litert": "ai-edge-litert", "litert_torch": "litert-torch"}


def install_hint(extra: str) -> str:
    """The command that installs an extra, e.g. ``pip install 'pocketcnn[train]'``."""
    return f"pip install 'pocketcnn[{extra}]'"


def missing_extra(exc: ModuleNotFoundError, what: str) -> MissingDependencyError | None:
    """``exc`` (an optional package that is not installed) as one line naming ``what`` needed it and the
    install; None when the missing module is not one of the optional packages (a real bug: let it raise)."""
    root = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(root)
    if extra is None:
        return None
    package = PACKAGE_OF_MODULE.get(root, root)
    light = " (the light install leaves it out)" if extra == "train" else ""
    return MissingDependencyError(f"{what} needs {package}, which is not installed{light}: {install_hint(extra)}")


class TrainingError(PocketCNNError):
    """Training stopped because it cannot go on (non-finite loss, for example)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), cut to ``limit``.

    Third-party libraries raise long, multi-line messages; a user gets this one line.
    """
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def close_matches(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean: a, b?"`` for the closest choices, or ``""``."""
    found = difflib.get_close_matches(str(value), list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(found)}?" if found else ""
