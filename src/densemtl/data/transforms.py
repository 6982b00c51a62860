"""Task-aware transforms of sample dicts: resizing, and the augmentation of SPEC 1.4 (random
scale-crop and horizontal flip).

Each key is resampled the way its content requires: the image bilinearly; labels and edges by
nearest neighbour (so no class is invented at a boundary and invalid values stay invalid); depth by
nearest neighbour and then divided by the zoom factor (a zoomed-in view looks closer; disparity is
multiplied instead); normals bilinearly and then re-normalised, with invalid (all-zero) normals kept
exactly where the nearest-neighbour resize puts them. A horizontal flip negates the normals' x
component (camera frame x right). Keys that are not tensors (``index``) pass through.

Randomness comes from a ``torch.Generator`` when one is given, else from torch's global generator,
which ``torch.manual_seed`` makes reproducible and which a DataLoader seeds differently per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..tasks import TASK_NAMES, make_task

SCALES = (1.0, 1.2, 1.5)


def _kind(key: str) -> str:
    """How ``key`` is resampled: 'image', or the task's target kind (label, depth, normal, edge)."""
    if key == "image":
        return "image"
    if key in TASK_NAMES:
        return make_task(key).target_kind
    raise ValueError(f"augmentation does not know how to resample sample key {key!r}")


@dataclass(frozen=True)
class CropParams:
    """A crop window (top, left, height, width) resized back to the full size, zoom ``scale``."""

    scale: float
    top: int
    left: int
    height: int
    width: int


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a C x H x W tensor (any dtype) with ``mode`` ('bilinear' or 'nearest-exact')."""
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[None].float(), size=size, mode=mode, **kwargs)[0].to(x.dtype)


def _resize_normals(n: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of unit normals, re-normalised; invalid where the nearest source is invalid."""
    nearest = _resize(n, size, "nearest-exact")
    smooth = _resize(n, size, "bilinear")
    length = smooth.norm(dim=0, keepdim=True)
    out = torch.where(length > 1e-6, smooth / length.clamp_min(1e-6), nearest)
    valid = (nearest != 0).any(dim=0, keepdim=True)
    return out * valid


def _resample(sample: dict, window: tuple[int, int, int, int], size: tuple[int, int],
              depth_factor: float) -> dict:
    """Cut ``window`` (top, left, height, width) from every spatial key, resize it to ``size`` the
    way each key's content requires, and multiply depth by ``depth_factor``."""
    top, left, height, width = window
    out = {}
    for key, value in sample.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        kind = _kind(key)
        x = value[None] if kind == "label" else value  # labels are H x W
        x = x[..., top:top + height, left:left + width]
        if (height, width) != tuple(size):
            if kind == "image":
                x = _resize(x, size, "bilinear")
            elif kind == "normal":
                x = _resize_normals(x, size)
            else:
                x = _resize(x, size, "nearest-exact")
        if kind == "depth" and depth_factor != 1:
            x = x * depth_factor
        out[key] = x[0] if kind == "label" else x
    return out


def _spatial_size(sample: dict) -> tuple[int, int]:
    return next(tuple(v.shape[-2:]) for v in sample.values() if torch.is_tensor(v) and v.ndim >= 2)


def scale_crop(sample: dict, params: CropParams, depth_kind: str = "depth") -> dict:
    """Crop ``params``' window from every spatial key and resize it back to the input size."""
    factor = params.scale if depth_kind == "disparity" else 1 / params.scale
    window = (params.top, params.left, params.height, params.width)
    return _resample(sample, window, _spatial_size(sample), factor)


def resize(sample: dict, size: tuple[int, int]) -> dict:
    """Resize every spatial key to ``size`` (height, width) the way its content requires. Depth
    values are kept: the whole view is resampled, nothing moves closer. A sample that already has
    that size is returned unchanged."""
    h, w = _spatial_size(sample)
    if (h, w) == tuple(size):
        return sample
    return _resample(sample, (0, 0, h, w), tuple(size), 1.0)


class Resize:
    """Transform: :func:`resize` every sample to ``size`` (the trainer's ``data.size``)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: dict) -> dict:
        return resize(sample, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


def hflip(sample: dict) -> dict:
    """Mirror every spatial key left-right; normals get their x component negated."""
    out = {}
    for key, value in sample.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        x = value.flip(-1)
        if _kind(key) == "normal":
            x = x * torch.tensor([-1.0, 1.0, 1.0], dtype=x.dtype)[:, None, None]
        out[key] = x
    return out


class Augment:
    """Random scale-crop (zoom ``s`` drawn from ``scales``), then a horizontal flip with ``flip_p``.

    ``depth_kind`` is the dataset's (``DatasetInfo.depth_kind``): 'depth' divides depth by the
    zoom, 'disparity' multiplies it.
    """

    def __init__(self, scales: Sequence[float] = SCALES, flip_p: float = 0.5, depth_kind: str = "depth",
                 generator: torch.Generator | None = None) -> None:
        if not scales or any(s < 1 for s in scales):
            raise UserError(f"augmentation scales must be >= 1 (zoom in); got {list(scales)}")
        if not 0 <= flip_p <= 1:
            raise UserError(f"augmentation flip probability must be in [0, 1]; got {flip_p}")
        if depth_kind not in ("depth", "disparity"):
            raise UserError(f"depth_kind must be 'depth' or 'disparity'; got {depth_kind!r}")
        self.scales = tuple(float(s) for s in scales)
        self.flip_p = flip_p
        self.depth_kind = depth_kind
        self.generator = generator

    def sample_crop(self, height: int, width: int) -> CropParams:
        g = self.generator
        scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=g))]
        h, w = int(height / scale), int(width / scale)
        top = int(torch.randint(height - h + 1, (1,), generator=g))
        left = int(torch.randint(width - w + 1, (1,), generator=g))
        return CropParams(scale, top, left, h, w)

    def sample_flip(self) -> bool:
        return bool(torch.rand((), generator=self.generator) < self.flip_p)

    def __call__(self, sample: dict) -> dict:
        height, width = _spatial_size(sample)
        sample = scale_crop(sample, self.sample_crop(height, width), self.depth_kind)
        return hflip(sample) if self.sample_flip() else sample

    def __repr__(self) -> str:
        return f"Augment(scales={self.scales}, flip_p={self.flip_p}, depth_kind={self.depth_kind!r})"


def make_augment(info, **kwargs) -> Augment:
    """The augmentation for a dataset described by ``info`` (a DatasetInfo)."""
    return Augment(depth_kind=info.depth_kind, **kwargs)

