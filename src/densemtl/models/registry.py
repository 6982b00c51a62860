"""Model registry.

Every architecture registers a factory with :func:`register_model`::

    @register_model("mtan", family="mtan", description="MTAN on SegNet (Liu et al. 2019)")
    def mtan(tasks: dict[str, int], width: float = 1.0, **options) -> nn.Module: ...

``tasks`` maps task name -> output channels, in order. A model maps an image batch
(N x 3 x H x W) to ``dict[str, Tensor]``: one raw output per task under the task's name, and
optional deep-supervision outputs under ``"task@tag"`` (e.g. ``"semantic@scale1"``), which the
loss supervises like the task itself (resized to the target). Models never compute losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import UserError, unknown_name


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    family: str  # checkpoints / warm starts are compatible within a family
    description: str = ""
    single_task: bool = False  # True: exactly one task (single-task baselines)
    size_multiple: int = 1  # input H and W must be multiples of this
    options: dict = field(default_factory=dict)  # option name -> default, for docs and checks


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, family: str | None = None, description: str = "",
                   single_task: bool = False, size_multiple: int = 1, options: dict | None = None):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, family or name, description, single_task,
                                     size_multiple, dict(options or {}))
        return fn

    return deco


def _ensure_loaded() -> None:
    from . import _all  # noqa: F401  (imports every model module so they register)


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    return _REGISTRY[name]


def create_model(name: str, tasks: dict[str, int], width: float = 1.0, **options) -> nn.Module:
    """Build a registered model for ``tasks`` ({name: channels}) at channel multiplier ``width``."""
    entry = get_entry(name)
    if not tasks:
        raise UserError(f"model {name!r} needs at least one task")
    if entry.single_task and len(tasks) != 1:
        raise UserError(
            f"model {name!r} is a single-task model; got tasks {list(tasks)} (pass exactly one task)"
        )
    if width <= 0:
        raise UserError(f"option width must be > 0, got {width}")
    unknown = set(options) - set(entry.options)
    if unknown:
        raise UserError(
            f"unknown option(s) {sorted(unknown)} for model {name!r}; "
            f"expected: {sorted(entry.options) or 'none'}"
        )
    model = entry.factory(dict(tasks), width=width, **options)
    model.densemtl_name = name
    model.densemtl_family = entry.family
    return model


def check_input_size(name: str, height: int, width: int) -> None:
    m = get_entry(name).size_multiple
    if height % m or width % m:
        raise UserError(
            f"model {name!r} needs input height and width that are multiples of {m}; got {height}x{width}"
        )


def scaled(channels: int, width: float) -> int:
    """Channel count at width multiplier ``width`` (at least 1)."""
    return max(1, int(round(channels * width)))
