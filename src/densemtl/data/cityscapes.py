"""CityScapes in MTAN's preprocessed layout (SPEC 1.2), and a converter from the official PNGs.

Layout: ``ROOT/{train,val}/image/{i}.npy`` (HxWx3 in [0,1]), ``label_{2,7,19}/{i}.npy`` (HxW,
-1 = invalid) and ``depth/{i}.npy`` (HxWx1 **disparity** = raw 16-bit disparity PNG / 65536,
0 = invalid). The loader reads one label variant, chosen by ``num_classes``.

Class sets, all derived from the official ``*_gtFine_labelIds.png`` through :data:`LABELS`:

- ``19``: the official train ids (road .. bicycle); ids with train id 255 -> -1.
- ``7``: the Cityscapes categories flat, construction, object, nature, sky, human, vehicle; the
  void category -> -1. (Assumed to be what MTAN used; not checked against MTAN's files.)
- ``2``: background (flat, construction, object, nature, sky: the "stuff" categories) vs.
  foreground (human, vehicle: the categories whose classes have instances); void -> -1. MTAN
  ships a 2-class variant without documenting it; this split is our choice.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from . import DatasetInfo, register_dataset
from ._io import atomic_dir, require_dir
from .layout import NpyLayoutDataset

# Official Cityscapes label definitions: (name, labelId, trainId, category).
LABELS: tuple[tuple[str, int, int, str], ...] = (
    ("unlabeled", 0, 255, "void"), ("ego vehicle", 1, 255, "void"),
    ("rectification border", 2, 255, "void"), ("out of roi", 3, 255, "void"),
    ("static", 4, 255, "void"), ("dynamic", 5, 255, "void"), ("ground", 6, 255, "void"),
    ("road", 7, 0, "flat"), ("sidewalk", 8, 1, "flat"), ("parking", 9, 255, "flat"),
    ("rail track", 10, 255, "flat"), ("building", 11, 2, "construction"),
    ("wall", 12, 3, "construction"), ("fence", 13, 4, "construction"),
    ("guard rail", 14, 255, "construction"), ("bridge", 15, 255, "construction"),
    ("tunnel", 16, 255, "construction"), ("pole", 17, 5, "object"), ("polegroup", 18, 255, "object"),
    ("traffic light", 19, 6, "object"), ("traffic sign", 20, 7, "object"),
    ("vegetation", 21, 8, "nature"), ("terrain", 22, 9, "nature"), ("sky", 23, 10, "sky"),
    ("person", 24, 11, "human"), ("rider", 25, 12, "human"), ("car", 26, 13, "vehicle"),
    ("truck", 27, 14, "vehicle"), ("bus", 28, 15, "vehicle"), ("caravan", 29, 255, "vehicle"),
    ("trailer", 30, 255, "vehicle"), ("train", 31, 16, "vehicle"), ("motorcycle", 32, 17, "vehicle"),
    ("bicycle", 33, 18, "vehicle"),
)
CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
FOREGROUND_CATEGORIES = ("human", "vehicle")
CLASS_NAMES: dict[int, tuple[str, ...]] = {
    19: tuple(name for name, _, train_id, _ in sorted(LABELS, key=lambda r: r[2]) if train_id != 255),
    7: CATEGORIES,
    2: ("background", "foreground"),
}
VARIANTS = tuple(sorted(CLASS_NAMES))
DISPARITY_SCALE = 65536.0  # layout disparity = raw 16-bit PNG value / 65536


def _class_of(num_classes: int, train_id: int, category: str) -> int:
    if num_classes == 19:
        return -1 if train_id == 255 else train_id
    if category == "void":
        return -1
    if num_classes == 7:
        return CATEGORIES.index(category)
    return int(category in FOREGROUND_CATEGORIES)


def _lookup_table(num_classes: int) -> np.ndarray:
    lut = np.full(256, -1, np.int64)
    for _, label_id, train_id, category in LABELS:
        lut[label_id] = _class_of(num_classes, train_id, category)
    return lut


_LUTS = {n: _lookup_table(n) for n in VARIANTS}


def _check_variant(num_classes: int) -> int:
    if num_classes not in CLASS_NAMES:
        raise UserError(f"CityScapes option num_classes must be one of {list(VARIANTS)}; got {num_classes!r}")
    return num_classes


def labelids_to_classes(label_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Official labelIds (HxW integers) -> classes 0..C-1 of the 2/7/19 variant, -1 = invalid."""
    _check_variant(num_classes)
    ids = np.asarray(label_ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise UserError(f"labelIds must be in 0..255; got range [{ids.min()}, {ids.max()}]")
    return _LUTS[num_classes][ids.astype(np.int64)]


@register_dataset("cityscapes", options={"num_classes": 7},
                  description="CityScapes, MTAN's layout: 2/7/19 classes + disparity (2975 train / 500 val)")
class CityscapesDataset(NpyLayoutDataset):
    @classmethod
    def info_for(cls, num_classes: int = 7) -> DatasetInfo:
        n = _check_variant(num_classes)
        return DatasetInfo(variant="cityscapes", tasks=("semantic", "depth"), num_classes=n,
                           class_names=CLASS_NAMES[n], size=(128, 256), depth_kind="disparity")

    def folder(self, key: str) -> str:
        return f"label_{self.info.num_classes}" if key == "semantic" else super().folder(key)


# -- converter from the official PNGs ---------------------------------------------------------

def nearest_resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW(xC) array, sampling each output pixel's centre."""
    h, w = arr.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return arr[rows[:, None], cols[None, :]]


def _read_png(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {path} ({e})") from None
    return img


def _frames(src: Path, split: str) -> list[tuple[str, Path, Path, Path | None]]:
    """(stem, image, labelIds, disparity or None) for every frame of ``split``, sorted by name."""
    image_root = src / "leftImg8bit" / split
    disparity_root = src / "disparity" / split
    frames = []
    for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
        city = image.parent.name
        stem = image.name[: -len("_leftImg8bit.png")]
        label = src / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise UserError(f"missing label file {label} for image {image}")
        disparity = disparity_root / city / f"{stem}_disparity.png"
        if disparity_root.is_dir() and not disparity.is_file():
            raise UserError(f"missing disparity file {disparity} for image {image}")
        frames.append((stem, image, label, disparity if disparity_root.is_dir() else None))
    return frames


def convert_frame(image: Path, label: Path, disparity: Path | None,
                  size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """One official frame -> the layout's arrays: image, label_2/7/19 and (if given) depth."""
    rgb = _read_png(image).convert("RGB")
    ids_img = _read_png(label)
    if ids_img.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"{label} has image mode {ids_img.mode}; expected a single-channel labelIds PNG")
    ids = np.array(ids_img)
    if ids.shape != (rgb.height, rgb.width):
        raise UserError(f"{label} is {ids.shape[0]}x{ids.shape[1]} but {image} is {rgb.height}x{rgb.width}")
    out_size = size or (rgb.height, rgb.width)
    if (rgb.height, rgb.width) != out_size:
        rgb = rgb.resize((out_size[1], out_size[0]), Image.BILINEAR)
        ids = nearest_resize(ids, out_size)
    arrays = {"image": (np.asarray(rgb, np.float32) / 255.0)}
    for n in VARIANTS:
        arrays[f"label_{n}"] = labelids_to_classes(ids, n).astype(np.float32)
    if disparity is not None:
        raw = np.array(_read_png(disparity)).astype(np.float64)
        if raw.ndim != 2 or raw.shape != (ids_img.height, ids_img.width):
            raise UserError(f"{disparity} has shape {raw.shape}; expected {ids_img.height}x{ids_img.width} "
                            "(a single-channel 16-bit disparity PNG)")
        raw = nearest_resize(raw, out_size)
        arrays["depth"] = (raw / DISPARITY_SCALE).astype(np.float32)[..., None]
    return arrays


def convert_cityscapes(src: str | Path, out: str | Path, size: tuple[int, int] | None = None,
                       overwrite: bool = False) -> dict[str, int]:
    """Convert an official Cityscapes tree (``leftImg8bit/``, ``gtFine/``, optional ``disparity/``)
    into MTAN's layout at ``out``; returns the number of frames per split.

    Frames are numbered in sorted (city, name) order; ``out/sources.csv`` maps each index back to
    its Cityscapes name. Every split of train/val that has images is converted. The output appears
    at ``out`` only once complete.
    """
    src = require_dir(Path(src), "Cityscapes source folder")
    require_dir(src / "leftImg8bit", "Cityscapes image folder")
    require_dir(src / "gtFine", "Cityscapes label folder")
    splits = {s: _frames(src, s) for s in ("train", "val")}
    splits = {s: f for s, f in splits.items() if f}
    if not splits:
        raise UserError(f"no images found under {src / 'leftImg8bit'}/{{train,val}}/CITY/*_leftImg8bit.png")
    with atomic_dir(Path(out), overwrite=overwrite) as tmp, open(tmp / "sources.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["split", "index", "frame"])
        for split, frames in splits.items():
            for i, (stem, image, label, disparity) in enumerate(frames):
                for key, arr in convert_frame(image, label, disparity, size).items():
                    (tmp / split / key).mkdir(parents=True, exist_ok=True)
                    np.save(tmp / split / key / f"{i}.npy", arr)
                rows.writerow([split, i, stem])
    return {s: len(f) for s, f in splits.items()}
