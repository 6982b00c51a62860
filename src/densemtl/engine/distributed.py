"""Rank helpers and data parallelism. Single-process runs see rank 0 of 1; under ``torchrun``
with an initialised process group they report the real rank. The trainer writes files only on
the main process and merges metric meters across ranks with :func:`merge_meters`; the second
half of this module (:func:`init_from_env`, samplers, :func:`data_parallel`) is what
``torchrun -m densemtl train`` uses."""

from __future__ import annotations

import os
from typing import Iterator, Sized

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler


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


# ----------------------------------------------------------------------------- DDP (torchrun)
# ``torchrun --nproc_per_node=N -m densemtl train ...`` starts N processes with RANK, WORLD_SIZE,
# LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; the trainer joins their process group, shards
# the data, averages gradients with DistributedDataParallel and merges metrics.


def init_from_env(device: str) -> str:
    """Join the process group that torchrun's environment describes (WORLD_SIZE > 1): gloo on
    CPU, NCCL on CUDA, where each process takes the GPU ``cuda:LOCAL_RANK``. Returns the device
    name this process should use; without torchrun (or when already joined) nothing happens."""
    if not dist.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    if not is_distributed():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (if this process is in one)."""
    if is_distributed():
        dist.destroy_process_group()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (e.g. a config whose run folder name holds a time stamp)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (a copy; the input is unchanged)."""
    values = values.clone()
    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_mean_(values: torch.Tensor) -> torch.Tensor:
    """In place: ``values`` becomes its mean over all ranks (no copy; one process: unchanged)."""
    if is_distributed() and world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size()
    return values


def train_sampler(dataset: Sized, seed: int) -> DistributedSampler:
    """This rank's share of a shuffle seeded ``seed``. Rank r takes positions r, r + W, ... of
    the same permutation the single-process ``RandomSampler`` draws from a generator seeded
    ``seed``, so local batch s of all ranks together is global batch s of a single-process run
    with W times the batch size (when W x batch divides the dataset; otherwise the sampler
    pads by repeating a few samples so that every rank takes as many steps)."""
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    sampler.set_epoch(0)  # the seed already differs per epoch
    return sampler


class ShardSampler(Sampler[int]):
    """Evaluation shard of this rank: indices r, r + W, r + 2W, ... (no padding, no duplicate,
    so meters merged over the ranks see every sample exactly once)."""

    def __init__(self, dataset: Sized) -> None:
        self.indices = range(rank(), len(dataset), world_size())

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TrainModules(nn.Module):
    """The model and the loss weighting as one module, so that DDP averages the gradients of
    both (uncertainty weighting learns log-variances outside the model). ``forward`` runs the
    model only; the weighting is called by the trainer as usual."""

    def __init__(self, model: nn.Module, weighting: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.weighting = weighting

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)


def data_parallel(model: nn.Module, weighting: nn.Module, device: torch.device) -> nn.Module:
    """What the training step calls: ``model`` itself in one process, else a DDP wrapper of
    model + weighting (the caller keeps using ``model`` for evaluation and checkpoints)."""
    if not is_distributed() or world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(TrainModules(model, weighting), device_ids=ids)
