"""HRNet-W18-small-v2 (Wang et al. 2020), the multi-scale backbone of MTI-Net and SCA-MTL.

Four parallel branches at strides 4, 8, 16 and 32 with 18, 36, 72 and 144 channels (times the
``width`` multiplier), exchanging information after every module. Configuration of the "small
v2" variant (HRNet-Image-Classification): stem of two stride-2 3x3 convolutions (64 ch); stage 1:
2 bottlenecks (64 -> 256); stage 2: 1 module, 2 branches; stage 3: 3 modules, 3 branches;
stage 4: 2 modules, 4 branches; 2 basic blocks per branch in every module. About 3.9M parameters.

Attribute names follow the official HRNet checkpoints (``conv1``, ``layer1.0.conv1``,
``transition2.2.0.0``, ``stage3.1.fuse_layers.2.0.1.0`` ...), so the ImageNet weights load
directly with :meth:`HRNet.load_pretrained`; their classification head is ignored.

Implements the multi-scale backbone interface (see :class:`MultiScaleBackbone` in
``models/backbones/__init__.py``): ``channels``, ``strides`` and ``forward(x) -> list``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import UserError
from . import init_kaiming_
from ..registry import scaled

BRANCH_CHANNELS = (18, 36, 72, 144)
STEM_CHANNELS = 64
STAGE_MODULES = (1, 3, 2)  # modules in stages 2, 3 and 4
BLOCKS_PER_BRANCH = 2


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of N x C x H x W to ``size`` (no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _projection(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential | None:
    """1x1 conv + BN shortcut when a residual block changes shape, else ``None`` (identity)."""
    if in_channels == out_channels and stride == 1:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), _bn(out_channels))


class BasicBlock(nn.Module):
    """Residual block of two 3x3 conv-BN units; a 1x1 projection shortcut if the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = _bn(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = _bn(out_channels)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual bottleneck with 4x expansion (``out = 4 * mid``)."""

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = 4 * mid_channels
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = _bn(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride, 1, bias=False)
        self.bn2 = _bn(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = _bn(out_channels)
        self.downsample = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


def _down_path(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """``steps`` stride-2 3x3 conv-BN units; ReLU after all but the last (fusion to a coarser branch)."""
    units = []
    for k in range(steps):
        last = k == steps - 1
        c_out = out_channels if last else in_channels
        unit = [nn.Conv2d(in_channels, c_out, 3, 2, 1, bias=False), _bn(c_out)]
        if not last:
            unit.append(nn.ReLU())
        units.append(nn.Sequential(*unit))
    return nn.Sequential(*units)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every branch receives the sum of all branches.

    Finer -> coarser: stride-2 3x3 convs; coarser -> finer: 1x1 conv + BN, then bilinear upsampling.
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c, c) for _ in range(BLOCKS_PER_BRANCH))) for c in channels
        )
        fuse = []
        for i, c_i in enumerate(channels):
            row = []
            for j, c_j in enumerate(channels):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(c_j, c_i, 1, bias=False), _bn(c_i)))
                elif j == i:
                    row.append(None)
                else:
                    row.append(_down_path(c_j, c_i, i - j))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            total = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                total = total + resize_to(layer(xs[j]), xs[i].shape[-2:])
            out.append(F.relu(total))
        return out


def _transition(in_channels: list[int], out_channels: list[int]) -> nn.ModuleList:
    """Adapt the branches of one stage to the next: change widths, and add one coarser branch."""
    layers = []
    for i, c_out in enumerate(out_channels):
        if i < len(in_channels):
            c_in = in_channels[i]
            layers.append(None if c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), _bn(c_out), nn.ReLU()))
        else:
            layers.append(nn.Sequential(nn.Sequential(
                nn.Conv2d(in_channels[-1], c_out, 3, 2, 1, bias=False), _bn(c_out), nn.ReLU())))
    return nn.ModuleList(layers)


class HRNet(nn.Module):
    """HRNet-W18-small-v2 feature extractor: ``forward(images) -> [1/4, 1/8, 1/16, 1/32 features]``."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        stem = scaled(STEM_CHANNELS, width)
        branch = [scaled(c, width) for c in BRANCH_CHANNELS]
        self.channels: list[int] = branch
        self.strides: list[int] = [4, 8, 16, 32]

        self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = _bn(stem)
        self.conv2 = nn.Conv2d(stem, stem, 3, 2, 1, bias=False)
        self.bn2 = _bn(stem)
        self.layer1 = nn.Sequential(Bottleneck(stem, stem), Bottleneck(4 * stem, stem))

        previous = [4 * stem]
        for s, modules in enumerate(STAGE_MODULES, start=2):
            current = branch[:s]
            setattr(self, f"transition{s - 1}", _transition(previous, current))
            setattr(self, f"stage{s}", nn.Sequential(*(HighResolutionModule(current) for _ in range(modules))))
            previous = current
        init_kaiming_(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in range(2, 2 + len(STAGE_MODULES)):
            transition = getattr(self, f"transition{s - 1}")
            # a new coarsest branch grows out of the previous coarsest one
            xs = [xs[min(i, len(xs) - 1)] if t is None else t(xs[min(i, len(xs) - 1)])
                  for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{s}")(xs)
        return xs

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Load HRNet-format weights (e.g. ``hrnet_w18_small_model_v2.pth``) from a local file.

        Accepts a plain state dict or one wrapped under ``"state_dict"``/``"model"``, with or
        without a ``"module."`` prefix. Every backbone tensor must be present with the right
        shape (so only width 1 matches the official weights); keys of the classification head
        (``incre_modules``, ``classifier`` ...) are ignored and returned.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"pretrained HRNet weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt or non-PyTorch file
            raise UserError(f"cannot read pretrained HRNet weights {path}: {exc}") from exc
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict):
            raise UserError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items()}

        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise UserError(f"{path} is not an HRNet-W18-small-v2 checkpoint: missing {len(missing)} "
                            f"backbone tensors, e.g. {missing[:3]}")
        wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
        if wrong:
            raise UserError(f"{path}: tensor shapes do not match this backbone (width must be 1 for "
                            f"the official weights): {wrong[:3]}")
        self.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
        return sorted(k for k in state if k not in own)
