"""Metric meters and Δm, checked against hand computations and independent numpy references."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from densemtl.errors import UserError
from densemtl.metrics import (
    ANGLE_BIN_DEG,
    DepthMeter,
    NormalMeter,
    SegMeter,
    delta_m,
    merged,
)
from densemtl.tasks import make_tasks


# ---------------------------------------------------------------- numpy references
def ref_seg(preds, gts, num_classes):
    """mIoU over classes present in GT or prediction (valid pixels), and pixel accuracy."""
    p = np.concatenate([x.ravel() for x in preds])
    g = np.concatenate([x.ravel() for x in gts])
    keep = g >= 0
    p, g = p[keep], g[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((p == c) | (g == c))
        if union:
            ious.append(np.sum((p == c) & (g == c)) / union)
    return {"miou": float(np.mean(ious)), "pixel_acc": float(np.mean(p == g))}


def ref_depth(pred, gt):
    keep = gt != 0
    e = pred[keep].astype(np.float64) - gt[keep]
    return {
        "abs_err": float(np.mean(np.abs(e))),
        "rel_err": float(np.mean(np.abs(e) / gt[keep])),
        "rmse": float(np.sqrt(np.mean(e**2))),
    }


def ref_angles(pred, gt):
    """Degrees between N x 3 x H x W normal maps at pixels with non-zero GT (float64)."""
    p = np.moveaxis(pred.astype(np.float64), 1, -1).reshape(-1, 3)
    g = np.moveaxis(gt.astype(np.float64), 1, -1).reshape(-1, 3)
    keep = np.any(g != 0, axis=1)
    p, g = p[keep], g[keep]
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(p * g, axis=1), -1, 1)))


def ref_normal(pred, gt):
    a = ref_angles(pred, gt)
    return {
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "within_11_25": float(np.mean(a < 11.25)),
        "within_22_5": float(np.mean(a < 22.5)),
        "within_30": float(np.mean(a < 30)),
    }


def ref_mtan(ref, preds, gts):
    """MTAN convention: the reference metric per batch, then the mean over batches."""
    per_batch = [ref(p, g) for p, g in zip(preds, gts)]
    return {k: float(np.mean([b[k] for b in per_batch])) for k in per_batch[0]}


def feed(meter, preds, gts):
    for p, g in zip(preds, gts):
        meter.update(torch.as_tensor(p), torch.as_tensor(g))
    return meter


def assert_close(got: dict, want: dict, tol: float = 1e-9):
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=tol, abs=tol), k


# ---------------------------------------------------------------- segmentation
def test_seg_hand_computed_with_absent_class_and_ignored_pixels():
    gt = torch.tensor([[[0, 0, 1], [1, -1, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 2]]])
    m = SegMeter(4)
    m.update(pred, gt)
    out = m.compute()
    # IoU: class 0 = 1/2, class 1 = 2/3, class 2 = 1/1 (the pred at the ignored pixel does not
    # count), class 3 absent from both -> left out, not NaN.
    assert out["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert out["pixel_acc"] == pytest.approx(4 / 5)


def test_seg_matches_numpy_and_conventions_agree():
    rng = np.random.default_rng(0)
    gts = [rng.integers(-1, 5, size=(2, 9, 11)) for _ in range(3)]
    preds = [rng.integers(0, 6, size=(2, 9, 11)) for _ in range(3)]  # class 5 only predicted
    want = ref_seg(preds, gts, 7)  # class 6 absent everywhere
    for conv in ("dataset", "mtan"):
        assert_close(feed(SegMeter(7, conv), preds, gts).compute(), want)


def test_seg_rejects_out_of_range_classes():
    with pytest.raises(ValueError, match="num_classes"):
        SegMeter(3).update(torch.tensor([[0, 1]]), torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="predicted classes"):
        SegMeter(3).update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        SegMeter(3).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))


# ---------------------------------------------------------------- depth
def test_depth_conventions_differ_on_uneven_batches():
    # batch 1: one valid pixel, error 1 (g = 1); batch 2: three valid pixels, error 0.
    g1 = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    p1 = torch.tensor([2.0, 5.0, 5.0, 5.0]).view(1, 1, 2, 2)  # invalid pixels' values ignored
    g2 = torch.tensor([2.0, 2.0, 2.0, 0.0]).view(1, 1, 2, 2)
    p2 = torch.tensor([2.0, 2.0, 2.0, 9.0]).view(1, 1, 2, 2)
    d = feed(DepthMeter("dataset"), [p1, p2], [g1, g2]).compute()
    m = feed(DepthMeter("mtan"), [p1, p2], [g1, g2]).compute()
    assert d == pytest.approx({"abs_err": 0.25, "rel_err": 0.25, "rmse": 0.5})
    assert m == pytest.approx({"abs_err": 0.5, "rel_err": 0.5, "rmse": 0.5})


def test_depth_all_invalid_batch_contributes_nothing():
    rng = np.random.default_rng(1)
    g = rng.uniform(0.5, 5, size=(2, 1, 6, 7)).astype(np.float32)
    p = rng.uniform(0.5, 5, size=(2, 1, 6, 7)).astype(np.float32)
    empty_g = np.zeros_like(g)
    for conv in ("dataset", "mtan"):
        with_empty = feed(DepthMeter(conv), [p, p, p], [g, empty_g, g]).compute()
        assert_close(with_empty, ref_depth(p, g))
        assert all(math.isfinite(v) for v in with_empty.values())
    assert all(math.isnan(v) for v in feed(DepthMeter(), [p], [empty_g]).compute().values())


def test_depth_matches_numpy_in_both_conventions():
    rng = np.random.default_rng(2)
    gts = [np.where(rng.random((2, 1, 8, 8)) < 0.3, 0, rng.uniform(0.5, 8, (2, 1, 8, 8))).astype(np.float32)
           for _ in range(4)]
    preds = [rng.uniform(0, 9, (2, 1, 8, 8)).astype(np.float32) for _ in range(4)]
    whole = ref_depth(np.concatenate(preds), np.concatenate(gts))
    assert_close(feed(DepthMeter("dataset"), preds, gts).compute(), whole)
    assert_close(feed(DepthMeter("mtan"), preds, gts).compute(), ref_mtan(ref_depth, preds, gts))


def test_depth_rejects_nan_prediction():
    with pytest.raises(ValueError, match="NaN"):
        DepthMeter().update(torch.full((1, 1, 2, 2), math.nan), torch.ones(1, 1, 2, 2))


# ---------------------------------------------------------------- normals
def test_normal_hand_computed_angles():
    s = 1 / math.sqrt(2)
    # pixels: 90 deg, 45 deg, 0 deg, invalid (zero GT), 180 deg
    pred = torch.tensor([[1, 0, 0], [s, s, 0], [0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=torch.float32)
    gt = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=torch.float32)
    to_map = lambda v: v.T.reshape(1, 3, 1, 5)  # noqa: E731
    m = NormalMeter()
    m.update(to_map(pred), to_map(gt))
    out = m.compute()
    assert out["mean"] == pytest.approx((90 + 45 + 0 + 180) / 4)
    assert out["median"] == pytest.approx((45 + 90) / 2, abs=1e-6)  # one angle per bin: exact
    assert out["within_11_25"] == pytest.approx(1 / 4)
    assert out["within_22_5"] == pytest.approx(1 / 4)
    assert out["within_30"] == pytest.approx(1 / 4)


def random_normals(rng, shape, invalid=0.2):
    v = rng.normal(size=shape).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[np.broadcast_to(rng.random((shape[0], 1) + shape[2:]) < invalid, shape)] = 0
    return v


def test_normal_matches_numpy_dataset_and_mtan():
    rng = np.random.default_rng(3)
    gts = [random_normals(rng, (2, 3, 10, 12)) for _ in range(3)]
    # predictions near the GT so the thresholds are exercised
    preds = [g + rng.normal(scale=0.4, size=g.shape).astype(np.float32) for g in gts]
    preds = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in preds]
    got = feed(NormalMeter("dataset"), preds, gts).compute()
    want = ref_normal(np.concatenate(preds), np.concatenate(gts))
    assert got.pop("median") == pytest.approx(want.pop("median"), abs=ANGLE_BIN_DEG)
    assert_close(got, want)
    # mtan: everything per batch (the median exactly, as np.median), then mean over batches
    assert_close(feed(NormalMeter("mtan"), preds, gts).compute(), ref_mtan(ref_normal, preds, gts))


def test_normal_even_count_median_and_conventions_differ():
    # angles 10 and 20 in batch 1, 40 in batch 2: dataset median 20, mtan median (15 + 40) / 2
    def at(deg):
        r = math.radians(deg)
        return [math.sin(r), 0.0, math.cos(r)]

    gt1 = torch.tensor([[0.0, 0, 1], [0, 0, 1]]).T.reshape(1, 3, 1, 2)
    p1 = torch.tensor([at(10), at(20)]).T.reshape(1, 3, 1, 2)
    gt2, p2 = gt1[..., :1], torch.tensor([at(40)]).T.reshape(1, 3, 1, 1)
    d = feed(NormalMeter("dataset"), [p1, p2], [gt1, gt2]).compute()
    m = feed(NormalMeter("mtan"), [p1, p2], [gt1, gt2]).compute()
    assert d["median"] == pytest.approx(20, abs=1e-6)
    assert d["mean"] == pytest.approx(70 / 3)
    assert m["median"] == pytest.approx((15 + 40) / 2)
    assert m["mean"] == pytest.approx((15 + 40) / 2)
    assert d["within_30"] == pytest.approx(2 / 3)
    assert m["within_30"] == pytest.approx((1 + 0) / 2)


def test_normal_gt_against_itself_is_zero_and_all_invalid_is_nan():
    rng = np.random.default_rng(4)
    g = random_normals(rng, (1, 3, 8, 8))
    out = feed(NormalMeter(), [g], [g]).compute()
    assert out["mean"] == pytest.approx(0, abs=1e-5)
    assert out["median"] == pytest.approx(0, abs=1e-5)  # the bin's mean angle, not its centre
    assert out["within_11_25"] == 1.0
    empty = feed(NormalMeter("mtan"), [g], [np.zeros_like(g)]).compute()
    assert all(math.isnan(v) for v in empty.values())


# ---------------------------------------------------------------- merge / pickling
@pytest.mark.parametrize("conv", ["dataset", "mtan"])
def test_merge_of_split_streams_equals_whole_exactly(conv):
    rng = np.random.default_rng(5)
    n = 6
    seg = [(rng.integers(0, 4, (2, 7, 7)), rng.integers(-1, 4, (2, 7, 7))) for _ in range(n)]
    dep = [(rng.uniform(0, 5, (2, 1, 7, 7)).astype(np.float32),
            np.where(rng.random((2, 1, 7, 7)) < 0.2, 0, rng.uniform(0.5, 5, (2, 1, 7, 7))).astype(np.float32))
           for _ in range(n)]
    nor = [(random_normals(rng, (2, 3, 7, 7), 0.0), random_normals(rng, (2, 3, 7, 7))) for _ in range(n)]
    for make, data in ((lambda: SegMeter(4, conv), seg), (lambda: DepthMeter(conv), dep),
                       (lambda: NormalMeter(conv), nor)):
        whole = feed(make(), *zip(*data)).compute()
        # rank 0 takes the odd batches, rank 1 the even ones; meters travel pickled (as DDP gathers)
        ranks = [feed(make(), *zip(*data[r::2])) for r in (0, 1)]
        ranks = [pickle.loads(pickle.dumps(m)) for m in ranks]
        assert merged(ranks).compute() == whole
        a, b = ranks
        assert a.merge(b).compute() == whole


def test_merge_refuses_mismatched_meters():
    with pytest.raises(ValueError):
        DepthMeter("dataset").merge(DepthMeter("mtan"))
    with pytest.raises(ValueError):
        SegMeter(3).merge(SegMeter(4))
    with pytest.raises(ValueError):
        SegMeter(3).merge(DepthMeter())


def test_unknown_convention_is_a_user_error():
    with pytest.raises(UserError, match="dataset, mtan"):
        DepthMeter("per-image")


def test_task_make_meter_uses_these_meters():
    tasks = make_tasks(["semantic", "depth", "normal"], num_classes=13)
    raw = {"semantic": torch.randn(2, 13, 4, 4), "depth": torch.rand(2, 1, 4, 4), "normal": torch.randn(2, 3, 4, 4)}
    gt = {"semantic": torch.randint(-1, 13, (2, 4, 4)), "depth": torch.rand(2, 1, 4, 4) + 0.5,
          "normal": torch.nn.functional.normalize(torch.randn(2, 3, 4, 4), dim=1)}
    for name, task in tasks.items():
        meter = task.make_meter("mtan")
        meter.update(task.activate(raw[name]), gt[name])
        assert set(meter.compute()) == {m.name for m in task.metrics}


# ---------------------------------------------------------------- real frames
def test_real_frames_against_numpy(nyuv2_mini):
    val = nyuv2_mini / "val"
    rng = np.random.default_rng(6)
    gt_l = np.stack([np.load(val / "label" / f"{i}.npy") for i in range(4)]).astype(np.int64)
    gt_d = np.stack([np.load(val / "depth" / f"{i}.npy") for i in range(4)]).transpose(0, 3, 1, 2)
    gt_n = np.stack([np.load(val / "normal" / f"{i}.npy") for i in range(4)]).transpose(0, 3, 1, 2)
    pr_l = np.where(rng.random(gt_l.shape) < 0.3, rng.integers(0, 13, gt_l.shape), np.maximum(gt_l, 0))
    pr_d = (gt_d + rng.normal(scale=0.3, size=gt_d.shape)).astype(np.float32)
    pr_n = gt_n + rng.normal(scale=0.3, size=gt_n.shape).astype(np.float32)
    pr_n /= np.linalg.norm(pr_n, axis=1, keepdims=True)
    batches = lambda x: [x[:2], x[2:]]  # noqa: E731  (batch size 2, as MTAN evaluates)
    cases = [(lambda c: SegMeter(13, c), ref_seg, pr_l, gt_l), (DepthMeter, ref_depth, pr_d, gt_d),
             (NormalMeter, ref_normal, pr_n, gt_n)]
    for make, ref, p, g in cases:
        got = feed(make("dataset"), batches(p), batches(g)).compute()
        want = ref([p], [g], 13) if ref is ref_seg else ref(p, g)
        if "median" in want:
            assert got.pop("median") == pytest.approx(want.pop("median"), abs=ANGLE_BIN_DEG)
        assert_close(got, want)
        if ref is not ref_seg:
            mt = feed(make("mtan"), batches(p), batches(g)).compute()
            assert_close(mt, ref_mtan(ref, batches(p), batches(g)))


# ---------------------------------------------------------------- Δm
TASKS = make_tasks(["semantic", "depth", "normal"], num_classes=13)
BASE = {
    "semantic": {"miou": 0.40, "pixel_acc": 0.50},
    "depth": {"abs_err": 0.40, "rel_err": 0.20, "rmse": 0.8},
    "normal": {"mean": 25.0, "median": 20.0, "within_11_25": 0.20, "within_22_5": 0.40, "within_30": 0.50},
}
MODEL = {
    "semantic": {"miou": 0.50, "pixel_acc": 0.55},
    "depth": {"abs_err": 0.50, "rel_err": 0.15, "rmse": 0.4},
    "normal": {"mean": 20.0, "median": 22.0, "within_11_25": 0.25, "within_22_5": 0.40, "within_30": 0.45},
}


def test_delta_m_primary_and_all_by_hand():
    # primary: mIoU +25 %, AbsErr -25 %, normal mean +20 %  -> 20 / 3
    assert delta_m(MODEL, BASE, TASKS, "primary") == pytest.approx(20 / 3)
    # all (9 metrics, no RMSE): +25 +10 -25 +25 +20 -10 +25 0 -10 = 60 -> 60 / 9
    assert delta_m(MODEL, BASE, TASKS, "all") == pytest.approx(60 / 9)
    assert delta_m(BASE, BASE, list(TASKS.values())) == 0.0
    rmse_tasks = make_tasks(["depth"], depth_primary="rmse")
    assert delta_m(MODEL, BASE, rmse_tasks) == pytest.approx(50.0)


def test_delta_m_errors_name_missing_metrics():
    base = {"semantic": BASE["semantic"], "depth": {"abs_err": 0.4}}
    with pytest.raises(UserError, match=r"depth\.rel_err.*normal\.mean|normal\.mean"):
        delta_m(MODEL, base, TASKS, "all")
    with pytest.raises(UserError, match="baseline lack metric"):
        delta_m(MODEL, {"semantic": BASE["semantic"]}, TASKS)
    with pytest.raises(UserError, match="results lack metric.*depth.abs_err"):
        delta_m({"semantic": MODEL["semantic"]}, BASE, TASKS)
    with pytest.raises(UserError, match="all, literature, primary"):
        delta_m(MODEL, BASE, TASKS, "some")
    with pytest.raises(UserError, match="non-zero"):
        delta_m(MODEL, {**BASE, "semantic": {"miou": 0.0}}, TASKS)
