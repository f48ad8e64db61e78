"""What :func:`~pocketcnn.train.engine.fit` tells its caller, on rank 0 only."""
from __future__ import annotations

from typing import Any, Protocol


class Callbacks(Protocol):
    """The engine's progress reports. A class that subclasses this one inherits a no-op for each
    method it leaves out; any other object passed as callbacks must define all four."""

    def on_start(self, notes: list[str]) -> None:
        """Once, before the first step: what the set-up chose (input size, pretrained weights, frozen layers)."""

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        """``epoch`` counts from 1; ``steps``: optimizer steps per epoch."""

    def on_step(self, step: int, loss: float, acc: float, images_per_s: float) -> None:
        """After each optimizer step: the step in the epoch (from 1), its loss, the epoch's top-1 so far."""

    def on_epoch_end(self, metrics: dict[str, Any]) -> None:
        """The epoch's metrics, as appended to ``metrics.jsonl``."""
