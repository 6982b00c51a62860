"""What every model declares as shared (models/scope.py), against counts and gradient flow.

The counts are those of the official codes' definitions (ref/optimisation.md 2.0): Nash-MTL and
Aligned-MTL count every parameter of MTAN-SegNet but its prediction heads as shared, CAGrad's
``shared_modules()`` leaves out the task attention masks. The roles are checked by where the
gradients of each task's output go: a head or task-specific parameter is reached by exactly
one task.
"""

from __future__ import annotations

import pytest
import torch

from densemtl.models import create_model, list_models
from densemtl.models.registry import get_entry
from densemtl.models.scope import count, parameter_roles, representation_modules, scope_parameters, flatten_features

NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}


def test_mtan_width_1_scopes_match_the_official_definitions():
    model = create_model("mtan", NYUV2, width=1.0)
    assert count(scope_parameters(model, "all")) == 44_117_184  # Nash-MTL: all but the heads
    assert count(scope_parameters(model, "shared")) == 35_163_456  # CAGrad: without the attention
    heads = sum(p.numel() for n, p in model.named_parameters() if parameter_roles(model)[n] == "head")
    assert heads == 111_889 and heads + 44_117_184 == 44_229_073


def tiny(name):
    tasks = {"semantic": 13} if get_entry(name).single_task else NYUV2
    torch.manual_seed(0)
    width = 0.5 if name == "sca_mtl" else 0.125
    return create_model(name, tasks, width=width).train(), tasks


@pytest.mark.parametrize("name", list_models())
def test_roles_follow_the_gradients(name):
    model, tasks = tiny(name)
    roles = parameter_roles(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert set(roles) == set(trainable)
    assert {n for n, _ in scope_parameters(model, "shared")} <= {n for n, _ in scope_parameters(model, "all")}
    out = model(torch.rand(2, 3, 32, 32))
    params = dict(model.named_parameters())
    reached = {n: set() for n in trainable}
    for task in tasks:
        total = sum(v.float().sum() for k, v in out.items() if k.split("@")[0] == task)
        grads = torch.autograd.grad(total, [params[n] for n in trainable], retain_graph=True, allow_unused=True)
        for n, g in zip(trainable, grads):
            if g is not None and bool(g.abs().sum() > 0):
                reached[n].add(task)
    for task in tasks:  # every task has a head
        assert any(roles[n] == "head" and reached[n] == {task} for n in trainable), (name, task)
    for n in trainable:  # a head or a task branch belongs to one task
        if roles[n] in ("head", "task") and reached[n]:
            assert len(reached[n]) == 1, (name, n, reached[n])


@pytest.mark.parametrize("name", [m for m in list_models() if representation_modules(tiny(m)[0])])
def test_representation_is_what_every_head_reads(name):
    model, tasks = tiny(name)
    captured = []
    handles = [m.register_forward_hook(lambda mod, i, o: captured.extend(flatten_features(o)))
               for m in representation_modules(model)]
    images = torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    out = model(images)
    for h in handles:
        h.remove()
    assert captured and all(f.requires_grad for f in captured)
    for task in tasks:
        grads = torch.autograd.grad(out[task].sum(), captured, retain_graph=True, allow_unused=True)
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), (name, task)
    torch.manual_seed(1)
    again = model(images)  # the marker changes nothing
    for key in out:
        assert torch.equal(out[key], again[key]), key
