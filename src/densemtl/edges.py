"""The ``edge`` task's ground truth and metric (SPEC 2, 3).

:func:`edges_from_segmentation` derives boundary targets from a label map for datasets that
have none (the synthetic scenes, NYUv2 in MTAN's layout).

:class:`EdgeMeter` computes the ODS F-measure (optimal dataset scale): for every threshold of a
sweep, precision and recall are accumulated over the whole dataset and the best F over the
thresholds is reported. A predicted edge pixel counts as correct when a ground-truth edge pixel
lies within ``tolerance`` x the image diagonal (0.011 on NYUD, as in the SEISM/BSDS protocol);
a ground-truth edge pixel counts as recalled when a predicted edge pixel lies within that
distance. Matching uses Euclidean distance transforms. Two differences from the BSDS
benchmark code, both documented choices: the matching is not one-to-one (BSDS solves a
bipartite assignment, so two predictions next to one ground-truth pixel both count here), and
predictions are not thinned to one-pixel-wide edges first. Predictions that are already thin
(e.g. after non-maximum suppression) score like the benchmark; thick ones score higher here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from .metrics import Meter, _add_counts

IGNORE = 255  # edge target value of pixels that are not evaluated


def edges_from_segmentation(label: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Boundary map of a label map: H x W (int) -> 1 x H x W float32 in {0, 1}.

    A pixel is an edge when its right or lower neighbour carries a different label; pixels
    whose label or neighbour's label is ``ignore_index`` create no edge. Boundaries are one
    pixel wide, on the upper/left side of each label change.
    """
    if label.dim() != 2:
        raise ValueError(f"expected an H x W label map, got shape {tuple(label.shape)}")
    valid = label != ignore_index
    edge = torch.zeros_like(label, dtype=torch.bool)
    down = (label[:-1] != label[1:]) & valid[:-1] & valid[1:]
    right = (label[:, :-1] != label[:, 1:]) & valid[:, :-1] & valid[:, 1:]
    edge[:-1] |= down
    edge[:, :-1] |= right
    return edge.float().unsqueeze(0)


def _reach(values: np.ndarray, ys: np.ndarray, xs: np.ndarray, radius: float) -> np.ndarray:
    """For each position (ys[i], xs[i]): the largest of ``values`` within Euclidean ``radius``."""
    r = int(math.floor(radius))
    padded = np.pad(values, r)
    flat, row = padded.ravel(), padded.shape[1]
    centre = (ys + r) * row + (xs + r)
    best = np.zeros(len(ys), dtype=values.dtype)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                np.maximum(best, flat[centre + (dy * row + dx)], out=best)
    return best


class EdgeMeter(Meter):
    """Streaming ODS F-measure of edge probabilities.

    ``update(pred, target)``: ``pred`` edge probabilities N x 1 x H x W (``Task.activate``),
    ``target`` N x 1 x H x W with 1 = edge, 0 = no edge, 255 = not evaluated.
    ``thresholds``: the sweep is k / (thresholds + 1), k = 1..thresholds (99: 0.01 ... 0.99,
    as SEISM). ``compute() -> {"odsf": F}`` with F in [0, 1]; NaN before any update.
    """

    def __init__(self, tolerance: float = 0.011, thresholds: int = 99, convention: str = "dataset") -> None:
        super().__init__(convention)
        if tolerance <= 0:
            raise ValueError(f"edge tolerance must be > 0, got {tolerance}")
        self.tolerance = tolerance
        self.thresholds = torch.arange(1, thresholds + 1, dtype=torch.float64) / (thresholds + 1)
        n = thresholds
        self.pred_total = torch.zeros(n, dtype=torch.int64)  # predicted edge pixels at each threshold
        self.pred_matched = torch.zeros(n, dtype=torch.int64)  # ... of which near a ground-truth edge
        self.gt_matched = torch.zeros(n, dtype=torch.int64)  # ground-truth edge pixels recalled
        self.gt_total = torch.zeros((), dtype=torch.int64)
        self.images = 0

    def _signature(self) -> tuple:
        return (*super()._signature(), self.tolerance, len(self.thresholds))

    def _counts_at_or_above(self, values: np.ndarray) -> torch.Tensor:
        """For every threshold t: how many of ``values`` are >= t."""
        bins = np.digitize(values, self.thresholds.numpy(), right=False)  # thresholds[b-1] <= v < thresholds[b]
        hist = np.bincount(bins, minlength=len(self.thresholds) + 1)
        return torch.from_numpy(hist[::-1].cumsum()[::-1][1:].copy())

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"edge meter: expected N x 1 x H x W prediction and target, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        h, w = pred.shape[-2:]
        max_dist = self.tolerance * math.hypot(h, w)
        probs = pred.detach().float().cpu().numpy()[:, 0]
        targets = target.detach().cpu().numpy()[:, 0]
        for p, t in zip(probs, targets):
            evaluated = t != IGNORE
            gt = (t > 0.5) & evaluated
            # distance of every pixel to the nearest ground-truth edge (inf-like when none)
            near_gt = ndimage.distance_transform_edt(~gt) <= max_dist if gt.any() else np.zeros_like(gt)
            # the strongest prediction within reach of each ground-truth pixel: it is recalled
            # at threshold t exactly when this is >= t
            reach = _reach(np.where(evaluated, p, 0.0), *np.nonzero(gt), max_dist)
            self.pred_total += self._counts_at_or_above(p[evaluated])
            self.pred_matched += self._counts_at_or_above(p[evaluated & near_gt])
            self.gt_matched += self._counts_at_or_above(reach)
            self.gt_total += int(gt.sum())
            self.images += 1

    def _merge_state(self, other: "EdgeMeter") -> None:
        self.pred_total = _add_counts(self.pred_total, other.pred_total)
        self.pred_matched = _add_counts(self.pred_matched, other.pred_matched)
        self.gt_matched = _add_counts(self.gt_matched, other.gt_matched)
        self.gt_total = _add_counts(self.gt_total, other.gt_total)
        self.images += other.images

    def curve(self) -> dict[str, np.ndarray]:
        """Precision, recall and F at every threshold (dataset-level counts)."""
        pred_total = self.pred_total.double().numpy()
        precision = np.divide(self.pred_matched.double().numpy(), pred_total,
                              out=np.zeros_like(pred_total), where=pred_total > 0)
        gt_total = float(self.gt_total)
        recall = self.gt_matched.double().numpy() / gt_total if gt_total > 0 else np.zeros_like(precision)
        denom = precision + recall
        f = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        return {"threshold": self.thresholds.numpy(), "precision": precision, "recall": recall, "f": f}

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            return {"odsf": math.nan}
        return {"odsf": float(self.curve()["f"].max())}

    def __repr__(self) -> str:
        return f"EdgeMeter(tolerance={self.tolerance}, thresholds={len(self.thresholds)})"
