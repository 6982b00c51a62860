"""Backbones shared by the model families.

A multi-scale backbone (what MTI-Net, PAD-Net and SCA-MTL build on) implements
:class:`MultiScaleBackbone`: ``forward(images) -> list`` of feature maps, finest first, with
``channels[i]`` channels at ``1/strides[i]`` of the input size. HRNet returns four scales
(strides 4, 8, 16, 32); a SegNet or ResNet backbone can serve the same heads by returning its
decoder or stage outputs in this form.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn


@runtime_checkable
class MultiScaleBackbone(Protocol):
    channels: list[int]  # channels of each returned scale, finest first
    strides: list[int]  # input size / feature size of each returned scale

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]: ...


def init_kaiming_(module: nn.Module) -> None:
    """torchvision / HRNet initialisation: Kaiming-normal conv weights (fan out), BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
