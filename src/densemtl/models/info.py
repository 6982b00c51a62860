"""Model size and compute: parameter count and FLOPs of one forward pass."""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (every ``nn.Parameter``, trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> float:
    """GFLOPs of one inference forward pass on a ``batch`` x 3 x H x W input (``size`` = (H, W)).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
    multiply-add of convolutions and matrix products (normalisation, activations and pooling
    are not counted). The pass runs on the ``meta`` device (shapes only, no arithmetic, no copy
    of the weights), in eval mode; a model that needs real values (data-dependent control flow,
    ``.item()``) is run for real on its device instead, which fails if the model itself lives on
    the meta device. The model's train/eval mode is restored afterwards.
    """
    h, w = size
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        try:
            tensors = {name: t.to("meta") for name, t in
                       itertools.chain(model.named_parameters(), model.named_buffers())}
            return _count(lambda x: functional_call(model, tensors, (x,)), batch, h, w, "meta")
        except (NotImplementedError, RuntimeError):  # needs real values; real errors recur below
            device = next(itertools.chain(model.parameters(), model.buffers())).device
            return _count(model, batch, h, w, device)
    finally:
        for m, training in zip(model.modules(), was_training):
            m.training = training


def _count(run, batch: int, h: int, w: int, device) -> float:
    images = torch.zeros(batch, 3, h, w, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        run(images)
    return counter.get_total_flops() / 1e9
