"""End-to-end ``densemtl train`` in-process on tiny synthetic scenes and on the real NYUv2 frames:
run folder contents, resume equivalence, NaN handling, wrong-model refusal, config errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from densemtl.cli import main
from densemtl.data.synthetic import generate_dataset
from densemtl.engine import trainer as trainer_module
from densemtl.engine import mtl_step
from densemtl.engine.checkpoint import load_checkpoint

TINY = ["--size", "32x32", "--width", "0.125", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """8 train / 4 val procedural scenes at 32x32 (generated once for this file)."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, train=8, val=4, size=(32, 32), seed=3)
    return root


def train(*argv) -> int:
    return main(["train", *argv])


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_layout(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--data-root", str(scenes), "--out", str(run), "--epochs", "2", "--last-k", "2", *TINY) == 0
    out = capsys.readouterr().out
    assert "trivial predictors" in out and "mean of last 2 epochs" in out

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["size"] == "32x32" and cfg["data"]["tasks"] == ["semantic", "depth", "normal"]
    assert cfg["data"]["num_classes"] == 13 and cfg["model"]["name"] == "mtan" and cfg["out"] == str(run)

    recs = records(run)
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        assert set(r) >= {"epoch", "lr", "train_loss", "weights", "val", "val_loss", "time"}
        assert set(r["train_loss"]) == set(r["weights"]) == {"semantic", "depth", "normal"}
        assert set(r["val"]["semantic"]) == {"miou", "pixel_acc"}
        assert set(r["val"]["depth"]) == {"abs_err", "rel_err", "rmse"}
        assert all(math.isfinite(v) for t in r["val"].values() for v in t.values())
    assert recs[0]["lr"] == pytest.approx(1e-3) and recs[1]["lr"] == pytest.approx(5e-4)  # halved at the midpoint

    for name in ("checkpoints/last.pt", "checkpoints/final.pt", "pictures/epoch_001.png",
                 "pictures/epoch_002.png", "curves.png", "summary.md", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    for task, metrics in summary["metrics"].items():  # mean of the last k = 2 epochs
        for m, v in metrics.items():
            assert v == pytest.approx((recs[0]["val"][task][m] + recs[1]["val"][task][m]) / 2)
    assert summary["final"] == recs[1]["val"]
    assert set(summary["trivial"]) == {"semantic", "depth", "normal"}
    assert summary["epochs"] == 2 and summary["params"] > 0
    ckpt = load_checkpoint(run / "checkpoints" / "final.pt")
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "mtan" and len(ckpt["history"]) == 2


def test_resume_reaches_the_same_result(scenes, tmp_path, monkeypatch):
    """3 epochs straight == 2 epochs, a crash, and --resume (augmentation and DWA state included)."""
    common = ["--data-root", str(scenes), "--epochs", "3", "--augment", "--weighting", "dwa", *TINY]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train("--out", str(straight), *common) == 0

    real_epoch = trainer_module.Trainer.train_epoch

    def crash_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", crash_in_epoch_3)
    assert train("--out", str(resumed), *common) == 130
    assert len(records(resumed)) == 2 and not (resumed / "summary.json").exists()
    monkeypatch.undo()
    assert train("--resume", str(resumed), "--no-progress") == 0

    a, b = records(straight), records(resumed)
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        ra.pop("time"), rb.pop("time")
        assert ra == rb
    assert a[2]["weights"] != a[0]["weights"]  # DWA moved the weights in epoch 3
    sa = load_checkpoint(straight / "checkpoints" / "final.pt")
    sb = load_checkpoint(resumed / "checkpoints" / "final.pt")
    for key, tensor in sa["model"].items():
        assert torch.allclose(tensor.float(), sb["model"][key].float(), rtol=0, atol=1e-6), key
    assert json.loads((straight / "summary.json").read_text())["metrics"] == \
        json.loads((resumed / "summary.json").read_text())["metrics"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(scenes, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = mtl_step.compute_losses
    calls = {"train": 0}

    def nan_in_epoch_2(tasks, outputs, batch):
        losses = real(tasks, outputs, batch)
        if torch.is_grad_enabled():  # training steps only (evaluation runs without grad)
            calls["train"] += 1
            if calls["train"] == 3:  # 8 samples / batch 4 = 2 steps per epoch: epoch 2, step 1
                losses["depth"] = losses["depth"] * float("nan")
        return losses

    monkeypatch.setattr(mtl_step, "compute_losses", nan_in_epoch_2)
    assert train("--data-root", str(scenes), "--out", str(run), "--epochs", "3", *TINY) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2, step 1" in err and "depth = nan" in err
    assert "last good checkpoint" in err and "(epoch 1)" in err and "Traceback" not in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert len(records(run)) == 1 and not (run / "summary.json").exists()


def test_huge_learning_rate_diverges_with_a_clear_message(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--data-root", str(scenes), "--out", str(run), "--epochs", "1", "--lr", "1e30", *TINY) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 1" in err and "no epoch had finished" in err and "optim.lr is 1e+30" in err
    assert not (run / "checkpoints" / "last.pt").exists()


def test_resume_refuses_another_model(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--data-root", str(scenes), "--out", str(run), "--epochs", "1", *TINY) == 0
    capsys.readouterr()
    assert train("--resume", str(run), "--model", "single", "--tasks", "semantic") == 2
    err = capsys.readouterr().err
    assert "'mtan'" in err and "'single'" in err
    # a finished run resumed with more epochs continues
    assert train("--resume", str(run), "--epochs", "2", "--no-progress") == 0
    assert [r["epoch"] for r in records(run)] == [1, 2]


@pytest.mark.parametrize("argv, fragments", [
    (["--model", "nope"], ["unknown model 'nope'", "mtan"]),
    (["--size", "30x32"], ["multiples of 32", "30x32"]),
    (["--tasks", "semantic,sky"], ["data.tasks", "'sky'"]),
    (["--weighting", "magic"], ["unknown weighting 'magic'", "dwa"]),
    (["--weighting", "dwa", "--weighting-opt", "temp=2"], ["temp", "'dwa'"]),
    (["--model", "single"], ["single-task model", "--tasks"]),
    (["--data", "nyuv2", "--data-root", "/nonexistent/nyu"], ["/nonexistent/nyu"]),
    (["--num-classes", "19"], ["data.num_classes", "13"]),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], ["device"]),
])
def test_bad_options_exit_2_with_a_clear_message(scenes, tmp_path, capsys, argv, fragments):
    assert train("--data-root", str(scenes), "--out", str(tmp_path / "r"), "--epochs", "1", *TINY, *argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_existing_run_folder_and_bad_resume(scenes, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("--data-root", str(scenes), "--out", str(run), "--epochs", "1", *TINY) == 0
    assert train("--data-root", str(scenes), "--out", str(run), "--epochs", "1", *TINY) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train("--resume", str(tmp_path / "nothing")) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_real_nyuv2_frames(nyuv2_mini, tmp_path):
    run = tmp_path / "nyu"
    assert train("--data", "nyuv2", "--data-root", str(nyuv2_mini), "--size", "64x96", "--width", "0.125",
                 "--epochs", "1", "--batch-size", "4", "--augment", "--out", str(run), "--no-progress") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"] == "nyuv2" and summary["train_samples"] == 8 and summary["val_samples"] == 4
    # bed and tv never occur in nyuv2_mini; the mean train depth lies in a room's range
    depth = float(summary["trivial_predictors"]["depth"].split()[-1])
    assert 1.0 < depth < 6.0
    assert all(math.isfinite(v) for t in summary["final"].values() for v in t.values())
