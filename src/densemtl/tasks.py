"""Task specifications: the one place that says what a task is.

A :class:`Task` names its output channels, its loss, how its raw output becomes a prediction,
its metrics (with higher-is-better), which metric represents it in the one-metric-per-task Δm,
and how its target is resized by augmentation. Models, losses, metrics, the trainer and the
reports all read these specs, so adding a task means adding one entry to ``_BUILDERS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import losses
from .errors import UserError, unknown_name


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    label: str  # short column header for tables, e.g. "mIoU"
    in_delta_all: bool = True  # used by the all-metrics variant of Δm
    scale: float = 1.0  # display scale in tables (fractions are shown as percent)


@dataclass(frozen=True)
class Task:
    name: str
    channels: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: tuple[MetricSpec, ...]
    primary: str  # metric used by the one-metric-per-task Δm
    target_kind: str  # 'label' (nearest, long), 'depth', 'normal', 'edge' — drives resizing
    num_classes: int | None = None
    options: dict = field(default_factory=dict, compare=False, hash=False)

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw model output (N x C x H x W) -> prediction as the metrics and pictures use it.

        semantic: class indices N x H x W; depth: N x 1 x H x W; normal: unit vectors;
        edge: probabilities N x 1 x H x W.
        """
        if self.target_kind == "label":
            return raw.argmax(dim=1)
        if self.target_kind == "normal":
            return losses.normalize_normals(raw.float())
        if self.target_kind == "edge":
            return torch.sigmoid(raw.float())
        return raw.float()

    def make_meter(self, convention: str = "dataset"):
        """A fresh streaming metric accumulator for this task."""
        from . import metrics

        if self.target_kind == "label":
            return metrics.SegMeter(self.num_classes, convention=convention)
        if self.target_kind == "depth":
            return metrics.DepthMeter(convention=convention)
        if self.target_kind == "normal":
            return metrics.NormalMeter(convention=convention)
        if self.target_kind == "edge":
            from .edges import EdgeMeter

            return EdgeMeter(**self.options)
        raise AssertionError(self.target_kind)

    def metric(self, name: str) -> MetricSpec:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"task {self.name} has no metric {name!r}")


def _semantic(num_classes: int = 13, **_) -> Task:
    return Task(
        name="semantic",
        channels=num_classes,
        loss=losses.semantic_loss,
        metrics=(
            MetricSpec("miou", True, "mIoU", scale=100.0),
            MetricSpec("pixel_acc", True, "PixAcc", scale=100.0),
        ),
        primary="miou",
        target_kind="label",
        num_classes=num_classes,
    )


def _depth(depth_primary: str = "abs_err", **_) -> Task:
    return Task(
        name="depth",
        channels=1,
        loss=losses.depth_loss,
        metrics=(
            MetricSpec("abs_err", False, "AbsErr"),
            MetricSpec("rel_err", False, "RelErr"),
            MetricSpec("rmse", False, "RMSE", in_delta_all=False),
        ),
        primary=depth_primary,
        target_kind="depth",
    )


def _normal(**_) -> Task:
    return Task(
        name="normal",
        channels=3,
        loss=losses.normal_loss,
        metrics=(
            MetricSpec("mean", False, "Mean"),
            MetricSpec("median", False, "Median"),
            MetricSpec("within_11_25", True, "11.25", scale=100.0),
            MetricSpec("within_22_5", True, "22.5", scale=100.0),
            MetricSpec("within_30", True, "30", scale=100.0),
        ),
        primary="mean",
        target_kind="normal",
    )


def _edge(edge_pos_weight: float = 0.95, edge_tolerance: float = 0.011, **_) -> Task:
    return Task(
        name="edge",
        channels=1,
        loss=lambda p, t: losses.edge_loss(p, t, pos_weight=edge_pos_weight),
        metrics=(MetricSpec("odsf", True, "odsF", scale=100.0),),
        primary="odsf",
        target_kind="edge",
        options={"tolerance": edge_tolerance},
    )


_BUILDERS: dict[str, Callable[..., Task]] = {
    "semantic": _semantic,
    "depth": _depth,
    "normal": _normal,
    "edge": _edge,
}

TASK_NAMES = tuple(_BUILDERS)


def make_task(name: str, **options) -> Task:
    if name not in _BUILDERS:
        raise unknown_name("task", name, _BUILDERS)
    return _BUILDERS[name](**options)


def make_tasks(names, **options) -> dict[str, Task]:
    """Build an ordered ``{name: Task}`` dict; options go to every builder that takes them."""
    names = list(names)
    if not names:
        raise UserError("at least one task is required")
    if len(set(names)) != len(names):
        raise UserError(f"duplicate task in {names}")
    return {n: make_task(n, **options) for n in names}


def task_channels(tasks: dict[str, Task]) -> dict[str, int]:
    """``{task: output channels}``, what model constructors take."""
    return {name: t.channels for name, t in tasks.items()}
