"""NYUv2 loader on the real frames of nyuv2_mini, the dataset registry, and every bad-input case.

Expected values come from nyuv2_mini/PROVENANCE.md (measured when the fixture was made) and from
reading the .npy files directly with numpy, never from the loader itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from densemtl.cli import main
from densemtl.data import build_dataset, dataset_info, list_datasets
from densemtl.errors import UserError

KEYS = ("image", "label", "depth", "normal")


def test_registry_lists_and_describes_datasets():
    assert {"nyuv2", "cityscapes", "synthetic"} <= set(list_datasets())
    info = dataset_info("nyuv2")
    assert info.variant == "nyuv2" and info.num_classes == 13 and info.size == (288, 384)
    assert info.class_names[0] == "bed" and info.class_names[4] == "floor" and info.class_names[12] == "window"
    assert info.tasks == ("semantic", "depth", "normal") and info.depth_kind == "depth"
    with pytest.raises(UserError, match="unknown dataset 'nyu'.*nyuv2"):
        dataset_info("nyu")
    with pytest.raises(UserError, match="unknown option.*'foo'"):
        dataset_info("nyuv2", foo=1)


def test_real_frames_shapes_dtypes_and_raw_values(nyuv2_mini):
    ds = build_dataset("nyuv2", nyuv2_mini, "train")
    assert len(ds) == 8 and len(build_dataset("nyuv2", nyuv2_mini, "val")) == 4
    s = ds[3]
    assert set(s) == {"image", "semantic", "depth", "normal", "index"} and s["index"] == 3
    assert s["image"].shape == (3, 288, 384) and s["image"].dtype == torch.float32
    assert s["semantic"].shape == (288, 384) and s["semantic"].dtype == torch.int64
    assert s["depth"].shape == (1, 288, 384) and s["depth"].dtype == torch.float32
    assert s["normal"].shape == (3, 288, 384) and s["normal"].dtype == torch.float32
    # Channels first, values untouched: compare with the files read directly.
    root = nyuv2_mini / "train"
    np.testing.assert_array_equal(s["image"].numpy(), np.load(root / "image/3.npy").transpose(2, 0, 1))
    np.testing.assert_array_equal(s["semantic"].numpy(), np.load(root / "label/3.npy").astype(np.int64))
    np.testing.assert_array_equal(s["depth"].numpy()[0], np.load(root / "depth/3.npy")[..., 0])
    np.testing.assert_array_equal(s["normal"].numpy(), np.load(root / "normal/3.npy").transpose(2, 0, 1))


def test_real_frames_value_ranges_and_invalid_masks(nyuv2_mini):
    # PROVENANCE.md: image 0..1; labels -1..12 with bed (0) and tv (10) absent; 15.4 % unlabelled;
    # depth 0.894..9.955 m with 5.9 % zeros; 9.0 % zero normals; val/2 and val/3 have 34-37 % holes.
    samples = [s for split in ("train", "val") for s in build_dataset("nyuv2", nyuv2_mini, split)]
    labels = torch.stack([s["semantic"] for s in samples])
    depth = torch.stack([s["depth"] for s in samples])
    normal = torch.stack([s["normal"] for s in samples])
    images = torch.stack([s["image"] for s in samples])
    assert images.min() >= 0 and images.max() <= 1
    assert labels.min() == -1 and labels.max() == 12
    assert not (labels == 0).any() and not (labels == 10).any()
    assert (labels == -1).float().mean().item() == pytest.approx(0.154, abs=0.002)
    valid = depth[depth > 0]
    assert valid.min().item() == pytest.approx(0.894, abs=1e-3) and valid.max().item() == pytest.approx(9.955, abs=2e-3)
    assert (depth == 0).float().mean().item() == pytest.approx(0.059, abs=0.002)
    zero_n = (normal == 0).all(dim=1)
    assert zero_n.float().mean().item() == pytest.approx(0.090, abs=0.002)
    lengths = normal.norm(dim=1)[~zero_n]
    assert (lengths - 1).abs().max() < 1e-5
    holes = (depth[:, 0] == 0).flatten(1).float().mean(1)
    assert (holes[:8] == 0).all()  # train frames: in-painted dense depth
    assert 0.30 < holes[10] < 0.40 and 0.30 < holes[11] < 0.40  # val/2, val/3: raw depth
    derived = [i for i in range(12) if i != 10]  # all normals but val/2's (GT) come from depth
    assert zero_n[derived][depth[derived, 0] == 0].all()


def test_real_floor_normals_point_up_in_camera_frame(nyuv2_mini):
    # Camera frame x right, y down, z forward: a floor seen from above faces (0, -1, 0).
    s = build_dataset("nyuv2", nyuv2_mini, "train")[0]
    floor = (s["semantic"] == 4) & (s["normal"] != 0).any(0)
    assert floor.sum() > 1000
    assert s["normal"][1][floor].median() < -0.9


def test_task_subset_and_dataloader(nyuv2_mini):
    ds = build_dataset("nyuv2", nyuv2_mini, "val", tasks=["depth"])
    assert set(ds[0]) == {"image", "depth", "index"}
    batch = next(iter(DataLoader(build_dataset("nyuv2", nyuv2_mini, "val"), batch_size=2)))
    assert batch["image"].shape == (2, 3, 288, 384) and batch["semantic"].shape == (2, 288, 384)
    assert batch["index"].tolist() == [0, 1]
    with pytest.raises(UserError, match="unknown task.*'boundary'"):
        build_dataset("nyuv2", nyuv2_mini, "val", tasks=["boundary"])
    with pytest.raises(IndexError):
        ds[4]


def test_check_reports_counts_and_fractions(nyuv2_mini):
    r = build_dataset("nyuv2", nyuv2_mini, "val").check()
    assert r["samples"] == 4 and r["sizes"] == [[288, 384]] and r["variant"] == "nyuv2"
    # Independent count of labels in the four val frames.
    labels = np.stack([np.load(nyuv2_mini / f"val/label/{i}.npy") for i in range(4)])
    assert r["semantic"]["unlabelled_fraction"] == pytest.approx((labels == -1).mean())
    assert r["semantic"]["class_fraction"]["wall"] == pytest.approx((labels == 11).mean())
    assert r["depth"]["invalid_fraction"] > 0.15 and r["normal"]["max_unit_deviation"] < 1e-5


# -- bad input -----------------------------------------------------------------------------

@pytest.fixture
def copy2(nyuv2_mini, tmp_path) -> Path:
    """A two-frame copy of the real train split, to break in each test."""
    root = tmp_path / "nyu"
    for key in KEYS:
        (root / "train" / key).mkdir(parents=True)
        for i in range(2):
            shutil.copy(nyuv2_mini / "train" / key / f"{i}.npy", root / "train" / key / f"{i}.npy")
    return root


def _load(root: Path, index: int = 1):
    return build_dataset("nyuv2", root, "train")[index]


def test_copy_loads(copy2):
    assert _load(copy2)["image"].shape == (3, 288, 384)


def test_missing_root_split_and_folder(copy2, tmp_path):
    with pytest.raises(UserError, match=r"root .*nowhere does not exist"):
        build_dataset("nyuv2", tmp_path / "nowhere", "train")
    with pytest.raises(UserError, match=r"split folder .*val does not exist.*found: \['train'\]"):
        build_dataset("nyuv2", copy2, "val")
    shutil.rmtree(copy2 / "train" / "normal")
    with pytest.raises(UserError, match=r"train/normal does not exist"):
        build_dataset("nyuv2", copy2, "train")
    assert len(build_dataset("nyuv2", copy2, "train", tasks=["semantic", "depth"])) == 2
    with pytest.raises(UserError, match="needs a root folder"):
        build_dataset("nyuv2", None, "train")


def test_empty_folder_and_differing_counts(copy2):
    (copy2 / "train" / "depth" / "1.npy").unlink()
    with pytest.raises(UserError, match=r"differing numbers of files \(image/: 2, label/: 2, depth/: 1"):
        build_dataset("nyuv2", copy2, "train")
    (copy2 / "train" / "depth" / "0.npy").unlink()
    with pytest.raises(UserError, match=r"train/depth is empty"):
        build_dataset("nyuv2", copy2, "train")


def test_badly_named_files(copy2):
    shutil.move(copy2 / "train/label/1.npy", copy2 / "train/label/5.npy")
    with pytest.raises(UserError, match=r"train/label has 2 files but not 0.npy..1.npy \(missing e.g. 1.npy\)"):
        build_dataset("nyuv2", copy2, "train")
    (copy2 / "train/label/notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"unexpected file.*notes.txt"):
        build_dataset("nyuv2", copy2, "train")


@pytest.mark.parametrize("key, array, message", [
    ("depth", np.ones((100, 100, 1), np.float32), r"depth/1.npy is 100x100 but .*image/1.npy is 288x384"),
    ("image", np.ones((288, 384), np.float32), r"image/1.npy has shape \(288, 384\); expected H x W x 3"),
    ("normal", np.ones((288, 384, 2), np.float32), r"normal/1.npy has shape \(288, 384, 2\); expected H x W x 3"),
    ("label", np.ones((288, 384, 2), np.float32), r"label/1.npy has shape .*expected H x W"),
    ("depth", np.ones((1, 288, 384), np.float32), r"depth/1.npy has shape \(1, 288, 384\)"),
    ("label", np.full((288, 384), 13, np.float32), r"label/1.npy has labels in \[13, 13\]; expected -1 .* 0..12"),
    ("label", np.full((288, 384), -2, np.float32), r"labels in \[-2, -2\]"),
    ("label", np.full((288, 384), 2.5, np.float32), r"label/1.npy holds non-integer labels"),
    ("image", np.full((288, 384, 3), 255, np.float32), r"image/1.npy has values in \[255, 255\]; expected RGB in \[0, 1\]"),
    ("depth", -np.ones((288, 384, 1), np.float32), r"depth/1.npy has negative depth"),
    ("normal", np.full((288, 384, 3), 2.0, np.float32), r"normal/1.npy has components up to 2"),
    ("image", np.array("text"), r"image/1.npy holds <U4 data; expected a numeric array"),
])
def test_bad_arrays(copy2, key, array, message):
    np.save(copy2 / "train" / key / "1.npy", array)
    build_dataset("nyuv2", copy2, "train")[0]  # the other sample is fine
    with pytest.raises(UserError, match=message):
        _load(copy2)


@pytest.mark.parametrize("key", ["image", "depth", "normal", "label"])
def test_nan_and_inf(copy2, key):
    arr = np.load(copy2 / "train" / key / "1.npy")
    arr.reshape(-1)[[10, 20]] = [np.nan, np.inf]
    np.save(copy2 / "train" / key / "1.npy", arr)
    with pytest.raises(UserError, match=rf"{key}/1.npy contains 2 NaN/inf value"):
        _load(copy2)


def test_corrupt_truncated_and_pickled_files(copy2):
    path = copy2 / "train" / "depth" / "1.npy"
    path.write_bytes(b"this is not a numpy file")
    with pytest.raises(UserError, match=r"cannot read .*depth/1.npy as a .npy array"):
        _load(copy2)
    good = (copy2 / "train" / "depth" / "0.npy").read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=r"cannot read .*depth/1.npy"):
        _load(copy2)
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=r"cannot read .*depth/1.npy"):
        _load(copy2)


def test_check_scans_every_sample(copy2):
    ds = build_dataset("nyuv2", copy2, "train")  # folder-level checks pass
    np.save(copy2 / "train" / "label" / "1.npy", np.full((288, 384), 99, np.float32))
    with pytest.raises(UserError, match=r"label/1.npy has labels in \[99, 99\]"):
        ds.check()


def test_cli_check(nyuv2_mini, copy2, capsys):
    assert main(["data", "check", "--data", "nyuv2", "--root", str(nyuv2_mini)]) == 0
    out = capsys.readouterr().out
    assert "[train] nyuv2: 8 samples, size 288x384" in out and "[val] nyuv2: 4 samples" in out
    np.save(copy2 / "train" / "depth" / "0.npy", np.full((288, 384, 1), np.nan, np.float32))
    assert main(["data", "check", "--data", "nyuv2", "--root", str(copy2)]) == 2
    err = capsys.readouterr().err
    assert "depth/0.npy contains" in err and "Traceback" not in err
