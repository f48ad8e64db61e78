"""torch.distributed glue: torchrun's environment in, rank/world out.

The engine calls :func:`setup` once per run and :func:`teardown` on every way out of it (the end,
an error, an interrupt); with no torchrun variables it is a single process and both do nothing.
A gloo group left alive at interpreter exit is the usual cause of "terminate called without an
active exception" (SIGABRT) in a worker that had finished its work.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # setup() made the process group (so teardown() destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str, timeout_s: float = 120.0) -> DistInfo:
    """Join the process group torchrun described (gloo on CPU, nccl on CUDA), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def teardown(info: DistInfo) -> None:
    """Destroy the process group :func:`setup` made for ``info`` (a group made by the caller is left to it)."""
    if info.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place), a no-op for one process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_flags(flags: list[bool], info: DistInfo, device: torch.device) -> list[bool]:
    """Each flag True on every rank if it is True on any rank (one all-reduce for all of them)."""
    if not info.enabled:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]
