"""Rank helpers. Single-process runs see rank 0 of 1; under ``torchrun`` with an initialised
process group they report the real rank. The trainer writes files only on the main process and
merges metric meters across ranks with :func:`merge_meters`."""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def merge_meters(meters: dict) -> dict:
    """Merge ``{task: meter}`` across ranks (every rank gets the merged meters).

    Meters are streaming accumulators with ``merge(other)``; one process returns them as they are.
    """
    if not is_distributed() or world_size() == 1:
        return meters
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, meters)
    merged = gathered[0]
    for other in gathered[1:]:
        for task, meter in merged.items():
            meter.merge(other[task])
    return merged
