"""NYUD-v2 as released for MTI-Net (SPEC 1.3): 40 classes at 480x640, depth, normals, edges.

Layout of the release (``NYUD_MT``, as read by the MTI-Net / SCA-MTL code)::

    ROOT/gt_sets/{train,val}.txt   one sample id per line (795 train / 654 val)
    ROOT/images/ID.jpg             RGB
    ROOT/segmentation/ID.png       uint8: 0 = unlabelled, 1..40 = the NYU-40 classes
    ROOT/depth/ID.npy              float H x W, metres (0 = invalid)
    ROOT/normals/ID.npy            float H x W x 3 in [-1, 1] (all-zero = invalid)
    ROOT/edge/ID.npy               float H x W in {0, 1}

Samples follow docs/ARCHITECTURE.md: ``semantic`` = png value - 1 (unlabelled -> -1), ``edge`` as
float32 1 x H x W. Results on this variant ("nyud") are not comparable with MTAN's 13-class
"nyuv2" layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from . import DatasetInfo, register_dataset
from ._io import check_depth, check_normal, check_same_size, load_npy, require_dir
from .layout import NpyLayoutDataset, Sample

NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)
NYUD_TASKS = ("semantic", "depth", "normal", "edge")
FILES = {  # sample key -> (folder, extension)
    "image": ("images", ".jpg"),
    "semantic": ("segmentation", ".png"),
    "depth": ("depth", ".npy"),
    "normal": ("normals", ".npy"),
    "edge": ("edge", ".npy"),
}


def _read_image(path: Path, mode: str | None = None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode) if mode else img)
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path} ({e})") from None


def _semantic(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim != 2:
        raise UserError(f"{path} has shape {arr.shape}; expected a single-channel H x W label image")
    if arr.size and int(arr.max()) > len(NYUD_CLASSES):
        raise UserError(f"{path} has label {int(arr.max())}; expected 0 (unlabelled) or 1..{len(NYUD_CLASSES)}")
    return arr.astype(np.int64) - 1


def _edge(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim != 2:
        raise UserError(f"{path} has shape {arr.shape}; expected H x W")
    if arr.size and (float(arr.min()) < 0 or float(arr.max()) > 1):
        raise UserError(f"{path} has values in [{float(arr.min()):g}, {float(arr.max()):g}]; expected 0/1 edges")
    return (arr >= 0.5).astype(np.float32)


@register_dataset("nyud", description="NYUD-v2 as released for MTI-Net: 40 classes, 480x640, "
                                      "semantic/depth/normal/edge (795 train / 654 val)")
class NYUDDataset(NpyLayoutDataset):
    """The MTI-Net release of NYUD-v2; sample ids come from ``gt_sets/<split>.txt``."""

    def __init__(self, root: str | Path | None, split: str = "train", tasks=None,
                 transform: Callable[[Sample], Sample] | None = None) -> None:
        self.info = self.info_for()
        self.tasks = self._resolve_tasks(tasks)
        self.transform = transform
        if root is None:
            self.default_root()  # raises: this dataset has no default location
        self.root = require_dir(Path(root), "nyud dataset root")
        self.split = split
        listing = self.root / "gt_sets" / f"{split}.txt"
        if not listing.is_file():
            found = sorted(p.stem for p in (self.root / "gt_sets").glob("*.txt"))
            raise UserError(f"split list {listing} does not exist; expected gt_sets/train.txt and "
                            f"gt_sets/val.txt under {self.root} (found: {found or 'nothing'})")
        self.ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise UserError(f"split list {listing} is empty; expected one sample id per line")
        for key in self.keys:
            require_dir(self.root / FILES[key][0], f"nyud folder for {key!r}")
            missing = [p for p in (self.path(key, i) for i in range(len(self.ids))) if not p.is_file()]
            if missing:
                raise UserError(f"{len(missing)} sample(s) of {listing} have no {key} file, e.g. {missing[0]}")
        self.num_samples = len(self.ids)

    @classmethod
    def info_for(cls) -> DatasetInfo:
        return DatasetInfo(variant="nyud", tasks=NYUD_TASKS, num_classes=len(NYUD_CLASSES),
                           class_names=NYUD_CLASSES, size=(480, 640))

    def path(self, key: str, index: int) -> Path:
        folder, ext = FILES[key]
        return self.root / folder / f"{self.ids[index]}{ext}"

    def load_arrays(self, index: int) -> dict[str, np.ndarray]:
        """Validated numpy arrays of one sample, channels last, before any transform."""
        out, paths = {}, {}
        for key in self.keys:
            p = paths[key] = self.path(key, index)
            if key == "image":
                out[key] = _read_image(p, "RGB").astype(np.float32) / 255.0
            elif key == "semantic":
                out[key] = _semantic(_read_image(p), p)
            elif key == "depth":
                out[key] = check_depth(load_npy(p), p)
            elif key == "normal":
                out[key] = check_normal(load_npy(p), p)
            else:
                out[key] = _edge(load_npy(p), p)
        check_same_size({k: (a, paths[k]) for k, a in out.items()})
        return out

    def __repr__(self) -> str:
        return (f"NYUDDataset(root={str(self.root)!r}, split={self.split!r}, tasks={list(self.tasks)}, "
                f"samples={self.num_samples})")
