"""The literature Δm (``delta_m(..., variant="literature")``) against the published tables.

Expected values are the papers' printed Δm columns (shared/ref/optimisation.md §3.2, §3.3: Nash-MTL
Tables 2-3, FAMO Tables 1 and 3, Aligned-MTL Table 4), recomputed here from the printed per-metric
rows. The rows are typed in as printed (percent for mIoU, PixAcc and the within-t columns) and
converted to densemtl's stored units here, by hand: percentages / 100, everything else as printed
(CityScapes' Rel, e.g. 27.77, is the plain mean of |p - g| / g in the reference code, not a
percentage).
"""

from __future__ import annotations

import pytest

from densemtl.errors import UserError
from densemtl.metrics import DELTA_VARIANTS, LITERATURE_BASELINES, delta_m
from densemtl.tasks import make_tasks

NYU_KEYS = [("semantic", "miou", 100), ("semantic", "pixel_acc", 100), ("depth", "abs_err", 1),
            ("depth", "rel_err", 1), ("normal", "mean", 1), ("normal", "median", 1),
            ("normal", "within_11_25", 100), ("normal", "within_22_5", 100), ("normal", "within_30", 100)]
CITY_KEYS = NYU_KEYS[:4]

# method: (mIoU, Pix, Abs, Rel, Mean, Median, <11.25, <22.5, <30), published Δm
NYU = {
    "STL": ((38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15), 0.0),
    "LS": ((39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08), 5.59),
    "SI": ((38.45, 64.27, 0.5354, 0.2201, 27.60, 23.37, 22.53, 48.57, 62.32), 4.39),
    "RLW": ((37.17, 63.77, 0.5759, 0.2410, 28.27, 24.18, 22.26, 47.05, 60.62), 7.78),
    "DWA": ((39.11, 65.31, 0.5510, 0.2285, 27.61, 23.18, 24.17, 50.18, 62.39), 3.57),
    "UW": ((36.87, 63.17, 0.5446, 0.2260, 27.04, 22.61, 23.54, 49.05, 63.65), 4.05),
    "MGDA": ((30.47, 59.90, 0.6070, 0.2555, 24.88, 19.45, 29.18, 56.88, 69.36), 1.38),
    "PCGrad": ((38.06, 64.64, 0.5550, 0.2325, 27.41, 22.80, 23.86, 49.83, 63.14), 3.97),
    "GradDrop": ((39.39, 65.12, 0.5455, 0.2279, 27.48, 22.96, 23.38, 49.44, 62.87), 3.58),
    "CAGrad": ((39.79, 65.49, 0.5486, 0.2250, 26.31, 21.58, 25.61, 52.36, 65.58), 0.20),
    # IMTL-G is the one row whose published Δm (-0.76) its own per-metric row does not give:
    # recomputed it is -0.60 (Aligned-MTL, recomputing from the same row, prints -0.59), so the
    # recomputed value is asserted.
    "IMTL-G": ((39.35, 65.60, 0.5426, 0.2256, 26.02, 21.19, 26.20, 53.13, 66.24), -0.60),
    "Nash-MTL": ((40.13, 65.93, 0.5261, 0.2171, 25.26, 20.08, 28.40, 55.47, 68.15), -4.04),
    "FAMO": ((38.88, 64.90, 0.5474, 0.2194, 25.06, 19.57, 29.21, 56.61, 68.98), -4.10),
}

# method: (mIoU, Pix, Abs, Rel), published Δm, tolerance. Nash-MTL / FAMO print values up to 0.10
# above the ones their rounded rows give (Nash 6.82 vs 6.72, PCGrad 18.29 vs 18.21; LS is the one
# 0.02 below: 22.60 vs 22.62); Aligned-MTL prints the recomputed values (to 0.015: AMTL-UB 6.37 vs
# 6.359).
NASH_TOL, AMTL_TOL = 0.105, 0.015
CITY = {
    "STL": ((74.01, 93.16, 0.0125, 27.77), 0.0, 1e-12),
    "LS": ((75.18, 93.49, 0.0155, 46.77), 22.60, NASH_TOL),
    "SI": ((70.95, 91.73, 0.0161, 33.83), 14.11, NASH_TOL),
    "RLW": ((74.57, 93.41, 0.0158, 47.79), 24.38, NASH_TOL),
    "DWA": ((75.24, 93.52, 0.0160, 44.37), 21.45, NASH_TOL),
    "UW": ((72.02, 92.85, 0.0140, 30.13), 5.89, NASH_TOL),
    "MGDA": ((68.84, 91.54, 0.0309, 33.50), 44.14, NASH_TOL),
    "PCGrad": ((75.13, 93.48, 0.0154, 42.07), 18.29, NASH_TOL),
    "GradDrop": ((75.27, 93.53, 0.0157, 47.54), 23.73, NASH_TOL),
    "CAGrad": ((75.16, 93.48, 0.0141, 37.60), 11.64, NASH_TOL),
    "IMTL-G": ((75.33, 93.49, 0.0135, 38.41), 11.10, NASH_TOL),
    "Nash-MTL": ((75.41, 93.66, 0.0129, 35.02), 6.82, NASH_TOL),
    "FAMO": ((74.54, 93.29, 0.0145, 32.59), 8.13, NASH_TOL),
    "GradNorm": ((73.72, 93.04, 0.0124, 34.11), 5.63, AMTL_TOL),
    "Aligned-MTL": ((75.77, 93.69, 0.0133, 32.66), 5.27, AMTL_TOL),
    "Aligned-MTL-UB": ((74.89, 93.46, 0.0131, 33.92), 6.37, AMTL_TOL),
}
# Exact recomputations (numpy, outside densemtl) of a few CityScapes rows, to 1e-4.
CITY_RECOMPUTED = {"LS": 22.6210, "PCGrad": 18.2094, "Nash-MTL": 6.7197, "FAMO": 8.1253, "Aligned-MTL": 5.2655}

