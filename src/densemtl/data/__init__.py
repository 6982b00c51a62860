"""Datasets: a registry of dataset variants and the one function that builds them.

A dataset module registers a class with :func:`register_dataset`::

    @register_dataset("nyuv2", options={})
    class NYUv2Dataset(NpyLayoutDataset):
        @classmethod
        def info_for(cls, **opts) -> DatasetInfo: ...

The class is constructed as ``cls(root, split, tasks, transform, **opts)`` and returns one dict of
channels-first tensors per sample (see docs/ARCHITECTURE.md). ``info_for(**opts)`` describes the
variant without touching the disk, so models and reports can be configured before any data exists.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError, unknown_name
from ._io import parse_size  # re-exported: the CLI's HEIGHTxWIDTH parser

# Modules imported (so that they register) on first use; one not written yet is skipped.
_MODULES = ("nyuv2", "cityscapes", "synthetic", "nyud")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset variant offers: everything a model, a loss or a report needs to know."""

    variant: str  # the name reports print: "nyuv2", "cityscapes", "nyud", "synthetic"
    tasks: tuple[str, ...]  # the default tasks, with ground truth on disk, in their usual order
    num_classes: int
    class_names: tuple[str, ...]
    size: tuple[int, int]  # default (height, width) of the samples
    depth_kind: str = "depth"  # "depth" (metres) or "disparity" (inverse depth): how scaling changes it
    splits: tuple[str, ...] = ("train", "val")
    # Tasks available on request whose targets are derived from others (``edge`` from the labels).
    derived_tasks: tuple[str, ...] = ()

    @property
    def available_tasks(self) -> tuple[str, ...]:
        """Every task this dataset can supply: the defaults, then the derived ones."""
        return (*self.tasks, *self.derived_tasks)

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.variant}: {len(self.class_names)} class names for {self.num_classes} classes")
        if self.depth_kind not in ("depth", "disparity"):
            raise ValueError(f"{self.variant}: depth_kind must be 'depth' or 'disparity'")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    cls: Callable  # cls(root, split, tasks, transform, **opts) -> Dataset; cls.info_for(**opts)
    options: dict = field(default_factory=dict)  # option name -> default
    description: str = ""


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, options: dict | None = None, description: str = ""):
    """Class decorator: make ``cls`` buildable as ``build_dataset(name, ...)``."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = DatasetEntry(name, cls, dict(options or {}), description)
        return cls

    return deco


def _ensure_loaded() -> None:
    for module in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{module}":
                raise


def list_datasets() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_dataset_entry(name: str) -> DatasetEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, _REGISTRY)
    return _REGISTRY[name]


def _check_options(entry: DatasetEntry, opts: dict) -> dict:
    unknown = set(opts) - set(entry.options)
    if unknown:
        raise UserError(
            f"unknown option(s) {sorted(unknown)} for dataset {entry.name!r}; "
            f"expected: {sorted(entry.options) or 'none'}"
        )
    return {**entry.options, **opts}


def dataset_info(name: str, **opts) -> DatasetInfo:
    """The :class:`DatasetInfo` of variant ``name`` with options ``opts`` (no disk access)."""
    entry = get_dataset_entry(name)
    return entry.cls.info_for(**_check_options(entry, opts))


def build_dataset(name: str, root: str | Path | None, split: str = "train", tasks=None,
                  transform: Callable[[dict], dict] | None = None, **opts):
    """Build dataset ``name`` reading ``root``/``split``, returning only ``tasks`` (default: all).

    ``transform`` (e.g. :class:`densemtl.data.transforms.Augment`) is applied to every sample
    dict. ``root=None`` is allowed for datasets with a default location (the synthetic scenes).
    """
    entry = get_dataset_entry(name)
    return entry.cls(root, split, tasks, transform, **_check_options(entry, opts))

__all__ = [
    "DatasetInfo", "register_dataset", "list_datasets", "dataset_info", "build_dataset",
    "get_dataset_entry", "parse_size",
]
