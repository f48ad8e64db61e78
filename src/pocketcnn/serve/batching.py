"""Dynamic batching: images of concurrent requests gathered into one model run.

A batch starts with the oldest waiting image and takes up to ``max_batch`` images, waiting
at most ``max_wait_s`` after that first image arrived for more to come. Up to ``parallel``
batches run at the same time, each in a thread of ``executor`` (ONNX Runtime releases the
GIL), so the event loop keeps accepting requests; while every run slot is busy, arriving
images wait and make the next batch bigger. Each image's result goes back to the future
of the request that sent it.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np


class BatcherClosed(RuntimeError):
    """The server is shutting down; the image was not run."""


@dataclass
class _Item:
    array: np.ndarray  # float32 (C, S, S)
    future: asyncio.Future
    arrived: float  # loop time


class DynamicBatcher:
    """``await submit([x1, x2, ...])`` -> one result row per array, in order.

    ``run``: float32 ``(N, C, S, S)`` -> ``(N, ...)``, called in ``executor`` (thread-safe when
    ``parallel > 1``). ``on_batch(size, seconds)``: called on the loop after each run (metrics).
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_wait_s: float,
                 executor: Executor, on_batch: Callable[[int, float], None] | None = None, parallel: int = 1) -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = executor
        self.on_batch = on_batch
        self.parallel = parallel
        # bound to the running event loop on first use (a test client may bring a new loop)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None  # the collecting loop
        self._running: set[asyncio.Task] = set()  # batches in flight
        self._pending: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the server is shutting down)."""
        return self._closed

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():  # first use, or a new loop (tests)
            self._loop = loop
            self._wake = asyncio.Event()
            self._slots = asyncio.Semaphore(self.parallel)
            self._pending = deque(it for it in self._pending if not it.future.done() and it.future.get_loop() is loop)
            self._task = loop.create_task(self._serve(), name="pocketcnn-batcher")
        return loop

    async def submit(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        loop = self._ensure_started()
        items = [_Item(a, loop.create_future(), loop.time()) for a in arrays]
        self._pending.extend(items)
        assert self._wake is not None
        self._wake.set()
        return list(await asyncio.gather(*(it.future for it in items)))

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        wake, slots = self._wake, self._slots
        assert wake is not None and slots is not None
        while True:
            await slots.acquire()  # while every run slot is busy, arriving images make the next batch bigger
            while not self._pending:
                wake.clear()
                await wake.wait()
            deadline = self._pending[0].arrived + self.max_wait_s
            while len(self._pending) < self.max_batch and (left := deadline - loop.time()) > 0:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)  # cancelling Event.wait loses nothing
                except asyncio.TimeoutError:
                    break
            batch: list[_Item] = []
            while self._pending and len(batch) < self.max_batch:
                item = self._pending.popleft()
                if not item.future.done():  # a request that went away is skipped
                    batch.append(item)
            if not batch:
                slots.release()
                continue
            task = loop.create_task(self._run_batch(batch, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[_Item], slots: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            out = await loop.run_in_executor(self.executor, self.run, np.stack([it.array for it in batch]))
        except Exception as exc:
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            slots.release()
        for it, row in zip(batch, out):
            if not it.future.done():
                it.future.set_result(row)
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - start)

    async def close(self) -> None:
        """Stop taking images: batches in flight finish, images still waiting fail with :class:`BatcherClosed`."""
        self._closed = True
        running = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is running:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._running and self._loop is running:  # runs in flight finish and answer their requests
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done() and item.future.get_loop() is running:
                item.future.set_exception(BatcherClosed("the server is shutting down"))
