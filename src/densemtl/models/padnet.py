"""PAD-Net (Xu et al. 2018; SPEC 5.5): initial task predictions, multi-modal distillation, final heads.

``padnet``: on HRNet-W18-small-v2 as in the MTI-Net codebase: the four scales are fused at 1/4
(upsample, concatenate, 1x1 conv-BN-ReLU); per task two bottlenecks (256 channels) give the
initial features and a 1x1 conv the initial prediction (deep supervision, ``"task@initial"``);
:class:`~densemtl.models.distill.MultiModalDistillation` exchanges information between tasks;
per task two bottlenecks and a 1x1 conv give the output, upsampled to the input size.

``padnet_segnet``: the SegNet form that ATI-Net compares against (its official code): a shared
SegNet encoder, one SegNet decoder per task, distillation of the full-resolution task features
(64 channels; the 3x3 convs have a bias, as there), SegNet prediction heads. That form has no
initial predictions, so no deep supervision. Input sides must be multiples of 32.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .backbones.hrnet import Bottleneck, resize_to
from .backbones.segnet import SIZE_MULTIPLE, decoder_channels, encoder_channels, segnet_filters
from .blocks import PredictionHead, Stage, check_input, init_segnet_
from .distill import MultiModalDistillation
from .mtinet import ScaleFusion, hrnet_backbone
from .registry import register_model, scaled

INTERMEDIATE = 256  # PAD-Net's task feature width (4 x 64 bottleneck)


def _bottlenecks(in_channels: int, mid: int) -> nn.Sequential:
    return nn.Sequential(Bottleneck(in_channels, mid), Bottleneck(4 * mid, mid))


class PADNet(nn.Module):
    """PAD-Net on a multi-scale backbone whose scales are fused at the finest one."""

    def __init__(self, tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None) -> None:
        super().__init__()
        self.backbone = hrnet_backbone(width, pretrained)
        self.fusion = ScaleFusion(self.backbone.channels)
        mid = scaled(INTERMEDIATE // 4, width)
        self.initial = nn.ModuleDict({t: _bottlenecks(self.fusion.out_channels, mid) for t in tasks})
        self.initial_predict = nn.ModuleDict({t: nn.Conv2d(4 * mid, out, 1) for t, out in tasks.items()})
        self.distill = MultiModalDistillation(list(tasks), 4 * mid)
        self.heads = nn.ModuleDict({
            t: nn.Sequential(_bottlenecks(4 * mid, mid), nn.Conv2d(4 * mid, out, 1)) for t, out in tasks.items()
        })

    def parameter_roles(self) -> dict[str, str]:
        """Shared scope: the initial per-task features are shared (distillation passes them to
        every task); the initial predictions (deep supervision) are heads; each distillation
        message writes into one target task, so it is task-specific."""
        return {"initial_predict.": "head", "distill.": "task", "heads.": "head"}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.fusion(self.backbone(images))
        features = {t: block(shared) for t, block in self.initial.items()}
        out = {f"{t}@initial": self.initial_predict[t](f) for t, f in features.items()}
        for t, f in self.distill(features).items():
            out[t] = resize_to(self.heads[t](f), images.shape[-2:])
        return out


@register_model("padnet", family="padnet", options={"pretrained": None},
                description="PAD-Net on HRNet-W18-small-v2 (Xu et al. 2018, MTI-Net codebase form)")
def padnet(tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None) -> PADNet:
    """``pretrained``: path of HRNet ImageNet weights (``hrnet_w18_small_model_v2.pth``), width 1."""
    return PADNet(tasks, width, pretrained)


class PADNetSegNet(nn.Module):
    """PAD-Net on SegNet: shared encoder, per-task decoders, distillation, per-task heads."""

    def __init__(self, tasks: dict[str, int], width: float = 1.0) -> None:
        super().__init__()
        filters = segnet_filters(width)
        self.encoder = nn.ModuleList(Stage(c) for c in encoder_channels(filters))
        self.decoders = nn.ModuleDict({
            t: nn.ModuleList(Stage(c) for c in decoder_channels(filters)) for t in tasks
        })
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.distill = MultiModalDistillation(list(tasks), filters[0], bias=True)
        self.heads = nn.ModuleDict({t: PredictionHead(filters[0], out) for t, out in tasks.items()})
        init_segnet_(self)

    def parameter_roles(self) -> dict[str, str]:
        """Shared scope: the per-task decoders are shared (distillation passes them to every
        task); each distillation message writes into one target task (task-specific)."""
        return {"distill.": "task", "heads.": "head"}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(images, SIZE_MULTIPLE, getattr(self, "densemtl_name", "padnet_segnet"))
        x, indices = images, []
        for stage in self.encoder:
            x, idx = self.pool(stage(x))
            indices.append(idx)
        features = {}
        for t, decoder in self.decoders.items():
            y = x
            for stage, idx in zip(decoder, reversed(indices)):
                y = stage(self.unpool(y, idx))
            features[t] = y
        return {t: self.heads[t](f) for t, f in self.distill(features).items()}


@register_model("padnet_segnet", family="padnet_segnet", size_multiple=SIZE_MULTIPLE,
                description="PAD-Net on SegNet, the ATI-Net paper's baseline (shared encoder, task decoders)")
def padnet_segnet(tasks: dict[str, int], width: float = 1.0) -> PADNetSegNet:
    return PADNetSegNet(tasks, width)
