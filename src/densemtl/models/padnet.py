"""PAD-Net (Xu et al. 2018; SPEC 5.5): initial task predictions, multi-modal distillation, final heads.

``padnet``: on HRNet-W18-small-v2 as in the MTI-Net codebase: the four scales are fused at 1/4
(upsample, concatenate, 1x1 conv-BN-ReLU); per task two bottlenecks (256 channels) give the
initial features and a 1x1 conv the initial prediction (deep supervision, ``"task@initial"``);
:class:`~densemtl.models.distill.MultiModalDistillation` exchanges information between tasks;
per task two bottlenecks and a 1x1 conv give the output, upsampled to the input size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .backbones.hrnet import Bottleneck, resize_to
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
