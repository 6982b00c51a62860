"""MTAN on a dilated ResNet-50 with DeepLabv3 heads (the official MTAN code's second version; SPEC 5.3).

The shared trunk is :class:`DilatedResNet50` (output stride 8). At each of its four stages,
every task computes a soft attention mask from the stage's features *before* its last bottleneck
(u_i: the output of all bottlenecks but the last; from stage 2 on concatenated with the task's
feature from the previous stage), and applies it to the stage's output (the last bottleneck's):

    mask_t,i = att_t,i(u_1)  or  att_t,i(cat(u_i, a_t,i-1)),    a_t,i = mask_t,i * (stage i output)

Between stages a residual bottleneck shared by all tasks carries ``a_t,i`` to the next stage's
width (followed by 2x2 max-pooling after stage 1 only, the one stage change that halves the
resolution). The attended stage-4 feature of each task goes to its own DeepLabv3 head, whose
output is bilinearly upsampled to the input size. Mask units are the 1x1 bottleneck form
(in -> C/4 -> C). The trunk has torchvision-style initialisation (Kaiming normal, fan-out); the
masks and heads keep PyTorch's default initialisation, as the official code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.resnet import Bottleneck, DilatedResNet50, load_torchvision_resnet50, projection
from .blocks import AttentionMask, PerTask, check_input
from .registry import register_model, scaled

ASPP_RATES = (12, 24, 36)
ASPP_CHANNELS = 256
SIZE_MULTIPLE = 8


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """conv (no bias, 'same' padding) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv-BN-ReLU, upsample back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1x1 branch, three dilated 3x3 branches and the
    image-pooling branch, concatenated and projected back (1x1 conv-BN-ReLU, dropout 0.5)."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...] = ASPP_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, 3, r) for r in rates]
            + [ImagePooling(in_channels, channels)]
        )
        self.project = nn.Sequential(conv_bn_relu(len(self.branches) * channels, channels), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabHead(nn.Sequential):
    """DeepLabv3 head: ASPP, 3x3 conv-BN-ReLU, 1x1 conv (with bias) to the task's channels."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = ASPP_CHANNELS) -> None:
        super().__init__(
            ASPP(in_channels, channels),
            conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, out_channels, 1),
        )


class MTANDeepLab(nn.Module):
    """MTAN-DeepLabv3; ``forward(images) -> {task: raw output at input resolution}``.

    Submodules: ``backbone`` (:class:`DilatedResNet50`, torchvision names),
    ``encoder_attention[i]`` (a :class:`PerTask` of :class:`AttentionMask` per stage, indexed
    ``[stage][task]``), ``encoder_convs[i]`` (the shared bottleneck after stages 1-3) and
    ``heads[task]`` (:class:`DeepLabHead`). ``pretrained``: path of a torchvision ResNet-50
    ImageNet state dict loaded into the backbone (width 1 only).
    """

    def __init__(self, tasks: dict[str, int], width: float = 1.0, pretrained: str | Path | None = None) -> None:
        super().__init__()
        self.task_names = list(tasks)
        n = len(tasks)
        self.backbone = DilatedResNet50(width)
        ch = self.backbone.out_channels
        self.encoder_attention = nn.ModuleList(
            PerTask(AttentionMask(c if i == 0 else 2 * c, c // 4, c) for _ in range(n)) for i, c in enumerate(ch)
        )
        self.encoder_convs = nn.ModuleList(
            Bottleneck(ch[i], ch[i + 1] // 4, downsample=projection(ch[i], ch[i + 1])) for i in range(len(ch) - 1)
        )
        self.heads = nn.ModuleDict({t: DeepLabHead(ch[-1], c, scaled(ASPP_CHANNELS, width)) for t, c in tasks.items()})
        if pretrained:
            load_torchvision_resnet50(self.backbone, pretrained)

    def parameter_roles(self) -> dict[str, str]:
        """Shared scope: the task attention masks are task-specific (as MTAN-SegNet's); the
        ResNet trunk and the shared bottlenecks are shared; the DeepLab heads are heads."""
        return {"encoder_attention.": "task", "heads.": "head"}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(images, SIZE_MULTIPLE, getattr(self, "densemtl_name", "mtan_deeplab"))
        x = self.backbone.stem(images)
        feats: list[torch.Tensor] = []
        for i, layer in enumerate(self.backbone.layers):
            u = layer[:-1](x)
            x = layer[-1](u)
            inputs = [u] * len(self.task_names) if i == 0 else [torch.cat((u, a), dim=1) for a in feats]
            feats = [m * x for m in self.encoder_attention[i](inputs)]
            if i < len(self.encoder_convs):
                feats = [self.encoder_convs[i](a) for a in feats]
                if i == 0:
                    feats = [F.max_pool2d(a, 2, 2) for a in feats]
        size = images.shape[-2:]
        return {t: F.interpolate(self.heads[t](a), size=size, mode="bilinear", align_corners=True)
                for t, a in zip(self.task_names, feats)}


@register_model("mtan_deeplab", size_multiple=SIZE_MULTIPLE, options={"pretrained": None},
                description="MTAN on a dilated ResNet-50 (output stride 8) with DeepLabv3 heads")
def mtan_deeplab(tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None) -> MTANDeepLab:
    return MTANDeepLab(tasks, width, pretrained)
