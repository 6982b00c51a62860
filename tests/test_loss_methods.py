"""Loss-level methods RLW, SI, GLS, IMTL-L and FAMO.

Expected values come from hand derivations written out below, from TorchJD 0.18's scalarizers
(same formulas) where it is installed, and from ``torch.optim.Adam`` for FAMO's update of its
logits; never from the code under test.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from densemtl.errors import UserError
from densemtl.weighting import StepContext, make_weighting, weighting_class

TASKS = ("semantic", "depth", "normal")
METHODS = ("rlw", "si", "gls", "imtl_l", "famo")


def losses(values, requires_grad=True):
    t = torch.tensor(values, dtype=torch.float32, requires_grad=requires_grad)
    return t, {name: t[i] for i, name in enumerate(TASKS)}


def ctx(seed: int, step: int = 1) -> StepContext:
    return StepContext(step=step, epoch=1, generator=torch.Generator().manual_seed(seed))


def grad_of(total, t):
    (g,) = torch.autograd.grad(total, t)
    return g.double()


# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name, nonlinear, reforward, random, has_params", [
    ("rlw", False, False, True, False),
    ("si", True, False, False, False),
    ("gls", True, False, False, False),
    ("imtl_l", False, False, False, True),
    ("famo", True, True, False, False),
])
def test_flags_the_engine_reads(name, nonlinear, reforward, random, has_params):
    w = make_weighting(name, TASKS)
    assert w.kind == "loss"
    assert (w.nonlinear_in_losses, w.needs_reforward, w.random) == (nonlinear, reforward, random)
    assert bool(list(w.parameters())) == has_params
    assert w.paper


# ----------------------------------------------------------------------------- RLW

def test_rlw_draws_softmax_of_standard_normals_from_the_step_generator():
    w = make_weighting("rlw", TASKS)
    assert list(w.weights().values()) == pytest.approx([1 / 3] * 3)  # before any step
    w.begin_step(ctx(123))
    g = torch.Generator().manual_seed(123)
    z = torch.randn(3, generator=g).double()
    expected = [math.exp(v) / sum(math.exp(u) for u in z.tolist()) for v in z.tolist()]
    assert list(w.weights().values()) == pytest.approx(expected, rel=1e-12)
    assert sum(w.weights().values()) == pytest.approx(1.0)
    t, ls = losses([1.0, 2.0, 3.0])
    total = w.combine(ls)
    assert float(total.detach()) == pytest.approx(sum(e * v for e, v in zip(expected, [1, 2, 3])), rel=1e-6)
    torch.testing.assert_close(grad_of(total, t), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_rlw_matches_torchjd_random_weighting():
    aggregation = pytest.importorskip("torchjd.aggregation")
    w = make_weighting("rlw", TASKS)
    for seed in (0, 1, 7):
        w.begin_step(ctx(seed))
        torch.manual_seed(seed)  # TorchJD draws from the global generator
        expected = aggregation.RandomWeighting()(torch.zeros(3, 1))
        torch.testing.assert_close(w.lambdas.float(), expected, rtol=1e-6, atol=1e-7)


def test_rlw_is_a_function_of_the_generator_and_resumes():
    a, b = make_weighting("rlw", TASKS), make_weighting("rlw", TASKS)
    a.begin_step(ctx(5))
    b.begin_step(ctx(5))
    assert a.weights() == b.weights()
    b.begin_step(ctx(6))
    assert a.weights() != b.weights()
    resumed = make_weighting("rlw", TASKS)
    resumed.load_state_dict(a.state_dict())
    assert resumed.weights() == a.weights()  # the current draw is in the state
    a.begin_step(ctx(9, step=2))
    resumed.begin_step(ctx(9, step=2))
    assert resumed.weights() == a.weights()


# ----------------------------------------------------------------------------- SI and GLS

def test_si_is_the_sum_of_log_losses_with_gradient_one_over_the_loss():
    w = make_weighting("si", TASKS)
    t, ls = losses([0.5, 2.0, 4.0])
    total = w.combine(ls)
    assert float(total.detach()) == pytest.approx(math.log(0.5) + math.log(2.0) + math.log(4.0), rel=1e-6)  # = log 4
    torch.testing.assert_close(grad_of(total, t), torch.tensor([2.0, 0.5, 0.25], dtype=torch.float64))
    assert list(w.weights().values()) == [1.0, 1.0, 1.0]


def test_si_update_does_not_change_when_a_loss_is_multiplied_by_a_constant():
    w = make_weighting("si", TASKS)
    theta = torch.tensor([0.3, -1.2], requires_grad=True)

    def step_grad(scale_depth):
        ls = {"semantic": (theta ** 2).sum() + 1, "depth": scale_depth * (theta[0] - 2) ** 2,
              "normal": torch.exp(theta[1])}
        (g,) = torch.autograd.grad(w.combine(ls), theta)
        return g

    torch.testing.assert_close(step_grad(1.0), step_grad(1000.0))


def test_gls_is_the_geometric_mean_with_its_gradient_by_hand():
    w = make_weighting("gls", TASKS)
    t, ls = losses([1.0, 2.0, 4.0])
    total = w.combine(ls)
    assert float(total.detach()) == pytest.approx(2.0, rel=1e-6)  # (1 * 2 * 4)^(1/3)
    # d/dL_i (prod L)^(1/T) = GM / (T L_i) = 2 / (3 L_i)
    torch.testing.assert_close(grad_of(total, t), torch.tensor([2 / 3, 1 / 3, 1 / 6], dtype=torch.float64),
                               rtol=1e-6, atol=0)
    assert list(w.weights().values()) == pytest.approx([1 / 3] * 3)


def test_gls_matches_torchjd_geometric_mean():
    scalarization = pytest.importorskip("torchjd.scalarization")
    w = make_weighting("gls", TASKS)
    values = torch.rand(3, generator=torch.Generator().manual_seed(3)) * 5 + 0.01
    t, ls = losses(values.tolist())
    ref_t = values.clone().requires_grad_(True)
    ref = scalarization.GeometricMean()(ref_t)
    total = w.combine(ls)
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(grad_of(total, t), grad_of(ref, ref_t))


# ----------------------------------------------------------------------------- IMTL-L

def test_imtl_l_by_hand_starts_as_the_sum_and_learns_its_scales():
    w = make_weighting("imtl_l", TASKS)
    (s,) = list(w.parameters())
    assert s.tolist() == [0.0, 0.0, 0.0] and list(w.weights().values()) == [1.0, 1.0, 1.0]
    with torch.no_grad():
        s.copy_(torch.tensor([0.5, -1.0, 0.0]))
    t, ls = losses([2.0, 3.0, 4.0])
    total = w.combine(ls)
    expected = math.exp(0.5) * 2 - 0.5 + math.exp(-1.0) * 3 + 1.0 + 4.0
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    g_l, g_s = torch.autograd.grad(total, [t, s])
    torch.testing.assert_close(g_l.double(), torch.tensor([math.exp(0.5), math.exp(-1.0), 1.0], dtype=torch.float64),
                               rtol=1e-6, atol=0)
    # d/ds (e^s L - s) = e^s L - 1
    torch.testing.assert_close(g_s.double(), torch.tensor([math.exp(0.5) * 2 - 1, math.exp(-1.0) * 3 - 1, 3.0],
                                                          dtype=torch.float64), rtol=1e-6, atol=0)
    assert list(w.weights().values()) == pytest.approx([math.exp(0.5), math.exp(-1.0), 1.0])


def test_imtl_l_matches_torchjd_imtll():
    scalarization = pytest.importorskip("torchjd.scalarization")
    w = make_weighting("imtl_l", TASKS)
    ref = scalarization.IMTLL(3)
    with torch.no_grad():
        w.log_scale.copy_(torch.tensor([0.2, -0.4, 1.1]))
        ref.log_scale.copy_(w.log_scale)
    values = [0.7, 1.9, 0.05]
    t, ls = losses(values)
    ref_t = torch.tensor(values, requires_grad=True)
    total, expected = w.combine(ls), ref(ref_t)
    torch.testing.assert_close(total, expected)
    ours = torch.autograd.grad(total, [t, w.log_scale])
    for a, b in zip(ours, torch.autograd.grad(expected, [ref_t, ref.log_scale])):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- FAMO

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


class ReferenceFAMO:
    """FAMO written out in plain Python floats from the paper (Algorithm 2): softmax, its full
    Jacobian matrix, and Adam with L2 weight decay as in Kingma & Ba / torch.optim.Adam."""

    def __init__(self, k, lr=0.025, gamma=0.001):
        self.xi, self.m, self.v, self.t = [0.0] * k, [0.0] * k, [0.0] * k, 0
        self.lr, self.gamma = lr, gamma

    def z(self):
        e = [math.exp(x) for x in self.xi]
        return [x / sum(e) for x in e]

    def gradient_weights(self, ls):
        z, d = self.z(), [v + 1e-8 for v in ls]
        c = 1.0 / sum(zi / di for zi, di in zip(z, d))
        return [c * zi / di for zi, di in zip(z, d)]

    def update(self, before, after):
        z, k = self.z(), len(self.xi)
        delta = [math.log(b + 1e-8) - math.log(a + 1e-8) for b, a in zip(before, after)]
        jac = [[(z[i] if i == j else 0.0) - z[i] * z[j] for j in range(k)] for i in range(k)]  # dz_i/dxi_j
        grad = [sum(jac[i][j] * delta[i] for i in range(k)) + self.gamma * self.xi[j] for j in range(k)]
        self.t += 1
        for j in range(k):
            self.m[j] = BETA1 * self.m[j] + (1 - BETA1) * grad[j]
            self.v[j] = BETA2 * self.v[j] + (1 - BETA2) * grad[j] ** 2
            m_hat = self.m[j] / (1 - BETA1 ** self.t)
            v_hat = self.v[j] / (1 - BETA2 ** self.t)
            self.xi[j] -= self.lr * m_hat / (math.sqrt(v_hat) + ADAM_EPS)


def test_famo_combine_value_and_gradient_by_hand():
    w = make_weighting("famo", TASKS)
    t, ls = losses([0.5, 1.0, 2.0])
    total = w.combine(ls)
    # z = 1/3 each; c = 1 / sum(z / D) = 1 / (3.5 / 3); total = c / 3 * (log 0.5 + log 1 + log 2) = 0
    assert float(total.detach()) == pytest.approx(0.0, abs=1e-6)
    # gradient c z_i / D_i = (2/7) [2, 1, 0.5]: a convex combination
    expected = torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64)
    torch.testing.assert_close(grad_of(total, t), expected, rtol=1e-6, atol=0)
    assert list(w.weights().values()) == pytest.approx([1 / 3] * 3)  # z


def test_famo_logits_over_two_steps_by_hand():
    w = make_weighting("famo", TASKS)
    ref = ReferenceFAMO(3)
    steps = [([0.5, 1.0, 2.0], [0.4, 1.0, 2.2]), ([0.4, 1.0, 2.2], [0.39, 0.8, 2.1])]
    for before, after in steps:
        _, ls = losses(before)
        t = torch.tensor(before, requires_grad=True)
        total = w.combine({name: t[i] for i, name in enumerate(TASKS)})
        torch.testing.assert_close(grad_of(total, t), torch.tensor(ref.gradient_weights(before), dtype=torch.float64),
                                   rtol=1e-6, atol=1e-9)
        w.after_step(torch.tensor(after))
        ref.update(before, after)
        torch.testing.assert_close(w.logits, torch.tensor(ref.xi, dtype=torch.float64), rtol=1e-7, atol=1e-10)
    # the first Adam step moves each logit by about lr against the sign of its gradient:
    # semantic improved most (log 0.5/0.4 > 0), so its weight went down
    assert ref.z()[0] < 1 / 3


def test_famo_matches_torchjd_famo_over_three_steps():
    scalarization = pytest.importorskip("torchjd.scalarization")
    w = make_weighting("famo", TASKS)
    ref = scalarization.FAMO(3, lr=0.025, weight_decay=0.001)
    gen = torch.Generator().manual_seed(11)
    for _ in range(3):
        before = torch.rand(3, generator=gen) + 0.1
        after = before * (0.8 + 0.4 * torch.rand(3, generator=gen))
        t, ref_t = before.clone().requires_grad_(True), before.clone().requires_grad_(True)
        total = w.combine({name: t[i] for i, name in enumerate(TASKS)})
        expected = ref(ref_t)
        torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_of(total, t), grad_of(expected, ref_t), rtol=1e-5, atol=1e-6)
        w.after_step(after)
        ref.update(after)
        torch.testing.assert_close(w.logits.float(), ref._w.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.001, 0.01])
def test_famo_adam_on_buffers_matches_torch_optim_adam(gamma):
    w = make_weighting("famo", TASKS, w_lr=0.05, gamma=gamma)
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=0.05, weight_decay=gamma)
    gen = torch.Generator().manual_seed(2)
    for _ in range(8):
        g = torch.randn(3, generator=gen, dtype=torch.float64) * 0.1
        p.grad = g.clone()
        opt.step()
        w.adam_step_(g)
        torch.testing.assert_close(w.logits, p.detach(), rtol=1e-12, atol=1e-15)
    state = opt.state[p]
    torch.testing.assert_close(w.adam_exp_avg, state["exp_avg"], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(w.adam_exp_avg_sq, state["exp_avg_sq"], rtol=1e-12, atol=1e-18)
    assert int(w.adam_step) == int(state["step"]) == 8


def famo_steps(w, seed, n):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        before = torch.rand(3, generator=gen) + 0.2
        w.combine({name: before[i] for i, name in enumerate(TASKS)})
        w.after_step(before * (0.7 + 0.5 * torch.rand(3, generator=gen)))


def test_famo_logits_stay_out_of_the_optimiser_and_state_dict_resumes_exactly():
    w = make_weighting("famo", TASKS)
    assert list(w.parameters()) == []
    assert {"logits", "adam_exp_avg", "adam_exp_avg_sq", "adam_step"} <= set(w.state_dict())
    famo_steps(w, 0, 3)
    resumed = make_weighting("famo", TASKS)
    resumed.load_state_dict(w.state_dict())
    famo_steps(w, 1, 3)
    famo_steps(resumed, 1, 3)
    for key, value in w.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert not torch.equal(w.logits, torch.zeros(3, dtype=torch.float64))


def test_famo_after_step_needs_a_combine_first():
    w = make_weighting("famo", TASKS)
    with pytest.raises(RuntimeError, match="combine first"):
        w.after_step(torch.ones(3))


def test_famo_defaults_and_option_errors():
    w = make_weighting("famo", TASKS)
    assert (w.w_lr, w.gamma) == (0.025, 0.001)
    assert make_weighting("famo", TASKS, gamma=0.01).gamma == 0.01
    with pytest.raises(UserError, match="weighting option gamma of 'famo': expected a finite number"):
        make_weighting("famo", TASKS, gamma="0.01")
    with pytest.raises(UserError, match="weighting option w_lr of 'famo': expected a finite number"):
        make_weighting("famo", TASKS, w_lr=True)
    with pytest.raises(UserError, match="gamma of 'famo' must be in"):
        make_weighting("famo", TASKS, gamma=-0.1)
    with pytest.raises(UserError, match=r"unknown option\(s\) \['lr'\].*valid options: w_lr, gamma"):
        make_weighting("famo", TASKS, lr=0.1)
    for name in ("rlw", "si", "gls", "imtl_l"):
        with pytest.raises(UserError, match="unknown option"):
            make_weighting(name, TASKS, init=0.0)
