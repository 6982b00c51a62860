"""HRNet-W18-small-v2 backbone: shapes, parameter count, loading HRNet-format weights."""

from __future__ import annotations

import pytest
import torch

from densemtl.errors import UserError
from densemtl.models.backbones import MultiScaleBackbone
from densemtl.models.backbones.hrnet import HRNet


def _expected_hrnet_w18_small_v2_params() -> int:
    """Count from the published configuration (conv weights, BN weight + bias, no conv bias)."""
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    basic = lambda c: 2 * (conv(c, c, 3) + bn(c))  # noqa: E731

    total = conv(3, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64)  # stem
    # stage 1: two bottlenecks 64 -> 256, the first with a projection shortcut
    bottleneck = lambda cin: conv(cin, 64, 1) + bn(64) + conv(64, 64, 3) + bn(64) + conv(64, 256, 1) + bn(256)  # noqa: E731
    total += bottleneck(64) + conv(64, 256, 1) + bn(256) + bottleneck(256)

    def module(chs):
        n = sum(2 * basic(c) for c in chs)  # two basic blocks per branch
        for i, ci in enumerate(chs):
            for j, cj in enumerate(chs):
                if j > i:  # 1x1 conv + BN, then upsample
                    n += conv(cj, ci, 1) + bn(ci)
                elif j < i:  # i - j stride-2 3x3 convs, the last one changes width
                    n += (i - j - 1) * (conv(cj, cj, 3) + bn(cj)) + conv(cj, ci, 3) + bn(ci)
        return n

    # transitions: 256 -> [18, 36]; new branch 36 -> 72; new branch 72 -> 144
    total += conv(256, 18, 3) + bn(18) + conv(256, 36, 3) + bn(36)
    total += module([18, 36])
    total += conv(36, 72, 3) + bn(72) + 3 * module([18, 36, 72])
    total += conv(72, 144, 3) + bn(144) + 2 * module([18, 36, 72, 144])
    return total


def test_full_width_parameter_count_matches_published_configuration():
    model = HRNet(width=1.0)
    n = sum(p.numel() for p in model.parameters())
    assert n == _expected_hrnet_w18_small_v2_params()
    assert 3.8e6 < n < 4.0e6  # "about 3.9M"
    assert model.channels == [18, 36, 72, 144]


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_four_scales_shapes_and_backward(size):
    model = HRNet(width=0.25)
    assert isinstance(model, MultiScaleBackbone)
    x = torch.randn(2, 3, *size)
    feats = model(x)
    assert [f.shape[1] for f in feats] == model.channels
    for f, s in zip(feats, model.strides):
        assert f.shape[-2:] == tuple(-(-d // s) for d in size)  # ceil: stride-2 convs pad by 1
    sum(f.mean() for f in feats).backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_load_pretrained_from_hrnet_format_file(tmp_path):
    source = HRNet(width=0.25)  # same key names as width 1, a smaller file
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.classifier.weight"] = torch.zeros(10, 8)  # classification head: ignored
    path = tmp_path / "hrnet_w18_small_model_v2.pth"
    torch.save({"state_dict": state}, path)

    target = HRNet(width=0.25)
    ignored = target.load_pretrained(path)
    assert ignored == ["classifier.weight"]
    loaded = target.state_dict()
    for k, v in source.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_load_pretrained_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        HRNet(width=0.25).load_pretrained(tmp_path / "nope.pth")
    small = tmp_path / "small.pth"
    torch.save(HRNet(width=0.25).state_dict(), small)
    with pytest.raises(UserError, match="shapes"):
        HRNet(width=0.5).load_pretrained(small)
    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3)}, partial)
    with pytest.raises(UserError, match="missing"):
        HRNet(width=0.25).load_pretrained(partial)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        HRNet(width=0.25).load_pretrained(garbage)
