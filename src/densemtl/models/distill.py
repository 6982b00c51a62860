"""PAD-Net multi-modal distillation (Xu et al. 2018; SPEC 5.5), generic over tasks and width.

For every target task t, the features of each other task a pass through a spatial gate and are
added to t's own feature::

    out_t = f_t + sum_{a != t} conv3x3_ta(f_a) * sigmoid(conv3x3'_ta(f_a))

Each (target, source) pair has its own two 3x3 convolutions (no bias by default, as in the
MTI-Net codebase; ATI-Net's official code gives them a bias, hence ``bias=True`` there). Used by
PAD-Net, by MTI-Net at every scale, and by ATI-Net at the bottleneck.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .attention import RecordsAttention


class GatedMessage(nn.Module):
    """``conv3x3(x) * sigmoid(conv3x3'(x))``: what one task passes to another."""

    def __init__(self, channels: int, bias: bool = False) -> None:
        super().__init__()
        self.value = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.gate = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the gated message and the gate (both N x C x H x W)."""
        gate = torch.sigmoid(self.gate(x))
        return self.value(x) * gate, gate


class MultiModalDistillation(RecordsAttention):
    """Exchange information between task features by gated residual messages.

    ``forward({task: N x C x H x W}) -> {task: N x C x H x W}`` for the tasks named at
    construction (all must be present; every feature has ``channels`` channels and the same
    size). With a single task there is nothing to exchange and features pass through unchanged.
    Recorded attention: ``"<target><-<source>"``, the channel-mean gate, N x 1 x H x W.
    """

    def __init__(self, task_names: Sequence[str], channels: int, bias: bool = False) -> None:
        super().__init__()
        self.task_names = list(task_names)
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"duplicate task in {self.task_names}")
        self.channels = channels
        self.messages = nn.ModuleDict({
            t: nn.ModuleDict({a: GatedMessage(channels, bias) for a in self.task_names if a != t})
            for t in self.task_names
        })

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [t for t in self.task_names if t not in features]
        if missing:
            raise KeyError(f"distillation needs features for tasks {missing}")
        out = {}
        for t in self.task_names:
            refined = features[t]
            for a, message in self.messages[t].items():
                value, gate = message(features[a])
                refined = refined + value
                self.save_attention(f"{t}<-{a}", gate.mean(dim=1, keepdim=True))
            out[t] = refined
        return out

    def extra_repr(self) -> str:
        return f"tasks={self.task_names}, channels={self.channels}"
