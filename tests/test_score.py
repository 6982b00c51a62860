"""`densemtl score` on the real NYUv2 frames: perfect, perturbed (numpy reference) and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from densemtl.cli import main
from densemtl.commands.score import score
from densemtl.errors import UserError
from densemtl.metrics import ANGLE_BIN_DEG

KEYS = {"semantic.miou", "semantic.pixel_acc", "depth.abs_err", "depth.rel_err", "depth.rmse",
        "normal.mean", "normal.median", "normal.within_11_25", "normal.within_22_5", "normal.within_30"}
N = 4  # val frames in nyuv2_mini


def gt_arrays(root):
    val = root / "val"
    load = lambda f: [np.load(val / f / f"{i}.npy") for i in range(N)]  # noqa: E731
    return load("label"), load("depth"), load("normal")


def run_json(capsys, *args) -> dict:
    assert main(["score", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------ numpy reference, written independently
def np_seg(preds, gts, c=13):
    p = np.concatenate([x.ravel() for x in preds]).astype(int)
    g = np.concatenate([x.ravel() for x in gts]).astype(int)
    p, g = p[g >= 0], g[g >= 0]
    conf = np.zeros((c, c))
    np.add.at(conf, (g, p), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return {"miou": float(np.mean(tp[union > 0] / union[union > 0])), "pixel_acc": float(tp.sum() / conf.sum())}


def np_depth(preds, gts):
    p = np.concatenate([x.ravel() for x in preds]).astype(np.float64)
    g = np.concatenate([x.ravel() for x in gts]).astype(np.float64)
    p, g = p[g != 0], g[g != 0]
    return {"abs_err": np.mean(np.abs(p - g)), "rel_err": np.mean(np.abs(p - g) / g),
            "rmse": np.sqrt(np.mean((p - g) ** 2))}


def np_normal(preds, gts):
    p = np.concatenate([x.reshape(-1, 3) for x in preds]).astype(np.float64)
    g = np.concatenate([x.reshape(-1, 3) for x in gts]).astype(np.float64)
    keep = np.abs(g).sum(1) > 0
    p, g = p[keep], g[keep]
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    a = np.degrees(np.arccos(np.clip((p * g).sum(1), -1, 1)))
    return {"mean": a.mean(), "median": np.median(a), "within_11_25": np.mean(a < 11.25),
            "within_22_5": np.mean(a < 22.5), "within_30": np.mean(a < 30)}


@pytest.fixture(scope="module")
def perturbed(nyuv2_mini, tmp_path_factory):
    """A prediction folder that is a noisy copy of the val ground truth (depth saved as HxW)."""
    rng = np.random.default_rng(0)
    labels, depths, normals = gt_arrays(nyuv2_mini)
    root = tmp_path_factory.mktemp("pred")
    preds = {"label": [], "depth": [], "normal": []}
    for i in range(N):
        lab = np.maximum(labels[i], 0).astype(np.int64)
        flip = rng.random(lab.shape) < 0.25
        lab[flip] = rng.integers(0, 13, int(flip.sum()))
        dep = (depths[i][..., 0] * 1.1 + rng.normal(0, 0.1 * (i + 1), depths[i].shape[:2])).astype(np.float32)
        nor = normals[i] + rng.normal(0, 0.35, normals[i].shape).astype(np.float32)
        nor /= np.linalg.norm(nor, axis=-1, keepdims=True)
        for key, arr in (("label", lab), ("depth", dep), ("normal", nor)):
            (root / key).mkdir(exist_ok=True)
            np.save(root / key / f"{i}.npy", arr)
            preds[key].append(arr)
    return root, preds, (labels, depths, normals)


def copy_gt(nyuv2_mini, dest, folders=("label", "depth", "normal")):
    for f in folders:
        shutil.copytree(nyuv2_mini / "val" / f, dest / f)
    return dest


def test_ground_truth_against_itself_is_perfect(nyuv2_mini, tmp_path, capsys):
    pred = copy_gt(nyuv2_mini, tmp_path / "pred")
    for convention in ("dataset", "mtan"):
        out = run_json(capsys, "--pred", pred, "--data-root", nyuv2_mini, "--convention", convention)
        assert set(out) == KEYS
        assert out["semantic.miou"] == 1.0 and out["semantic.pixel_acc"] == 1.0
        assert out["depth.abs_err"] == 0.0 and out["depth.rel_err"] == 0.0 and out["depth.rmse"] == 0.0
        assert out["normal.mean"] < 1e-5 and out["normal.median"] < 1e-5
        assert out["normal.within_11_25"] == out["normal.within_22_5"] == out["normal.within_30"] == 1.0


def test_perturbed_predictions_match_numpy(perturbed, nyuv2_mini, capsys):
    root, preds, (labels, depths, normals) = perturbed
    out = run_json(capsys, "--pred", root, "--data-root", nyuv2_mini)
    want = {**{f"semantic.{k}": v for k, v in np_seg(preds["label"], labels).items()},
            **{f"depth.{k}": v for k, v in np_depth(preds["depth"], depths).items()},
            **{f"normal.{k}": v for k, v in np_normal(preds["normal"], normals).items()}}
    assert set(out) == KEYS
    assert out.pop("normal.median") == pytest.approx(want.pop("normal.median"), abs=ANGLE_BIN_DEG)
    for k, v in want.items():
        assert out[k] == pytest.approx(v, rel=1e-6, abs=1e-12), k
    assert 0.3 < out["semantic.miou"] < 0.95  # a real, imperfect score


def test_mtan_convention_with_batch_size_two(perturbed, nyuv2_mini):
    root, preds, (labels, depths, normals) = perturbed
    got = score(root, nyuv2_mini, convention="mtan", batch_size=2)
    pairs = [(slice(0, 2)), (slice(2, 4))]
    for task, ref, p, g in (("depth", np_depth, preds["depth"], depths),
                            ("normal", np_normal, preds["normal"], normals)):
        per_batch = [ref(p[s], g[s]) for s in pairs]
        for metric in per_batch[0]:
            assert got[task][metric] == pytest.approx(np.mean([b[metric] for b in per_batch]), rel=1e-6), metric
    # segmentation: one confusion matrix in both conventions
    assert got["semantic"] == pytest.approx(np_seg(preds["label"], labels), rel=1e-12)
    # frames 2 and 3 have large depth holes and more noise: per-batch averaging gives their
    # fewer valid pixels the same weight as frames 0 and 1, so the two conventions differ
    dataset = score(root, nyuv2_mini, convention="dataset")
    assert got["depth"]["abs_err"] > dataset["depth"]["abs_err"] + 0.005
    assert score(root, nyuv2_mini, convention="mtan", batch_size=4)["depth"] == pytest.approx(dataset["depth"])


def test_any_subset_of_tasks(nyuv2_mini, tmp_path, capsys):
    pred = copy_gt(nyuv2_mini, tmp_path / "pred", ("depth",))
    assert set(run_json(capsys, "--pred", pred, "--data-root", nyuv2_mini)) == {
        "depth.abs_err", "depth.rel_err", "depth.rmse"}


def test_markdown_output(nyuv2_mini, tmp_path, capsys):
    pred = copy_gt(nyuv2_mini, tmp_path / "pred", ("label",))
    assert main(["score", "--pred", str(pred), "--data-root", str(nyuv2_mini)]) == 0
    text = capsys.readouterr().out
    assert "split val · metric convention dataset" in text
    assert "| semantic mIoU ↑ | semantic PixAcc ↑ |" in text and "100.00" in text


# ------------------------------------------------------------ bad input
def expect_error(capsys, *args) -> str:
    assert main(["score", *map(str, args)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_missing_folders(nyuv2_mini, tmp_path, capsys):
    err = expect_error(capsys, "--pred", tmp_path / "nope", "--data-root", nyuv2_mini)
    assert "prediction folder (--pred)" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = expect_error(capsys, "--pred", tmp_path / "empty", "--data-root", nyuv2_mini)
    assert "none of the folders label/, depth/, normal/" in err
    pred = copy_gt(nyuv2_mini, tmp_path / "pred", ("depth",))
    err = expect_error(capsys, "--pred", pred, "--data-root", nyuv2_mini, "--split", "test")
    assert "--split test" in err and "does not exist" in err


def test_missing_prediction_file_is_named(nyuv2_mini, tmp_path, capsys):
    pred = copy_gt(nyuv2_mini, tmp_path / "pred", ("normal",))
    (pred / "normal" / "2.npy").unlink()
    err = expect_error(capsys, "--pred", pred, "--data-root", nyuv2_mini)
    assert f"prediction file {pred / 'normal' / '2.npy'} is missing" in err


def test_shape_mismatch_names_file_and_both_shapes(nyuv2_mini, tmp_path, capsys):
    pred = copy_gt(nyuv2_mini, tmp_path / "pred", ("depth",))
    np.save(pred / "depth" / "1.npy", np.ones((144, 192, 1), np.float32))
    err = expect_error(capsys, "--pred", pred, "--data-root", nyuv2_mini)
    assert str(pred / "depth" / "1.npy") in err and "(144, 192)" in err and "(288, 384)" in err


def test_nan_and_bad_labels(nyuv2_mini, tmp_path, capsys):
    pred = copy_gt(nyuv2_mini, tmp_path / "pred", ("normal", "label"))
    bad = np.load(pred / "normal" / "0.npy")
    bad[5, 5] = np.nan
    np.save(pred / "normal" / "0.npy", bad)
    err = expect_error(capsys, "--pred", pred, "--data-root", nyuv2_mini)
    assert str(pred / "normal" / "0.npy") in err and "NaN" in err
    shutil.rmtree(pred / "normal")
    np.save(pred / "label" / "3.npy", np.full((288, 384), 13, np.int64))
    err = expect_error(capsys, "--pred", pred, "--data-root", nyuv2_mini)
    assert str(pred / "label" / "3.npy") in err and "expected 0..12" in err
    np.save(pred / "label" / "3.npy", np.full((288, 384), 1.5, np.float32))
    assert "non-integer" in expect_error(capsys, "--pred", pred, "--data-root", nyuv2_mini)
    (pred / "label" / "3.npy").write_bytes(b"not an array")
    assert "corrupt" in expect_error(capsys, "--pred", pred, "--data-root", nyuv2_mini)


def test_bad_options(nyuv2_mini, tmp_path):
    pred = copy_gt(nyuv2_mini, tmp_path / "pred", ("depth",))
    with pytest.raises(UserError, match="--batch-size must be >= 1"):
        score(pred, nyuv2_mini, batch_size=0)
    with pytest.raises(SystemExit):  # argparse rejects an unknown convention
        main(["score", "--pred", str(pred), "--data-root", str(nyuv2_mini), "--convention", "perimage"])
