"""Result tables (markdown / CSV / JSON), mean ± std, run summaries and training curves."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from densemtl.errors import UserError
from densemtl.report import (
    ResultRow, flatten, mean_std, plot_curves, read_jsonl, results_table, run_summary_markdown,
)
from densemtl.tasks import make_tasks

TASKS = make_tasks(["semantic", "depth"], num_classes=13)
BASE = {"semantic": {"miou": 0.40, "pixel_acc": 0.50}, "depth": {"abs_err": 0.50, "rel_err": 0.20, "rmse": 0.9}}
MODEL = {"semantic": {"miou": 0.44, "pixel_acc": 0.50}, "depth": {"abs_err": 0.45, "rel_err": 0.25, "rmse": 0.8}}
ROWS = [
    ResultRow("single-task", BASE),
    ResultRow("mtan", MODEL, std={"semantic": {"miou": 0.0123}}, extra={"params": 44229073}),
    ResultRow("seg only", {"semantic": {"miou": 0.30, "pixel_acc": 0.45}}),
]


def table_lines(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_markdown_table_cells_arrows_scales_and_delta():
    text = results_table(ROWS, TASKS, baseline=BASE, variant="nyuv2", split="val", convention="mtan",
                         bold_best=True)
    assert text.splitlines()[0] == "dataset nyuv2 · split val · metric convention mtan"
    header, _, base, mtan, seg = table_lines(text)
    assert header == ["method", "params", "semantic mIoU ↑", "semantic PixAcc ↑", "depth AbsErr ↓",
                      "depth RelErr ↓", "depth RMSE ↓", "Δm primary (%) ↑", "Δm all (%) ↑"]
    # mIoU in percent, 2 decimals; depth (< 1) with 4 decimals; best per column in bold (ties too)
    assert base == ["single-task", "—", "40.00", "**50.00**", "0.5000", "**0.2000**", "0.9000", "+0.00", "**+0.00**"]
    # Δm primary: mIoU +10 %, AbsErr +10 % -> +10; all: +10, 0, +10, -25 -> -1.25 (RMSE not in "all")
    assert mtan == ["mtan", "44,229,073", "**44.00 ± 1.23**", "**50.00**", "**0.4500**", "0.2500", "**0.8000**",
                    "**+10.00**", "-1.25"]
    assert seg == ["seg only", "—", "30.00", "45.00", "—", "—", "—", "—", "—"]
    assert "In percent: semantic mIoU, semantic PixAcc." in text


def test_csv_has_raw_values_and_parses():
    rows = list(csv.DictReader(io.StringIO(results_table(ROWS, TASKS, "csv", baseline=BASE))))
    assert [r["method"] for r in rows] == ["single-task", "mtan", "seg only"]
    assert float(rows[1]["semantic.miou"]) == 0.44
    assert float(rows[1]["semantic.miou.std"]) == 0.0123
    assert float(rows[1]["depth.abs_err"]) == 0.45
    assert float(rows[1]["delta_m.primary"]) == pytest.approx(10.0)
    assert float(rows[1]["delta_m.all"]) == pytest.approx(-1.25)
    assert rows[2]["depth.abs_err"] == "" and rows[2]["delta_m.all"] == ""
    assert rows[1]["params"] == "44229073"


def test_json_round_trip():
    doc = json.loads(results_table(ROWS, TASKS, "json", baseline=BASE, delta=["all"], split="val"))
    assert doc["split"] == "val" and doc["variant"] is None
    assert [c["metric"] for c in doc["columns"]] == ["miou", "pixel_acc", "abs_err", "rel_err", "rmse"]
    assert doc["columns"][2] == {"task": "depth", "metric": "abs_err", "label": "AbsErr",
                                 "higher_is_better": False, "scale": 1.0}
    mtan = doc["rows"][1]
    assert mtan["results"] == MODEL and mtan["std"] == {"semantic": {"miou": 0.0123}}
    assert mtan["delta_m"] == {"all": pytest.approx(-1.25)}
    assert doc["rows"][2]["delta_m"] == {"all": None}


def test_table_errors():
    with pytest.raises(UserError, match="baseline lack metric.*depth.rel_err"):
        results_table(ROWS, TASKS, baseline={"semantic": BASE["semantic"], "depth": {"abs_err": 0.5}})
    with pytest.raises(UserError, match="csv, json, markdown|markdown, csv, json"):
        results_table(ROWS, TASKS, "latex")


def test_no_baseline_means_no_delta_columns():
    header = table_lines(results_table(ROWS[:1], TASKS))[0]
    assert not any("Δm" in h for h in header)


def test_mean_std_by_hand():
    runs = [{"semantic": {"miou": 0.1}, "depth": {"abs_err": 0.5}},
            {"semantic": {"miou": 0.3}, "depth": {"abs_err": 0.5}},
            {"semantic": {"miou": 0.2}}]
    mean, std = mean_std(runs)
    assert mean == {"semantic": {"miou": pytest.approx(0.2)}}  # depth is not in every run
    assert std["semantic"]["miou"] == pytest.approx(0.1)  # sample std of 0.1, 0.3, 0.2
    _, single = mean_std(runs[:1])
    assert single == {"semantic": {"miou": 0.0}, "depth": {"abs_err": 0.0}}


def test_run_summary_markdown():
    summary = {"run": "runs/x", "model": "mtan_segnet", "data": "synthetic", "split": "val",
               "convention": "dataset", "epochs": 5, "last_k": 3, "params": 2_765_000,
               "train_samples": 64, "val_samples": 16, "seconds": 12.5,
               "metrics": MODEL, "final": BASE, "trivial": {"semantic": {"miou": 0.05, "pixel_acc": 0.3}},
               "trivial_predictors": {"semantic": "majority class 11"}}
    text = run_summary_markdown(summary, TASKS)
    assert text.startswith("# mtan_segnet on synthetic\n")
    assert "- parameters: 2,765,000" in text
    assert "dataset synthetic · split val · metric convention dataset" in text
    rows = table_lines(text)
    assert rows[2][:2] == ["mtan_segnet (mean of last 3 epochs)", "44.00"]
    assert rows[3][:2] == ["mtan_segnet (epoch 5)", "40.00"]
    assert rows[4][:3] == ["trivial predictors", "5.00", "30.00"]
    assert "Trivial predictors: semantic: majority class 11." in text


RECORDS = [{"epoch": e, "lr": 1e-4, "train_loss": {"semantic": 2.0 / e, "depth": 1.0 / e},
            "weights": {"semantic": 1.0, "depth": 1.0}, "val": {"semantic": {"miou": 0.1 * e}},
            "val_loss": {"semantic": 2.5 / e, "depth": 1.2 / e}, "time": 1.5, "note": "text is skipped"}
           for e in range(1, 5)]


def test_flatten_keeps_numeric_leaves():
    flat = flatten(RECORDS[0])
    assert flat["val.semantic.miou"] == pytest.approx(0.1)
    assert flat["train_loss.depth"] == 1.0 and "note" not in flat and flat["epoch"] == 1.0


def test_plot_curves_from_records_and_jsonl(tmp_path):
    out = plot_curves(RECORDS, tmp_path / "sub" / "curves.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300
        full_width = im.size[0]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    assert read_jsonl(path) == RECORDS
    only = plot_curves(path, tmp_path / "loss.png", keys=["*loss.*"])
    with Image.open(only) as im:  # two panels (loss.semantic and loss.depth), train and val in each
        assert im.size[0] < full_width


def test_plot_curves_errors(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        plot_curves(bad, tmp_path / "c.png")
    with pytest.raises(UserError, match="does not exist"):
        read_jsonl(tmp_path / "none.jsonl")
    with pytest.raises(UserError, match="no numeric values"):
        plot_curves(RECORDS, tmp_path / "c.png", keys=["nothing*"])
