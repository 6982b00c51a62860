"""MTI-Net (Vandenhende et al. 2020; SPEC 5.5) on HRNet, and the multi-scale skeleton it shares
with SCA-MTL (:mod:`densemtl.models.sca`).

:class:`CoarseToFineNet` runs from the coarsest backbone scale to the finest: at each scale,
initial task features and predictions (deep supervision, output keys ``"task@scaleK"``, K = 0
for 1/4 ... 3 for 1/32) from the scale's feature concatenated with the task features propagated
from the coarser scale; a task-interaction module; a feature-propagation module that hands the
task features to the next finer scale. Each task's head combines its interacted features of all
scales and is upsampled to the input size.

Also the HRNet baselines of the MTI-Net codebase: ``single_hrnet`` (one network per task, the
Δm reference for the HRNet models) and ``split_hrnet`` (shared backbone, one HRNet head per
task).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .attention import TaskGatedPropagation
from .backbones.hrnet import BasicBlock, HRNet, resize_to
from .distill import MultiModalDistillation
from .registry import register_model
from .scope import Representation


def hrnet_backbone(width: float, pretrained: str | None) -> HRNet:
    """HRNet-W18-small-v2 at ``width``, with ImageNet weights from a local file if given."""
    backbone = HRNet(width)
    if pretrained:
        backbone.load_pretrained(pretrained)
    return backbone


class ScalePredictor(nn.Module):
    """Initial task features (two residual basic blocks) and predictions (1x1 conv) at one scale."""

    def __init__(self, tasks: dict[str, int], in_channels: int, channels: int) -> None:
        super().__init__()
        self.refine = nn.ModuleDict({
            t: nn.Sequential(BasicBlock(in_channels, channels), BasicBlock(channels, channels)) for t in tasks
        })
        self.predict = nn.ModuleDict({t: nn.Conv2d(channels, out, 1) for t, out in tasks.items()})

    def forward(self, shared: torch.Tensor, propagated: dict[str, torch.Tensor] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        features, predictions = {}, {}
        for t, refine in self.refine.items():
            x = shared if propagated is None else torch.cat(
                [shared, resize_to(propagated[t], shared.shape[-2:])], dim=1)
            features[t] = refine(x)
            predictions[t] = self.predict[t](features[t])
        return features, predictions


class FPM(TaskGatedPropagation):
    """MTI-Net's feature propagation module: the mixer is two basic blocks at a quarter of the
    concatenated width and a 1x1 conv back to it."""

    def __init__(self, task_names: Sequence[str], channels: int) -> None:
        shared = len(task_names) * channels
        narrow = max(1, shared // 4)
        mixer = nn.Sequential(BasicBlock(shared, narrow), BasicBlock(narrow, narrow), nn.Conv2d(narrow, shared, 1))
        super().__init__(task_names, channels, mixer)


class ScaleFusion(nn.Module):
    """HRNet fusion: upsample every scale to the finest, concatenate, 1x1 conv-BN-ReLU."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = sum(channels)
        self.fuse = nn.Sequential(nn.Conv2d(self.out_channels, self.out_channels, 1),
                                  nn.BatchNorm2d(self.out_channels), nn.ReLU())

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        return self.fuse(torch.cat([resize_to(f, size) for f in features], dim=1))


