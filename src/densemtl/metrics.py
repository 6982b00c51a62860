"""Streaming, mergeable metric accumulators and Δm (SPEC section 3).

A meter takes one batch at a time (``update(pred, target)`` with ``pred = Task.activate(raw)``
and ``target`` as the dataset gives it), can be merged with meters that saw other batches
(``merge``; DDP gathers the meters of every rank and merges them) and reports plain floats
(``compute``). Merging split streams gives exactly the single-stream result: counts and
histograms are integers, and per-batch sums are kept as a list and added with ``math.fsum``,
whose correctly rounded result does not depend on the order of the batches.

Two conventions:

``dataset`` (default)
    Every valid pixel of the split counts once: depth and normal errors are means over all
    valid pixels, the normal median is the median of all valid pixels' angles.
``mtan``
    As the official MTAN code: each batch gives its own mean (and its own median), and the
    reported value is the mean over batches. It depends on the batch size and the order of
    the samples; use it only to compare with numbers published under that protocol (MTAN
    evaluates with batch size 2, unshuffled).

In both conventions segmentation uses one confusion matrix over all valid pixels (as MTAN's
current code does), and mIoU averages the IoU of the classes present in the ground truth or
the prediction, so a class absent from both never makes it NaN. A batch with no valid pixel
for a task contributes nothing (MTAN's code would divide by zero). A meter that has seen no
valid pixel at all reports NaN for that task's metrics.

The dataset-level normal median comes from a histogram of angles with bins of
:data:`ANGLE_BIN_DEG` (0.001 degree) that also holds, per bin, the sum of its angles in integer
units of :data:`ANGLE_SUM_UNIT_DEG` (1e-8 degree; int64 holds 5e8 pixels in one bin). The
reported median is the mean angle of the bin holding the middle angle (the mean of two such
values for an even count): never more than one bin width from the exact median, usually far
closer (a perfect prediction scores 0, not a bin centre), and exactly mergeable (integers).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from .errors import UserError, unknown_name
from .losses import normalize_normals

CONVENTIONS = ("dataset", "mtan")
DELTA_VARIANTS = ("primary", "all", "literature")

ANGLE_BIN_DEG = 0.001  # resolution of the dataset-level normal median
_ANGLE_BINS = round(180.0 / ANGLE_BIN_DEG)
ANGLE_SUM_UNIT_DEG = 1e-8  # fixed-point unit of the per-bin angle sums
WITHIN_DEG = (11.25, 22.5, 30.0)  # thresholds of the within_* normal metrics (strictly below)
_WITHIN_KEYS = ("within_11_25", "within_22_5", "within_30")


def check_convention(convention: str) -> str:
    """Return ``convention`` if known, else raise a UserError listing the valid ones."""
    if convention not in CONVENTIONS:
        raise unknown_name("metric convention", convention, CONVENTIONS)
    return convention


def _fmean(values: Iterable[float]) -> float:
    """Order-independent mean (``math.fsum``); NaN for no values."""
    values = list(values)
    return math.fsum(values) / len(values) if values else math.nan


def _check_shapes(kind: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{kind} meter: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )


def _check_finite(kind: str, values: torch.Tensor) -> None:
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{kind} meter: NaN or inf in the prediction or target at valid pixels")


class Meter:
    """Base of the streaming meters: convention handling, merge checks and CPU pickling."""

    def __init__(self, convention: str = "dataset") -> None:
        self.convention = check_convention(convention)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def _merge_state(self, other: "Meter") -> None:
        raise NotImplementedError

    def _signature(self) -> tuple:
        """What two meters must share to be merged."""
        return (type(self), self.convention)

    def merge(self, other: "Meter") -> "Meter":
        """Add ``other``'s batches to this meter (in place) and return this meter."""
        if other._signature() != self._signature():
            raise ValueError(f"cannot merge {other!r} into {self!r}")
        self._merge_state(other)
        return self

    def __getstate__(self) -> dict:
        # Tensors travel on the CPU, so a meter pickled on one GPU unpickles on any rank.
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(convention={self.convention!r})"


def merged(meters: Sequence[Meter]) -> Meter:
    """A new meter holding the batches of all ``meters`` (e.g. one per DDP rank)."""
    if not meters:
        raise ValueError("merged() needs at least one meter")
    out = copy.deepcopy(meters[0])
    for m in meters[1:]:
        out.merge(m)
    return out


