"""``densemtl compare`` end to end on a tiny grid, plus the grid planning and its errors.

The grid: synthetic scenes at 32x32 (8 train / 4 val), tasks semantic + depth, models single,
split, mtan x weightings equal, dwa, one seed, 2 epochs at width 1/16. The first invocation is
interrupted during the last run's second epoch; the second must resume that run and skip the
others; the third must train nothing. Table values are checked against the runs' own
summary.json files, with Δm recomputed here from its definition (SPEC 3).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from densemtl.cli import main
from densemtl.compare import make_grid
from densemtl.data.synthetic import generate_dataset
from densemtl.engine.config import config_from_dict
from densemtl.engine.trainer import Trainer
from densemtl.errors import UserError

ROWS = ["single", "split · equal", "split · dwa", "mtan · equal", "mtan · dwa"]
RUNS = ["single-semantic-s0", "single-depth-s0", "split-equal-s0", "split-dwa-s0", "mtan-equal-s0", "mtan-dwa-s0"]
# (task, metric, higher is better): the primary metrics and the "all" metrics of SPEC 3 for
# semantic + depth (MTAN's table: mIoU, PixAcc, AbsErr, RelErr; RMSE is not among them).
PRIMARY = [("semantic", "miou", True), ("depth", "abs_err", False)]
ALL = [("semantic", "miou", True), ("semantic", "pixel_acc", True), ("depth", "abs_err", False),
       ("depth", "rel_err", False)]


def _invoke(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "scenes"
    generate_dataset(root, train=8, val=4, size=(32, 32), seed=0)
    return root


def _argv(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["compare", "--models", "single,split,mtan", "--weightings", "equal,dwa", "--seeds", "1",
            "--data", "synthetic", "--data-root", str(data_root), "--size", "32x32", "--tasks", "semantic,depth",
            "--epochs", "2", "--batch-size", "4", "--width", "0.0625", "--no-progress", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def comparison(data_root, tmp_path_factory) -> dict:
    """Run the comparison three times: interrupted, resumed, and once more with training forbidden."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    argv = _argv(data_root, out)
    original_epoch = Trainer.train_epoch

    def interrupting_epoch(self, epoch):
        if self.folder.path.name == "mtan-dwa-s0" and epoch == 2:
            raise KeyboardInterrupt
        return original_epoch(self, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "train_epoch", interrupting_epoch)
        first = _invoke(argv)
    after_first = {name: (out / "runs" / name / "summary.json").is_file() for name in RUNS}
    interrupted_ckpt = (out / "runs" / "mtan-dwa-s0" / "checkpoints" / "last.pt").is_file()
    second = _invoke(argv)

    def no_training(self):
        raise AssertionError("a finished comparison trained again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", no_training)
        third = _invoke(argv)
    return {"out": out, "first": first, "second": second, "third": third, "after_first": after_first,
            "interrupted_ckpt": interrupted_ckpt, "argv": argv}


def _summary(out: Path, run: str) -> dict:
    return json.loads((out / "runs" / run / "summary.json").read_text())


def _delta(results: dict, baseline: dict, metrics) -> float | None:
    terms = []
    for task, metric, higher in metrics:
        b, m = baseline[task][metric], results[task][metric]
        if b == 0:
            return None
        terms.append((m - b) / b if higher else (b - m) / b)
    return 100.0 * sum(terms) / len(terms)


def test_interrupted_comparison_resumes_then_trains_nothing(comparison):
    code, out, _ = comparison["first"]
    assert code == 130  # the CLI's exit status for an interrupt
    assert comparison["after_first"] == {name: name != "mtan-dwa-s0" for name in RUNS}
    assert comparison["interrupted_ckpt"]

    code, out, err = comparison["second"]
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("[")]
    finished = [line for line in lines if "finished earlier, skipped" in line]
    assert len(finished) == 5 and not any("mtan-dwa-s0" in line for line in finished)
    assert any(line.startswith("[6/6] mtan-dwa-s0: resumed after epoch 1") for line in lines), out
    history = [json.loads(line)["epoch"] for line in
               (comparison["out"] / "runs" / "mtan-dwa-s0" / "metrics.jsonl").read_text().splitlines()]
    assert history == [1, 2]

    code, out, err = comparison["third"]
    assert code == 0, err
    assert sum("finished earlier, skipped" in line for line in out.splitlines()) == 6


