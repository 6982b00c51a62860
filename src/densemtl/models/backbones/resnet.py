"""Dilated ResNet-50 (output stride 8) for MTAN-DeepLabv3 (SPEC 5.3), with a width multiplier.

The module and parameter names follow torchvision's ``resnet50`` (``conv1``, ``bn1``,
``layer1.0.conv1`` ... ``layer4.2.downsample.1``), so an ImageNet checkpoint saved from torchvision
loads tensor for tensor (:func:`load_torchvision_resnet50`; its ``fc`` classifier is not used).
Bottlenecks stride in their 3x3 conv (ResNet v1.5, as torchvision). Output stride 8: layers 3 and 4
do not downsample; their 3x3 convs are dilated instead (layer 3: 1 in its first block, then 2;
layer 4: 2, then 4), as torchvision's ``replace_stride_with_dilation=[False, True, True]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ...errors import UserError
from . import init_kaiming_
from ..registry import scaled

LAYERS = (3, 4, 6, 3)  # bottlenecks per stage in ResNet-50
PLANES = (64, 128, 256, 512)  # bottleneck inner widths; a stage outputs 4x as many channels
EXPANSION = 4


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 (in -> planes), 3x3 (stride, dilation), 1x1 (planes -> 4 planes),
    each with BN, ReLU after the residual sum; ``downsample`` projects the shortcut when needed."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


def projection(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """The shortcut projection of a bottleneck: 1x1 conv (no bias) + BN."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class DilatedResNet50(nn.Module):
    """ResNet-50 trunk without pooling head/classifier, output stride 8.

    ``stem`` is conv1-bn1-relu-maxpool (1/4 resolution); ``layer1``..``layer4`` are
    ``nn.Sequential`` of :class:`Bottleneck` with ``out_channels[i]`` = 256, 512, 1024, 2048 at width 1
    and resolutions 1/4, 1/8, 1/8, 1/8.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels: list[int] = []
        in_channels = stem
        # (stride of the first block, dilation of the first block, dilation of the others)
        schedule = ((1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4))
        for i, (blocks, planes, (stride, first_dil, dil)) in enumerate(zip(LAYERS, PLANES, schedule)):
            planes = scaled(planes, width)
            out = planes * EXPANSION
            layer = [Bottleneck(in_channels, planes, stride, first_dil, projection(in_channels, out, stride))]
            layer += [Bottleneck(out, planes, 1, dil) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            self.out_channels.append(out)
            in_channels = out
        init_kaiming_(self)

    @property
    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x


TORCHVISION_UNUSED = ("fc.weight", "fc.bias")  # ImageNet classifier: not part of the trunk


def load_torchvision_resnet50(trunk: DilatedResNet50, path: str | Path) -> int:
    """Load torchvision-format ResNet-50 weights from the local file ``path`` into ``trunk``.

    The file holds a state dict (``torch.save(resnet50().state_dict(), path)``), possibly wrapped
    as ``{"state_dict": ...}`` or ``{"model": ...}``. Every tensor of ``trunk`` must be in the file
    with the same shape, and every tensor of the file must be used except the classifier
    (``fc.*``); otherwise a :class:`UserError` names the file and the offending keys. Dilation
    changes no shapes, so ImageNet weights fit the dilated trunk as they are. Returns the number
    of tensors loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"option pretrained: {path} is not a file; expected a torchvision ResNet-50 state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or non-torch file: report it as the user's file problem
        raise UserError(f"option pretrained: cannot read {path} as a torch checkpoint ({e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"option pretrained: {path} does not hold a state dict of tensors")

    own = trunk.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own) - set(TORCHVISION_UNUSED))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:2]} "
                        "(pretrained weights need width 1)")
    if problems:
        raise UserError(f"option pretrained: {path} is not a torchvision ResNet-50 state dict: " + "; ".join(problems))
    # a trunk built on the meta device (shapes only, e.g. `densemtl info`) takes the tensors as they are
    meta = any(t.is_meta for t in own.values())
    trunk.load_state_dict({k: state[k] for k in own}, assign=meta)
    return len(own)
