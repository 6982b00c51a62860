"""SegNet, MTAN-SegNet, STAN and the single-task SegNet: exact sizes and the MTAN data flow."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from densemtl.models import create_model
from densemtl.models.attention import record_attention
from densemtl.models.backbones.segnet import SegNet, segnet_filters
from densemtl.models.info import count_params

NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}


def _count(name: str, tasks: dict[str, int], **options) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return count_params(create_model(name, tasks, **options))


# Official counts (MTAN paper / code, without its 3 uncertainty log-variances).
def test_mtan_segnet_has_the_official_parameter_count():
    assert _count("mtan", NYUV2) == 44_229_073


@pytest.mark.parametrize("task, expected", [("semantic", 24_981_069), ("depth", 24_980_289),
                                            ("normal", 24_980_419)])
def test_single_task_segnet_parameter_counts(task, expected):
    assert _count("single", {task: NYUV2[task]}) == expected


@pytest.mark.parametrize("task, expected", [("semantic", 38_185_805), ("depth", 38_185_025),
                                            ("normal", 38_185_155)])
def test_stan_parameter_counts(task, expected):
    assert _count("stan", {task: NYUV2[task]}) == expected


def test_width_scales_every_channel_count():
    assert segnet_filters(0.5) == [32, 64, 128, 256, 256]
    assert segnet_filters(0.25, last=1024) == [16, 32, 64, 128, 256]
    model = create_model("mtan", NYUV2, width=0.25)
    channels = {m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert max(channels) == 128 and 16 in channels
    assert model.heads["semantic"][1].out_channels == 13  # task outputs are never scaled


def test_segnet_shapes_and_pooling_indices():
    net = SegNet(segnet_filters(0.125))
    x = torch.rand(1, 3, 64, 96)
    enc = net.encode(x)
    assert [t.shape[1:] for t in enc.last] == [(8, 64, 96), (16, 32, 48), (32, 16, 24), (64, 8, 12), (64, 4, 6)]
    assert enc.bottleneck.shape == (1, 64, 2, 3)
    dec = net.decode(enc.bottleneck, enc.indices)
    assert [t.shape[1] for t in dec.outputs] == [64, 32, 16, 8, 8]
    assert dec.outputs[-1].shape == (1, 8, 64, 96)
    # max-unpooling puts every pooled value back where the encoder found it
    unpooled = net.unpool(enc.bottleneck, enc.indices[-1])
    assert torch.equal(unpooled.amax(dim=(2, 3)), enc.last[-1].amax(dim=(2, 3)))


def test_initialisation_follows_mtan():
    torch.manual_seed(0)
    model = create_model("mtan", NYUV2, width=0.5)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.segnet.encoder[4].rest[0][0]  # 256 -> 256 3x3 conv at width 0.5
    fan = 256 * 9
    expected_std = (2.0 / (fan + fan)) ** 0.5  # Xavier normal
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)


@pytest.mark.parametrize("fused", [False, True])
def test_task_modules_only_receive_their_own_task_gradient(fused):
    torch.manual_seed(0)
    model = create_model("mtan", NYUV2, width=0.125, fused=fused)
    out = model(torch.rand(2, 3, 64, 64))
    out["depth"].abs().mean().backward()
    depth = 1  # task order of NYUV2
    for level in list(model.encoder_attention) + list(model.decoder_attention):
        for t, mask in enumerate(level):
            grads = [p.grad for p in mask.parameters()]
            if t == depth:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            elif fused:  # the tasks share one graph (models/fused.py): exactly zero, not None
                assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
            else:
                assert all(g is None for g in grads)
    assert model.heads["semantic"][0].weight.grad is None
    assert model.segnet.encoder[0].first[0].weight.grad.abs().sum() > 0  # shared


def test_attention_masks_gate_per_pixel_and_channel():
    torch.manual_seed(0)
    model = create_model("mtan", NYUV2, width=0.125).eval()
    with record_attention(model) as maps:
        model(torch.rand(1, 3, 64, 64))
    # one recorded mask per task and level, encoder and decoder
    enc = [k for k in maps if k.startswith("encoder_attention.")]
    dec = [k for k in maps if k.startswith("decoder_attention.")]
    assert len(enc) == len(dec) == 5 * 3
    assert maps["encoder_attention.0.2.mask"].shape == (1, 1, 64, 64)
    assert maps["decoder_attention.0.0.mask"].shape == (1, 1, 4, 4)
    mask = model.encoder_attention[2][0](torch.rand(1, 2 * 32, 16, 16))
    assert mask.shape == (1, 32, 16, 16) and mask.min() > 0 and mask.max() < 1


class _Recorder(nn.Module):
    """Bottleneck hook that records what it is given and returns a fixed tensor."""

    def __init__(self, replacement: float | None) -> None:
        super().__init__()
        self.replacement = replacement
        self.seen: dict = {}

    def forward(self, shared, task_features):
        self.seen = {"shared": shared, "tasks": task_features}
        return shared if self.replacement is None else torch.full_like(shared, self.replacement)


def test_bottleneck_hook_receives_shared_and_task_features_and_feeds_the_decoder():
    torch.manual_seed(0)
    model = create_model("mtan", NYUV2, width=0.125).eval()
    x = torch.rand(2, 3, 64, 96)
    reference = model(x)

    model.bottleneck = _Recorder(None)
    same = model(x)
    seen = model.bottleneck.seen
    assert seen["shared"].shape == (2, 64, 2, 3)
    assert list(seen["tasks"]) == list(NYUV2)
    assert all(f.shape == (2, 64, 2, 3) for f in seen["tasks"].values())
    for t in NYUV2:  # an identity hook changes nothing
        assert torch.equal(same[t], reference[t])

    model.bottleneck = _Recorder(0.0)
    changed = model(x)
    for t in NYUV2:
        assert not torch.allclose(changed[t], reference[t])