class MultiScaleHead(nn.Module):
    """HRNet head: :class:`ScaleFusion`, then a 1x1 conv to the task's output channels."""

    def __init__(self, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.fusion = ScaleFusion(channels)
        self.classifier = nn.Conv2d(self.fusion.out_channels, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fusion(features))


class CoarseToFineNet(nn.Module):
    """Multi-scale multi-task network in MTI-Net's form (see the module docstring).

    Components, one entry per backbone scale (finest first) unless said otherwise:
    ``context`` (optional): per-scale modules whose output is concatenated in front of the
    backbone feature; ``predict``: :class:`ScalePredictor` per scale; ``interact``: modules
    ``{task: feature} -> {task: feature}`` per scale; ``propagate``: one per scale but the finest
    (entry k-1 hands scale k's features to scale k-1); ``heads``: ``{task: module(list of
    features) -> output}``. ``propagate_interacted``: propagate the interacted features (SCA-MTL)
    instead of the initial ones (MTI-Net).
    """

    def __init__(self, backbone: nn.Module, predict: nn.ModuleList, interact: nn.ModuleList,
                 propagate: nn.ModuleList, heads: nn.ModuleDict, context: nn.ModuleList | None = None,
                 propagate_interacted: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.context = context
        self.predict = predict
        self.interact = interact
        self.propagate = propagate
        self.heads = heads
        self.propagate_interacted = propagate_interacted

    def parameter_roles(self) -> dict[str, str]:
        """Shared scope: the per-scale prediction convolutions (deep supervision) are heads;
        everything else mixes the tasks (distillation, propagation) and is shared."""
        roles = {"heads.": "head"}
        roles.update({f"predict.{k}.predict.": "head" for k in range(len(self.predict))})
        return roles

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        scales = self.backbone(images)
        if self.context is not None:
            scales = [torch.cat([ctx(f), f], dim=1) for ctx, f in zip(self.context, scales)]
        out: dict[str, torch.Tensor] = {}
        interacted: list[dict[str, torch.Tensor]] = [{} for _ in scales]
        propagated = None
        for k in reversed(range(len(scales))):
            features, predictions = self.predict[k](scales[k], propagated)
            out.update({f"{t}@scale{k}": p for t, p in predictions.items()})
            interacted[k] = self.interact[k](features)
            if k > 0:
                propagated = self.propagate[k - 1](interacted[k] if self.propagate_interacted else features)
        size = images.shape[-2:]
        for t, head in self.heads.items():
            out[t] = resize_to(head([per_scale[t] for per_scale in interacted]), size)
        return out


def scale_predictors(tasks: dict[str, int], channels: Sequence[int]) -> nn.ModuleList:
    """One :class:`ScalePredictor` per scale; all but the coarsest also see the propagated features."""
    last = len(channels) - 1
    return nn.ModuleList(
        ScalePredictor(tasks, c + (channels[k + 1] if k < last else 0), c) for k, c in enumerate(channels)
    )


@register_model("mtinet", family="mtinet", options={"pretrained": None},
                description="MTI-Net on HRNet-W18-small-v2 (Vandenhende et al. 2020)")
def mtinet(tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None) -> CoarseToFineNet:
    """MTI-Net: per-scale PAD-Net distillation, FPM propagation, HRNet heads.

    ``pretrained``: path of HRNet ImageNet weights (``hrnet_w18_small_model_v2.pth``), width 1.
    """
    backbone = hrnet_backbone(width, pretrained)
    ch = backbone.channels
    names = list(tasks)
    return CoarseToFineNet(
        backbone,
        predict=scale_predictors(tasks, ch),
        interact=nn.ModuleList(MultiModalDistillation(names, c) for c in ch),
        propagate=nn.ModuleList(FPM(names, c) for c in ch[1:]),
        heads=nn.ModuleDict({t: MultiScaleHead(ch, out) for t, out in tasks.items()}),
    )


class HRNetSplit(nn.Module):
    """Shared HRNet backbone and one :class:`MultiScaleHead` per task (hard parameter sharing)."""

    def __init__(self, tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None) -> None:
        super().__init__()
        self.backbone = hrnet_backbone(width, pretrained)
        self.representation = Representation()  # the backbone's 4 scales, read by every head
        self.heads = nn.ModuleDict({t: MultiScaleHead(self.backbone.channels, out) for t, out in tasks.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        scales = self.representation(self.backbone(images))
        return {t: resize_to(head(scales), images.shape[-2:]) for t, head in self.heads.items()}


@register_model("split_hrnet", family="hrnet", options={"pretrained": None},
                description="HRNet-W18-small-v2 shared by all tasks, one HRNet head per task")
def split_hrnet(tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None) -> HRNetSplit:
    return HRNetSplit(tasks, width, pretrained)


@register_model("single_hrnet", family="hrnet", single_task=True, options={"pretrained": None},
                description="single-task HRNet-W18-small-v2 + HRNet head (Δm baseline of the HRNet models)")
def single_hrnet(tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None) -> HRNetSplit:
    return HRNetSplit(tasks, width, pretrained)
