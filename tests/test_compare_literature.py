"""``densemtl compare``'s literature Δm column, on hand-made run results (no training).

A grid single + split x equal over 2 seeds is planned for nyuv2 (literature Δm applies) and for
synthetic scenes (it does not: "n/a"); the runs' summaries are written by hand and
:meth:`Comparison.write` tabulates them. The split runs carry the published NYUv2 rows of
Nash-MTL (seed 0) and FAMO (seed 1), whose literature Δm, recomputed outside densemtl from the
printed rows, is -4.0468 and -4.0996 (published -4.04 and -4.10).
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from densemtl.compare import Comparison, make_grid
from densemtl.engine.config import config_from_dict

KEYS = [("semantic", "miou", 100), ("semantic", "pixel_acc", 100), ("depth", "abs_err", 1),
        ("depth", "rel_err", 1), ("normal", "mean", 1), ("normal", "median", 1),
        ("normal", "within_11_25", 100), ("normal", "within_22_5", 100), ("normal", "within_30", 100)]
STL = (38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15)
NASH = (40.13, 65.93, 0.5261, 0.2171, 25.26, 20.08, 28.40, 55.47, 68.15)
FAMO = (38.88, 64.90, 0.5474, 0.2194, 25.06, 19.57, 29.21, 56.61, 68.98)
# seed 1's single-task runs: the STL row with every metric 10 % worse
STL_WORSE = tuple(v * (0.9 if pct == 100 else 1.1) for v, (_, _, pct) in zip(STL, KEYS))


def _metrics(printed) -> dict:
    out: dict = {}
    for (task, metric, pct), value in zip(KEYS, printed):
        out.setdefault(task, {})[metric] = value / pct
    out["depth"]["rmse"] = 0.8
    return out


def _write(name: str, tmp_path):
    base = config_from_dict({"data": {"name": name, "size": [32, 32]}, "model": {"width": 0.0625}, "epochs": 2})
    grid = make_grid(base, "single,split", "equal", seeds=2)
    comparison = Comparison(base, grid, tmp_path / name, log=lambda m: None)
    comparison.run_costs = lambda spec: (1000, 1.0)  # parameter / FLOP counts are not under test
    rows = {0: {"single": STL, "split": NASH}, 1: {"single": STL_WORSE, "split": FAMO}}
    results = {}
    for spec in grid.runs():
        metrics = _metrics(rows[spec.seed][spec.model])
        if spec.task:
            metrics = {spec.task: metrics[spec.task]}
        history = [{"epoch": e, "val": metrics, "train_loss": {t: 1.0 / e for t in metrics}} for e in (1, 2)]
        summary = {"metrics": metrics, "trivial": _metrics(STL_WORSE), "split": "val", "last_k": 1,
                   "train_samples": 8, "val_samples": 4}
        results[spec] = type("R", (), {"spec": spec, "summary": summary, "history": history})()
    paths = comparison.write(results)
    doc = json.loads(paths["json"].read_text())
    return doc, paths["md"].read_text(), list(csv.DictReader(io.StringIO(paths["csv"].read_text())))


def _primary(model, base) -> float:
    """Our primary Δm (higher is better) by hand: mIoU, AbsErr, normal mean."""
    terms = [(model[0] - base[0]) / base[0], (base[2] - model[2]) / base[2], (base[4] - model[4]) / base[4]]
    return 100 * sum(terms) / 3


@pytest.fixture(scope="module")
def nyuv2(tmp_path_factory):
    return _write("nyuv2", tmp_path_factory.mktemp("lit"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return _write("synthetic", tmp_path_factory.mktemp("lit"))


def test_literature_delta_on_nyuv2(nyuv2):
    doc, md, rows = nyuv2
    by_name = {r["name"]: r["extra"]["delta_m"] for r in doc["rows"]}
    split = by_name["split · equal"]
    assert split["literature"]["per_seed"] == {"0": pytest.approx(-4.0468, abs=1e-4),
                                               "1": pytest.approx(-4.0996, abs=1e-4)}
    assert split["literature"]["mean"] == pytest.approx((-4.0468 - 4.0996) / 2, abs=1e-4)
    # the primary variant stays against the run's own single-task baselines, per seed
    assert split["primary"]["per_seed"]["0"] == pytest.approx(_primary(NASH, STL))
    assert split["primary"]["per_seed"]["1"] == pytest.approx(_primary(FAMO, STL_WORSE))
    single = by_name["single"]
    assert single["primary"]["mean"] == 0.0 and single["literature"]["per_seed"]["0"] == pytest.approx(0.0)
    assert single["literature"]["per_seed"]["1"] == pytest.approx(10.0)  # 10 % worse everywhere
    lit = doc["settings"]["delta_m_literature"]
    assert lit["reference"] == "nyuv2" and len(lit["metrics"]) == 9 and "CAGrad" in lit["source"]
    assert lit["baseline"]["semantic"]["miou"] == pytest.approx(0.3830)

    header = [line for line in md.splitlines() if line.startswith("| method")][0]
    assert "Δm primary (%) ↑" in header and "Δm all (%) ↑" in header and "Δm literature (%) ↓" in header
    split_line = next(line for line in md.splitlines() if line.startswith("| split · equal"))
    assert "-4.07 ± 0.04" in split_line
    assert "Δm literature (in %, **lower** is better" in md
    csv_split = next(r for r in rows if r["method"] == "split · equal")
    assert float(csv_split["delta_m.literature"]) == pytest.approx(split["literature"]["mean"])
    assert float(csv_split["delta_m.primary"]) == pytest.approx(split["primary"]["mean"])


def test_literature_is_na_on_synthetic_data(synthetic):
    doc, md, rows = synthetic
    for row in doc["rows"]:
        d = row["extra"]["delta_m"]
        assert d["literature"]["mean"] is None
        assert "no published single-task constants for dataset 'synthetic'" in d["literature"]["not_applicable"]
        assert d["primary"]["mean"] is not None and d["all"]["mean"] is not None
    assert doc["settings"]["delta_m_literature"]["reference"] is None
    table = [line for line in md.splitlines() if line.startswith("| ")]
    column = table[0].split(" | ").index("Δm literature (%) ↓")
    assert all(line.split(" | ")[column].strip(" |") == "n/a" for line in table[1:])
    assert "- Δm literature: n/a (" in md
    assert all(r["delta_m.literature"] == "n/a" and r["delta_m.primary"] not in ("", "n/a") for r in rows)