def test_table_matches_the_runs(comparison):
    out = comparison["out"]
    doc = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in doc["rows"]] == ROWS + ["trivial predictors"]
    assert (doc["variant"], doc["split"], doc["convention"]) == ("synthetic", "val", "dataset")
    s = {run: _summary(out, run) for run in RUNS}
    baseline = {"semantic": s["single-semantic-s0"]["metrics"]["semantic"],
                "depth": s["single-depth-s0"]["metrics"]["depth"]}
    expected = {"single": baseline, "trivial predictors": {"semantic": s["single-semantic-s0"]["trivial"]["semantic"],
                                                           "depth": s["single-depth-s0"]["trivial"]["depth"]}}
    for row in ROWS[1:]:
        model, weighting = row.split(" · ")
        expected[row] = s[f"{model}-{weighting}-s0"]["metrics"]
    unit = s["single-semantic-s0"]["params"]
    trivial = doc["rows"].pop()
    assert trivial["extra"]["params"] is None
    for task in ("semantic", "depth"):
        for metric, value in trivial["results"][task].items():
            assert value == pytest.approx(expected["trivial predictors"][task][metric], rel=1e-12)
    assert trivial["extra"]["delta_m"]["primary"]["mean"] == pytest.approx(
        _delta(expected["trivial predictors"], baseline, PRIMARY), abs=1e-9)
    for row in doc["rows"]:
        name = row["name"]
        for task in ("semantic", "depth"):
            for metric, value in row["results"][task].items():
                assert value == pytest.approx(expected[name][task][metric], rel=1e-12)
        for variant, metrics in (("primary", PRIMARY), ("all", ALL)):
            want = _delta(expected[name], baseline, metrics)
            got = row["extra"]["delta_m"][variant]["mean"]
            if want is None:
                assert got is None
            else:
                assert got == pytest.approx(want, abs=1e-9)
                assert math.copysign(1, got) == math.copysign(1, want) or want == 0
        if name == "single":
            params = s["single-semantic-s0"]["params"] + s["single-depth-s0"]["params"]
        else:
            model, weighting = name.split(" · ")
            params = s[f"{model}-{weighting}-s0"]["params"]
        assert row["extra"]["params"] == params
        assert row["extra"]["params_rel"] == pytest.approx(params / unit)
        assert row["extra"]["gflops"] > 0
    single = doc["rows"][0]["extra"]
    assert single["delta_m"]["primary"]["mean"] == 0.0 and single["params_rel"] == pytest.approx(2.0, rel=0.01)
    # MTAN adds attention to the shared network: more parameters than split, fewer than 2 singles
    by_name = {r["name"]: r["extra"] for r in doc["rows"]}
    assert by_name["split · equal"]["params"] < by_name["mtan · equal"]["params"] < single["params"]


def test_markdown_csv_and_plots_written(comparison):
    out = comparison["out"]
    md = (out / "compare.md").read_text()
    for fact in ("split val", "metric convention dataset", "width 0.0625", "32x32", "2 epochs",
                 "primary: semantic mIoU, depth AbsErr", "all: semantic mIoU, semantic PixAcc, depth AbsErr, "
                 "depth RelErr", "torch "):
        assert fact in md, fact
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0][2:] for line in table[1:]] == ROWS + ["trivial predictors"]
    assert "Δm primary (%)" in table[0] and "semantic mIoU" in table[0] and "depth RelErr" in table[0]

    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [r["method"] for r in rows] == ROWS + ["trivial predictors"]
    doc = json.loads((out / "compare.json").read_text())
    for r, j in zip(rows[:-1], doc["rows"]):
        assert float(r["delta_m.primary"]) == pytest.approx(j["extra"]["delta_m"]["primary"]["mean"])
        assert float(r["depth.abs_err"]) == pytest.approx(j["results"]["depth"]["abs_err"])
    for png in ("compare_delta.png", "compare_curves.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_other_settings_in_the_same_folder_are_refused(comparison):
    before = (comparison["out"] / "runs" / "single-semantic-s0" / "summary.json").read_text()
    code, _, err = _invoke(comparison["argv"] + ["--lr", "0.01"])
    assert code == 2
    assert "single-semantic-s0 was trained with other settings" in err and "optim.lr" in err
    assert (comparison["out"] / "runs" / "single-semantic-s0" / "summary.json").read_text() == before


@pytest.mark.parametrize("flags, message", [
    (["--models", "single,segnett"], "unknown model 'segnett'; expected one of:"),
    (["--weightings", "equal,nosuch"], "unknown weighting 'nosuch'; expected one of: aligned_mtl, "),
    (["--models", "single,stan"], "are all single-task models"),
    (["--models", "split,split"], "listed twice: split"),
    (["--seeds", "0"], "--seeds: expected a number of seeds >= 1"),
    (["--baseline", "mtan"], "'mtan' is a multi-task model"),
    (["--tasks", "depth"], "needs at least two tasks"),
    (["--model-opt", "nonsense=1"], "none of the models"),
])
def test_bad_grid_is_a_user_error(data_root, tmp_path, flags, message):
    code, out, err = _invoke(_argv(data_root, tmp_path / "cmp", *flags))
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "cmp" / "runs").exists()


def test_unknown_model_lists_the_valid_ones(data_root, tmp_path):
    _, _, err = _invoke(_argv(data_root, tmp_path / "cmp", "--models", "mtann"))
    for name in ("cross_stitch", "dense", "mtan", "single", "split", "stan"):
        assert name in err


def test_grid_plan_with_a_single_task_model_and_implicit_baseline():
    base = config_from_dict({"data": {"name": "synthetic", "tasks": ["semantic", "depth"]}, "seed": 3})
    grid = make_grid(base, "stan,split", "equal,dwa", seeds=2)
    assert [r.label for r in grid.rows] == ["single", "stan", "split · equal", "split · dwa"]
    assert [s.name for s in grid.runs()] == [
        f"{name}-s{seed}" for seed in (3, 4) for name in
        ("single-semantic", "single-depth", "stan-semantic", "stan-depth", "split-equal", "split-dwa")]
    with pytest.raises(UserError, match="expected a single-task model"):
        make_grid(base, "split", "equal", seeds=1, baseline="split")
