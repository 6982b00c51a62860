"""Masked task losses (SPEC 2), checked by hand and against MTAN's formulas written in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densemtl.losses import depth_loss, edge_loss, normal_loss, semantic_loss


def test_semantic_cross_entropy_ignores_unlabelled_by_hand():
    # pixel 0: logits (0, ln 3), class 1 -> -log(3/4); pixel 1: equal logits, class 0 -> log 2;
    # pixel 2: unlabelled (-1) with a huge wrong logit, ignored.
    logits = torch.tensor([[0.0, 0.0, 50.0], [math.log(3), 0.0, -50.0]]).view(1, 2, 1, 3)
    target = torch.tensor([[[1, 0, -1]]])
    want = (-math.log(3 / 4) + math.log(2)) / 2
    assert semantic_loss(logits, target).item() == pytest.approx(want, rel=1e-6)


def test_all_ignored_batch_gives_zero_with_a_connected_graph():
    for loss, pred, target in (
        (semantic_loss, torch.randn(2, 4, 3, 3), torch.full((2, 3, 3), -1)),
        (depth_loss, torch.randn(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)),
        (normal_loss, torch.randn(2, 3, 3, 3), torch.zeros(2, 3, 3, 3)),
    ):
        pred.requires_grad_(True)
        value = loss(pred, target)
        assert value.item() == 0.0
        value.backward()
        assert torch.count_nonzero(pred.grad) == 0


def test_depth_l1_pools_valid_pixels_of_the_whole_batch():
    # image 0: one valid pixel with error 2; image 1: three valid pixels with error 0.
    target = torch.tensor([[1.0, 0, 0, 0], [2.0, 2, 2, 0]]).view(2, 1, 2, 2)
    pred = torch.tensor([[3.0, 9, 9, 9], [2.0, 2, 2, 9]]).view(2, 1, 2, 2)
    assert depth_loss(pred, target).item() == pytest.approx(2 / 4)  # not (2 + 0) / 2


def mtan_normal_loss(pred: np.ndarray, gt: np.ndarray) -> float:
    """MTAN: 1 - sum(p . g over valid pixels) / number of valid pixels, p normalised."""
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    mask = np.any(gt != 0, axis=1)
    return 1.0 - float(np.sum((p * gt).sum(axis=1)[mask])) / int(mask.sum())


def test_normal_loss_matches_mtan_formula_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    gt[0, :, :2] = 0  # invalid pixels
    pred = rng.normal(size=gt.shape).astype(np.float32)
    got = normal_loss(torch.from_numpy(pred), torch.from_numpy(gt)).item()
    assert got == pytest.approx(mtan_normal_loss(pred, gt), rel=1e-5)
    assert normal_loss(torch.from_numpy(3 * pred), torch.from_numpy(gt)).item() == pytest.approx(got, rel=1e-5)
    # by hand: cos 1 and cos 0 -> 1 - 1/2
    g = torch.tensor([[1.0, 1.0], [0, 0], [0, 0]]).view(1, 3, 1, 2)
    p = torch.tensor([[2.0, 0], [0, 5], [0, 0]]).view(1, 3, 1, 2)
    assert normal_loss(p, g).item() == pytest.approx(0.5)


def test_low_resolution_outputs_are_upsampled_to_the_target():
    pred = torch.randn(1, 1, 4, 4)
    target = torch.rand(1, 1, 8, 8) + 0.5
    up = F.interpolate(pred, size=(8, 8), mode="bilinear", align_corners=False)
    assert depth_loss(pred, target).item() == pytest.approx((up - target).abs().mean().item(), rel=1e-6)
    logits = torch.randn(1, 5, 4, 4)
    labels = torch.randint(0, 5, (1, 8, 8))
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert semantic_loss(logits, labels).item() == pytest.approx(F.cross_entropy(up, labels).item(), rel=1e-6)


def test_edge_balanced_bce_by_hand():
    # all logits 0 -> each pixel's BCE is ln 2; one positive (weight .95), two negatives (.05),
    # one ignored (255); mean over the 3 valid pixels.
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 255.0]).view(1, 1, 2, 2)
    want = (0.95 + 2 * 0.05) * math.log(2) / 3
    assert edge_loss(logits, target).item() == pytest.approx(want, rel=1e-6)
    # a confident correct positive costs almost nothing; a confident wrong one ~ weight * logit
    assert edge_loss(torch.full((1, 1, 1, 1), 20.0), torch.ones(1, 1, 1, 1)).item() < 1e-6
    wrong = edge_loss(torch.full((1, 1, 1, 1), -20.0), torch.ones(1, 1, 1, 1), pos_weight=0.7).item()
    assert wrong == pytest.approx(0.7 * 20.0, rel=1e-6)
