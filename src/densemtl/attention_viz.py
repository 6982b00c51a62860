"""Pictures of recorded attention maps (``densemtl predict --attention``).

:func:`densemtl.models.attention.record_attention` collects ``{"<module path>.<tag>": N x K x h x w}``
maps; :func:`save_attention_pictures` draws each one over the input image: every map is
resized to the image, scaled to its own min..max, shown as a heat map over the greyed image, one
panel per map channel, one PNG per recorded key. The title gives the key and the value range,
since each picture is scaled on its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .viz import colorize_image

CMAP = "inferno"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _panels(maps: torch.Tensor, size: tuple[int, int]) -> list[np.ndarray]:
    """First sample's K maps, bilinearly resized to ``size`` (h, w)."""
    first = maps[:1].float()
    resized = F.interpolate(first, size=size, mode="bilinear", align_corners=False)[0]
    return [m.numpy() for m in resized]


def save_attention_pictures(attn: Mapping[str, torch.Tensor], image: torch.Tensor, out_dir: str | Path,
                            prefix: str = "attention") -> list[Path]:
    """Save one PNG per attention map over ``image`` (3 x H x W RGB in [0, 1]); return the paths.

    Files are ``<out_dir>/<prefix>_<NNN>_<key>.png`` in the order of ``attn`` (the order in which
    the model computed them).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image, got shape {tuple(image.shape)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[-2:]
    grey = colorize_image(image).mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8)
    paths = []
    for i, (key, maps) in enumerate(attn.items()):
        if maps.dim() != 4:
            raise ValueError(f"attention map {key!r} must be N x K x H x W, got shape {tuple(maps.shape)}")
        panels = _panels(maps, (h, w))
        cell = 3.0
        fig = Figure(figsize=(cell * len(panels) * w / max(h, w) + 0.3, cell * h / max(h, w) + 0.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for k, (ax, panel) in enumerate(zip(axes, panels)):
            lo, hi = float(panel.min()), float(panel.max())
            ax.imshow(grey)
            ax.imshow((panel - lo) / (hi - lo) if hi > lo else np.zeros_like(panel), cmap=CMAP, alpha=0.6,
                      vmin=0.0, vmax=1.0)
            ax.set_axis_off()
            ax.set_title(f"{key}" + (f" [{k}]" if len(panels) > 1 else "") + f"\n{lo:.3g} .. {hi:.3g}",
                         fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{prefix}_{i:03d}_{_safe(key)}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths
