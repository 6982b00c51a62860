"""PAD-Net multi-modal distillation, PAD-Net and MTI-Net models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densemtl.errors import UserError
from densemtl.models import create_model
from densemtl.models.attention import record_attention
from densemtl.models.distill import MultiModalDistillation


def _set_pointwise(module: MultiModalDistillation, value_w: float, gate_w: float) -> None:
    """Make every 3x3 conv a centre-tap scalar multiply (channels = 1)."""
    with torch.no_grad():
        for per_target in module.messages.values():
            for message in per_target.values():
                message.value.weight.zero_()
                message.value.weight[0, 0, 1, 1] = value_w
                message.gate.weight.zero_()
                message.gate.weight[0, 0, 1, 1] = gate_w


def test_distillation_matches_formula_by_hand():
    names = ["semantic", "depth", "edge"]
    module = MultiModalDistillation(names, channels=1)
    _set_pointwise(module, value_w=2.0, gate_w=-1.5)
    rng = np.random.default_rng(0)
    feats = {t: rng.normal(size=(2, 1, 5, 6)).astype(np.float32) for t in names}

    out = module({t: torch.from_numpy(f) for t, f in feats.items()})

    def message(x):  # 2x * sigmoid(-1.5x), computed in numpy
        return 2.0 * x / (1.0 + np.exp(1.5 * x))

    for t in names:
        expected = feats[t] + sum(message(feats[a]) for a in names if a != t)
        np.testing.assert_allclose(out[t].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_distillation_parameter_count_and_pairs():
    module = MultiModalDistillation(["a", "b", "c"], channels=8)
    # 3 targets x 2 sources x (value + gate) x 3x3 x 8 x 8, no bias
    assert sum(p.numel() for p in module.parameters()) == 3 * 2 * 2 * 9 * 8 * 8
    assert sorted(module.messages["b"].keys()) == ["a", "c"]


def test_distillation_single_task_passes_through_and_checks_inputs():
    module = MultiModalDistillation(["depth"], channels=4)
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(module({"depth": x})["depth"], x)
    with pytest.raises(KeyError):
        MultiModalDistillation(["a", "b"], 4)({"a": x})
    with pytest.raises(ValueError):
        MultiModalDistillation(["a", "a"], 4)


def test_distillation_backward_reaches_every_pair_and_records_gates():
    names = ["semantic", "depth"]
    module = MultiModalDistillation(names, channels=3)
    feats = {t: torch.randn(2, 3, 4, 4, requires_grad=True) for t in names}
    with record_attention(module) as attn:
        out = module(feats)
    sum(o.square().sum() for o in out.values()).backward()
    for p in module.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert set(attn) == {"semantic<-depth", "depth<-semantic"}
    gate = attn["semantic<-depth"]
    assert gate.shape == (2, 1, 4, 4) and ((gate > 0) & (gate < 1)).all()
    module(feats)  # outside the context nothing more is recorded
    assert len(attn) == 2


# ------------------------------------------------------------------------------- models

NYUD = {"semantic": 40, "depth": 1}


@pytest.mark.parametrize("name,official", [
    # counts of the official models in SimonVandenhende/Multi-Task-Learning-PyTorch
    # (configs/nyud/hrnet18/{mti_net,pad_net}.yml: HRNet-18, semseg 40 + depth)
    ("mtinet", 8_578_179),
    ("padnet", 7_019_056),
])
def test_parameter_counts_match_official_models(name, official):
    model = create_model(name, NYUD, width=1.0)
    assert sum(p.numel() for p in model.parameters()) == official


def test_padnet_segnet_parameter_count_matches_atinet_code():
    # PAD_Net of Armanfard-Lab/ATI-Net (padnet.py): NYUv2 13 classes, depth, normals
    model = create_model("padnet_segnet", {"semantic": 13, "depth": 1, "normal": 3}, width=1.0)
    assert sum(p.numel() for p in model.parameters()) == 45_938_641


def test_mtinet_forward_backward_keys_and_shapes():
    tasks = {"semantic": 13, "depth": 1, "normal": 3}
    model = create_model("mtinet", tasks, width=0.25)
    out = model(torch.randn(2, 3, 64, 64))
    expected = {t: (2, c, 64, 64) for t, c in tasks.items()}
    for k in range(4):
        expected.update({f"{t}@scale{k}": (2, c, 16 >> k, 16 >> k) for t, c in tasks.items()})
    assert {key: tuple(v.shape) for key, v in out.items()} == expected
    sum(v.mean() for v in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_padnet_forward_backward_keys_shapes_and_recording():
    tasks = {"semantic": 13, "edge": 1}
    model = create_model("padnet", tasks, width=0.25)
    with record_attention(model) as attn:
        out = model(torch.randn(2, 3, 64, 48))
    assert {key: tuple(v.shape) for key, v in out.items()} == {
        "semantic": (2, 13, 64, 48), "edge": (2, 1, 64, 48),
        "semantic@initial": (2, 13, 16, 12), "edge@initial": (2, 1, 16, 12),
    }
    assert set(attn) == {"distill.semantic<-edge", "distill.edge<-semantic"}
    sum(v.mean() for v in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_padnet_segnet_forward_backward_and_input_check():
    tasks = {"semantic": 13, "depth": 1}
    model = create_model("padnet_segnet", tasks, width=0.125)
    out = model(torch.randn(2, 3, 64, 96))
    assert {key: tuple(v.shape) for key, v in out.items()} == {"semantic": (2, 13, 64, 96), "depth": (2, 1, 64, 96)}
    sum(v.mean() for v in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(UserError, match="multiples of 32"):
        model(torch.randn(1, 3, 50, 64))


def test_hrnet_baselines_by_hand():
    backbone = 3_860_720  # HRNet-W18-small-v2 (tests/test_hrnet.py)
    fuse = 270 * 270 + 270 + 2 * 270  # 1x1 conv with bias + BN over 18 + 36 + 72 + 144 channels

    def head(out):
        return fuse + 270 * out + out

    split = create_model("split_hrnet", NYUD, width=1.0)
    assert sum(p.numel() for p in split.parameters()) == backbone + head(40) + head(1)
    single = create_model("single_hrnet", {"depth": 1}, width=0.25)
    out = single(torch.randn(1, 3, 64, 64))
    assert list(out) == ["depth"] and out["depth"].shape == (1, 1, 64, 64)
    with pytest.raises(UserError, match="single-task"):
        create_model("single_hrnet", NYUD, width=0.25)
