"""The derived ``edge`` task: boundaries computed from the labels of NYUv2-layout datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densemtl.cli import main
from densemtl.data import build_dataset, dataset_info
from densemtl.data.synthetic import generate_dataset
from densemtl.data.transforms import Augment
from densemtl.errors import UserError


def _boundaries_by_hand(label: np.ndarray) -> np.ndarray:
    """Independent loop version: a pixel is an edge when its right or lower neighbour differs
    and both are labelled."""
    h, w = label.shape
    out = np.zeros((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((1, 0), (0, 1)):
                yy, xx = y + dy, x + dx
                if yy < h and xx < w and label[y, x] >= 0 and label[yy, xx] >= 0 and label[y, x] != label[yy, xx]:
                    out[y, x] = 1
    return out


def test_edge_is_optional_not_default():
    info = dataset_info("nyuv2")
    assert "edge" not in info.tasks and "edge" in info.available_tasks
    assert "edge" in dataset_info("synthetic").available_tasks


def test_real_frames_edges_match_the_labels(nyuv2_mini):
    with_labels = build_dataset("nyuv2", nyuv2_mini, "val", tasks=["semantic", "edge"])
    only_edge = build_dataset("nyuv2", nyuv2_mini, "val", tasks=["edge"])
    sample, alone = with_labels[2], only_edge[2]
    assert set(alone) == {"image", "edge", "index"}
    assert sample["edge"].shape == (1, 288, 384) and sample["edge"].dtype == torch.float32
    label = sample["semantic"].numpy()
    expected = _boundaries_by_hand(label[:60, :80])  # a corner, by hand (the loop is slow)
    np.testing.assert_array_equal(sample["edge"][0, :60, :80].numpy(), expected)
    assert torch.equal(alone["edge"], sample["edge"])
    frac = float(sample["edge"].mean())
    assert 0.005 < frac < 0.2  # real indoor labels: thin boundaries, a few percent of pixels


def test_edges_survive_augmentation(nyuv2_mini):
    aug = Augment(generator=torch.Generator().manual_seed(3))
    ds = build_dataset("nyuv2", nyuv2_mini, "train", tasks=["semantic", "edge"], transform=aug)
    s = ds[0]
    assert s["edge"].shape == (1, 288, 384)
    assert set(torch.unique(s["edge"]).tolist()) <= {0.0, 1.0}


def test_unknown_task_lists_the_derived_one(nyuv2_mini):
    with pytest.raises(UserError, match="edge"):
        build_dataset("nyuv2", nyuv2_mini, "val", tasks=["boundary"])


def test_train_with_edge_on_synthetic_scenes(tmp_path):
    root = tmp_path / "scenes"
    generate_dataset(root, 4, 2, (32, 32), seed=1, progress=False)
    out = tmp_path / "run"
    code = main(["train", "--data", "synthetic", "--data-root", str(root), "--size", "32x32",
                 "--tasks", "semantic,edge", "--model", "mtan", "--width", "0.0625", "--epochs", "1",
                 "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    import json
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["metrics"]["edge"]["odsf"] <= 1.0
