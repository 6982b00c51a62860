"""``densemtl evaluate`` and ``densemtl predict`` on a tiny trained run (in-process CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from densemtl.cli import main
from densemtl.data.synthetic import generate_dataset

TINY = ["--size", "32x32", "--width", "0.125", "--batch-size", "4", "--no-progress", "--epochs", "1"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_dataset(root, train=8, val=4, size=(32, 32), seed=5)
    return root


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mtan"
    assert main(["train", "--data-root", str(scenes), "--out", str(out), *TINY]) == 0
    return out


def evaluate_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def last_val(run) -> dict:
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {f"{t}.{m}": v for t, ms in record["val"].items() for m, v in ms.items()}


def test_evaluate_matches_the_training_evaluation(run, capsys):
    result = evaluate_json(capsys, "--checkpoint", str(run))
    assert result["model"] == "mtan" and result["epoch"] == 1 and result["samples"] == 4
    assert result["split"] == "val" and result["convention"] == "dataset"
    expected = last_val(run)
    assert set(result["metrics"]) == set(expected) == {
        "semantic.miou", "semantic.pixel_acc", "depth.abs_err", "depth.rel_err", "depth.rmse", "normal.mean",
        "normal.median", "normal.within_11_25", "normal.within_22_5", "normal.within_30"}
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, rel=1e-9), key


def test_evaluate_trivial_and_conventions(run, capsys):
    result = evaluate_json(capsys, "--checkpoint", str(run / "checkpoints" / "final.pt"), "--trivial")
    summary = json.loads((run / "summary.json").read_text())
    for task, metrics in summary["trivial"].items():
        for m, v in metrics.items():
            assert result["trivial"][f"{task}.{m}"] == pytest.approx(v, rel=1e-9)
    # one batch holding the whole split: the per-batch (mtan) depth mean is the dataset-level one
    whole = evaluate_json(capsys, "--checkpoint", str(run), "--convention", "mtan", "--batch-size", "4")
    assert whole["convention"] == "mtan"
    assert whole["metrics"]["depth.abs_err"] == pytest.approx(result["metrics"]["depth.abs_err"], rel=1e-9)
    pairs = evaluate_json(capsys, "--checkpoint", str(run), "--convention", "mtan")  # batch 2 by default
    assert pairs["metrics"]["depth.abs_err"] != pytest.approx(result["metrics"]["depth.abs_err"], rel=1e-12)
    train = evaluate_json(capsys, "--checkpoint", str(run), "--split", "train")
    assert train["samples"] == 8


def test_evaluate_other_root_and_text_table(run, tmp_path, capsys):
    other = tmp_path / "other"
    generate_dataset(other, train=2, val=2, size=(32, 32), seed=9)
    result = evaluate_json(capsys, "--checkpoint", str(run), "--data-root", str(other))
    assert result["samples"] == 2 and result["data_root"] == str(other)
    assert main(["evaluate", "--checkpoint", str(run), "--trivial"]) == 0
    out = capsys.readouterr().out
    assert "| mtan (epoch 1) |" in out and "| trivial predictors |" in out and "semantic mIoU" in out


def test_evaluate_errors(run, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(run), "--model", "single"]) == 2
    err = capsys.readouterr().err
    assert "'mtan'" in err and "'single'" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    assert main(["evaluate", "--checkpoint", str(junk)]) == 2
    assert "junk.pt" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run), "--convention", "perbatch"]) == 2
    assert "convention" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test"]) == 2
    assert "test" in capsys.readouterr().err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "room.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).convert("L").save(folder / "grey.jpg")
    return folder


def test_predict_writes_pictures_and_arrays(run, images, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run), str(images / "room.png"), str(images / "grey.jpg"),
                 "--out", str(out)]) == 0
    for stem, (h, w) in (("room", (50, 70)), ("grey", (40, 40))):
        for task in ("semantic", "depth", "normal"):
            with Image.open(out / f"{stem}_{task}.png") as im:
                assert im.size == (w, h) and im.mode == "RGB"
        sem = np.load(out / f"{stem}_semantic.npy")
        assert sem.shape == (h, w) and sem.dtype == np.int64 and sem.min() >= 0 and sem.max() < 13
        depth = np.load(out / f"{stem}_depth.npy")
        assert depth.shape == (h, w) and depth.dtype == np.float32 and np.isfinite(depth).all()
        normal = np.load(out / f"{stem}_normal.npy")
        assert normal.shape == (h, w, 3)
        np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=1e-4)


def test_predict_attention_pictures(run, images, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run), str(images / "room.png"), "--out", str(out),
                 "--attention"]) == 0
    pictures = sorted((out / "room_attention").glob("*.png"))
    assert pictures  # MTAN records one mask per task and attention level


def test_predict_errors(run, images, scenes, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG but not really")
    assert main(["predict", "--checkpoint", str(run), str(images / "room.png"), str(bad), "--out",
                 str(tmp_path / "o")]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "missing.jpg"), "--out", str(tmp_path)]) == 2
    assert "missing.jpg does not exist" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(run), str(images / "room.png"), "--out", str(tmp_path),
                 "--size", "40x40"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    single = tmp_path / "single"
    assert main(["train", "--data-root", str(scenes), "--model", "single", "--tasks", "depth",
                 "--out", str(single), *TINY]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(single), str(images / "room.png"), "--out", str(tmp_path / "s"),
                 "--attention"]) == 2
    assert "model 'single' has no attention to show" in capsys.readouterr().err


def test_trivial_predictors_by_hand():
    import math

    import torch

    from densemtl.engine.baselines import evaluate_trivial, trivial_predictions
    from densemtl.tasks import make_tasks

    tasks = make_tasks(["semantic", "depth", "normal"], num_classes=3)

    def sample(labels, depth, normals):
        n = torch.zeros(3, 2, 2)
        for (i, j), v in normals.items():
            n[:, i, j] = torch.tensor(v)
        return {"image": torch.zeros(3, 2, 2), "semantic": torch.tensor(labels),
                "depth": torch.tensor([depth], dtype=torch.float32), "normal": n}

    train = [sample([[0, 1], [1, -1]], [[1.0, 0.0], [3.0, 2.0]], {(0, 0): (0, 0, -1), (0, 1): (0, 0, -1),
                                                                   (1, 0): (0, 0, -1)}),
             sample([[2, 1], [-1, -1]], [[0.0, 0.0], [0.0, 4.0]], {(1, 1): (1, 0, 0)})]
    constants = trivial_predictions(train, tasks, batch_size=1)
    assert int(constants["semantic"]) == 1  # class counts 0:1, 1:3, 2:1
    assert float(constants["depth"]) == pytest.approx(2.5)  # (1 + 3 + 2 + 4) / 4 valid pixels
    expected_normal = torch.tensor([1.0, 0.0, -3.0]) / math.sqrt(10.0)
    assert torch.allclose(constants["normal"], expected_normal)

    val = [sample([[1, 1], [0, -1]], [[2.0, 3.0], [0.0, 5.0]], {(0, 0): (1, 0, 0)})]
    loader = torch.utils.data.DataLoader(val, batch_size=1)
    metrics = evaluate_trivial(constants, loader, tasks)
    assert metrics["semantic"]["pixel_acc"] == pytest.approx(2 / 3)
    assert metrics["semantic"]["miou"] == pytest.approx((0 + 2 / 3) / 2)  # classes 0 and 1 occur
    assert metrics["depth"]["abs_err"] == pytest.approx((0.5 + 0.5 + 2.5) / 3)
    angle = math.degrees(math.acos(1 / math.sqrt(10.0)))  # between (1,0,-3)/sqrt(10) and (1,0,0)
    assert metrics["normal"]["mean"] == pytest.approx(angle, abs=1e-3)
