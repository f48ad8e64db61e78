"""Ctrl-C and SIGTERM during training: a flag the loop checks between steps, then a checkpoint and :class:`Interrupted`."""
from __future__ import annotations

import signal
from typing import Any

from ..errors import PocketCNNError


class Interrupted(PocketCNNError):
    """Training stopped by SIGINT/SIGTERM after saving a checkpoint."""

    exit_code = 130


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop checks between steps (handlers restored on exit)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if hasattr(signal, "SIGTERM"):
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                self._old.clear()
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
