"""Base class for datasets stored in MTAN's ``.npy`` layout: ``ROOT/SPLIT/FOLDER/{i}.npy``.

NYUv2, the synthetic scenes and CityScapes (SPEC 1.1, 1.2) share this layout and differ only in
their folders and class sets. Folder-level problems (missing split, empty folder, differing file
counts) are reported when the dataset is built; array-level problems (shape, range, NaN, corrupt
file) when a sample is loaded, and :meth:`NpyLayoutDataset.check` scans every sample at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ..edges import edges_from_segmentation
from ..errors import UserError, unknown_name
from . import DatasetInfo
from ._io import (
    check_depth, check_image, check_label, check_normal, check_same_size, indexed_files, load_npy,
    require_dir,
)

Sample = dict[str, "torch.Tensor | int"]


class NpyLayoutDataset(Dataset):
    """One sample per index: ``{"image", <task>..., "index"}``, channels first (ARCHITECTURE.md).

    Subclasses set :attr:`FOLDERS` (sample key -> folder name) or override :meth:`folder`, and
    implement ``info_for(**opts)``.
    """

    FOLDERS: ClassVar[dict[str, str]] = {
        "image": "image", "semantic": "label", "depth": "depth", "normal": "normal",
    }

    def __init__(self, root: str | Path | None, split: str = "train", tasks=None,
                 transform: Callable[[Sample], Sample] | None = None, **opts) -> None:
        self.info: DatasetInfo = self.info_for(**opts)
        self.tasks = self._resolve_tasks(tasks)
        self.transform = transform
        self.root = Path(self.default_root() if root is None else root)
        self.split = split
        require_dir(self.root, f"{self.info.variant} dataset root")
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise UserError(
                f"split folder {self.split_dir} does not exist; expected one of "
                f"{list(self.info.splits)} under {self.root} (found: {found or 'nothing'})"
            )
        for key in self.keys:
            if not (self.split_dir / self.folder(key)).is_dir():
                raise UserError(
                    f"folder {self.split_dir / self.folder(key)} does not exist; {self.info.variant} "
                    f"keeps its {key!r} arrays there (choose tasks among those the dataset has)"
                )
        counts = {key: indexed_files(self.split_dir / self.folder(key)) for key in self.keys}
        if len(set(counts.values())) != 1:
            listing = ", ".join(f"{self.folder(k)}/: {n}" for k, n in counts.items())
            raise UserError(
                f"{self.split_dir} has differing numbers of files ({listing}); every folder must "
                "hold the same samples 0.npy..N-1.npy"
            )
        self.num_samples = counts["image"]

    # -- to be provided by subclasses -------------------------------------------------------
    @classmethod
    def info_for(cls, **opts) -> DatasetInfo:
        raise NotImplementedError

    def default_root(self) -> Path:
        raise UserError(f"dataset {self.info.variant!r} needs a root folder (none was given)")

    def folder(self, key: str) -> str:
        """Folder (under the split) holding ``key``'s arrays."""
        return self.FOLDERS[key]

    # -------------------------------------------------------------------------------------
    def _resolve_tasks(self, tasks) -> tuple[str, ...]:
        if tasks is None:
            return self.info.tasks
        tasks = tuple(tasks)
        for t in tasks:
            if t not in self.info.available_tasks:
                raise unknown_name(f"task for dataset {self.info.variant!r}:", t, self.info.available_tasks)
        if not tasks:
            raise UserError("at least one task is required")
        return tasks

    @property
    def keys(self) -> tuple[str, ...]:
        """Keys read from disk: the image, then the tasks (the labels for a derived edge task)."""
        stored = [t for t in self.tasks if t not in self.info.derived_tasks]
        if "edge" in self.tasks and "edge" in self.info.derived_tasks and "semantic" not in stored:
            stored.append("semantic")
        return ("image", *stored)

    def path(self, key: str, index: int) -> Path:
        return self.split_dir / self.folder(key) / f"{index}.npy"

    def __len__(self) -> int:
        return self.num_samples

    def load_arrays(self, index: int) -> dict[str, np.ndarray]:
        """Validated numpy arrays of one sample, channels last, before any transform."""
        out, paths = {}, {}
        for key in self.keys:
            paths[key] = p = self.path(key, index)
            out[key] = _CHECKS[key](load_npy(p), p, self.info.num_classes)
        check_same_size({key: (arr, paths[key]) for key, arr in out.items()})
        if "edge" in self.tasks and "edge" in self.info.derived_tasks:
            # Boundaries of the label map, H x W x 1 like the other channels-last targets.
            out["edge"] = edges_from_segmentation(torch.from_numpy(out["semantic"]))[0, ..., None].numpy()
            if "semantic" not in self.tasks:
                del out["semantic"]
        return out

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        sample: Sample = {key: _to_tensor(key, arr) for key, arr in self.load_arrays(index).items()}
        sample["index"] = int(index)
        return self.transform(sample) if self.transform is not None else sample

    def check(self) -> dict:
        """Load and validate every sample; return counts and value ranges (raises on a bad file)."""
        stats = _Stats(self.info.num_classes)
        for i in range(self.num_samples):
            stats.add(self.load_arrays(i))
        return {
            "variant": self.info.variant, "root": str(self.root), "split": self.split,
            "samples": self.num_samples, "tasks": list(self.tasks), **stats.summary(self.info),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(variant={self.info.variant!r}, root={str(self.root)!r}, "
                f"split={self.split!r}, tasks={list(self.tasks)}, samples={self.num_samples})")


_CHECKS = {  # sample key -> (array, path, num_classes) -> validated array
    "image": lambda a, p, _: check_image(a, p),
    "semantic": check_label,
    "depth": lambda a, p, _: check_depth(a, p),
    "normal": lambda a, p, _: check_normal(a, p),
}


def _to_tensor(key: str, arr: np.ndarray) -> torch.Tensor:
    """HxWxC -> CxHxW; labels stay HxW; HxW depth becomes 1xHxW."""
    if arr.ndim == 3:
        arr = arr.transpose(2, 0, 1)
    elif key != "semantic":
        arr = arr[None]
    return torch.from_numpy(np.ascontiguousarray(arr))


class _Stats:
    """Running value ranges and invalid fractions over the samples of one split."""

    def __init__(self, num_classes: int) -> None:
        self.seen: set[str] = set()
        self.sizes: set[tuple[int, int]] = set()
        self.pixels = 0
        self.image = [np.inf, -np.inf]
        self.class_pixels = np.zeros(num_classes, np.int64)
        self.unlabelled = 0
        self.depth = [np.inf, -np.inf]
        self.depth_invalid = 0
        self.normal_invalid = 0
        self.normal_max_dev = 0.0

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        self.seen.update(arrays)
        img = arrays["image"]
        self.sizes.add(img.shape[:2])
        self.pixels += img.shape[0] * img.shape[1]
        self.image = [min(self.image[0], float(img.min())), max(self.image[1], float(img.max()))]
        if "semantic" in arrays:
            lab = arrays["semantic"]
            self.unlabelled += int((lab < 0).sum())
            self.class_pixels += np.bincount(lab[lab >= 0], minlength=len(self.class_pixels))
        if "depth" in arrays:
            d = arrays["depth"]
            valid = d[d > 0]
            self.depth_invalid += d.size - valid.size
            if valid.size:
                self.depth = [min(self.depth[0], float(valid.min())), max(self.depth[1], float(valid.max()))]
        if "normal" in arrays:
            norm = np.linalg.norm(arrays["normal"], axis=-1)
            valid = norm[norm > 0]
            self.normal_invalid += norm.size - valid.size
            if valid.size:
                self.normal_max_dev = max(self.normal_max_dev, float(np.abs(valid - 1).max()))

    def summary(self, info: DatasetInfo) -> dict:
        px = max(self.pixels, 1)
        out: dict = {
            "sizes": sorted(list(s) for s in self.sizes),
            "image_range": self.image,
        }
        if "semantic" in self.seen:
            out["semantic"] = {
                "unlabelled_fraction": self.unlabelled / px,
                "class_fraction": {n: int(c) / px for n, c in zip(info.class_names, self.class_pixels)},
            }
        if "depth" in self.seen:
            out["depth"] = {"valid_range": self.depth if np.isfinite(self.depth[0]) else None, "invalid_fraction": self.depth_invalid / px}
        if "normal" in self.seen:
            out["normal"] = {"invalid_fraction": self.normal_invalid / px,
                             "max_unit_deviation": self.normal_max_dev}
        return out
