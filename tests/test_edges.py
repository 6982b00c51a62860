"""Edge targets from segmentation and the ODS F-measure with a distance tolerance (hand-made cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densemtl.edges import EdgeMeter, edges_from_segmentation
from densemtl.metrics import merged
from densemtl.tasks import make_task


def test_edges_from_segmentation_by_hand():
    label = torch.tensor([
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, -1],
        [2, 2, 2, -1],
    ])
    expected = torch.tensor([
        [0, 1, 0, 0],  # 0|1 change on the right; row 0 does not change downwards
        [1, 1, 1, 0],  # 0 above 2, 1 above 2 (col 3: 1 above -1 is ignored)
        [0, 0, 0, 0],  # 2 next to -1 is ignored
        [0, 0, 0, 0],
    ], dtype=torch.float32)
    out = edges_from_segmentation(label)
    assert out.shape == (1, 4, 4) and out.dtype == torch.float32
    assert torch.equal(out[0], expected)


def _vertical_line(h: int, w: int, col: int, value: float = 1.0) -> torch.Tensor:
    img = torch.zeros(1, 1, h, w)
    img[..., 10:h - 10, col] = value
    return img


@pytest.mark.parametrize("shift,expected", [(0, 1.0), (1, 1.0), (2, 0.0)])
def test_shifted_edge_within_default_tolerance_counts(shift, expected):
    # 100 x 100: max distance = 0.011 * sqrt(2) * 100 = 1.56 px
    meter = EdgeMeter()
    meter.update(_vertical_line(100, 100, 50 + shift), _vertical_line(100, 100, 50))
    assert meter.compute()["odsf"] == pytest.approx(expected)


@pytest.mark.parametrize("shift,expected", [(7, 1.0), (8, 0.0)])
def test_tolerance_is_a_fraction_of_the_diagonal(shift, expected):
    meter = EdgeMeter(tolerance=0.05)  # 0.05 * 141.4 = 7.07 px
    meter.update(_vertical_line(100, 100, 40 + shift), _vertical_line(100, 100, 40))
    assert meter.compute()["odsf"] == pytest.approx(expected)


def test_diagonal_offset_uses_euclidean_distance():
    gt = torch.zeros(1, 1, 100, 100)
    gt[0, 0, 50, 50] = 1
    near, far = torch.zeros_like(gt), torch.zeros_like(gt)
    near[0, 0, 51, 51] = 1  # sqrt(2) = 1.41 <= 1.56
    far[0, 0, 51, 52] = 1  # sqrt(5) = 2.24 > 1.56
    for pred, expected in [(near, 1.0), (far, 0.0)]:
        meter = EdgeMeter()
        meter.update(pred, gt)
        assert meter.compute()["odsf"] == pytest.approx(expected)


def test_threshold_sweep_picks_the_best_f():
    gt = _vertical_line(100, 100, 30)
    # a weak correct edge (0.3) and a strong false one (0.8) of the same length
    pred = _vertical_line(100, 100, 30, 0.3) + _vertical_line(100, 100, 70, 0.8)
    meter = EdgeMeter()
    meter.update(pred, gt)
    curve = meter.curve()
    low = curve["threshold"] <= 0.3
    # thresholds <= 0.3: both lines predicted -> P = 1/2, R = 1, F = 2/3; above: P = R = 0
    np.testing.assert_allclose(curve["precision"][low], 0.5)
    np.testing.assert_allclose(curve["recall"][low], 1.0)
    np.testing.assert_allclose(curve["f"][~low], 0.0)
    assert meter.compute()["odsf"] == pytest.approx(2 / 3)


def test_counts_are_dataset_level_and_merge_exactly():
    rng = np.random.default_rng(0)
    preds = [torch.from_numpy(rng.random((2, 1, 40, 50)).astype(np.float32)) for _ in range(3)]
    gts = [(torch.rand(2, 1, 40, 50, generator=torch.Generator().manual_seed(i)) > 0.9).float() for i in range(3)]
    gts[1][:, :, :10] = 255  # not evaluated
    single = EdgeMeter()
    parts = [EdgeMeter() for _ in range(3)]
    for p, g, part in zip(preds, gts, parts):
        single.update(p, g)
        part.update(p, g)
    combined = merged(parts)
    assert combined.compute() == single.compute()
    assert int(single.gt_total) == sum(int(((g > 0.5) & (g != 255)).sum()) for g in gts)
    assert int(single.pred_total[0]) == sum(int(((p >= 0.01) & (g != 255)).sum()) for p, g in zip(preds, gts))


def test_no_update_is_nan_and_edge_task_uses_the_meter():
    assert math.isnan(EdgeMeter().compute()["odsf"])
    meter = make_task("edge").make_meter()
    assert isinstance(meter, EdgeMeter) and meter.tolerance == 0.011
