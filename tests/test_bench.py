"""densemtl bench: the measurement, its derived numbers, the reports and the command line."""

from __future__ import annotations

import csv
import gc
import io
import json

import numpy as np
import pytest
import torch

from densemtl import bench
from densemtl.cli import main
from densemtl.models import create_model
from densemtl.tasks import make_tasks

TINY = dict(size=(32, 32), batch_size=2, width=0.125, steps=2, warmup=1, threads=1)


def test_percentile_matches_numpy():
    values = sorted([5.0, 1.0, 4.0, 2.5, 9.0, 7.5, 3.0])
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert bench._percentile(values, q) == pytest.approx(np.percentile(values, 100 * q))


def test_rss_peak_reset_sees_a_new_allocation():
    gc.collect()  # garbage of earlier tests, freed during the allocation below, would offset it
    gc.disable()
    try:
        assert bench._reset_rss_peak()
        before = bench._status_kb("VmHWM")
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        after = bench._status_kb("VmHWM")
        del block
    finally:
        gc.enable()
    assert after - before >= 190 * 1024
    assert bench._reset_rss_peak()
    assert bench._status_kb("VmHWM") < after - 150 * 1024  # the reset forgot the old peak


def test_synthetic_batch_has_valid_targets_and_some_invalid_pixels():
    tasks = make_tasks(["semantic", "depth", "normal", "edge"], num_classes=5)
    b = bench.synthetic_batch(tasks, 2, (16, 16), torch.device("cpu"))
    assert b["image"].shape == (2, 3, 16, 16) and 0 <= b["image"].min() and b["image"].max() <= 1
    assert b["semantic"].dtype == torch.int64 and b["semantic"].max() < 5 and (b["semantic"] == -1).any()
    assert (b["depth"] == 0).any() and (b["depth"] >= 0).all()
    norms = b["normal"].norm(dim=1)
    valid = norms > 0
    assert (~valid).any() and torch.allclose(norms[valid], torch.ones(()), atol=1e-5)
    raw = {t: torch.randn(2, task.channels, 16, 16) for t, task in tasks.items()}
    for t, task in tasks.items():
        assert torch.isfinite(task.loss(raw[t], b[t]))


def test_train_measurement_numbers_are_consistent():
    row = bench.measure(bench.BenchSpec("split", "train", **TINY))
    model = create_model("split", {"semantic": 13, "depth": 1, "normal": 3}, width=0.125)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert row["ms_p10"] <= row["ms_median"] <= row["ms_p90"]
    assert row["images_per_s"] == pytest.approx(2 / (row["ms_median"] / 1000))
    # backward of a conv net costs about twice its forward (input and weight gradients; the
    # first conv needs no input gradient), so a training step counts a bit under 3 forwards
    ratio = row["step_gflop"] / (row["gflops_per_image"] * 2)
    assert 2.5 < ratio < 3.05
    assert row["achieved_gflops"] == pytest.approx(row["step_gflop"] / (row["ms_median"] / 1000))
    assert row["peak_mem_mb"] >= row["rss_before_mb"] > 50
    assert row["threads"] == 1 and row["channels_last"] and row["amp"] == "none"


def test_baseline_is_the_per_task_fp32_nchw_mtan():
    spec = bench.BenchSpec("mtan", "infer", baseline=True, amp="bf16", channels_last=True, compile=True, **TINY)
    row = bench.measure(spec)
    assert row["model"] == bench.BASELINE_LABEL
    assert (row["fused"], row["amp"], row["channels_last"], row["compile"]) == (False, "none", False, False)
    assert row["step_gflop"] == pytest.approx(row["gflops_per_image"] * 2)  # inference: forward only


