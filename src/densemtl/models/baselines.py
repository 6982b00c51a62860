"""The MTAN paper's SegNet baselines (SPEC 5.4): single-task, split (standard / wide / deep),
dense and cross-stitch.

Parameter counts at width 1 with the NYUv2 tasks (13 classes, depth, normal), equal to the
official code's without its uncertainty log-variances:

| model | params |
|---|---|
| single (semantic / depth / normal) | 24,981,069 / 24,980,289 / 24,980,419 |
| split standard / wide / deep | 25,055,185 / 43,934,161 / 50,807,761 |
| dense | 123,743,992 |
| cross-stitch, MTAN's mixing / full TxT mixing | 74,941,804 / 74,941,858 |
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError, unknown_name
from .backbones.segnet import (FILTERS, LEVELS, SIZE_MULTIPLE, SegNet, decoder_channels, encoder_channels,
                               segnet_filters)
from .blocks import PredictionHead, Stage, check_input, init_segnet_
from .registry import register_model
from .scope import Representation

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
        self.representation = Representation()  # the shared feature every head reads
        self.heads = nn.ModuleDict({t: PredictionHead(self.segnet.out_channels, c) for t, c in tasks.items()})
        init_segnet_(self)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(images, SIZE_MULTIPLE, getattr(self, "densemtl_name", "split"))
        feature = self.representation(self.segnet(images))
        return {t: head(feature) for t, head in self.heads.items()}


@register_model("single", family="segnet", single_task=True, size_multiple=SIZE_MULTIPLE,
                description="single-task SegNet (one network per task; the Δm baseline)")
def single(tasks: dict[str, int], width: float = 1.0) -> SplitSegNet:
    return SplitSegNet(tasks, width)


@register_model("split", family="segnet", size_multiple=SIZE_MULTIPLE,
                description="split: shared SegNet, one head per task (hard parameter sharing)")
def split(tasks: dict[str, int], width: float = 1.0) -> SplitSegNet:
    return SplitSegNet(tasks, width, "standard")


@register_model("split_wide", size_multiple=SIZE_MULTIPLE,
                description="split, wide: deepest SegNet filter 1024 instead of 512")
def split_wide(tasks: dict[str, int], width: float = 1.0) -> SplitSegNet:
    return SplitSegNet(tasks, width, "wide")


@register_model("split_deep", size_multiple=SIZE_MULTIPLE,
                description="split, deep: every SegNet conv unit doubled")
def split_deep(tasks: dict[str, int], width: float = 1.0) -> SplitSegNet:
    return SplitSegNet(tasks, width, "deep")


class DenseSegNet(nn.Module):
    """Dense baseline: a shared SegNet plus one SegNet per task whose every stage also receives
    the shared network's feature at that level, concatenated to its own.

    Encoder level j > 0 of task t reads ``cat(pooled_t,j-1, pooled_shared,j-1)``; decoder level k
    reads ``cat(unpool(task feature), unpooled shared input of level k)``, unpooling with the
    task's own indices. As in the official code the task decoder's last stage widens to 2 f[0]
    before reducing to f[0].

    The official model's shared decoder ends with a stage (f[0] -> f[0] -> 13 classes) whose output
    no branch reads (the task branches take the shared *unpooled input* of that level).
    ``paper_count=True`` keeps that stage, with the first task's channel count and frozen
    (``requires_grad=False``, never run), so the parameter count equals the paper's 123,743,992;
    ``paper_count=False`` leaves it out (44,583 fewer at width 1 with 13 classes).
    """

    def __init__(self, tasks: dict[str, int], width: float = 1.0, paper_count: bool = True) -> None:
        super().__init__()
        self.task_names = list(tasks)
        f = segnet_filters(width)
        self.shared = SegNet(f, dec_channels=decoder_channels(f)[:-1])
        self.unused_stage: Stage | None = None
        if paper_count:
            self.unused_stage = Stage([f[0], f[0], next(iter(tasks.values()))]).requires_grad_(False)

        task_enc = encoder_channels(f)
        for j in range(1, LEVELS):
            task_enc[j][0] *= 2
        task_dec = decoder_channels(f)
        for chans in task_dec:
            chans[0] *= 2
        task_dec[-1][1] *= 2
        self.branches = nn.ModuleList(SegNet(f, enc_channels=task_enc, dec_channels=task_dec) for _ in tasks)
        self.heads = nn.ModuleDict({t: PredictionHead(f[0], c) for t, c in tasks.items()})
        init_segnet_(self)

    def parameter_roles(self) -> dict[str, str]:
        """Shared scope: each task's SegNet branch is task-specific (it feeds that task's head
        only); the shared SegNet is shared."""
        return {"branches.": "task", "heads.": "head"}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(images, SIZE_MULTIPLE, getattr(self, "densemtl_name", "dense"))
        enc = self.shared.encode(images)
        shared_up = []  # the unpooled input of every shared decoder level, deepest first
        x = enc.bottleneck
        for k in range(LEVELS):
            shared_up.append(self.shared.unpool(x, enc.indices[-k - 1]))
            if k < LEVELS - 1:
                x = self.shared.decoder[k](shared_up[k])

        out = {}
        for t, branch in zip(self.task_names, self.branches):
            x, indices = images, []
            for j, stage in enumerate(branch.encoder):
                x, idx = branch.pool(stage(x if j == 0 else torch.cat((x, enc.pooled[j - 1]), dim=1)))
                indices.append(idx)
            for k, stage in enumerate(branch.decoder):
                x = stage(torch.cat((branch.unpool(x, indices[-k - 1]), shared_up[k]), dim=1))
            out[t] = self.heads[t](x)
        return out


@register_model("dense", size_multiple=SIZE_MULTIPLE, options={"paper_count": True},
                description="dense: shared SegNet + one SegNet per task fed the shared features")
def dense(tasks: dict[str, int], width: float = 1.0, paper_count: bool = True) -> DenseSegNet:
    if not isinstance(paper_count, bool):
        raise UserError(f"option paper_count of model 'dense' must be true or false, got {paper_count!r}")
    return DenseSegNet(tasks, width, paper_count=paper_count)


CROSS_STITCH_MIXING = ("full", "mtan")


class CrossStitch(nn.Module):
    """Learned linear mixing of T same-shaped task features (Misra et al. 2016).

    ``mixing="full"``: the original unit, a T x T matrix W (target x source), output_t =
    sum_s W[t, s] x_s, initialised near identity (0.9 on the diagonal, 0.1 / (T - 1) elsewhere,
    so each row sums to 1). ``mixing="mtan"``: the official MTAN code's simplification, one scalar
    per source task, output_t = sum_s w_s x_s for every target, initialised to 1.
    """

    def __init__(self, num_tasks: int, mixing: str = "full") -> None:
        super().__init__()
        if mixing not in CROSS_STITCH_MIXING:
            raise unknown_name("cross-stitch mixing", mixing, CROSS_STITCH_MIXING)
        self.mixing = mixing
        if mixing == "mtan":
            self.weight = nn.Parameter(torch.ones(num_tasks))
        else:
            off = 0.1 / (num_tasks - 1) if num_tasks > 1 else 0.0
            init = torch.full((num_tasks, num_tasks), off)
            init.fill_diagonal_(0.9 if num_tasks > 1 else 1.0)
            self.weight = nn.Parameter(init)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        stacked = torch.stack(features)  # T x N x C x H x W
        if self.mixing == "mtan":
            mixed = torch.einsum("s,s...->...", self.weight, stacked)
            return [mixed] * len(features)
        return list(torch.einsum("ts,s...->t...", self.weight, stacked).unbind(0))

    def extra_repr(self) -> str:
        return f"tasks={self.weight.shape[0]}, mixing={self.mixing!r}"


class CrossStitchSegNet(nn.Module):
    """Cross-stitch network: one SegNet per task, task features mixed by a :class:`CrossStitch`
    unit before every encoder level but the first (on the pooled features) and before every
    decoder level (before unpooling, each task with its own indices): 4 + 5 units.
    """

    def __init__(self, tasks: dict[str, int], width: float = 1.0, mixing: str = "full") -> None:
        super().__init__()
        self.task_names = list(tasks)
        n = len(tasks)
        f = segnet_filters(width)
        self.branches = nn.ModuleList(SegNet(f) for _ in tasks)
        self.encoder_stitch = nn.ModuleList(CrossStitch(n, mixing) for _ in range(LEVELS - 1))
        self.decoder_stitch = nn.ModuleList(CrossStitch(n, mixing) for _ in range(LEVELS))
        self.heads = nn.ModuleDict({t: PredictionHead(f[0], c) for t, c in tasks.items()})
        init_segnet_(self)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(images, SIZE_MULTIPLE, getattr(self, "densemtl_name", "cross_stitch"))
        feats = [images] * len(self.branches)
        indices: list[list[torch.Tensor]] = [[] for _ in self.branches]
        for j in range(LEVELS):
            if j > 0:
                feats = self.encoder_stitch[j - 1](feats)
            for t, branch in enumerate(self.branches):
                feats[t], idx = branch.pool(branch.encoder[j](feats[t]))
                indices[t].append(idx)
        for k, stitch in enumerate(self.decoder_stitch):
            feats = stitch(feats)
            feats = [branch.decoder[k](branch.unpool(x, idx[-k - 1]))
                     for branch, x, idx in zip(self.branches, feats, indices)]
        return {t: self.heads[t](x) for t, x in zip(self.task_names, feats)}


@register_model("cross_stitch", size_multiple=SIZE_MULTIPLE, options={"mixing": "full"},
                description="cross-stitch: one SegNet per task, learned mixing per level (Misra et al. 2016)")
def cross_stitch(tasks: dict[str, int], width: float = 1.0, mixing: str = "full") -> CrossStitchSegNet:
    return CrossStitchSegNet(tasks, width, mixing=mixing)
