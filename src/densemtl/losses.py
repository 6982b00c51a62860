"""Masked per-task losses (SPEC section 2).

Every loss takes the model's raw output for one task (N x C x H x W) and the target as the
dataset provides it, and returns a scalar. Invalid pixels are excluded:
semantic label -1, depth 0, all-zero normal. The prediction is resized to the target's size
(bilinear) when they differ, which is how deep-supervision outputs at lower scales are supervised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1


def match_size(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``pred`` to the spatial size of ``target`` if they differ."""
    if pred.shape[-2:] != target.shape[-2:]:
        pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return pred


def _zero_like_graph(pred: torch.Tensor) -> torch.Tensor:
    # A batch with no valid pixel contributes nothing but keeps the graph connected.
    return pred.sum() * 0.0


def semantic_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled pixels; ``target`` is N x H x W (long), -1 ignored."""
    pred = match_size(pred, target)
    if not (target != IGNORE_INDEX).any():
        return _zero_like_graph(pred)
    return F.cross_entropy(pred.float(), target.long(), ignore_index=IGNORE_INDEX)


def depth_valid_mask(target: torch.Tensor) -> torch.Tensor:
    return target != 0


def normal_valid_mask(target: torch.Tensor) -> torch.Tensor:
    return (target != 0).any(dim=1, keepdim=True)


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 over the batch's valid pixels (target != 0); ``target`` is N x 1 x H x W."""
    pred = match_size(pred, target).float()
    mask = depth_valid_mask(target)
    if not mask.any():
        return _zero_like_graph(pred)
    return (pred - target).abs()[mask].mean()


def normalize_normals(pred: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise a N x 3 x H x W normal map along the channel axis."""
    return pred / pred.norm(p=2, dim=1, keepdim=True).clamp_min(eps)


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity over valid pixels (non-zero target)."""
    pred = normalize_normals(match_size(pred, target).float())
    mask = normal_valid_mask(target).squeeze(1)
    if not mask.any():
        return _zero_like_graph(pred)
    cos = (pred * target).sum(dim=1)
    return 1.0 - cos[mask].mean()


def edge_loss(pred: torch.Tensor, target: torch.Tensor, pos_weight: float = 0.95) -> torch.Tensor:
    """Class-balanced binary cross-entropy on edge logits (MTI-Net convention).

    Positive pixels are weighted by ``pos_weight`` and negatives by ``1 - pos_weight``; pixels
    with target 255 (if any) are ignored.
    """
    pred = match_size(pred, target).float()
    valid = target != 255
    t = (target > 0.5).float()
    w = torch.where(t > 0, torch.full_like(t, pos_weight), torch.full_like(t, 1.0 - pos_weight))
    w = w * valid.float()
    loss = F.binary_cross_entropy_with_logits(pred, t, weight=w, reduction="sum")
    return loss / valid.float().sum().clamp_min(1.0)
