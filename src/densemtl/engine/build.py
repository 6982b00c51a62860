"""Build the parts of a run from a :class:`~densemtl.engine.config.TrainConfig`.

Shared by the trainer, ``evaluate``, ``predict`` and anything else that needs "the model / data /
optimiser this config describes" (``compare``, ``bench``). Nothing here names a particular model,
dataset or weighting method: the registries do.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .. import data as datasets
from ..errors import UserError
from ..models import create_model, get_entry
from ..models.registry import check_input_size
from ..tasks import Task, make_tasks, task_channels
from ..weighting import weighting_class
from .config import DEVICE_PATTERN, TrainConfig, format_size


def data_options(cfg: TrainConfig) -> dict:
    """Dataset options implied by the config (CityScapes: ``num_classes``)."""
    entry = datasets.get_dataset_entry(cfg.data.name)
    n = cfg.data.num_classes
    if n is None:
        return {}
    if "num_classes" in entry.options:
        return {"num_classes": n}
    info = datasets.dataset_info(cfg.data.name)
    if n != info.num_classes:
        raise UserError(
            f"data.num_classes: dataset {cfg.data.name!r} has {info.num_classes} classes and no "
            f"class-set option; got {n}"
        )
    return {}


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the dataset-dependent defaults (size, tasks, classes, run folder) and check them
    against the dataset and the model, so that config.yaml records concrete values."""
    info = datasets.dataset_info(cfg.data.name, **data_options(cfg))
    entry = get_entry(cfg.model.name)
    tasks = list(cfg.data.tasks) if cfg.data.tasks is not None else list(info.tasks)
    for t in tasks:
        if t not in info.available_tasks:
            raise UserError(
                f"data.tasks: dataset {cfg.data.name!r} has no task {t!r}; "
                f"expected some of {', '.join(info.available_tasks)}"
            )
    if entry.single_task and len(tasks) != 1:
        raise UserError(
            f"model {cfg.model.name!r} is a single-task model; choose one task with --tasks "
            f"(the dataset offers {', '.join(tasks)})"
        )
    size = cfg.data.size or info.size
    check_input_size(cfg.model.name, *size)
    out = cfg.out or f"runs/{cfg.data.name}-{cfg.model.name}-{cfg.weighting.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    data = dataclasses.replace(cfg.data, size=tuple(size), tasks=tasks, num_classes=info.num_classes)
    method = weighting_class(cfg.weighting.name)  # an unknown name lists the valid ones
    scope = cfg.weighting.scope
    if method.kind != "loss" and scope is None:
        scope = method.default_scope  # recorded, so config.yaml says which gradients were used
    weighting = dataclasses.replace(cfg.weighting, scope=scope)
    return dataclasses.replace(cfg, data=data, weighting=weighting, out=out)


def build_tasks(cfg: TrainConfig) -> dict[str, Task]:
    """``{name: Task}`` of a resolved config."""
    return make_tasks(cfg.data.tasks, num_classes=cfg.data.num_classes)


def build_model(cfg: TrainConfig, tasks: dict[str, Task]) -> nn.Module:
    return create_model(cfg.model.name, task_channels(tasks), width=cfg.model.width, **cfg.model.options)


def build_transform(cfg: TrainConfig, train: bool) -> Callable[[dict], dict]:
    """The sample transform: resize to ``data.size`` and, for training with ``data.augment``,
    the task-aware random scale-crop and flip (SPEC 1.4)."""
    from ..data.transforms import Resize, make_augment

    resize = Resize(cfg.data.size)
    if not (train and cfg.data.augment):
        return resize
    return Chain(resize, make_augment(datasets.dataset_info(cfg.data.name, **data_options(cfg))))


class Chain:
    """Apply transforms in order (a picklable class, so DataLoader workers can receive it)."""

    def __init__(self, *transforms: Callable[[dict], dict]) -> None:
        self.transforms = transforms

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Chain{self.transforms}"


def build_dataset(cfg: TrainConfig, split: str, train: bool = False, root: str | None = None) -> Dataset:
    """One split of the configured dataset, transformed for training or evaluation."""
    root = root if root is not None else cfg.data.root  # None: the dataset's default (synthetic cache)
    return datasets.build_dataset(
        cfg.data.name, root, split, cfg.data.tasks, build_transform(cfg, train), **data_options(cfg)
    )


def build_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or SGD with torch's fused kernel where it has one (see engine/speed.py)."""
    from .speed import make_optimizer

    o = cfg.optim
    return make_optimizer(o.name, params, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule (stepped once after every epoch)."""
    s = cfg.schedule
    if s.name == "step":
        step = s.step_size or -(-cfg.epochs // 2)  # MTAN: halve once, at the midpoint
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=s.gamma)
    if s.name == "poly":
        epochs, power = cfg.epochs, s.power
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(0.0, 1.0 - e / epochs) ** power)
    if s.name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    raise AssertionError(s.name)


def device_of(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` -> a device that exists here (else UserError)."""
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise UserError(f"device: expected cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} requested, but torch sees no CUDA GPU (use --device cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device: 'mps' requested, but it is not available (use --device cpu)")
    return torch.device(name)


def describe(cfg: TrainConfig) -> str:
    """One line naming the run, for logs."""
    return (
        f"{cfg.model.name} (width {cfg.model.width:g}) on {cfg.data.name} {format_size(cfg.data.size)} "
        f"[{', '.join(cfg.data.tasks)}], {cfg.weighting.name} weighting, {cfg.optim.name} lr {cfg.optim.lr:g}, "
        f"{cfg.epochs} epochs x batch {cfg.batch_size}"
    )


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu", expect_model: str | None = None
                          ) -> tuple[TrainConfig, dict[str, Task], nn.Module]:
    """Rebuild the config, tasks and model (weights loaded, eval mode) saved in a checkpoint
    (see :func:`densemtl.engine.checkpoint.load_checkpoint`). ``expect_model``: refuse any other."""
    from .checkpoint import check_model_name, load_model_state
    from .config import config_from_dict

    if expect_model is not None:
        check_model_name(ckpt, expect_model)
    try:
        cfg = config_from_dict(ckpt["config"])
    except UserError as e:
        raise UserError(f"checkpoint {ckpt.get('path', '')}: its saved config is invalid: {e}") from None
    tasks = build_tasks(cfg)
    model = build_model(cfg, tasks)
    load_model_state(model, ckpt)
    from .speed import prepare_model

    model = model.to(device).eval()
    prepare_model(model, channels_last=cfg.channels_last)  # the memory format it was evaluated in
    return cfg, tasks, model
