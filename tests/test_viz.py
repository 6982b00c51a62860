"""Colourisation of labels, depth and normals, and the preview grid picture."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from densemtl import viz
from densemtl.tasks import make_tasks


def test_palette_is_fixed_and_distinct():
    p = viz.palette(80)
    assert p.shape == (80, 3) and p.dtype == np.uint8
    assert np.array_equal(p[:13], viz.palette(13))  # a class keeps its colour whatever n is
    assert len({tuple(c) for c in p[:60]}) == 60


def test_labels():
    labels = np.array([[-1, 0], [12, 13]])
    rgb = viz.colorize_labels(labels, 13)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]  # unlabelled
    assert rgb[0, 1].tolist() == viz.palette(13)[0].tolist()
    assert rgb[1, 0].tolist() == viz.palette(13)[12].tolist()
    assert rgb[1, 1].tolist() == [255, 255, 255]  # out of range stands out


def test_depth_uses_colormap_range_and_blacks_out_invalid():
    depth = torch.tensor([[[0.0, 1.0, 3.0, 2.0]]])  # 1 x 1 x 4, 0 = invalid
    rgb = viz.colorize_depth(depth)
    cmap = colormaps[viz.DEPTH_CMAP]
    expect = lambda t: (np.array(cmap(t)[:3]) * 255).round().astype(np.uint8).tolist()  # noqa: E731
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == expect(0.0)  # the minimum valid depth, 1.0
    assert rgb[0, 2].tolist() == expect(1.0)  # the maximum, 3.0
    assert rgb[0, 3].tolist() == expect(0.5)
    # a shared range: 2.0 within [0, 4] sits in the middle too
    assert viz.colorize_depth(np.array([[2.0]]), 0.0, 4.0)[0, 0].tolist() == expect(0.5)
    assert viz.depth_range(np.zeros((2, 2))) == (0.0, 1.0)


def test_normals_map_xyz_to_rgb():
    n = np.zeros((3, 1, 3), np.float32)
    n[:, 0, 0] = (1, 0, 0)
    n[:, 0, 1] = (0, 0, -1)  # n[:, 0, 2] stays all-zero = invalid
    rgb = viz.colorize_normals(n)
    assert rgb[0, 0].tolist() == [255, 128, 128]
    assert rgb[0, 1].tolist() == [128, 128, 0]
    assert rgb[0, 2].tolist() == [0, 0, 0]


def test_preview_grid_png(tmp_path):
    tasks = make_tasks(["semantic", "depth", "normal"], num_classes=13)
    g = torch.Generator().manual_seed(0)
    n, h, w = 3, 16, 24
    images = torch.rand(n, 3, h, w, generator=g)
    targets = {"semantic": torch.randint(-1, 13, (n, h, w), generator=g),
               "depth": torch.rand(n, 1, h, w, generator=g) * 5,
               "normal": torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)}
    preds = {k: v.clone() for k, v in targets.items()}
    path = tmp_path / "pictures" / "epoch_001.png"
    viz.save_preview(path, images, targets, preds, tasks, max_rows=2, title="test")
    with Image.open(path) as im:
        width, height = im.size
        assert im.mode in ("RGB", "RGBA")
    assert width > height  # 7 columns x 2 rows of 16x24 panels


def test_colorize_dispatches_on_task_kind():
    tasks = make_tasks(["semantic", "depth", "normal", "edge"], num_classes=13)
    assert viz.colorize(tasks["semantic"], torch.zeros(4, 5, dtype=torch.long)).shape == (4, 5, 3)
    assert viz.colorize(tasks["depth"], torch.ones(1, 4, 5)).shape == (4, 5, 3)
    assert viz.colorize(tasks["normal"], torch.ones(3, 4, 5)).shape == (4, 5, 3)
    edge = viz.colorize(tasks["edge"], torch.full((1, 4, 5), 0.5))
    assert edge.shape == (4, 5, 3) and edge[0, 0].tolist() == [128, 128, 128]
