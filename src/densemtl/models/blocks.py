"""Small building blocks shared by the SegNet-family models (SPEC 5.1, 5.2, 5.4).

- :func:`conv_unit`: 3x3 conv (bias) + BN + ReLU, optionally repeated (the "deep" split variant
  doubles every unit).
- :class:`Stage`: a chain of conv units; its first unit changes the channel count and MTAN reads
  the features both after the first unit (``u``) and after the last one (``p``).
- :class:`AttentionMask`: MTAN's soft attention mask unit, 1x1 conv -> BN -> ReLU -> 1x1 conv ->
  BN -> sigmoid; the mask has the shape of the feature it gates (per pixel and per channel).
- :class:`PerTask`: one module per task at one point of the network, applied to one input per
  task. Kept as its own type so a faster implementation (e.g. the tasks' 1x1 convolutions fused
  into one grouped convolution) can replace it with the same interface.
- :class:`PredictionHead`: SegNet's task head, 3x3 conv then 1x1 conv, no BN/ReLU between.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from .attention import RecordsAttention


def conv_unit(in_channels: int, out_channels: int, repeats: int = 1) -> nn.Sequential:
    """``repeats`` x (3x3 conv with bias -> BN -> ReLU); the first conv maps in -> out channels."""
    layers: list[nn.Module] = []
    for i in range(repeats):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class Stage(nn.Module):
    """Conv units through ``channels`` = [c0, c1, ..., cn]: c0 -> c1 -> ... -> cn.

    ``first`` is the unit c0 -> c1 and ``rest`` the remaining units (possibly none), so callers
    that need the intermediate feature (MTAN's ``u``) can run them one after the other;
    ``forward`` runs both.
    """

    def __init__(self, channels: Sequence[int], repeats: int = 1) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"a stage needs at least two channel counts, got {list(channels)}")
        self.channels = tuple(channels)
        self.first = conv_unit(channels[0], channels[1], repeats)
        self.rest = nn.Sequential(*(conv_unit(a, b, repeats)
                                    for a, b in zip(channels[1:-1], channels[2:])))

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.first(x))


class AttentionMask(RecordsAttention):
    """MTAN's attention mask unit: in -> mid (1x1 conv, BN, ReLU) -> out (1x1 conv, BN, sigmoid).

    Returns the mask in (0, 1), N x out x H x W. Recorded attention (see
    :func:`densemtl.models.attention.record_attention`): ``"mask"``, its channel mean, N x 1 x H x W.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 1),
            nn.BatchNorm2d(out_channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.layers(x)
        self.save_attention("mask", mask.mean(dim=1, keepdim=True))
        return mask


class PerTask(nn.ModuleList):
    """One module per task (in task order), each applied to its own task's input."""

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != len(self):
            raise ValueError(f"expected {len(self)} task inputs, got {len(inputs)}")
        return [module(x) for module, x in zip(self, inputs)]


class PredictionHead(nn.Sequential):
    """SegNet task head: 3x3 conv (in -> in, bias) then 1x1 conv (in -> out), nothing between."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            nn.Conv2d(in_channels, out_channels, 1),
        )


def init_segnet_(module: nn.Module) -> None:
    """MTAN's initialisation: Xavier-normal conv weights, zero conv bias, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(images: torch.Tensor, multiple: int, model: str) -> None:
    """Raise :class:`UserError` unless ``images`` is N x 3 x H x W with H, W multiples of ``multiple``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"model {model!r} expects images of shape N x 3 x H x W, got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % multiple or w % multiple:
        raise UserError(
            f"model {model!r} needs input height and width that are multiples of {multiple}; got {h}x{w}"
        )
