"""The MTAN paper's SegNet baselines (SPEC 5.4): single-task, split (standard / wide / deep).

Parameter counts at width 1 with the NYUv2 tasks (13 classes, depth, normal), equal to the
official code's without its uncertainty log-variances:

| model | params |
|---|---|
| single (semantic / depth / normal) | 24,981,069 / 24,980,289 / 24,980,419 |
| split standard / wide / deep | 25,055,185 / 43,934,161 / 50,807,761 |
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .backbones.segnet import FILTERS, SIZE_MULTIPLE, SegNet, segnet_filters
from .blocks import PredictionHead, check_input, init_segnet_
from .registry import register_model

SPLIT_VARIANTS = {
    # variant: (deepest filter count, conv units per unit)
    "standard": (FILTERS[-1], 1),
    "wide": (1024, 1),
    "deep": (FILTERS[-1], 2),
}


class SplitSegNet(nn.Module):
    """Hard parameter sharing: one SegNet shared by all tasks, one :class:`PredictionHead` each.

    With one task this is the single-task SegNet. ``variant``: "standard"; "wide" (deepest filter
    1024 instead of 512); "deep" (every conv unit doubled).
    """

    def __init__(self, tasks: dict[str, int], width: float = 1.0, variant: str = "standard") -> None:
        super().__init__()
        last, repeats = SPLIT_VARIANTS[variant]
        self.task_names = list(tasks)
        self.segnet = SegNet(segnet_filters(width, last=last), repeats=repeats)
        self.heads = nn.ModuleDict({t: PredictionHead(self.segnet.out_channels, c) for t, c in tasks.items()})
        init_segnet_(self)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(images, SIZE_MULTIPLE, getattr(self, "densemtl_name", "split"))
        feature = self.segnet(images)
        return {t: head(feature) for t, head in self.heads.items()}


@register_model("single", family="segnet", single_task=True, size_multiple=SIZE_MULTIPLE,
                description="single-task SegNet (one network per task; the Δm baseline)")
def single(tasks: dict[str, int], width: float = 1.0) -> SplitSegNet:
    return SplitSegNet(tasks, width)