NYU_TASKS = make_tasks(["semantic", "depth", "normal"], num_classes=13)
CITY_TASKS = make_tasks(["semantic", "depth"], num_classes=7)


def _results(printed, keys) -> dict:
    out: dict = {}
    for (task, metric, percent), value in zip(keys, printed):
        out.setdefault(task, {})[metric] = value / percent
    return out


@pytest.mark.parametrize("method", NYU)
def test_nyuv2_published_delta_m(method):
    printed, published = NYU[method]
    got = delta_m(_results(printed, NYU_KEYS), None, NYU_TASKS, "literature", reference="nyuv2")
    assert got == pytest.approx(published, abs=0.01)


@pytest.mark.parametrize("method", CITY)
def test_cityscapes_published_delta_m(method):
    printed, published, tol = CITY[method]
    got = delta_m(_results(printed, CITY_KEYS), None, CITY_TASKS, "literature", reference="cityscapes")
    assert got == pytest.approx(published, abs=tol)
    if method in CITY_RECOMPUTED:
        assert got == pytest.approx(CITY_RECOMPUTED[method], abs=1e-4)


def test_stl_rows_give_zero_and_the_constants_are_in_stored_units():
    for name, tasks, keys, printed in (("nyuv2", NYU_TASKS, NYU_KEYS, NYU["STL"][0]),
                                       ("cityscapes", CITY_TASKS, CITY_KEYS, CITY["STL"][0])):
        ref = LITERATURE_BASELINES[name]
        for task, metrics in _results(printed, keys).items():
            assert ref.values[task] == pytest.approx(metrics, rel=1e-12)
        assert delta_m(ref.values, None, tasks, "literature", reference=name) == 0.0
        assert "CAGrad" in ref.source
    assert "literature" in DELTA_VARIANTS


def test_sign_is_the_papers():
    """Better than the STL on every metric gives a negative literature Δm (ours: positive)."""
    stl = LITERATURE_BASELINES["cityscapes"].values
    better = {"semantic": {"miou": stl["semantic"]["miou"] * 1.1, "pixel_acc": stl["semantic"]["pixel_acc"] * 1.1},
              "depth": {"abs_err": stl["depth"]["abs_err"] * 0.9, "rel_err": stl["depth"]["rel_err"] * 0.9}}
    assert delta_m(better, None, CITY_TASKS, "literature", reference="cityscapes") == pytest.approx(-10.0)
    assert delta_m(better, stl, CITY_TASKS, "all") == pytest.approx(10.0)


@pytest.mark.parametrize("call, message", [
    (lambda r: delta_m(r, None, NYU_TASKS, "literature"), "needs reference="),
    (lambda r: delta_m(r, None, NYU_TASKS, "literature", reference="nyud"),
     "no published single-task constants for dataset 'nyud'; there are for: cityscapes, nyuv2"),
    (lambda r: delta_m(r, None, NYU_TASKS, "literature", reference="cityscapes"),
     "defined over the tasks semantic, depth; got semantic, depth, normal"),
    (lambda r: delta_m(r, None, make_tasks(["semantic", "depth"]), "literature", reference="nyuv2"),
     "defined over the tasks semantic, depth, normal; got semantic, depth"),
    (lambda r: delta_m(r, None, make_tasks(["semantic", "depth", "normal"], num_classes=7), "literature",
                       reference="nyuv2"), "published numbers are for 13 classes; task semantic has 7"),
    (lambda r: delta_m(r, r, NYU_TASKS, "literature", reference="nyuv2"), "pass baseline=None"),
    (lambda r: delta_m(r, r, NYU_TASKS, "all", reference="nyuv2"), "reference= is only for variant='literature'"),
    (lambda r: delta_m({**r, "normal": {k: v for k, v in r["normal"].items() if k != "median"}}, None,
                       NYU_TASKS, "literature", reference="nyuv2"),
     "Δm (literature): results lack metric(s) normal.median"),
])
def test_literature_errors(call, message):
    results = _results(NYU["Nash-MTL"][0], NYU_KEYS)
    with pytest.raises(UserError) as e:
        call(results)
    assert message in str(e.value)
