"""The training engine's steps (engine/mtl_step.py) against independent computations.

Test-local gradient methods with known weights make every step comparable with plain autograd:
a gradient-level method whose weights are fixed must move the model exactly as the loss-level
weighted sum does, the Jacobian it receives must be the per-task autograd gradients of its
scope, and the representation step's Gramian must be the Gramian of the gradients with respect
to the features the heads read.
"""

from __future__ import annotations

import copy

import pytest
import torch

from densemtl.engine import mtl_step, speed
from densemtl.engine.mtl_step import make_step, step_generator
from densemtl.errors import UserError
from densemtl.models import create_model
from densemtl.models.scope import scope_parameters
from mtl_helpers import SmoothMTL, synthetic_batch
from densemtl.tasks import make_tasks, task_channels
from densemtl.weighting import GradientWeighting, StepContext, make_weighting, register_weighting
from densemtl.weighting import base as wbase

TASKS = ["semantic", "depth", "normal"]
WEIGHTS = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)


class Spy(GradientWeighting):
    """Constant weights; records what the engine handed it."""

    weights_value = WEIGHTS

    def gramian_weights(self, gramian, losses, ctx):
        self.seen = {"gramian": gramian.clone(), "losses": losses.clone()}
        return self.weights_value.clone()

    def aggregate(self, jacobian, losses, ctx):
        self.seen_jacobian = jacobian.clone()
        return super().aggregate(jacobian, losses, ctx)


@pytest.fixture(scope="module", autouse=True)
def spies():
    made = []
    for name, heads in (("_spy_sum", "sum"), ("_spy_weighted", "weighted")):
        cls = type(name, (Spy,), {"head_weights": heads})
        register_weighting(name)(cls)
        made.append(name)
    yield
    for name in made:
        wbase._REGISTRY.pop(name)


def batch(n=2, size=32, seed=0):
    return synthetic_batch(n, size, seed)


def build(model_name="mtan", method="equal", scope=None, amp="none", **method_opts):
    torch.manual_seed(0)
    tasks = make_tasks(TASKS, num_classes=13)
    model = SmoothMTL(task_channels(tasks)) if model_name == "smooth" else \
        create_model(model_name, task_channels(tasks), width=0.0625)
    weighting = make_weighting(method, TASKS, **method_opts)
    opt = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.1)
    scaler = speed.grad_scaler(torch.device("cpu"), amp)
    step = make_step(model=model, train_model=model, weighting=weighting, optimizer=opt, scaler=scaler,
                     tasks=tasks, device=torch.device("cpu"), amp=amp,
                     channels_last=False, scope=scope, model_name=model_name)
    return model, weighting, step, tasks


def run_step(step, b, seed=0):
    ctx = StepContext(step=1, epoch=1, generator=step_generator(seed, 1))
    return step(b["image"], b, ctx, lambda values: None), ctx


def grads_after(model_name, method, scope=None, **opts):
    model, weighting, step, _ = build(model_name, method, scope, **opts)
    model.train()
    before = copy.deepcopy(model.state_dict())
    result, _ = run_step(step, batch())
    return model, weighting, before, result


def manual_weighted_grads(model_name, shared_w, head_w, scope="all"):
    """Independent: autograd of sum_t w_t L_t, with separate weights for the scope and the rest."""
    model, _, _, tasks = build(model_name)
    model.train()
    b = batch()
    losses = mtl_step.compute_losses(tasks, model(b["image"]), b)
    in_scope = {id(p) for _, p in scope_parameters(model, scope)}
    params = [p for p in model.parameters() if p.requires_grad]
    out = {id(p): torch.zeros_like(p) for p in params}
    for t, name in enumerate(TASKS):
        g = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
        for p, gp in zip(params, g):
            if gp is not None:
                out[id(p)] += (shared_w[t] if id(p) in in_scope else head_w[t]) * gp
    return model, out


@pytest.mark.parametrize("heads", ["sum", "weighted"])
@pytest.mark.parametrize("scope", ["all", "shared"])
def test_parameter_step_writes_weighted_jacobian_and_head_gradients(heads, scope):
    model, weighting, _, result = grads_after("mtan", f"_spy_{heads}", scope)
    ones = torch.ones(3, dtype=torch.float64)
    ref_model, ref = manual_weighted_grads("mtan", WEIGHTS.float(), (WEIGHTS if heads == "weighted" else ones).float(),
                                           scope)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p.grad, ref[id(q)], rtol=1e-5, atol=2e-5, msg=name)
    # the Jacobian handed to the method: row t = gradient of task t's loss over the scope
    params = [q for _, q in scope_parameters(ref_model, scope)]
    jac = weighting.seen_jacobian
    assert jac.shape == (3, sum(q.numel() for q in params))
    torch.testing.assert_close(weighting.seen["gramian"], (jac @ jac.T).double())
    assert result["weights"].tolist() == WEIGHTS.tolist()
    assert set(result["stats"]) == {"grad_norm", "grad_cosine", "gramian_condition"}


def test_scope_all_includes_attention_and_shared_excludes_it():
    _, w_all, _, _ = grads_after("mtan", "_spy_sum", "all")
    _, w_shared, _, _ = grads_after("mtan", "_spy_sum", "shared")
    assert w_all.seen_jacobian.shape[1] > w_shared.seen_jacobian.shape[1]


