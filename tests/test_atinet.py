"""ATI-Net (SPEC 5.7): size, data flow of both modes, gradients everywhere, options, aux outputs."""

from __future__ import annotations

import pytest
import torch

from densemtl.errors import UserError
from densemtl.models import create_model, get_entry
from densemtl.models.info import count_params
from densemtl.models.registry import scaled
from densemtl.tasks import make_tasks

NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}
WIDTH = 0.125
SIZE = 64  # bottleneck 2x2: every tap of the distillation's 3x3 convs sees a pixel


def _pointwise_stack(channels: list[int]) -> int:
    """Parameters of 1x1 conv (weight + bias) + BN (weight + bias) per step of ``channels``."""
    return sum(a * b + b + 2 * b for a, b in zip(channels[:-1], channels[1:]))


def _branch_params(num_tasks: int, width: float) -> int:
    """ATI-Net's branch by hand: per task 512->256->128->64 and back, plus the distillation's
    two biased 3x3 convs (64 -> 64) per ordered pair of different tasks."""
    c, a, b, low = (scaled(x, width) for x in (512, 256, 128, 64))
    per_task = _pointwise_stack([c, a, b, low]) + _pointwise_stack([low, b, a, c])
    distill = num_tasks * (num_tasks - 1) * 2 * (9 * low * low + low)
    return num_tasks * per_task + distill


def test_branch_arithmetic_matches_the_official_difference():
    # the official counts: ATI-Net 45,716,497 and MTAN 44,229,073
    assert _branch_params(3, 1.0) == 45_716_497 - 44_229_073 == 1_487_424


def test_parameter_count_at_full_width_is_the_official_one():
    model = create_model("atinet", NYUV2, width=1.0)
    assert count_params(model) == 45_716_497
    assert count_params(model.bottleneck) == 1_487_424


@pytest.mark.parametrize("tasks", [NYUV2, {"semantic": 7, "depth": 1}])
def test_parameter_count_at_small_width_is_mtan_plus_branch(tasks):
    atinet = create_model("atinet", tasks, width=0.25)
    mtan = create_model("mtan", tasks, width=0.25)
    assert count_params(atinet) - count_params(mtan) == _branch_params(len(tasks), 0.25)
    aux = create_model("atinet", tasks, width=0.25, aux=True)
    # one 1x1 conv (64w -> task channels, bias) per task
    assert count_params(aux) - count_params(atinet) == sum((scaled(64, 0.25) + 1) * c for c in tasks.values())


def test_registered_in_the_mtan_family_with_documented_options():
    entry = get_entry("atinet")
    assert entry.family == get_entry("mtan").family == "mtan"
    assert entry.options == {"mode": "replace", "aux": False}


def test_mtan_tensor_names_are_kept():
    atinet = create_model("atinet", NYUV2, width=WIDTH).state_dict()
    mtan = create_model("mtan", NYUV2, width=WIDTH).state_dict()
    assert set(mtan) <= set(atinet)
    assert all(atinet[k].shape == v.shape for k, v in mtan.items())
    assert all(k.startswith("bottleneck.") for k in set(atinet) - set(mtan))


def _spy_decoder_input(model, monkeypatch) -> dict:
    """Record the shared encoder's bottleneck and the tensor the shared decoder starts from."""
    seen: dict = {}
    encode, decode = model.segnet.encode, model.segnet.decode

    def spy_encode(x):
        enc = encode(x)
        seen["bottleneck"] = enc.bottleneck
        return enc

    def spy_decode(start, indices):
        seen["decoder_input"] = start
        return decode(start, indices)

    monkeypatch.setattr(model.segnet, "encode", spy_encode)
    monkeypatch.setattr(model.segnet, "decode", spy_decode)
    return seen


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_decoder_input_is_the_mean_of_the_tasks_contexts(mode, monkeypatch):
    """With the last BN of each task's projection back set to weight 0 and bias c_t, that task's
    context is the constant c_t (after ReLU, c_t > 0): the mean over tasks is (1 + 2 + 3) / 3 = 2,
    which replaces the bottleneck feature or is added to it."""
    torch.manual_seed(0)
    model = create_model("atinet", NYUV2, width=WIDTH, mode=mode).eval()
    with torch.no_grad():
        for c, expand in zip((1.0, 2.0, 3.0), model.bottleneck.expand.values()):
            bn = expand[-2]
            assert isinstance(bn, torch.nn.BatchNorm2d)
            bn.weight.zero_()
            bn.bias.fill_(c)
    seen = _spy_decoder_input(model, monkeypatch)
    with torch.no_grad():
        model(torch.rand(2, 3, SIZE, SIZE))
    bottleneck, start = seen["bottleneck"], seen["decoder_input"]
    assert start.shape == bottleneck.shape == (2, scaled(512, WIDTH), SIZE // 32, SIZE // 32)
    expected = torch.full_like(bottleneck, 2.0) if mode == "replace" else bottleneck + 2.0
    torch.testing.assert_close(start, expected)
    assert not torch.allclose(bottleneck, torch.full_like(bottleneck, 2.0))  # the two modes differ


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_forward_shapes(mode):
    torch.manual_seed(0)
    model = create_model("atinet", NYUV2, width=WIDTH, mode=mode)
    out = model(torch.rand(2, 3, SIZE, 2 * SIZE))
    assert set(out) == set(NYUV2)
    for task, channels in NYUV2.items():
        assert out[task].shape == (2, channels, SIZE, 2 * SIZE)
        assert torch.isfinite(out[task]).all()


def _backward(model, images: torch.Tensor) -> None:
    out = model(images)
    sum(raw.square().mean() + raw.mean() for raw in out.values()).backward()


def _biases_feeding_batchnorm(model: torch.nn.Module) -> set[str]:
    """Names of conv biases followed directly by a BN (in train mode their true gradient is 0:
    the BN subtracts the batch mean, which absorbs any constant shift)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = set()
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            for a, b in zip(list(seq)[:-1], list(seq)[1:]):
                if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d) and a.bias is not None:
                    out.add(names[id(a.bias)])
    return out


def _without_nonzero_grad(model: torch.nn.Module, exempt: set[str] = frozenset()) -> list[str]:
    return [n for n, p in model.named_parameters()
            if n not in exempt and (p.grad is None or not (p.grad != 0).any())]


@pytest.mark.parametrize("aux", [False, True])
@pytest.mark.parametrize("mode", ["replace", "add"])
def test_every_parameter_receives_a_nonzero_gradient(mode, aux):
    """The official code never uses the branch's output, so the branch gets no gradient there.

    Train mode (how training runs): every parameter gets a gradient, non-zero for all but the
    conv biases that feed a BN (mathematically zero there). Eval mode with BN statistics taken
    from this very batch (momentum 1): the same function, but BN is a fixed affine map, so those
    biases get a genuine gradient too and every parameter must have a non-zero one."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE)
    model = create_model("atinet", NYUV2, width=WIDTH, mode=mode, aux=aux)
    assert (model.bottleneck.aux_heads is not None) == aux
    feeding_bn = _biases_feeding_batchnorm(model)
    assert "bottleneck.reduce.depth.0.bias" in feeding_bn and "heads.depth.0.bias" not in feeding_bn

    model.train()
    _backward(model, images)
    assert all(p.grad is not None for p in model.parameters())
    assert not _without_nonzero_grad(model, exempt=feeding_bn)

    model.zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        model(images)
    model.eval()
    _backward(model, images)
    assert not _without_nonzero_grad(model)


@pytest.mark.parametrize("bad", [{"mode": "concat"}, {"mode": "Replace"}, {"aux": "yes"}])
def test_bad_options_are_user_errors(bad):
    key = next(iter(bad))
    with pytest.raises(UserError, match=f"option {key}"):
        create_model("atinet", NYUV2, width=WIDTH, **bad)


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="unknown option"):
        create_model("atinet", NYUV2, width=WIDTH, modes="add")


def test_aux_outputs_are_supervised_by_the_standard_losses():
    torch.manual_seed(0)
    model = create_model("atinet", NYUV2, width=WIDTH, aux=True)
    out = model(torch.rand(2, 3, SIZE, SIZE))
    assert set(out) == set(NYUV2) | {f"{t}@bottleneck" for t in NYUV2}
    for task, channels in NYUV2.items():
        assert out[f"{task}@bottleneck"].shape == (2, channels, SIZE // 32, SIZE // 32)
    assert model.bottleneck.take_aux_outputs() == {}  # handed over once, not kept

    tasks = make_tasks(NYUV2, num_classes=13)
    targets = {
        "semantic": torch.randint(-1, 13, (2, SIZE, SIZE)),
        "depth": torch.rand(2, 1, SIZE, SIZE) + 0.5,
        "normal": torch.nn.functional.normalize(torch.randn(2, 3, SIZE, SIZE), dim=1),
    }
    aux_loss = sum(tasks[t].loss(out[f"{t}@bottleneck"], targets[t]) for t in NYUV2)
    assert torch.isfinite(aux_loss)
    aux_loss.backward()
    head = model.bottleneck.aux_heads["depth"]
    assert head.weight.grad is not None and (head.weight.grad != 0).any()
    # the auxiliary loss reaches the shared encoder through the branch, not the decoder
    assert model.segnet.encoder[0].first[0].weight.grad is not None
    assert all(p.grad is None for p in model.segnet.decoder.parameters())


def test_without_aux_no_extra_outputs():
    model = create_model("atinet", {"depth": 1, "normal": 3}, width=WIDTH)
    assert set(model(torch.rand(1, 3, SIZE, SIZE))) == {"depth", "normal"}


def test_preset_is_mtans_recipe_and_serves_mtan_too():
    from densemtl.engine.config import resolve

    cfg = resolve({}, {"preset": "atinet"})
    # SPEC 5.2 / 5.7: Adam 1e-4 halved at the midpoint, 200 epochs, batch 2, DWA T = 2
    assert (cfg.model.name, cfg.model.width, cfg.model.options) == ("atinet", 1.0, {})
    assert (cfg.optim.name, cfg.optim.lr, cfg.epochs, cfg.batch_size) == ("adam", 1e-4, 200, 2)
    assert (cfg.schedule.name, cfg.schedule.step_size, cfg.schedule.gamma) == ("step", None, 0.5)
    assert (cfg.weighting.name, cfg.weighting.options) == ("dwa", {"T": 2.0})
    assert (cfg.data.name, cfg.data.size, cfg.last_k) == ("nyuv2", (288, 384), 10)
    assert resolve({}, {"preset": "atinet", "model": {"name": "mtan"}}).model.name == "mtan"
    with pytest.raises(UserError, match="unknown preset"):
        resolve({}, {"preset": "atinett"})