def _add_counts(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    return mine + theirs.to(mine.device)


class SegMeter(Meter):
    """Semantic segmentation: confusion matrix -> mIoU and pixel accuracy (fractions).

    ``pred``: class indices N x H x W; ``target``: N x H x W with -1 for unlabelled pixels.
    Both conventions use the confusion matrix over all valid pixels (MTAN's current code).
    """

    def __init__(self, num_classes: int, convention: str = "dataset") -> None:
        super().__init__(convention)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        # rows: ground-truth class, columns: predicted class
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def _signature(self) -> tuple:
        return super()._signature() + (self.num_classes,)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_shapes("semantic", pred, target)
        n = self.num_classes
        target = target.long()
        valid = target >= 0
        gt, pr = target[valid], pred[valid].long()
        if gt.numel() and int(gt.max()) >= n:
            raise ValueError(f"semantic meter: target class {int(gt.max())} >= num_classes {n}")
        if pr.numel() and (int(pr.min()) < 0 or int(pr.max()) >= n):
            raise ValueError(f"semantic meter: predicted classes must lie in [0, {n})")
        counts = torch.bincount(gt * n + pr, minlength=n * n).reshape(n, n)
        self.confusion = _add_counts(counts, self.confusion)

    def _merge_state(self, other: "SegMeter") -> None:
        self.confusion = _add_counts(self.confusion, other.confusion)

    def compute(self) -> dict[str, float]:
        conf = self.confusion.double().cpu()
        total = float(conf.sum())
        if total == 0:
            return {"miou": math.nan, "pixel_acc": math.nan}
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean())
        return {"miou": miou, "pixel_acc": float(tp.sum()) / total}

    def __repr__(self) -> str:
        return f"SegMeter(num_classes={self.num_classes}, convention={self.convention!r})"


class DepthMeter(Meter):
    """Depth (or disparity): AbsErr, RelErr and RMSE over pixels whose target is non-zero.

    ``pred`` and ``target``: N x 1 x H x W. Under the ``mtan`` convention each batch gives
    its AbsErr, RelErr and RMSE and the mean over batches is reported.
    """

    def __init__(self, convention: str = "dataset") -> None:
        super().__init__(convention)
        # one (sum |e|, sum |e|/g, sum e^2, valid pixel count) per batch with valid pixels
        self.batches: list[tuple[float, float, float, int]] = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_shapes("depth", pred, target)
        valid = target != 0
        count = int(valid.sum())
        if count == 0:
            return
        g = target[valid].double()
        err = pred[valid].double() - g
        _check_finite("depth", err)
        sums = torch.stack([err.abs().sum(), (err.abs() / g).sum(), err.square().sum()]).tolist()
        self.batches.append((sums[0], sums[1], sums[2], count))

    def _merge_state(self, other: "DepthMeter") -> None:
        self.batches = self.batches + other.batches

    def compute(self) -> dict[str, float]:
        b = self.batches
        if not b:
            return {"abs_err": math.nan, "rel_err": math.nan, "rmse": math.nan}
        if self.convention == "mtan":
            return {
                "abs_err": _fmean(a / n for a, _, _, n in b),
                "rel_err": _fmean(r / n for _, r, _, n in b),
                "rmse": _fmean(math.sqrt(s / n) for _, _, s, n in b),
            }
        total = sum(n for *_, n in b)
        return {
            "abs_err": math.fsum(a for a, *_ in b) / total,
            "rel_err": math.fsum(r for _, r, _, _ in b) / total,
            "rmse": math.sqrt(math.fsum(s for _, _, s, _ in b) / total),
        }


