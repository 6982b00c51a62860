"""Procedural indoor scenes: layout on disk, exact geometry, conventions shared with real NYUv2,
realism of the invalid masks, determinism, atomic writes and the default-dataset cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from densemtl.cli import main
from densemtl.data import build_dataset, dataset_info
from densemtl.data import synthetic
from densemtl.data.synthetic import (
    FLOOR, CEILING, WINDOW, ensure_default_dataset, generate_dataset, generate_scene, layout_scene, render,
    scene_rng,
)
from densemtl.errors import UserError

SIZE = (48, 64)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate_dataset(out, train=6, val=3, size=SIZE, seed=3)
    return out


def _scene(i: int, size=SIZE, seed: int = 0, split: str = "train"):
    rng = scene_rng(seed, split, i)
    scene = layout_scene(rng, size)
    return scene, render(scene, rng)


def _depth_normals(depth: np.ndarray, cam) -> np.ndarray:
    """Normals from depth by back-projection and central differences, facing the camera."""
    h, w = depth.shape
    x = (np.arange(w) + 0.5 - cam.cx) / cam.fx
    y = (np.arange(h) + 0.5 - cam.cy) / cam.fy
    p = np.stack([x[None, :] * depth, y[:, None] * depth, depth], -1)
    n = -np.cross(p[1:-1, 2:] - p[1:-1, :-2], p[2:, 1:-1] - p[:-2, 1:-1])
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def test_written_in_nyuv2_layout_and_read_by_both_names(small):
    meta = json.loads((small / "meta.json").read_text())
    assert meta["version"] == synthetic.GENERATOR_VERSION and meta["seed"] == 3
    assert meta["size"] == list(SIZE) and meta["counts"] == {"train": 6, "val": 3}
    assert meta["classes"] == list(dataset_info("nyuv2").class_names)
    for name in ("nyuv2", "synthetic"):
        ds = build_dataset(name, small, "train")
        assert len(ds) == 6 and ds.info.variant == name
        s = ds[5]
        assert s["image"].shape == (3, *SIZE) and s["semantic"].shape == SIZE
        assert s["depth"].shape == (1, *SIZE) and s["normal"].shape == (3, *SIZE)
    report = build_dataset("synthetic", small, "val").check()  # every sample passes validation
    assert report["samples"] == 3 and report["normal"]["max_unit_deviation"] < 1e-5
    raw = np.load(small / "train/label/0.npy")
    assert raw.dtype == np.float32 and raw.shape == SIZE
    assert np.load(small / "train/depth/0.npy").shape == (*SIZE, 1)


def test_normals_are_exactly_the_geometry_of_the_depth():
    # Where a 3x3 stencil lies on one flat surface, normals from depth match the stored ones.
    errors = []
    for i in range(3):
        scene, out = _scene(i, size=(96, 128))
        depth, normal = out["depth"][..., 0], out["normal"][1:-1, 1:-1]
        n = _depth_normals(depth, scene.camera)
        # Flat stencil: no hole, and 1/depth (affine in pixel coordinates on a plane) has zero
        # second differences along both axes.
        inv = np.where(depth > 0, 1 / np.maximum(depth, 1e-9), np.nan)
        d2x = np.abs(inv[1:-1, 2:] - 2 * inv[1:-1, 1:-1] + inv[1:-1, :-2])
        d2y = np.abs(inv[2:, 1:-1] - 2 * inv[1:-1, 1:-1] + inv[:-2, 1:-1])
        with np.errstate(invalid="ignore"):
            flat = (d2x < 1e-4 * inv[1:-1, 1:-1]) & (d2y < 1e-4 * inv[1:-1, 1:-1])
        assert flat.mean() > 0.7
        cos = np.clip((n * normal).sum(-1)[flat], -1, 1)
        errors.append(np.degrees(np.arccos(cos)))
    errors = np.concatenate(errors)
    assert np.percentile(errors, 99) < 1.0


def test_depth_is_distance_along_the_optical_axis():
    # Independent check on floor pixels: intersect the pixel's ray with the plane y = 0 by hand.
    scene, out = _scene(1)
    cam = scene.camera
    label, depth = out["label"], out["depth"][..., 0]
    ys, xs = np.nonzero((label == FLOOR) & (depth > 0))
    assert len(ys) > 50
    for y, x in list(zip(ys, xs))[:: max(len(ys) // 20, 1)]:
        ray = cam.rot @ np.array([(x + 0.5 - cam.cx) / cam.fx, (y + 0.5 - cam.cy) / cam.fy, 1.0])
        t = -cam.origin[1] / ray[1]  # camera-z = 1 along `ray`, so t is the depth
        hit = cam.origin + t * ray
        if 0 < hit[0] < scene.room[0] and 0 < hit[2] < scene.room[2]:
            assert depth[y, x] == pytest.approx(t, rel=1e-5)


def test_normal_conventions_match_real_nyuv2(nyuv2_mini):
    # Real data (camera frame x right, y down, z forward): floor faces (0, -1, 0).
    real = build_dataset("nyuv2", nyuv2_mini, "train")[0]
    real_floor = (real["semantic"] == FLOOR) & (real["normal"] != 0).any(0)
    assert real["normal"][1][real_floor].median() < -0.9
    floor_y, ceiling_y = [], []
    for i in range(6):
        scene, out = _scene(i)
        n, label = out["normal"], out["label"]
        valid = (n != 0).any(-1)
        floor_y.append(n[..., 1][(label == FLOOR) & valid])
        ceiling_y.append(n[..., 1][(label == CEILING) & valid])
        # every normal faces the camera: n . (pixel ray) < 0
        cam = scene.camera
        x = (np.arange(SIZE[1]) + 0.5 - cam.cx) / cam.fx
        y = (np.arange(SIZE[0]) + 0.5 - cam.cy) / cam.fy
        facing = n[..., 0] * x[None, :] + n[..., 1] * y[:, None] + n[..., 2]
        assert (facing[valid] < 1e-6).all()
    assert np.median(np.concatenate(floor_y)) < -0.9
    assert np.median(np.concatenate(ceiling_y)) > 0.9


def test_realistic_labels_and_sensor_holes():
    labels, depth_zero, normal_zero, window_px, window_holes = [], 0, 0, 0, 0
    n = 60
    for i in range(n):
        out = generate_scene(0, "train", i, (32, 48))
        lab, d, nrm = out["label"], out["depth"][..., 0], out["normal"]
        labels.append(lab)
        zero_n = (nrm == 0).all(-1)
        assert np.array_equal(zero_n, d == 0)  # holes are holes in both
        depth_zero += (d == 0).mean() / n
        window_px += (lab == WINDOW).sum()
        window_holes += ((lab == WINDOW) & (d == 0)).sum()
        assert set(np.unique(lab)) <= set(range(-1, 13))
    labels = np.stack(labels)
    assert set(np.unique(labels)) == set(range(-1, 13))  # all 13 classes + unlabelled occur
    assert 0.01 < (labels == -1).mean() < 0.2
    assert 0.01 < depth_zero < 0.2
    assert window_px > 0 and window_holes == window_px  # glass gives no depth
    for c in range(13):  # no class dominates, none is negligible
        assert 0.002 < (labels == c).mean() < 0.6


def test_deterministic_and_seed_dependent(tmp_path, small):
    a, b = generate_scene(3, "train", 2, SIZE), generate_scene(3, "train", 2, SIZE)
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], generate_scene(4, "train", 2, SIZE)["image"])
    assert not np.array_equal(a["image"], generate_scene(3, "val", 2, SIZE)["image"])
    again = tmp_path / "again"
    generate_dataset(again, train=6, val=3, size=SIZE, seed=3)
    files = sorted(p.relative_to(small) for p in small.rglob("*.npy"))
    assert len(files) == 36
    assert all((small / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(seed, split, index, size):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return generate_scene(seed, split, index, size)

    monkeypatch.setattr(synthetic, "generate_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "out", train=5, val=0, size=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_bad_options(tmp_path):
    with pytest.raises(UserError, match="--train/--val"):
        generate_dataset(tmp_path / "a", train=0, val=0)
    with pytest.raises(UserError, match="--size must be at least 8x8"):
        generate_dataset(tmp_path / "a", train=1, val=0, size=(4, 64))
    generate_dataset(tmp_path / "b", train=1, val=0, size=(16, 16))
    with pytest.raises(UserError, match="already exists"):
        generate_dataset(tmp_path / "b", train=1, val=0, size=(16, 16))


def test_default_dataset_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSEMTL_CACHE", str(tmp_path / "cache"))
    path = ensure_default_dataset(train=2, val=1, size=(16, 32), progress=False)
    assert path.parent == tmp_path / "cache" and len(build_dataset("synthetic", path, "val")) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "generate_dataset", must_not_run)
    assert ensure_default_dataset(train=2, val=1, size=(16, 32), progress=False) == path
    # root=None: the synthetic dataset builds its default
    monkeypatch.setattr(synthetic, "ensure_default_dataset", lambda: path)
    assert build_dataset("synthetic", None, "train").root == path


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--size", "32x32",
                 "--seed", "5"]) == 0
    assert "wrote 2 train + 1 val scenes (32x32, seed 5)" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["seed"] == 5
    assert main(["data", "synth", "--out", str(out), "--train", "2", "--size", "32x32"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_camera_is_a_rotation():
    scene, _ = _scene(0)
    rot = scene.camera.rot
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # A horizontal field of view between 55 and 65 degrees, like a Kinect.
    fov = 2 * math.degrees(math.atan(SIZE[1] / 2 / scene.camera.fx))
    assert 55 <= fov <= 65
