"""SCA-MTL: size against the paper and the official code, forward/backward, attention recording."""

from __future__ import annotations

import torch

from densemtl.models import create_model
from densemtl.models.attention import record_attention
from densemtl.models.backbones.hrnet import HRNet

NYUD = {"semantic": 40, "depth": 1}


def test_parameter_count_nyud_seg_depth_width_1():
    model = create_model("sca_mtl", NYUD, width=1.0)
    n = sum(p.numel() for p in model.parameters())
    # The official model (kimsunkyung/SCA_MTL with the working channel list [36, 72, 144, 288])
    # has 25,763,645 parameters; it also holds the unused second LayerNorm of every Swin block
    # (MLP removed): 2 x 2C per scale of the context attention (C = 18, 36, 72, 144) and 2C per
    # FPMA (C = 144, 288, 576 concatenated), i.e. 3,096 parameters that this model leaves out.
    unused_norms = 2 * 2 * (18 + 36 + 72 + 144) + 2 * (144 + 288 + 576)
    assert n == 25_763_645 - unused_norms
    assert abs(n / 25.76e6 - 1) < 0.03  # the paper's 25.76M


def test_forward_backward_keys_and_shapes_small_width():
    tasks = {"semantic": 13, "depth": 1, "edge": 1}
    model = create_model("sca_mtl", tasks, width=0.25)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    expected = {t: (2, c, 64, 64) for t, c in tasks.items()}
    for k in range(4):  # deep supervision at 1/4 ... 1/32
        expected.update({f"{t}@scale{k}": (2, c, 64 // 2 ** (k + 2), 64 // 2 ** (k + 2)) for t, c in tasks.items()})
    assert {key: tuple(v.shape) for key, v in out.items()} == expected
    sum(v.float().mean() for v in out.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_input_size_not_multiple_of_32_and_mlp_option():
    model = create_model("sca_mtl", {"depth": 1}, width=0.125, mlp_ratio=2.0)
    assert model.context[0].blocks[0].mlp is not None
    out = model(torch.randn(1, 3, 50, 70))
    assert out["depth"].shape == (1, 1, 50, 70)
    assert out["depth@scale0"].shape == (1, 1, 13, 18)


def test_record_attention_covers_every_attention_module():
    model = create_model("sca_mtl", {"semantic": 5, "depth": 1}, width=0.125).eval()
    with record_attention(model) as attn, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert "context.0.blocks.1.received" in attn  # window self-attention on the backbone
    assert "interact.2.attend.semantic.depth.received" in attn  # CTAM: semantic attends to depth
    assert attn["propagate.0.weight_semantic"].shape == (1, 1, 8, 8)  # FPMA, scale 1 -> 0
    assert "heads.depth.attend.0.from_scale3" in attn  # CSAM
    assert all(v.dim() == 4 for v in attn.values())


def test_pretrained_backbone_option(tmp_path):
    source = HRNet(width=0.25)
    with torch.no_grad():
        source.conv1.weight.fill_(0.5)
    path = tmp_path / "hrnet.pth"
    torch.save(source.state_dict(), path)
    model = create_model("sca_mtl", {"depth": 1}, width=0.25, pretrained=str(path))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_presets_carry_the_official_recipes():
    from densemtl.engine.config import resolve

    cfg = resolve({}, {"preset": "sca_mtl"})
    assert (cfg.model.name, cfg.data.name, cfg.data.size, cfg.data.tasks) == (
        "sca_mtl", "nyud", (480, 640), ["semantic", "depth"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-4, 1e-4)
    assert (cfg.schedule.name, cfg.schedule.power, cfg.epochs, cfg.batch_size) == ("poly", 0.9, 100, 10)
    mtan = resolve({}, {"preset": "mtan"})
    assert (mtan.model.name, mtan.optim.lr, mtan.schedule.name, mtan.schedule.gamma, mtan.batch_size,
            mtan.epochs) == ("mtan", 1e-4, "step", 0.5, 2, 200)
    assert mtan.schedule.step_size is None  # None = half the epochs: halved at the midpoint
