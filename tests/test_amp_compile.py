"""Training speed options (engine/speed.py): each trains a tiny model with finite, decreasing
loss; channels-last changes no number; every registered model runs in channels-last (the
default); the trainer wires the options and keeps the grad scaler in its checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from densemtl.bench import synthetic_batch
from densemtl.engine import speed
from densemtl.engine.checkpoint import load_checkpoint
from densemtl.engine.trainer import Trainer, compute_losses
from densemtl.errors import UserError
from densemtl.models import create_model, get_entry, list_models
from densemtl.tasks import make_tasks, task_channels

CPU = torch.device("cpu")
TASKS = make_tasks(["semantic", "depth", "normal"], num_classes=13)


def train_steps(model: nn.Module, tasks, amp: str = "none", channels_last: bool = False,
                compile: bool = False, steps: int = 6, size: int = 32) -> list[float]:
    """Adam steps on one fixed batch (the model should fit it); the summed task losses."""
    batch = synthetic_batch(tasks, 2, (size, size), CPU)
    speed.prepare_model(model, channels_last=channels_last, compile=compile)
    optimizer = speed.make_optimizer("adam", model.parameters(), lr=1e-3)
    scaler = speed.grad_scaler(CPU, amp)
    images = speed.prepare_images(batch["image"], channels_last)
    history = []
    for _ in range(steps):
        with speed.autocast(CPU, amp):
            outputs = model(images)
        losses = compute_losses(tasks, outputs, batch)
        assert all(loss.dtype == torch.float32 for loss in losses.values())  # losses in fp32
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        speed.backward_and_step(total, optimizer, scaler)
        history.append(float(total.detach()))
    return history


@pytest.mark.parametrize("amp, channels_last", [("none", False), ("none", True), ("bf16", True), ("fp16", False)])
def test_option_trains_mtan_with_finite_decreasing_loss(amp, channels_last):
    torch.manual_seed(0)
    model = create_model("mtan", task_channels(TASKS), width=0.125)
    losses = train_steps(model, TASKS, amp, channels_last)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05 and sum(losses[-2:]) < sum(losses[:2])


def test_autocast_precision_and_scaler_by_mode():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    for amp, dtype in (("none", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with speed.autocast(CPU, amp):
            assert conv(x).dtype == dtype
        assert speed.grad_scaler(CPU, amp).is_enabled() == (amp == "fp16")
    with pytest.raises(UserError, match="amp"):
        speed.autocast(CPU, "fp8")


def test_fp16_scaler_skips_an_overflowing_step():
    """Loss scaling: a step whose scaled gradients overflow is skipped and the scale halves."""
    p = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([p], lr=0.1)
    scaler = speed.grad_scaler(CPU, "fp16")
    scale = scaler.get_scale()
    speed.backward_and_step((p * 1e36).sum(), optimizer, scaler)  # 1e36 x 65536 overflows float32
    assert torch.equal(p.detach(), torch.ones(3)) and scaler.get_scale() == scale / 2
    optimizer.zero_grad()
    speed.backward_and_step(p.sum(), optimizer, scaler)  # a normal step goes through, unscaled
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))


def test_channels_last_gives_the_same_outputs_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    plain = create_model("mtan", task_channels(TASKS), width=0.125).eval()
    fast = create_model("mtan", task_channels(TASKS), width=0.125).eval()
    fast.load_state_dict(plain.state_dict())
    speed.prepare_model(fast, channels_last=True)
    conv = fast.segnet.encoder[0].first[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out_plain, out_fast = plain(x), fast(speed.prepare_images(x, True))
    for key in out_plain:
        torch.testing.assert_close(out_fast[key], out_plain[key], rtol=1e-4, atol=1e-5)


def test_channels_last_keeps_the_largest_cpu_convolutions_in_nchw():
    """At width 1 the 512 -> 512 3x3 convolutions stay NCHW (weights and inputs), every other
    convolution goes NHWC; outputs and gradients equal the all-NCHW model's; preparing twice
    adds no second hook."""
    torch.manual_seed(0)
    plain = create_model("split", task_channels(TASKS), width=1.0).double()
    fast = create_model("split", task_channels(TASKS), width=1.0).double()
    fast.load_state_dict(plain.state_dict())
    speed.prepare_model(fast, channels_last=True)
    speed.prepare_model(fast, channels_last=True)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    big = [m for m in convs if m.weight.shape[:2] == (512, 512) and m.kernel_size == (3, 3)]
    assert len(big) >= 5  # VGG-16's encoder alone has five (two at level 3, three at level 4)
    for m in convs:
        if m in big:
            assert m.weight.is_contiguous() and len(m._forward_pre_hooks) == 1
        elif m.kernel_size != (1, 1):
            assert m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    out_plain, out_fast = plain(x), fast(speed.prepare_images(x, True))
    sum(o.sum() for o in out_plain.values()).backward()
    sum(o.sum() for o in out_fast.values()).backward()
    for key in out_plain:
        torch.testing.assert_close(out_fast[key], out_plain[key])
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, msg=name)


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_a_step_in_channels_last(name):
    """channels_last is the default training layout: no model may depend on NCHW strides."""
    entry = get_entry(name)
    tasks = dict(list(TASKS.items())[:1]) if entry.single_task else TASKS
    size = max(64, entry.size_multiple)
    torch.manual_seed(0)
    model = create_model(name, task_channels(tasks), width=0.125)
    losses = train_steps(model, tasks, channels_last=True, steps=1, size=size)
    assert math.isfinite(losses[0])


class TinyMultiTask(nn.Module):
    """conv-BN-ReLU body and a 1x1 head per task, ``{task: output}`` like the registered models."""

    def __init__(self, tasks) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, task.channels, 1) for t, task in tasks.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {t: head(f) for t, head in self.heads.items()}


@pytest.mark.slow
def test_compile_trains_with_finite_decreasing_loss_and_keeps_state_dict_keys():
    """torch.compile (inductor, C++ kernels built with gcc) on a small conv net: compiling a
    whole SegNet takes minutes on a shared 2-core CPU, the mechanism is the same."""
    torch.manual_seed(0)
    tasks = make_tasks(["depth", "semantic"], num_classes=3)
    model = TinyMultiTask(tasks)
    keys = list(model.state_dict())
    losses = train_steps(model, tasks, channels_last=True, compile=True, steps=5, size=16)
    assert list(model.state_dict()) == keys  # compiled in place: checkpoints unchanged
    assert model._compiled_call_impl is not None
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_trainer_runs_the_options_and_checkpoints_the_scaler(tmp_path):
    from densemtl.data.synthetic import generate_dataset
    from densemtl.engine.config import config_from_dict

    root = tmp_path / "synthetic"
    generate_dataset(root, train=4, val=2, size=(32, 32), seed=1)
    cfg = config_from_dict({
        "data": {"name": "synthetic", "root": str(root), "size": "32x32"},
        "model": {"name": "mtan", "width": 0.125}, "epochs": 1, "batch_size": 2,
        "amp": "fp16", "channels_last": True, "out": str(tmp_path / "run"),
    })
    trainer = Trainer(cfg, progress=False, log=lambda msg: None)
    assert trainer.scaler.is_enabled()
    assert all(isinstance(g["fused"], bool) and g["fused"] for g in trainer.optimizer.param_groups)
    trainer.fit()
    assert all(math.isfinite(v) for v in trainer.history[0]["train_loss"].values())
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["scaler"]["scale"] == trainer.scaler.get_scale() and ckpt["config"]["amp"] == "fp16"
