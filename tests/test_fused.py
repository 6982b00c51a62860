"""The fused task-attention path of MTAN-SegNet equals the paper's per-task path.

Two models with the same weights, ``fused=True`` and ``fused=False``, in float64 on a tiny
input: same outputs, same gradients of every parameter, same BatchNorm running statistics after
training-mode passes, same recorded attention, same state_dict keys.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from densemtl.errors import UserError
from densemtl.models import create_model
from densemtl.models.attention import record_attention
from densemtl.models.blocks import conv_unit
from densemtl.models.fused import gate, shared_unit

TASKS = {"semantic": 13, "depth": 1, "normal": 3}


def _pair(name: str = "mtan", tasks: dict = TASKS, width: float = 0.125, **options):
    torch.manual_seed(0)
    fused = create_model(name, tasks, width=width, **options).double()
    loop = copy.deepcopy(fused)
    loop.fused = False
    assert fused.fused is True  # the default path is the fused one
    return fused, loop


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)


def _loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    # a different weight per task so that a mixed-up task order would show
    return sum((i + 1.0) * o.sin().mean() for i, o in enumerate(out.values()))


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-12, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["mtan", "atinet"])
def test_train_mode_outputs_gradients_and_running_stats_match(name):
    fused, loop = _pair(name)
    x = _images()
    for step in range(2):  # two passes: the second starts from updated running statistics
        out_f, out_l = fused(x), loop(x)
        assert list(out_f) == list(out_l)
        for key in out_f:
            torch.testing.assert_close(out_f[key], out_l[key], rtol=1e-10, atol=1e-12)
        fused.zero_grad()
        loop.zero_grad()
        _loss(out_f).backward()
        _loss(out_l).backward()
        for (pname, pf), (_, pl) in zip(fused.named_parameters(), loop.named_parameters()):
            assert pf.grad is not None, pname
            torch.testing.assert_close(pf.grad, pl.grad, rtol=1e-9, atol=1e-12, msg=pname)
    _assert_same_state(fused, loop)  # running mean / var / num_batches_tracked included


def test_eval_mode_outputs_match_and_buffers_stay():
    fused, loop = _pair()
    fused(_images(4))  # move the running statistics away from their initial values
    loop.load_state_dict(fused.state_dict())
    fused.eval()
    loop.eval()
    before = copy.deepcopy(fused.state_dict())
    x = _images(3)
    out_f, out_l = fused(x), loop(x)
    for key in out_f:
        torch.testing.assert_close(out_f[key], out_l[key], rtol=1e-10, atol=1e-12)
    _assert_same_state(fused, loop)
    for key, value in fused.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_per_task_batch_statistics_matter_on_this_input():
    """Guard for the tests above: normalising the whole task stack at once (the tempting
    shortcut) gives different outputs here, so equality with the per-task path is informative."""
    torch.manual_seed(0)
    unit = conv_unit(4, 6).double()
    tasks = [torch.randn(2, 4, 8, 8, dtype=torch.float64) * (t + 1) + t for t in range(3)]
    per_task = torch.cat([copy.deepcopy(unit)(x) for x in tasks])  # fresh stats each: compare outputs only
    reference = copy.deepcopy(unit)
    expected = torch.cat([reference(x) for x in tasks])
    fused_unit = copy.deepcopy(unit)
    torch.testing.assert_close(torch.cat(shared_unit(fused_unit, torch.cat(tasks), 3)), expected)
    torch.testing.assert_close(per_task, expected)
    whole = copy.deepcopy(unit)(torch.cat(tasks))
    assert not torch.allclose(whole, expected, atol=1e-3)
    # running statistics: updated task after task, as three separate calls do
    for a, b in zip(fused_unit.modules(), reference.modules()):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean)
            torch.testing.assert_close(a.running_var, b.running_var)
            assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 3


def test_gate_broadcasts_the_shared_feature_per_task():
    shared = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    masks = [torch.full((2, 3, 2, 2), float(t + 1), dtype=torch.float64) for t in range(3)]
    out = gate(masks, shared)
    assert out.shape == (6, 3, 2, 2)
    for t in range(3):
        torch.testing.assert_close(out[2 * t: 2 * t + 2], shared * (t + 1))


def test_recorded_attention_and_checkpoints_are_interchangeable():
    fused, loop = _pair()
    fused.eval()
    loop.eval()
    x = _images(1)
    with record_attention(fused) as maps_f:
        fused(x)
    with record_attention(loop) as maps_l:
        loop(x)
    assert sorted(maps_f) == sorted(maps_l) and len(maps_f) == 2 * 5 * len(TASKS)
    for key in maps_f:
        torch.testing.assert_close(maps_f[key], maps_l[key])
    # a per-task checkpoint loads into the fused model and vice versa (strict: same keys)
    other = create_model("mtan", TASKS, width=0.125, fused=False).double()
    other.load_state_dict(fused.state_dict())
    fused.load_state_dict(other.state_dict())


def test_single_task_stan_and_option_check():
    fused, loop = _pair("stan", {"depth": 1})
    x = _images()
    torch.testing.assert_close(fused(x)["depth"], loop(x)["depth"], rtol=1e-10, atol=1e-12)
    with pytest.raises(UserError, match="fused"):
        create_model("mtan", TASKS, width=0.125, fused="yes")
