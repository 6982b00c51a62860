"""NYUD-v2 (MTI-Net release layout) loader, on a fixture built from two real NYUv2 frames.

The frames (labelled-set 433 and 464) come from DrSleep/multi-task-refinenet (see the
PROVENANCE.md of the nyuv2_mini fixture): RGB, raw depth (uint16 / 5000 m, 0 = invalid), 40-class
labels (0..39, 255 = ignore) and, for frame 433, RGB-coded normals (c = v / 255 * 2 - 1,
n = (c_R, -c_B, c_G), grey 127 = invalid). They are rewritten here in the release's layout.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from densemtl.data import build_dataset, dataset_info
from densemtl.data.nyud import NYUD_CLASSES, NYUDDataset
from densemtl.edges import edges_from_segmentation
from densemtl.errors import UserError

FRAMES = {"000433": "ExpNYUD_three", "000464": "ExpNYUD_joint"}


def _decode_normals(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255.0 * 2.0 - 1.0
    n = np.stack([c[..., 0], -c[..., 2], c[..., 1]], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True).clip(1e-12)
    n[(rgb == 127).all(axis=-1)] = 0.0
    return n.astype(np.float32)


def _source(raw: Path, frame: str) -> dict[str, np.ndarray]:
    folder = raw / "DrSleep__multi-task-refinenet" / "examples" / FRAMES[frame]
    label = np.asarray(Image.open(folder / f"segm_gt_{frame}.png")).astype(np.int64)
    label[label == 255] = -1
    out = {
        "image": np.asarray(Image.open(folder / f"{frame}.png").convert("RGB")),
        "semantic": label,
        "depth": np.asarray(Image.open(folder / f"depth_gt_{frame}.png")).astype(np.float32) / 5000.0,
    }
    normals = folder / f"norm_gt_{frame}.png"
    out["normal"] = (_decode_normals(np.asarray(Image.open(normals).convert("RGB"))) if normals.exists()
                     else np.zeros((*label.shape, 3), np.float32))
    out["edge"] = edges_from_segmentation(torch.from_numpy(label))[0].numpy()
    return out


def write_release(root: Path, raw: Path, splits: dict[str, list[str]]) -> dict[str, dict[str, np.ndarray]]:
    """Write the frames in MTI-Net's NYUD layout under ``root``; return the source arrays."""
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    sources = {}
    for frame in FRAMES:
        src = sources[frame] = _source(raw, frame)
        Image.fromarray(src["image"]).save(root / "images" / f"{frame}.jpg", quality=95)
        Image.fromarray((src["semantic"] + 1).astype(np.uint8)).save(root / "segmentation" / f"{frame}.png")
        np.save(root / "depth" / f"{frame}.npy", src["depth"])
        np.save(root / "normals" / f"{frame}.npy", src["normal"])
        np.save(root / "edge" / f"{frame}.npy", src["edge"])
    for split, ids in splits.items():
        (root / "gt_sets" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return sources


@pytest.fixture(scope="module")
def release(nyuv2_mini, tmp_path_factory):
    root = tmp_path_factory.mktemp("NYUD_MT")
    sources = write_release(root, nyuv2_mini / "raw", {"train": ["000433"], "val": ["000464"]})
    return root, sources


def test_info_is_the_40_class_480x640_variant():
    info = dataset_info("nyud")
    assert (info.variant, info.num_classes, info.size) == ("nyud", 40, (480, 640))
    assert info.tasks == ("semantic", "depth", "normal", "edge")


def test_samples_match_the_real_frames(release):
    root, sources = release
    for split, frame in [("train", "000433"), ("val", "000464")]:
        ds = build_dataset("nyud", root, split)
        assert len(ds) == 1
        sample = ds[0]
        src = sources[frame]
        assert set(sample) == {"image", "semantic", "depth", "normal", "edge", "index"}
        assert sample["image"].shape == (3, 480, 640) and sample["image"].dtype == torch.float32
        jpeg_error = np.abs(sample["image"].permute(1, 2, 0).numpy() - src["image"] / 255.0).mean()
        assert jpeg_error < 0.02
        assert sample["semantic"].dtype == torch.int64
        assert torch.equal(sample["semantic"], torch.from_numpy(src["semantic"]))
        assert torch.equal(sample["depth"], torch.from_numpy(src["depth"])[None])
        assert torch.equal(sample["normal"], torch.from_numpy(src["normal"]).permute(2, 0, 1))
        assert torch.equal(sample["edge"], torch.from_numpy(src["edge"])[None])
    # frame 433: real normals on part of the image, raw depth with holes, some edges
    s = build_dataset("nyud", root, "train")[0]
    valid = s["normal"].norm(dim=0)
    assert 0.3 < float((valid > 0).float().mean()) < 0.9
    torch.testing.assert_close(valid[valid > 0], torch.ones(int((valid > 0).sum())))
    assert 0.2 < float((s["depth"] == 0).float().mean()) < 0.5
    assert 0.005 < float(s["edge"].mean()) < 0.2


def test_labels_agree_with_the_official_13_class_labels(release, nyuv2_mini):
    """Mapping our 40-class sample through NYUv2's class13Mapping gives the published 13-class
    label of the same frame (new_nyu_class13_0433.png), and the class names line up."""
    root, _ = release
    meta = nyuv2_mini / "raw" / "ankurhanda__nyuv2-meta-data"
    mapping = sio.loadmat(meta / "class13Mapping.mat")["classMapping13"][0, 0]
    to13 = mapping[0][0].astype(np.int64)  # 40-class (1-based) -> 13-class (1-based)
    names13 = [str(n[0]) for n in mapping[1][0]]
    for name40, name13 in [("wall", "wall"), ("floor", "floor"), ("bed", "bed"), ("chair", "chair"),
                           ("sofa", "sofa"), ("table", "table"), ("window", "window"), ("books", "books"),
                           ("ceiling", "ceiling"), ("picture", "picture"), ("television", "tv")]:
        assert names13[to13[NYUD_CLASSES.index(name40)] - 1] == name13
    with tarfile.open(meta / "test_labels_13" / "nyuv2_test_class13.tgz") as tf:
        official = np.asarray(Image.open(io.BytesIO(tf.extractfile("new_nyu_class13_0433.png").read())))
    ours = build_dataset("nyud", root, "train", tasks=["semantic"])[0]["semantic"].numpy()
    both = (ours >= 0) & (official > 0)
    assert both.mean() > 0.5
    np.testing.assert_array_equal(to13[ours[both]], official[both])


def test_task_subset_and_check(release):
    root, _ = release
    ds = build_dataset("nyud", root, "val", tasks=["edge", "depth"])
    assert set(ds[0]) == {"image", "edge", "depth", "index"}
    report = NYUDDataset(root, "train").check()
    assert report["samples"] == 1 and report["sizes"] == [[480, 640]]


def _small_release(root: Path) -> Path:
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(np.ones((4, 6), np.uint8)).save(root / "segmentation" / "a.png")
    np.save(root / "depth" / "a.npy", np.ones((4, 6), np.float32))
    np.save(root / "normals" / "a.npy", np.zeros((4, 6, 3), np.float32))
    np.save(root / "edge" / "a.npy", np.zeros((4, 6), np.float32))
    (root / "gt_sets" / "train.txt").write_text("a\n")
    return root


def test_user_errors_name_the_file(tmp_path):
    root = _small_release(tmp_path / "r")
    assert build_dataset("nyud", root, "train")[0]["semantic"].unique().tolist() == [0]
    with pytest.raises(UserError, match="val.txt"):
        build_dataset("nyud", root, "val")
    (root / "gt_sets" / "train.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match=r"b\.jpg"):
        build_dataset("nyud", root, "train")
    (root / "gt_sets" / "train.txt").write_text("a\n")
    Image.fromarray(np.full((4, 6), 41, np.uint8)).save(root / "segmentation" / "a.png")
    with pytest.raises(UserError, match="segmentation/a.png has label 41"):
        build_dataset("nyud", root, "train")[0]
    Image.fromarray(np.ones((4, 6), np.uint8)).save(root / "segmentation" / "a.png")
    np.save(root / "edge" / "a.npy", np.zeros((5, 6), np.float32))
    with pytest.raises(UserError, match="same height and width"):
        build_dataset("nyud", root, "train")[0]
    with pytest.raises(UserError, match="root"):
        build_dataset("nyud", None, "train")