def normal_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in degrees (float64, 1-D) between predicted and GT normals at valid pixels.

    Valid pixels have a non-zero target. Both vectors are re-normalised in float64 first, so a
    unit vector stored in float32 scores 0 degrees against itself (acos is ill-conditioned near
    1: float32 rounding alone would give about 0.02 degree); a zero prediction scores 90 degrees.
    """
    _check_shapes("normal", pred, target)
    valid = (target != 0).any(dim=1)
    # M x 3 vectors of the valid pixels (normalize_normals works along dim 1, the components)
    p = normalize_normals(pred.permute(0, 2, 3, 1)[valid].double())
    g = normalize_normals(target.permute(0, 2, 3, 1)[valid].double())
    cos = (p * g).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


class NormalMeter(Meter):
    """Surface normals: mean and median angular error (degrees) and the fraction of pixels
    under 11.25, 22.5 and 30 degrees, over pixels whose target is not the zero vector.

    ``pred`` and ``target``: N x 3 x H x W. Under ``mtan`` every statistic, the median
    included, is computed per batch and averaged over batches.
    """

    def __init__(self, convention: str = "dataset") -> None:
        super().__init__(convention)
        self.histogram = torch.zeros(_ANGLE_BINS, dtype=torch.int64)  # pixels per angle bin
        self.bin_sums = torch.zeros(_ANGLE_BINS, dtype=torch.int64)  # their angles, fixed point
        # one (sum of angles, count, median, count < 11.25, < 22.5, < 30) per batch
        self.batches: list[tuple[float, int, float, int, int, int]] = []

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        angles = normal_angles(pred, target)
        _check_finite("normal", angles)
        n = angles.numel()
        if n == 0:
            return
        bins = (angles / ANGLE_BIN_DEG).long().clamp_(0, _ANGLE_BINS - 1)
        self.histogram = _add_counts(torch.bincount(bins, minlength=_ANGLE_BINS), self.histogram)
        fixed = (angles / ANGLE_SUM_UNIT_DEG).round().long()
        self.bin_sums = _add_counts(torch.zeros_like(self.histogram).index_add_(0, bins, fixed), self.bin_sums)
        ordered = angles.sort().values
        median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        stats = torch.stack([angles.sum(), median] + [(angles < t).sum().double() for t in WITHIN_DEG])
        total, med, *within = stats.tolist()
        self.batches.append((total, n, med, *(int(w) for w in within)))

    def _merge_state(self, other: "NormalMeter") -> None:
        self.histogram = _add_counts(self.histogram, other.histogram)
        self.bin_sums = _add_counts(self.bin_sums, other.bin_sums)
        self.batches = self.batches + other.batches

    def _histogram_median(self) -> float:
        counts, sums = self.histogram.cpu(), self.bin_sums.cpu()
        cum = counts.cumsum(0)
        n = int(cum[-1])
        ranks = torch.tensor([(n - 1) // 2 + 1, n // 2 + 1])  # 1-based ranks of the middle angles
        bins = torch.searchsorted(cum, ranks)
        bin_means = sums[bins].double() / counts[bins].double() * ANGLE_SUM_UNIT_DEG
        return float(bin_means.mean())

    def compute(self) -> dict[str, float]:
        b = self.batches
        if not b:
            return {k: math.nan for k in ("mean", "median", *_WITHIN_KEYS)}
        if self.convention == "mtan":
            out = {"mean": _fmean(s / n for s, n, *_ in b), "median": _fmean(m for _, _, m, *_ in b)}
            for i, key in enumerate(_WITHIN_KEYS):
                out[key] = _fmean(row[3 + i] / row[1] for row in b)
            return out
        total = sum(n for _, n, *_ in b)
        out = {"mean": math.fsum(s for s, *_ in b) / total, "median": self._histogram_median()}
        for i, key in enumerate(_WITHIN_KEYS):
            out[key] = sum(row[3 + i] for row in b) / total
        return out


@dataclass(frozen=True)
class LiteratureBaseline:
    """Published single-task results that a literature Δm is measured against.

    ``values`` is ``{task: {metric: value}}`` in densemtl's stored units (the units the meters
    report: fractions for mIoU, pixel accuracy and the within-t normal metrics; the dataset's
    depth units; degrees), which are also the units of the reference code's ``BASE`` arrays.
    ``num_classes``: the segmentation class set the numbers are for.
    """

    dataset: str
    num_classes: int
    values: Mapping[str, Mapping[str, float]]
    source: str

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.values)


_CAGRAD_SOURCE = (
    "CAGrad (Liu et al., NeurIPS 2021) Table {table}, single-task (STL) row; the BASE array of "
    "delta_fn in the Nash-MTL, FAMO and CAGrad code; used by Nash-MTL, FAMO and Aligned-MTL"
)

#: Fixed single-task constants of the literature Δm, keyed by dataset variant. As printed:
#: NYUv2 mIoU 38.30, Pix 63.76, Abs 0.6754, Rel 0.2780, Mean 25.01, Median 19.21, <11.25 30.14,
#: <22.5 57.20, <30 69.15; CityScapes mIoU 74.01, Pix 93.16, Abs 0.0125, Rel 27.77. The printed
#: percentages are stored as fractions (MetricSpec.scale 100). CityScapes' Rel 27.77 is not a
#: percentage: the reference code compares it with the plain mean of |p - g| / g over valid
#: pixels (their ``depth_error``), the quantity our ``rel_err`` is, so it is stored as printed.
LITERATURE_BASELINES: dict[str, LiteratureBaseline] = {
    "nyuv2": LiteratureBaseline(
        dataset="nyuv2", num_classes=13, source=_CAGRAD_SOURCE.format(table="1"),
        values={
            "semantic": {"miou": 0.3830, "pixel_acc": 0.6376},
            "depth": {"abs_err": 0.6754, "rel_err": 0.2780},
            "normal": {"mean": 25.01, "median": 19.21, "within_11_25": 0.3014, "within_22_5": 0.5720,
                       "within_30": 0.6915},
        },
    ),
    "cityscapes": LiteratureBaseline(
        dataset="cityscapes", num_classes=7, source=_CAGRAD_SOURCE.format(table="2"),
        values={
            "semantic": {"miou": 0.7401, "pixel_acc": 0.9316},
            "depth": {"abs_err": 0.0125, "rel_err": 27.77},
        },
    ),
}


def _task_list(tasks) -> list:
    return list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)


def literature_baseline(reference: str | None, tasks) -> LiteratureBaseline:
    """The published constants for dataset variant ``reference``, checked against ``tasks``.

    A UserError says why a literature Δm does not apply: no constants for that dataset, or
    tasks / a class count other than the ones the published numbers are for.
    """
    if reference is None:
        raise UserError("Δm (literature) needs reference=, the dataset variant whose published "
                        f"single-task results to use: one of {', '.join(sorted(LITERATURE_BASELINES))}")
    if reference not in LITERATURE_BASELINES:
        raise UserError(f"Δm (literature): no published single-task constants for dataset {reference!r}; "
                        f"there are for: {', '.join(sorted(LITERATURE_BASELINES))}")
    ref = LITERATURE_BASELINES[reference]
    names = [t.name for t in _task_list(tasks)]
    if sorted(names) != sorted(ref.tasks):
        raise UserError(f"Δm (literature, {reference}) is defined over the tasks {', '.join(ref.tasks)}; "
                        f"got {', '.join(names) or 'none'}")
    for task in _task_list(tasks):
        if task.num_classes is not None and task.num_classes != ref.num_classes:
            raise UserError(f"Δm (literature, {reference}): the published numbers are for {ref.num_classes} "
                            f"classes; task {task.name} has {task.num_classes}")
    return ref


def _delta_specs(task, variant: str, ref: LiteratureBaseline | None = None):
    if variant == "primary":
        return [task.metric(task.primary)]
    if variant == "literature":
        return [task.metric(name) for name in ref.values[task.name]]
    return [m for m in task.metrics if m.in_delta_all]


def delta_m(
    results: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]] | None,
    tasks,
    variant: str = "primary",
    *,
    reference: str | None = None,
) -> float:
    """Δm in percent (Maninis et al. 2019): the mean over the chosen metrics of
    ``(-1)^l (M_m - M_b) / M_b * 100``, with ``l = 1`` for lower-is-better metrics.

    ``results`` and ``baseline`` are ``{task: {metric: value}}``; ``tasks`` is ``{name: Task}``
    (or an iterable of Task). ``variant="primary"`` uses each task's primary metric,
    ``"all"`` every metric with ``in_delta_all`` (MTAN's nine NYUv2 numbers). For these two a
    positive value means the model is better than the baseline.

    ``variant="literature"`` is the Δm of the published tables (CAGrad, Nash-MTL, FAMO,
    Aligned-MTL): the mean over the metrics of :data:`LITERATURE_BASELINES` ``[reference]`` (the
    9 NYUv2 metrics for ``reference="nyuv2"``, mIoU, PixAcc, AbsErr, RelErr for
    ``"cityscapes"``) of ``(-1)^h (M_m - M_b) / M_b * 100`` with ``h = 1`` for higher-is-better
    metrics and ``M_b`` the fixed published single-task results, not a baseline of your own
    (``baseline`` must be None). Its sign is the papers': **negative means better**, so the
    value can be set beside theirs (Nash-MTL on NYUv2: -4.04). ``tasks`` must be exactly the
    reference's tasks with its class count. The published numbers average the last 10 of 200
    epochs on the test split under the per-batch ``mtan`` convention; numbers from another
    protocol are comparable only roughly.
    """
    if variant not in DELTA_VARIANTS:
        raise unknown_name("delta_m variant", variant, DELTA_VARIANTS)
    task_list = _task_list(tasks)
    ref = None
    if variant == "literature":
        if baseline is not None:
            raise UserError("Δm (literature) is measured against fixed published constants; pass "
                            "baseline=None and the dataset as reference=")
        ref = literature_baseline(reference, task_list)
        baseline = ref.values
    elif reference is not None:
        raise UserError(f"delta_m: reference= is only for variant='literature', not {variant!r}")
    terms: list[float] = []
    missing = {"baseline": [], "results": []}
    for task in task_list:
        for spec in _delta_specs(task, variant, ref):
            key = f"{task.name}.{spec.name}"
            base = baseline.get(task.name, {}).get(spec.name)
            value = results.get(task.name, {}).get(spec.name)
            if base is None:
                missing["baseline"].append(key)
            if value is None:
                missing["results"].append(key)
            if base is None or value is None:
                continue
            if base == 0 or not math.isfinite(base):
                raise UserError(f"Δm baseline metric {key} is {base}; expected a finite non-zero value")
            sign = 1.0 if spec.higher_is_better else -1.0
            if variant == "literature":  # the papers' sign: lower is better
                sign = -sign
            terms.append(sign * (value - base) / base)
    for which, keys in missing.items():
        if keys:
            raise UserError(f"Δm ({variant}): {which} lack metric(s) {', '.join(keys)}")
    if not terms:
        raise UserError("Δm needs at least one task")
    return 100.0 * math.fsum(terms) / len(terms)
