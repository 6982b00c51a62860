"""Every registered multi-task optimisation method through the real training engine.

Parametrised over the method registry (a new method is covered when it registers): a few
steps of a tiny MTAN and of a tiny HRNet-family model with finite, decreasing loss; bf16 and
fp16 training; one fp16 step against the fp32 step; and every registered architecture with one
full-gradient and (where it declares a representation) one representation-level method.
"""

from __future__ import annotations

import pytest
import torch

from densemtl.engine import speed
from densemtl.engine.mtl_step import make_step, step_generator
from densemtl.models import create_model, list_models
from densemtl.models.registry import get_entry
from densemtl.models.scope import representation_modules
from densemtl.tasks import make_tasks, task_channels
from densemtl.weighting import StepContext, list_weightings, make_weighting, weighting_class
from mtl_helpers import SmoothMTL, synthetic_batch

TASKS = ["semantic", "depth", "normal"]
METHODS = [m for m in list_weightings() if not m.startswith("_")]
#: the tiny models of "every method trains": MTAN (SegNet) and an HRNet-family model
TINY = {"mtan": dict(width=0.0625, size=32), "split_hrnet": dict(width=0.25, size=32)}


def default_scope(method: str):
    cls = weighting_class(method)
    return None if cls.kind == "loss" else cls.default_scope


def make(model, method, scope="default", amp="none", lr=1e-3, tasks=TASKS, name="model", optimizer="adam"):
    task_specs = make_tasks(tasks, num_classes=13)
    weighting = make_weighting(method, list(task_specs))
    scope = default_scope(method) if scope == "default" else scope
    optimizer = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(
        [*model.parameters(), *weighting.parameters()], lr=lr)
    step = make_step(model=model, train_model=model, weighting=weighting, optimizer=optimizer,
                     scaler=speed.grad_scaler(torch.device("cpu"), amp), tasks=task_specs,
                     device=torch.device("cpu"), amp=amp, channels_last=False, scope=scope, model_name=name)
    return step, weighting, task_specs


def train_steps(step, batch, n, epoch_end=None):
    """``n`` steps on the same batch; returns the summed task loss of each step."""
    totals = []
    for i in range(1, n + 1):
        ctx = StepContext(step=i, epoch=1, generator=step_generator(0, i))
        out = step(batch["image"], batch, ctx, lambda values: None)
        totals.append(float(out["losses"].sum()))
        if epoch_end is not None:
            epoch_end(out)
    return totals


def tiny(name, tasks=TASKS):
    torch.manual_seed(0)
    spec = TINY.get(name, dict(width=0.0625, size=32))
    model = create_model(name, task_channels(make_tasks(tasks, num_classes=13)), width=spec["width"])
    return model.train(), spec["size"]


def with_scope_representation_if_needed(method, model):
    return default_scope(method) != "representation" or bool(representation_modules(model))


@pytest.mark.parametrize("model_name", list(TINY))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_tiny_models(method, model_name):
    model, size = tiny(model_name)
    if not with_scope_representation_if_needed(method, model):
        pytest.fail(f"{model_name} declares no representation, which {method} needs by default")
    step, weighting, _ = make(model, method, name=model_name)
    batch = synthetic_batch(2, size, seed=1)
    totals = train_steps(step, batch, 6)
    assert all(torch.isfinite(torch.tensor(totals))), totals
    assert totals[-1] < totals[0], (method, totals)
    assert all(v == v for v in weighting.weights().values())  # weights are logged (no NaN)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_under_amp(method, amp):
    torch.manual_seed(0)
    model = SmoothMTL(task_channels(make_tasks(TASKS, num_classes=13)))
    step, _, _ = make(model, method, amp=amp, lr=3e-3)
    totals = train_steps(step, synthetic_batch(2, 16, seed=2), 25)  # fp16: the first steps overflow and skip
    assert all(torch.isfinite(torch.tensor(totals))), totals
    assert totals[-1] < totals[0], (method, amp, totals)


#: one fp16 step against the fp32 step on the smooth model (no BatchNorm / pooling): relative
#: difference of the parameter change (the fp16 forward's rounding, ~1e-3, amplified by the
#: methods' normalisations)
FP16_TOLERANCE = 2e-2


@pytest.mark.parametrize("method", METHODS)
def test_one_fp16_step_equals_the_fp32_step(method):
    deltas = {}
    for amp in ("none", "fp16"):
        torch.manual_seed(0)
        model = SmoothMTL(task_channels(make_tasks(TASKS, num_classes=13)))
        before = [p.detach().clone() for p in model.parameters()]
        step, _, _ = make(model, method, amp=amp, lr=1e-2, optimizer="sgd")  # SGD: the change is the update
        batch = synthetic_batch(2, 16, seed=3)
        for i in range(1, 20):  # fp16: until the first step that does not overflow
            step(batch["image"], batch, StepContext(step=1, epoch=1, generator=step_generator(0, 1)), lambda v: None)
            delta = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before)])
            if bool(delta.abs().sum() > 0):
                break
        deltas[amp] = delta
    rel = float((deltas["fp16"] - deltas["none"]).norm() / deltas["none"].norm())
    assert rel < FP16_TOLERANCE, (method, rel)


def full_gradient_method() -> str:
    return "mgda"


def representation_method() -> str:
    return "mgda_ub"


@pytest.mark.parametrize("model_name", list_models())
def test_every_architecture_trains_with_gradient_methods(model_name):
    """One full-gradient step sequence and, where the model declares the features its heads read,
    one representation-level one."""
    tasks = TASKS[:1] if get_entry(model_name).single_task else TASKS
    batch = synthetic_batch(2, 32, seed=4)
    methods = [full_gradient_method()]
    model, _ = tiny(model_name, tasks)
    if representation_modules(model):
        methods.append(representation_method())
    for method in methods:
        model, _ = tiny(model_name, tasks)
        step, weighting, _ = make(model, method, tasks=tasks, name=model_name)
        totals = train_steps(step, batch, 2)
        assert all(torch.isfinite(torch.tensor(totals))), (model_name, method, totals)
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), (model_name, method)
