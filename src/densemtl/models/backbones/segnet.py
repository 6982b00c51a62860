"""SegNet encoder-decoder as used by MTAN and its baselines (SPEC 5.1).

Five levels with filters f = [64, 128, 256, 512, 512] (times the width multiplier). Encoder level
j is a :class:`~densemtl.models.blocks.Stage` (one conv unit changing channels, then 1 more unit at
levels 0-1 and 2 more at levels 2-4) followed by 2x2 max-pooling that keeps its indices. The
decoder mirrors it, deepest level first: max-unpool with the stored indices, then a stage that
reduces the channels. Input height and width must be multiples of 32.

Channel layouts are plain lists so that the baselines can build the variants they need
(dense: task stages take concatenated inputs; split-wide: last filter 1024; split-deep: every
conv unit doubled) from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..blocks import Stage
from ..registry import scaled

FILTERS = (64, 128, 256, 512, 512)
LEVELS = len(FILTERS)
SIZE_MULTIPLE = 2 ** LEVELS


def segnet_filters(width: float = 1.0, last: int = FILTERS[-1]) -> list[int]:
    """The five filter counts at width multiplier ``width`` (``last`` replaces the deepest one)."""
    return [scaled(c, width) for c in (*FILTERS[:-1], last)]


def encoder_channels(filters: list[int], in_channels: int = 3) -> list[list[int]]:
    """Channel list of every encoder stage, shallowest first."""
    out = []
    prev = in_channels
    for j, f in enumerate(filters):
        out.append([prev, f] + [f] * (1 if j < 2 else 2))
        prev = f
    return out


def decoder_channels(filters: list[int]) -> list[list[int]]:
    """Channel list of every decoder stage, deepest first (mirror of the encoder)."""
    out = []
    for j in reversed(range(LEVELS)):
        f_out = filters[max(j - 1, 0)]
        out.append([filters[j], f_out] + [f_out] * (1 if j < 2 else 2))
    return out


@dataclass
class Encoded:
    """What the shared encoder computed, shallowest level first.

    ``first[j]``: output of level j's first conv unit (MTAN's u_j); ``last[j]``: output of its
    last unit before pooling (p_j); ``pooled[j]``: its max-pooled output and ``indices[j]`` the
    pooling indices. ``bottleneck`` is the deepest pooled output (f[4] channels at 1/32 resolution).
    """

    first: list[torch.Tensor]
    last: list[torch.Tensor]
    pooled: list[torch.Tensor]
    indices: list[torch.Tensor]

    @property
    def bottleneck(self) -> torch.Tensor:
        return self.pooled[-1]


@dataclass
class Decoded:
    """What the shared decoder computed, deepest level first.

    ``inputs[k]``: the unpooled input of decoder level k; ``outputs[k]``: that level's output.
    ``outputs[-1]`` is the full-resolution feature (f[0] channels).
    """

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class SegNet(nn.Module):
    """SegNet encoder-decoder without heads: N x C x H x W -> N x f[0] x H x W.

    ``encoder`` holds the stages shallowest first and ``decoder`` deepest first; custom channel
    layouts (lists as produced by :func:`encoder_channels` / :func:`decoder_channels`) let the
    baselines reuse this class. ``repeats`` repeats every conv unit (the "deep" split variant).
    """

    def __init__(self, filters: list[int], *, in_channels: int = 3, repeats: int = 1,
                 enc_channels: list[list[int]] | None = None,
                 dec_channels: list[list[int]] | None = None) -> None:
        super().__init__()
        self.filters = list(filters)
        enc_channels = enc_channels or encoder_channels(self.filters, in_channels)
        dec_channels = dec_channels or decoder_channels(self.filters)
        self.encoder = nn.ModuleList(Stage(c, repeats) for c in enc_channels)
        self.decoder = nn.ModuleList(Stage(c, repeats) for c in dec_channels)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    @property
    def out_channels(self) -> int:
        return self.decoder[-1].out_channels

    def encode(self, x: torch.Tensor) -> Encoded:
        enc = Encoded([], [], [], [])
        for stage in self.encoder:
            u = stage.first(x)
            p = stage.rest(u)
            x, idx = self.pool(p)
            enc.first.append(u)
            enc.last.append(p)
            enc.pooled.append(x)
            enc.indices.append(idx)
        return enc

    def decode(self, bottleneck: torch.Tensor, indices: list[torch.Tensor]) -> Decoded:
        """Run the decoder from ``bottleneck`` using the encoder's pooling ``indices`` (shallow first)."""
        inputs, outputs = [], []
        x = bottleneck
        for k, stage in enumerate(self.decoder):
            up = self.unpool(x, indices[-k - 1])
            x = stage(up)
            inputs.append(up)
            outputs.append(x)
        return Decoded(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encode(x)
        return self.decode(enc.bottleneck, enc.indices).outputs[-1]