def test_equal_weights_through_the_jacobian_match_the_loss_level_step():
    """Weights 1 through the parameter step = one backward of the plain sum."""
    Spy.weights_value = torch.ones(3, dtype=torch.float64)
    try:
        model_g, _, _, _ = grads_after("mtan", "_spy_sum", "all")
    finally:
        Spy.weights_value = WEIGHTS
    model_l, _, _, _ = grads_after("mtan", "equal")
    for (name, p), (_, q) in zip(model_g.named_parameters(), model_l.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=2e-5, msg=name)
        torch.testing.assert_close(p.detach(), q.detach(), msg=name)  # the SGD step too


def test_representation_step_gramian_and_update():
    """The heads read one shared feature; the step's Gramian is that of the feature
    gradients, and the update is one backward of sum_t w_t L_t."""
    model, weighting, _, result = grads_after("smooth", "_spy_weighted", "representation")
    ref_model, _, _, tasks = build("smooth")
    ref_model.train()
    b = batch()
    feature = ref_model.trunk(b["image"])
    outputs = {t: head(feature) for t, head in ref_model.heads.items()}
    losses = mtl_step.compute_losses(tasks, outputs, b)
    rows = torch.stack([torch.autograd.grad(losses[t], feature, retain_graph=True)[0].reshape(-1) for t in TASKS])
    torch.testing.assert_close(weighting.seen["gramian"], (rows @ rows.T).double(), rtol=1e-5, atol=1e-9)
    total = sum(float(w) * losses[t] for w, t in zip(WEIGHTS, TASKS))
    total.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=2e-5, msg=name)


def test_fp16_step_hands_the_method_unscaled_gradients():
    """Under fp16 the engine backpropagates the scaled losses and divides by the scale: the
    method sees the fp32 Jacobian up to fp16 forward rounding. Overflowing steps (non-finite
    Jacobian) skip the method and the optimiser step, so the parameters stay those of the
    fp32 reference step."""
    _, w32, _, _ = grads_after("smooth", "_spy_sum", "all")
    model, w16, step, _ = build("smooth", "_spy_sum", "all", amp="fp16")
    model.train()
    scales = []
    for _ in range(12):  # the first steps overflow in fp16 and are skipped while the scale halves
        scales.append(step.scale())
        run_step(step, batch())
        if hasattr(w16, "seen_jacobian"):
            break
    assert scales[0] == 2.0 ** 16 and hasattr(w16, "seen_jacobian")
    assert all(b == a / 2 for a, b in zip(scales, scales[1:]))  # skipped steps back off the scale
    j32, j16 = w32.seen_jacobian, w16.seen_jacobian
    rel = (j16 - j32).norm(dim=1) / j32.norm(dim=1)
    assert float(rel.max()) < 1e-2, rel  # fp16 forward rounding; the scale is removed (else ~6e4)
    torch.testing.assert_close(w16.seen["losses"], w32.seen["losses"], rtol=5e-3, atol=1e-4)


def test_loss_level_methods_refuse_a_scope_and_representation_needs_a_marker():
    with pytest.raises(UserError, match="loss-level"):
        build("mtan", "equal", "all")
    plain = torch.nn.ModuleDict({"heads": torch.nn.ModuleDict({t: torch.nn.Linear(2, 1) for t in TASKS})})
    with pytest.raises(UserError, match="declares no shared representation"):
        mtl_step.RepresentationStep(
            model=plain, train_model=plain, weighting=make_weighting("_spy_sum", TASKS),
            optimizer=torch.optim.SGD(plain.parameters(), lr=0.1), scaler=speed.grad_scaler(torch.device("cpu"), "none"),
            tasks=make_tasks(TASKS, num_classes=13), device=torch.device("cpu"), amp="none", channels_last=False,
            scope="representation", model_name="plain")


def test_step_generator_depends_on_seed_and_step_only():
    a = torch.rand(3, generator=step_generator(0, 5))
    assert torch.equal(a, torch.rand(3, generator=step_generator(0, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(0, 6)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 5)))


def test_gradient_stats_by_hand():
    g = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    stats = mtl_step.gradient_stats(g, ["a", "b"])
    assert stats["grad_norm"] == {"a": 2.0, "b": 1.0}
    assert stats["grad_cosine"] == {"a/b": 0.0}
    assert stats["gramian_condition"] == pytest.approx(4.0)
    j = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    stats = mtl_step.gradient_stats(j @ j.T, ["a", "b"])
    assert stats["grad_cosine"]["a/b"] == pytest.approx(2 ** -0.5)


def test_representation_step_gives_the_method_parameters_their_plain_gradient():
    """A method's own parameters (IMTL-L's s in e^s L - s) get d(e^s L - s)/ds = e^s L - 1 at the
    representation scope too, not w_t times it (the network gets the weighted gradient)."""

    class Scaled(Spy):
        def __init__(self, task_names):
            super().__init__(task_names)
            self.s = torch.nn.Parameter(torch.tensor([0.1, -0.2, 0.3]))

        def transform_losses(self, losses):
            return torch.exp(self.s) * losses - self.s

    register_weighting("_spy_scaled")(Scaled)
    try:
        _, weighting, _, result = grads_after("smooth", "_spy_scaled", "representation")
    finally:
        wbase._REGISTRY.pop("_spy_scaled")
    s0 = torch.tensor([0.1, -0.2, 0.3])
    want = torch.exp(s0) * result["losses"].float() - 1
    # SGD moved s by lr * grad: recover the gradient from the step
    torch.testing.assert_close((s0 - weighting.s.detach()) / 0.1, want, rtol=1e-4, atol=1e-6)
