"""Trivial predictors: the floor any trained model must beat.

Each task gets one constant estimated on the training split and predicted for every val pixel:
the most frequent class (segmentation), the mean valid depth (depth), the normalised mean valid
normal (normals), the mean edge probability (edges). They are scored with the same meters as a
model, so "learned something" means "beats these on the same split under the same convention".
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..losses import depth_valid_mask, normal_valid_mask
from ..tasks import Task


@torch.no_grad()
def trivial_predictions(train_set: Dataset, tasks: dict[str, Task], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``{task: constant}`` estimated over every valid pixel of ``train_set``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for batch in DataLoader(train_set, batch_size=batch_size, shuffle=False):
        for name, task in tasks.items():
            target = batch[name]
            if task.target_kind == "label":
                labels = target[target >= 0].long()
                s = torch.bincount(labels, minlength=task.num_classes).double()
                n = torch.tensor(1.0)
            elif task.target_kind == "depth":
                mask = depth_valid_mask(target)
                s, n = target[mask].double().sum(), mask.sum().double()
            elif task.target_kind == "normal":
                mask = normal_valid_mask(target).expand_as(target)
                s = (target * mask).double().sum(dim=(0, 2, 3))
                n = torch.tensor(1.0)
            else:  # edge maps: 255 = ignored
                mask = target != 255
                s, n = (target > 0.5)[mask].double().sum(), mask.sum().double()
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts[name] + n if name in counts else n
    out = {}
    for name, task in tasks.items():
        if task.target_kind == "label":
            out[name] = sums[name].argmax()
        elif task.target_kind == "normal":
            v = sums[name]
            out[name] = (v / v.norm().clamp_min(1e-12)).float()
        else:
            out[name] = (sums[name] / counts[name].clamp_min(1)).float()
    return out


def constant_prediction(task: Task, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``value`` broadcast to the prediction shape :meth:`Task.activate` gives for ``target``."""
    if task.target_kind == "label":
        return torch.full(target.shape, int(value), dtype=torch.long, device=target.device)
    if task.target_kind == "normal":
        return value.to(target.device).view(1, 3, 1, 1).expand(target.shape).contiguous()
    return torch.full(target.shape, float(value), dtype=torch.float32, device=target.device)


@torch.no_grad()
def evaluate_trivial(constants: dict[str, torch.Tensor], loader: DataLoader, tasks: dict[str, Task],
                     convention: str = "dataset") -> dict[str, dict[str, float]]:
    """Metrics ``{task: {metric: value}}`` of the constant predictors over ``loader``."""
    meters = {t: task.make_meter(convention) for t, task in tasks.items()}
    for batch in loader:
        for name, task in tasks.items():
            meters[name].update(constant_prediction(task, constants[name], batch[name]), batch[name])
    return {t: m.compute() for t, m in meters.items()}
