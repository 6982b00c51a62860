"""Split, dense and cross-stitch baselines: official sizes and their data flow."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from densemtl.errors import UserError
from densemtl.models import create_model
from densemtl.models.baselines import CrossStitch
from densemtl.models.info import count_params

NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}


def _count(name: str, tasks: dict[str, int] = NYUV2, **options) -> int:
    with torch.device("meta"):
        return count_params(create_model(name, tasks, **options))


@pytest.mark.parametrize("name, options, expected", [
    ("split", {}, 25_055_185),
    ("split_wide", {}, 43_934_161),
    ("split_deep", {}, 50_807_761),
    ("dense", {}, 123_743_992),
    ("cross_stitch", {"mixing": "mtan"}, 74_941_804),
])
def test_official_parameter_counts(name, options, expected):
    assert _count(name, **options) == expected


def test_full_cross_stitch_adds_a_task_by_task_matrix_per_level():
    # 9 mixing points (4 encoder + 5 decoder): 9 x 3 scalars (MTAN) -> 9 x 3 x 3 (original)
    assert _count("cross_stitch") == 74_941_804 - 9 * 3 + 9 * 3 * 3


def test_dense_without_the_unused_official_stage():
    unused = (64 * 64 * 9 + 64 + 2 * 64) + (64 * 13 * 9 + 13 + 2 * 13)  # conv-BN 64->64, 64->13
    assert _count("dense", paper_count=False) == 123_743_992 - unused


def test_split_variants_change_what_they_should():
    with torch.device("meta"):
        wide = create_model("split_wide", NYUV2)
        deep = create_model("split_deep", NYUV2)
    assert wide.segnet.encoder[4].out_channels == 1024
    convs = [m for m in deep.segnet.encoder[0].first if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 64)]


def test_cross_stitch_unit_by_hand():
    xs = [torch.full((1, 2, 1, 1), v) for v in (1.0, 10.0, 100.0)]
    unit = CrossStitch(3)
    assert torch.allclose(unit.weight.sum(dim=1), torch.ones(3))
    assert torch.allclose(unit.weight.diagonal(), torch.full((3,), 0.9))
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.1, 0.01]]))
    out = unit(xs)
    assert [o.flatten()[0].item() for o in out] == pytest.approx([1.0, 5.5, 2.0])

    simple = CrossStitch(3, "mtan")
    with torch.no_grad():
        simple.weight.copy_(torch.tensor([1.0, 0.5, 0.01]))
    out = simple(xs)
    assert all(o.flatten()[0].item() == pytest.approx(1 + 5 + 1) for o in out)
    assert CrossStitch(1).weight.item() == 1.0


def _semantic_ignores_depth_branch(model: nn.Module) -> bool:
    """Whether the semantic output stays the same when the depth branch's weights change."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    before = model(x)["semantic"]
    with torch.no_grad():
        for p in model.branches[1].parameters():
            p.mul_(1.5)
    return torch.equal(before, model(x)["semantic"])


def test_cross_stitch_mixing_couples_the_task_networks():
    torch.manual_seed(0)
    model = create_model("cross_stitch", NYUV2, width=0.125).eval()
    assert not _semantic_ignores_depth_branch(model)  # near-identity mixing still shares
    with torch.no_grad():
        for unit in list(model.encoder_stitch) + list(model.decoder_stitch):
            unit.weight.copy_(torch.eye(3))
    assert _semantic_ignores_depth_branch(model)  # identity mixing: independent networks


def test_unknown_cross_stitch_mixing_is_a_user_error():
    with pytest.raises(UserError, match="mixing"):
        create_model("cross_stitch", NYUV2, width=0.125, mixing="diagonal")


def test_dense_branches_read_the_shared_network_and_skip_the_unused_stage():
    torch.manual_seed(0)
    model = create_model("dense", NYUV2, width=0.125)
    assert all(not p.requires_grad for p in model.unused_stage.parameters())
    with torch.no_grad():
        for p in model.unused_stage.parameters():
            p.fill_(float("nan"))  # would poison the outputs if it were run
    out = model(torch.rand(2, 3, 64, 64))
    assert all(torch.isfinite(o).all() for o in out.values())
    out["normal"].mean().backward()
    assert model.shared.encoder[0].first[0].weight.grad.abs().sum() > 0
    assert model.shared.decoder[-1].first[0].weight.grad.abs().sum() > 0
    assert model.branches[0].encoder[0].first[0].weight.grad is None  # semantic branch
    # task stages take [own, shared] concatenated: twice the input channels
    assert model.branches[2].encoder[1].channels[0] == 2 * 8
    assert model.branches[2].decoder[-1].channels == (16, 16, 8)
