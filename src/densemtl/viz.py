"""Pictures of dense predictions: colourised maps and the per-epoch preview grid.

Colours are fixed so that pictures of different runs and epochs compare at a glance:
segmentation uses one palette (class c always has the same colour; unlabelled -1 is black),
depth a perceptual colormap over a range shared by ground truth and prediction (invalid 0 is
black), normals map xyz in [-1, 1] to RGB (invalid all-zero is black), edges are grey levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from PIL import Image

from .tasks import Task

DEPTH_CMAP = "viridis"


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def palette(n: int) -> np.ndarray:
    """``n`` x 3 uint8 class colours: matplotlib's tab20, tab20b and tab20c, then golden-ratio hues."""
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    colours = [colormaps[name](i)[:3] for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    i = 0
    while len(colours) < n:
        colours.append(tuple(hsv_to_rgb(((i * 0.618034) % 1.0, 0.65, 0.9))))
        i += 1
    return (np.array(colours[:n]) * 255).round().astype(np.uint8)


def colorize_labels(labels, num_classes: int) -> np.ndarray:
    """H x W class indices -> H x W x 3 uint8; -1 (unlabelled) black, out-of-range white."""
    labels = _to_numpy(labels).astype(np.int64)
    colours = palette(num_classes)
    out = np.zeros(labels.shape + (3,), np.uint8)
    valid = (labels >= 0) & (labels < num_classes)
    out[valid] = colours[labels[valid]]
    out[labels >= num_classes] = 255
    return out


def depth_range(depth) -> tuple[float, float]:
    """(min, max) over the valid (non-zero, finite) pixels; (0, 1) when there are none."""
    d = _to_numpy(depth)
    valid = d[(d != 0) & np.isfinite(d)]
    if valid.size == 0:
        return 0.0, 1.0
    return float(valid.min()), float(valid.max())


def colorize_depth(depth, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(1 x) H x W depth -> H x W x 3 uint8 via :data:`DEPTH_CMAP`; 0 (invalid) black."""
    from matplotlib import colormaps

    d = _to_numpy(depth).astype(np.float64)
    d = d.reshape(d.shape[-2:])
    lo, hi = depth_range(d)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    scaled = np.clip((d - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    out = (colormaps[DEPTH_CMAP](np.nan_to_num(scaled))[..., :3] * 255).round().astype(np.uint8)
    out[(d == 0) | ~np.isfinite(d)] = 0
    return out


def colorize_normals(normals) -> np.ndarray:
    """3 x H x W unit vectors -> H x W x 3 uint8 with RGB = (xyz + 1) / 2; all-zero black."""
    n = _to_numpy(normals).astype(np.float64)
    out = (np.clip((n.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0) * 255).round().astype(np.uint8)
    out[~(n != 0).any(axis=0)] = 0
    return out


def colorize_gray(values) -> np.ndarray:
    """(1 x) H x W values in [0, 1] (edge probabilities) -> grey H x W x 3 uint8."""
    v = _to_numpy(values).astype(np.float64)
    v = (np.clip(v.reshape(v.shape[-2:]), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(v[..., None], 3, axis=2)


def colorize_image(image) -> np.ndarray:
    """3 x H x W RGB in [0, 1] -> H x W x 3 uint8."""
    x = _to_numpy(image).astype(np.float64)
    return (np.clip(x.transpose(1, 2, 0), 0.0, 1.0) * 255).round().astype(np.uint8)


def colorize(task: Task, value, depth_limits: tuple[float, float] | None = None) -> np.ndarray:
    """One sample's target or prediction of ``task`` (as :meth:`Task.activate` gives it) -> RGB."""
    if task.target_kind == "label":
        return colorize_labels(value, task.num_classes)
    if task.target_kind == "depth":
        return colorize_depth(value, *(depth_limits or (None, None)))
    if task.target_kind == "normal":
        return colorize_normals(value)
    return colorize_gray(value)


def save_png(rgb: np.ndarray, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def save_preview(
    path: str | Path,
    images: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    preds: Mapping[str, torch.Tensor],
    tasks: Mapping[str, Task],
    max_rows: int = 4,
    title: str | None = None,
) -> None:
    """Write a grid: one row per sample, columns image | GT and prediction of every task.

    ``preds`` are activated predictions (:meth:`Task.activate`); depth GT and prediction of a row
    share the GT's colour range so their colours compare. Small inputs are enlarged (nearest) so
    every panel is at least 96 pixels high. Drawn with PIL: fast enough to run every epoch.
    """
    from PIL import ImageDraw

    rows = min(max_rows, images.shape[0])
    names = [t for t in tasks if t in targets and t in preds]
    h, w = images.shape[-2:]
    zoom = max(1, -(-96 // h))
    gap, head = 4, 14
    labels = ["image"] + [f"{name} {which}" for name in names for which in ("GT", "pred")]
    top = head * (2 if title else 1)
    canvas = np.full((top + rows * (h * zoom + gap), len(labels) * (w * zoom + gap) - gap, 3), 255, np.uint8)
    for r in range(rows):
        panels = [colorize_image(images[r])]
        for name in names:
            task = tasks[name]
            limits = depth_range(targets[name][r]) if task.target_kind == "depth" else None
            panels += [colorize(task, targets[name][r], limits), colorize(task, preds[name][r], limits)]
        y = top + r * (h * zoom + gap)
        for c, rgb in enumerate(panels):
            x = c * (w * zoom + gap)
            canvas[y:y + h * zoom, x:x + w * zoom] = rgb.repeat(zoom, axis=0).repeat(zoom, axis=1)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0))
    for c, label in enumerate(labels):
        draw.text((c * (w * zoom + gap) + 2, top - head + 1), label, fill=(0, 0, 0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