def test_speedups_and_reports(monkeypatch):
    rows = [
        {"model": bench.BASELINE_LABEL, "phase": "train", "ms_median": 300.0},
        {"model": "mtan", "phase": "train", "ms_median": 200.0},
        {"model": "split", "phase": "train", "ms_median": 100.0},
        {"model": "mtan", "phase": "infer", "ms_median": 50.0},
    ]
    bench.add_speedups(rows)
    assert [r["vs_baseline"] for r in rows] == [1.0, 1.5, None, None]

    # repeats: the row of the median repeat, with every repeat's median listed
    medians = iter([30.0, 10.0, 20.0])
    with monkeypatch.context() as m:
        m.setattr(bench, "measure", lambda s: {"model": s.label, "phase": s.phase, "ms_median": next(medians)})
        (row,) = bench.run_benchmark([bench.BenchSpec("split", "infer", **TINY)], isolate=False, repeat=3)
    assert row["ms_median"] == 20.0 and row["runs_ms"] == [30.0, 10.0, 20.0]

    row = bench.measure(bench.BenchSpec("split", "infer", **TINY))
    env = bench.environment()
    assert env["cpu"] and env["torch"] == torch.__version__
    parsed = list(csv.DictReader(io.StringIO(bench.to_csv([row]))))
    assert parsed[0]["model"] == "split" and float(parsed[0]["ms_median"]) == pytest.approx(row["ms_median"], rel=1e-5)
    md = bench.to_markdown([row], env, "densemtl bench --models split")
    assert "| split | infer | fp32 channels_last |" in md and env["cpu"] in md
    env["omp_wait_policy"] = "PASSIVE"
    assert "OMP_WAIT_POLICY: PASSIVE" in bench.to_markdown([row], env)
    assert row["cpu_ms_median"] > 0


def test_cli_writes_markdown_csv_and_json(tmp_path, capsys):
    out = tmp_path / "b"
    code = main(["bench", "--models", "stan", "--width", "0.125", "--size", "32x32", "--steps", "1",
                 "--warmup", "1", "--threads", "1", "--phases", "infer", "--json", "--out", str(out)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in result["results"]] == ["stan"]
    assert result["results"][0]["tasks"] == "semantic"  # single-task model: the first task
    assert (out / "bench.md").read_text().startswith("# densemtl bench")
    assert len(list(csv.DictReader((out / "bench.csv").open()))) == 1


@pytest.mark.parametrize("argv, message", [
    (["--models", "nope"], "unknown model 'nope'"),
    (["--size", "33x32"], "multiples of 32"),
    (["--size", "big"], "--size"),
    (["--phases", "train,fly"], "--phases"),
    (["--steps", "0"], "--steps"),
    (["--tasks", "semantic,colour"], "unknown task 'colour'"),
])
def test_cli_errors_name_the_option(argv, message, capsys):
    assert main(["bench", "--in-process", *argv]) == 2
    assert message in capsys.readouterr().err


def test_paired_ratios_alternate_the_order_and_divide_per_round(monkeypatch):
    """Fake steps on a fake clock: the baseline takes 30 ms, mtan 10 ms then 20 ms; each round
    times both, baseline first in even rounds and last in odd ones."""
    clock, calls = [0.0], []
    durations = {"mtan (baseline)": iter([0.03] * 5), "mtan": iter([0.01, 0.02, 0.01, 0.02, 0.01])}

    def fake_prepare(spec):
        def run():
            calls.append(spec.label)
            clock[0] += next(durations[spec.label])
        return bench._Step(run, lambda: None, None, {}, torch.device("cpu"), "none", False, False, 0, 0.0, 0.0)

    monkeypatch.setattr(bench, "_prepare", fake_prepare)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    specs = [bench.BenchSpec("mtan", "train", baseline=True, warmup=1), bench.BenchSpec("mtan", "train", warmup=1)]
    ratios = bench.paired_ratios(specs, rounds=4)
    assert calls == ["mtan (baseline)", "mtan"] + ["mtan (baseline)", "mtan", "mtan", "mtan (baseline)"] * 2
    assert ratios[("mtan", "train")] == pytest.approx([1.5, 3.0, 1.5, 3.0])

    rows = [{"model": "mtan", "phase": "train"}, {"model": "mtan (baseline)", "phase": "train"}]
    bench.add_paired(rows, ratios)
    assert rows[0]["paired_ratio"] == pytest.approx(2.25) and rows[0]["paired_rounds"] == 4
    assert "paired_ratio" not in rows[1]


def test_paired_measures_real_steps_and_reports_them():
    specs = bench.plan(["mtan"], ("infer",), baseline=True, **TINY)
    rows = bench.run_benchmark(specs, isolate=False, paired=3)
    row = next(r for r in rows if r["model"] == "mtan")
    assert row["paired_rounds"] == 3 and row["paired_p25"] <= row["paired_ratio"] <= row["paired_p75"]
    md = bench.to_markdown(rows, bench.environment())
    assert f"- mtan infer: **{row['paired_ratio']:.2f}**" in md
    parsed = next(csv.DictReader(io.StringIO(bench.to_csv(rows))))  # the baseline row: no ratio
    assert "paired_ratio" in parsed and parsed["paired_ratio"] == ""


def test_cli_paired_needs_the_baseline(capsys):
    assert main(["bench", "--in-process", "--paired", "3"]) == 2
    assert "--paired" in capsys.readouterr().err
