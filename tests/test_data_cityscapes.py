"""CityScapes: label-id mappings on the real frame of cityscapes_sample, the converter and loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densemtl.cli import main
from densemtl.data import build_dataset, dataset_info
from densemtl.data.cityscapes import DISPARITY_SCALE, convert_cityscapes, labelids_to_classes
from densemtl.errors import UserError

FRAME = "frankfurt_000000_000294"


def _png(root: Path, kind: str) -> np.ndarray:
    folder = "leftImg8bit" if kind == "leftImg8bit" else "gtFine"
    suffix = kind if kind == "leftImg8bit" else f"gtFine_{kind}"
    return np.array(Image.open(root / folder / "val" / "frankfurt" / f"{FRAME}_{suffix}.png"))


def _train_ids(root: Path) -> np.ndarray:
    ids = _png(root, "labelTrainIds").astype(np.int64)
    return np.where(ids == 255, -1, ids)


# Independent table: labelId -> official trainId for the 19 evaluated classes; every other id -> -1.
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
            26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _classes19(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, -1)
    for label_id, train_id in TRAIN_ID.items():
        out[label_ids == label_id] = train_id
    return out


def _categories(label_ids: np.ndarray) -> np.ndarray:
    """Independent table: the Cityscapes categories as labelId ranges (void 0-6 -> -1)."""
    ranges = [(7, 10), (11, 16), (17, 20), (21, 22), (23, 23), (24, 25), (26, 33)]  # flat .. vehicle
    out = np.full(label_ids.shape, -1)
    for category, (lo, hi) in enumerate(ranges):
        out[(label_ids >= lo) & (label_ids <= hi)] = category
    return out


def test_label19_from_label_ids_matches_official_train_ids(cityscapes_sample):
    ids = _png(cityscapes_sample, "labelIds")
    got = labelids_to_classes(ids, 19)
    np.testing.assert_array_equal(got, _classes19(ids))
    assert set(np.unique(got)) == {-1, 0, 1, 2, 4, 5, 7, 8, 10, 11, 13}  # PROVENANCE.md
    # The fixture's labelTrainIds PNG was downsampled separately from its labelIds PNG, so the two
    # disagree on 77 of 32768 boundary pixels (e.g. labelId 7 "road" next to trainId 1
    # "sidewalk"). Away from boundaries they must agree pixel for pixel; every disagreement lies
    # within 2 pixels of a pixel that has the official class.
    official = _train_ids(cityscapes_sample)
    pad = np.pad(got, 2, constant_values=-99)
    windows = np.lib.stride_tricks.sliding_window_view(pad, (5, 5))
    interior = (windows == got[..., None, None]).all(axis=(-1, -2))
    assert interior.mean() > 0.7
    np.testing.assert_array_equal(got[interior], official[interior])
    bad = got != official
    assert bad.sum() == 77
    assert all(official[y, x] in windows[y, x] for y, x in np.argwhere(bad))
    # Per label id, the majority official train id is the mapped one (checks every id present).
    for label_id in np.unique(ids):
        values, counts = np.unique(official[ids == label_id], return_counts=True)
        assert values[counts.argmax()] == _train_id_of(label_id)


def _train_id_of(label_id: int) -> int:
    return TRAIN_ID.get(int(label_id), -1)


def test_label7_and_label2_against_independent_tables(cityscapes_sample):
    ids = _png(cityscapes_sample, "labelIds")
    cat = _categories(ids)
    np.testing.assert_array_equal(labelids_to_classes(ids, 7), cat)
    assert set(np.unique(cat)) == {-1, 0, 1, 2, 3, 4, 5, 6}  # every category is in this frame
    # 2 classes: human/vehicle foreground (1) vs the other categories (0), void -1.
    np.testing.assert_array_equal(labelids_to_classes(ids, 2), np.where(cat < 0, -1, (cat >= 5).astype(int)))
    # Every pixel valid in the 19-class set is valid in the 7-class set (not the converse: parking etc.)
    valid19 = labelids_to_classes(ids, 19) >= 0
    assert (cat[valid19] >= 0).all()
    with pytest.raises(UserError, match="num_classes must be one of"):
        labelids_to_classes(ids, 8)


def test_info_variants():
    for n, first in ((2, "background"), (7, "flat"), (19, "road")):
        info = dataset_info("cityscapes", num_classes=n)
        assert info.num_classes == n == len(info.class_names) and info.class_names[0] == first
        assert info.depth_kind == "disparity" and info.size == (128, 256) and info.variant == "cityscapes"
    assert dataset_info("cityscapes", num_classes=19).class_names[-1] == "bicycle"
    assert dataset_info("cityscapes").num_classes == 7


@pytest.fixture
def src(cityscapes_sample, tmp_path) -> Path:
    """A copy of the sample tree plus a made-up 16-bit disparity PNG with known values."""
    root = tmp_path / "cs_src"
    shutil.copytree(cityscapes_sample, root)
    disp = np.zeros((128, 256), np.uint16)
    disp[:, 128:] = 32257  # disparity (32257 - 1) / 256 = 126 px
    disp[:64, :64] = 1000
    folder = root / "disparity" / "val" / "frankfurt"
    folder.mkdir(parents=True)
    Image.fromarray(disp).save(folder / f"{FRAME}_disparity.png")
    return root


def test_converter_writes_mtan_layout(src, tmp_path):
    out = tmp_path / "cs"
    assert convert_cityscapes(src, out) == {"val": 1}
    val = out / "val"
    image = np.load(val / "image/0.npy")
    assert image.shape == (128, 256, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, _png(src, "leftImg8bit") / 255.0, atol=1e-6)
    np.testing.assert_array_equal(np.load(val / "label_19/0.npy"), _classes19(_png(src, "labelIds")))
    np.testing.assert_array_equal(np.load(val / "label_7/0.npy"), _categories(_png(src, "labelIds")))
    depth = np.load(val / "depth/0.npy")
    assert depth.shape == (128, 256, 1)
    assert depth[0, 200, 0] == pytest.approx(32257 / 65536) and depth[0, 0, 0] == pytest.approx(1000 / 65536)
    assert depth[100, 10, 0] == 0  # invalid stays 0
    assert 0.49 < depth.max() < 0.5  # SPEC 1.2: the layout's disparity reaches about 0.49
    assert "val,0," + FRAME in (out / "sources.csv").read_text()
    # The loader reads it back, any label variant.
    ds = build_dataset("cityscapes", out, "val", num_classes=19)
    s = ds[0]
    assert set(s) == {"image", "semantic", "depth", "index"}
    np.testing.assert_array_equal(s["semantic"].numpy(), _classes19(_png(src, "labelIds")))
    assert s["depth"].shape == (1, 128, 256) and float(s["depth"].max()) == pytest.approx(32257 / DISPARITY_SCALE)
    assert int(build_dataset("cityscapes", out, "val", num_classes=2)[0]["semantic"].max()) == 1


def test_converter_resizes_with_nearest_labels(src, tmp_path):
    out = tmp_path / "small"
    convert_cityscapes(src, out, size=(64, 128))
    # Nearest neighbour at pixel centres from 128x256 to 64x128 samples odd rows and columns.
    np.testing.assert_array_equal(np.load(out / "val/label_19/0.npy"), _classes19(_png(src, "labelIds"))[1::2, 1::2])
    assert np.load(out / "val/image/0.npy").shape == (64, 128, 3)
    assert np.load(out / "val/depth/0.npy")[0, 100, 0] == pytest.approx(32257 / 65536)


def test_converter_errors(src, tmp_path):
    with pytest.raises(UserError, match="Cityscapes source folder .* does not exist"):
        convert_cityscapes(tmp_path / "nothing", tmp_path / "o1")
    out = tmp_path / "o2"
    convert_cityscapes(src, out)
    with pytest.raises(UserError, match="already exists"):
        convert_cityscapes(src, out)
    convert_cityscapes(src, out, overwrite=True)
    (src / "disparity/val/frankfurt" / f"{FRAME}_disparity.png").unlink()
    with pytest.raises(UserError, match="missing disparity file"):
        convert_cityscapes(src, tmp_path / "o3")
    (src / "gtFine/val/frankfurt" / f"{FRAME}_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError, match="missing label file .*labelIds.png"):
        convert_cityscapes(src, tmp_path / "o4")
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()
    assert not list(tmp_path.glob(".o*partial*"))  # failed runs leave nothing behind


def test_loader_errors(src, tmp_path):
    out = tmp_path / "cs"
    convert_cityscapes(src, out)
    with pytest.raises(UserError, match="num_classes must be one of"):
        build_dataset("cityscapes", out, "val", num_classes=20)
    np.save(out / "val/label_7/0.npy", np.full((128, 256), 7, np.float32))
    with pytest.raises(UserError, match=r"label_7/0.npy has labels in \[7, 7\]; expected -1 .* 0..6"):
        build_dataset("cityscapes", out, "val")[0]


def test_cli_convert_and_check(src, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "cityscapes", "--src", str(src), "--out", str(out), "--size", "64x128"]) == 0
    assert "wrote 1 val frames" in capsys.readouterr().out
    assert main(["data", "check", "--data", "cityscapes", "--root", str(out), "-o", "num_classes=19"]) == 0
    assert "[val] cityscapes: 1 samples, size 64x128" in capsys.readouterr().out
    assert main(["data", "cityscapes", "--src", str(src), "--out", str(out), "--size", "64by128"]) == 2
    assert "--size expects HEIGHTxWIDTH" in capsys.readouterr().err
