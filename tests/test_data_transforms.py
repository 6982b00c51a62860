"""Task-aware augmentation on real NYUv2 frames: geometry after flipping, exact nearest-neighbour
resampling of labels/depth/invalid masks against a numpy reference, depth scaling, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densemtl.data import build_dataset, dataset_info
from densemtl.data.transforms import Augment, CropParams, Resize, hflip, make_augment, scale_crop
from densemtl.errors import UserError

# NYU Kinect RGB intrinsics (PROVENANCE.md) at 480x640, scaled to the fixture's 288x384.
S = 288 / 480
FX, FY, CX, CY = 518.858 * S, 519.470 * S, 325.582 * S, 253.736 * S


def _depth_normals(depth: np.ndarray, cx: float, step: int = 3) -> np.ndarray:
    """Normals from depth: back-project, central differences ``step`` px apart, face the camera."""
    h, w = depth.shape
    x = (np.arange(w) - cx) / FX
    y = (np.arange(h) - CY) / FY
    p = np.stack([x[None, :] * depth, y[:, None] * depth, depth], -1)
    k = step
    n = -np.cross(p[k:-k, 2 * k:] - p[k:-k, :-2 * k], p[2 * k:, k:-k] - p[:-2 * k, k:-k])
    valid = (depth[k:-k, 2 * k:] > 0) & (depth[k:-k, :-2 * k] > 0) & (depth[2 * k:, k:-k] > 0) & (depth[:-2 * k, k:-k] > 0)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12), valid


def _agreement(sample: dict, cx: float, step: int = 3) -> float:
    """Median angle (degrees) between the normal map and the normals of the depth map."""
    depth = sample["depth"][0].numpy()
    normal = sample["normal"].permute(1, 2, 0).numpy()
    n, valid = _depth_normals(depth, cx, step)
    gt = normal[step:-step, step:-step]
    valid &= (gt != 0).any(-1)
    cos = np.clip((n * gt).sum(-1)[valid], -1, 1)
    return float(np.median(np.degrees(np.arccos(cos))))


@pytest.fixture(scope="module")
def frames(nyuv2_mini):
    """train/0 (dense depth, normals from depth) and val/2 (raw depth with holes, GT normals)."""
    return [build_dataset("nyuv2", nyuv2_mini, "train")[0], build_dataset("nyuv2", nyuv2_mini, "val")[2]]


def test_flip_keeps_normals_consistent_with_depth(frames):
    w = 384
    for sample in frames:
        before = _agreement(sample, CX)
        flipped = hflip(sample)
        after = _agreement(flipped, w - CX)  # the principal point mirrors too
        assert before < 15
        assert after == pytest.approx(before, abs=0.3)
        # Without negating x the flipped normals no longer match the flipped geometry.
        wrong = dict(flipped, normal=sample["normal"].flip(-1))
        assert _agreement(wrong, w - CX) > before + 5


def test_flip_is_a_mirror(frames):
    s = frames[1]
    f = hflip(s)
    np.testing.assert_array_equal(f["semantic"].numpy(), np.fliplr(s["semantic"].numpy()))
    np.testing.assert_array_equal(f["depth"].numpy(), s["depth"].numpy()[..., ::-1])
    np.testing.assert_array_equal(f["normal"][1:].numpy(), s["normal"][1:].numpy()[..., ::-1])
    np.testing.assert_array_equal(f["normal"][0].numpy(), -s["normal"][0].numpy()[..., ::-1])
    assert f["index"] == s["index"]
    twice = hflip(f)
    for key in ("image", "semantic", "depth", "normal"):
        assert torch.equal(twice[key], s[key])


def _nearest_rows_cols(p: CropParams, h: int, w: int):
    rows = p.top + np.floor((np.arange(h) + 0.5) * p.height / h).astype(int)
    cols = p.left + np.floor((np.arange(w) + 0.5) * p.width / w).astype(int)
    return rows[:, None], cols[None, :]


def test_scale_crop_matches_numpy_nearest_reference(frames):
    s = frames[1]
    p = CropParams(scale=1.5, top=40, left=70, height=192, width=256)
    out = scale_crop(s, p)
    r, c = _nearest_rows_cols(p, 288, 384)
    label = s["semantic"].numpy()
    depth = s["depth"][0].numpy()
    normal = s["normal"].numpy()
    np.testing.assert_array_equal(out["semantic"].numpy(), label[r, c])  # -1 stays where it was
    assert out["semantic"].dtype == torch.int64
    np.testing.assert_allclose(out["depth"][0].numpy(), depth[r, c] / 1.5, rtol=1e-6)
    assert np.array_equal(out["depth"][0].numpy() == 0, depth[r, c] == 0)  # holes preserved exactly
    ref_zero = (normal[:, r, c] == 0).all(0)
    got = out["normal"].numpy()
    assert np.array_equal((got == 0).all(0), ref_zero)
    length = np.linalg.norm(got, axis=0)[~ref_zero]
    assert np.abs(length - 1).max() < 1e-5  # re-normalised
    cos = np.clip((got * normal[:, r, c]).sum(0)[~ref_zero], -1, 1)
    assert np.median(np.degrees(np.arccos(cos))) < 2  # bilinear is close to the nearest sample
    img = out["image"].numpy()
    assert img.min() >= 0 and img.max() <= 1
    crop = s["image"].numpy()[:, 40:232, 70:326]
    np.testing.assert_allclose(img.mean(axis=(1, 2)), crop.mean(axis=(1, 2)), atol=0.01)


def test_disparity_is_multiplied_and_unit_scale_is_identity(frames):
    s = frames[0]
    p = CropParams(scale=1.2, top=10, left=20, height=240, width=320)
    r, c = _nearest_rows_cols(p, 288, 384)
    out = scale_crop({"image": s["image"], "depth": s["depth"]}, p, depth_kind="disparity")
    assert set(out) == {"image", "depth"}
    np.testing.assert_allclose(out["depth"][0].numpy(), s["depth"][0].numpy()[r, c] * 1.2, rtol=1e-6)
    same = scale_crop(s, CropParams(1.0, 0, 0, 288, 384))
    for key in ("image", "semantic", "depth", "normal"):
        assert torch.equal(same[key], s[key])


def test_resize_to_a_training_size(frames):
    s = frames[1]
    out = Resize((144, 192))(s)
    # Halving at pixel centres samples odd rows and columns; depth values are not rescaled.
    np.testing.assert_array_equal(out["semantic"].numpy(), s["semantic"].numpy()[1::2, 1::2])
    np.testing.assert_array_equal(out["depth"].numpy(), s["depth"].numpy()[:, 1::2, 1::2])
    n = out["normal"]
    zero = (n == 0).all(0)
    assert torch.equal(zero, (s["normal"][:, 1::2, 1::2] == 0).all(0))
    assert (n.norm(dim=0)[~zero] - 1).abs().max() < 1e-5
    assert out["image"].shape == (3, 144, 192) and out["index"] == s["index"]
    assert Resize((288, 384))(s) is s


def test_edge_maps_stay_binary(frames):
    label = frames[0]["semantic"]
    edge = torch.zeros(1, *label.shape)
    edge[0, :, 1:] = (label[:, 1:] != label[:, :-1]).float()
    p = CropParams(1.5, 0, 0, 192, 256)
    out = scale_crop({"edge": edge}, p)
    r, c = _nearest_rows_cols(p, 288, 384)
    np.testing.assert_array_equal(out["edge"][0].numpy(), edge[0].numpy()[r, c])
    assert set(np.unique(hflip(out)["edge"].numpy())) == {0.0, 1.0}


def test_augment_is_deterministic_and_samples_the_spec(frames):
    s = frames[1]
    a = Augment(generator=torch.Generator().manual_seed(7))(s)
    b = Augment(generator=torch.Generator().manual_seed(7))(s)
    for key in ("image", "semantic", "depth", "normal"):
        assert torch.equal(a[key], b[key]) and a[key].shape == s[key].shape
    torch.manual_seed(3)
    c = Augment()(s)
    torch.manual_seed(3)
    assert torch.equal(Augment()(s)["depth"], c["depth"])
    aug = Augment(generator=torch.Generator().manual_seed(0))
    crops = [aug.sample_crop(288, 384) for _ in range(300)]
    assert {p.scale for p in crops} == {1.0, 1.2, 1.5}
    for p in crops:
        assert (p.height, p.width) == (int(288 / p.scale), int(384 / p.scale))
        assert 0 <= p.top <= 288 - p.height and 0 <= p.left <= 384 - p.width
    flips = sum(aug.sample_flip() for _ in range(400))
    assert 160 < flips < 240


def test_dataset_applies_the_transform(nyuv2_mini):
    ds = build_dataset("nyuv2", nyuv2_mini, "val", transform=make_augment(dataset_info("nyuv2")))
    s = ds[2]
    assert s["image"].shape == (3, 288, 384) and s["semantic"].shape == (288, 384) and s["index"] == 2
    assert make_augment(dataset_info("cityscapes")).depth_kind == "disparity"


def test_bad_settings():
    with pytest.raises(UserError, match="scales must be >= 1"):
        Augment(scales=(0.5, 1.0))
    with pytest.raises(UserError, match="flip probability"):
        Augment(flip_p=2)
    with pytest.raises(UserError, match="depth_kind"):
        Augment(depth_kind="inverse")
    with pytest.raises(ValueError, match="sample key 'mask'"):
        hflip({"mask": torch.zeros(1, 4, 4)})
