"""Gradient-level methods GradDrop, GradVac, DB-MTL and GradNorm.

Expected values come from hand derivations written out below, from TorchJD 0.18 (GradDrop and
GradVac, same formulas) where it is installed, and from finite differences; never from the
code under test.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from densemtl.engine import speed
from densemtl.engine.mtl_step import make_step, step_generator
from densemtl.errors import UserError
from densemtl.tasks import make_tasks, task_channels
from densemtl.weighting import StepContext, make_weighting, weighting_class
from mtl_helpers import SmoothMTL, synthetic_batch

TASKS = ("semantic", "depth", "normal")
TWO = ("a", "b")
METHODS = ("graddrop", "gradvac", "db_mtl", "gradnorm")


def ctx(seed: int = 0, step: int = 1) -> StepContext:
    return StepContext(step=step, epoch=1, generator=torch.Generator().manual_seed(seed))


def rows(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name, scope, weights_only, random", [
    ("graddrop", "shared", False, True),
    ("gradvac", "all", True, True),
    ("db_mtl", "all", False, False),
    ("gradnorm", "all", False, False),
])
def test_attributes_the_engine_reads(name, scope, weights_only, random):
    cls = weighting_class(name)
    assert cls.kind == "gradient" and cls.kind_label() == "gradient"
    assert (cls.default_scope, cls.weights_only, cls.random, cls.head_weights) == (scope, weights_only, random, "sum")
    assert cls.paper


@pytest.mark.parametrize("name", ["graddrop", "db_mtl", "gradnorm"])
def test_methods_that_need_the_parameter_jacobian_refuse_scope_representation(name):
    tasks = make_tasks(list(TASKS), num_classes=13)
    model = SmoothMTL(task_channels(tasks))
    w = make_weighting(name, list(tasks))
    with pytest.raises(UserError, match="needs the parameter gradients"):
        make_step(model=model, train_model=model, weighting=w, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  scaler=speed.grad_scaler(torch.device("cpu"), "none"), tasks=tasks, device=torch.device("cpu"),
                  amp="none", channels_last=False, scope="representation", model_name="smooth")


@pytest.mark.parametrize("name, option, value, message", [
    ("graddrop", "leak", 1.5, "must be in"), ("graddrop", "leak", "0", "expected a finite number"),
    ("gradvac", "beta", -0.1, "must be in"),
    ("db_mtl", "beta", 2.0, "must be in"), ("db_mtl", "beta_sigma", -1.0, "must be in"),
    ("db_mtl", "beta_sigma", [0.5], "expected a finite number"),
    ("gradnorm", "alpha", "1.5", "expected a finite number"), ("gradnorm", "alpha", -1, "must be in"),
])
def test_option_errors_name_the_option(name, option, value, message):
    with pytest.raises(UserError, match=f"{option} of '{name}'.*{message}"):
        make_weighting(name, TASKS, **{option: value})


def test_defaults_are_the_official_hyper_parameters():
    assert make_weighting("graddrop", TASKS).leak == 0.0
    assert make_weighting("gradvac", TASKS).beta == 0.5
    w = make_weighting("db_mtl", TASKS)
    assert (w.beta, w.beta_sigma) == (0.9, 0.0)
    assert make_weighting("gradnorm", TASKS).alpha == 1.5


# ----------------------------------------------------------------------------- GradDrop

#: two tasks, three coordinates: sums (-2, -3, 4), absolute sums (4, 3, 4), purity (1/4, 0, 1)
G1, G2 = [1.0, -2.0, 3.0], [-3.0, -1.0, 1.0]


def graddrop_with(u, leak=0.0):
    w = make_weighting("graddrop", TWO, leak=leak)
    seen = {}

    def draw(purity, _ctx):
        seen["purity"] = purity.clone()
        return torch.tensor(u)

    w.draw = draw
    update, weights = w.aggregate(rows(G1, G2), torch.ones(2, dtype=torch.float64), ctx())
    return update, weights, seen["purity"]


@pytest.mark.parametrize("u, leak, expected", [
    # P < U at coordinate 0 and 1: keep the negative gradients; P = 1 > U at 2: keep the positive ones
    ([0.5, 0.5, 0.5], 0.0, [-3.0, -3.0, 4.0]),
    # P = 1/4 > U = 0.1 at coordinate 0: keep the positive one (task 1's 1.0)
    ([0.1, 0.5, 0.5], 0.0, [1.0, -3.0, 4.0]),
    # leak 0.5: a dropped gradient passes at half (task 1's 1.0 at coordinate 0)
    ([0.5, 0.5, 0.5], 0.5, [-2.5, -3.0, 4.0]),
    # leak 1: the plain sum
    ([0.5, 0.5, 0.5], 1.0, [-2.0, -3.0, 4.0]),
])
def test_graddrop_by_hand_with_fixed_thresholds(u, leak, expected):
    update, weights, purity = graddrop_with(u, leak)
    torch.testing.assert_close(purity, torch.tensor([0.25, 0.0, 1.0]), rtol=0, atol=1e-7)
    torch.testing.assert_close(update, torch.tensor(expected), rtol=0, atol=1e-6)
    assert weights is None


def test_graddrop_matches_torchjd_with_the_same_uniform_draws():
    aggregation = pytest.importorskip("torchjd.aggregation")
    jac = torch.randn(3, 2000, generator=torch.Generator().manual_seed(4))
    w = make_weighting("graddrop", TASKS)
    for seed in (0, 1, 2):
        update, _ = w.aggregate(jac, torch.ones(3, dtype=torch.float64), ctx(seed))
        torch.manual_seed(seed)  # TorchJD draws U from the global generator, the first draw of the step
        expected = aggregation.GradDrop()(jac)
        torch.testing.assert_close(update, expected, rtol=1e-6, atol=1e-6)


def test_graddrop_is_a_function_of_the_generator():
    jac = torch.randn(3, 500, generator=torch.Generator().manual_seed(1))
    w = make_weighting("graddrop", TASKS)
    a, _ = w.aggregate(jac, torch.ones(3), ctx(7))
    b, _ = w.aggregate(jac, torch.ones(3), ctx(7))
    c, _ = w.aggregate(jac, torch.ones(3), ctx(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every coordinate is the sum of the positive or of the negative parts
    pos, neg = jac.clamp(min=0).sum(0), jac.clamp(max=0).sum(0)
    assert bool(((a - pos).abs().lt(1e-5) | (a - neg).abs().lt(1e-5)).all())


# ----------------------------------------------------------------------------- GradVac

def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_gradvac_two_tasks_by_hand_over_two_steps():
    w = make_weighting("gradvac", TWO)
    g1, g2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([-1.0, 1.0], dtype=torch.float64)
    jac = torch.stack([g1, g2]).float()
    # step 1: rho = -1/sqrt(2) < target 0 in both directions.
    # pc1 = g1 + g2 * |g1| (0 - rho) / |g2| = g1 + g2 / 2; pc2 = g2 + g1 * |g2| (-rho) / |g1| = g2 + g1
    update, weights = w.aggregate(jac, torch.ones(2), ctx(0))
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5], dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(update, torch.tensor([0.5, 1.5]), rtol=0, atol=1e-6)
    # targets: 0.5 * 0 + 0.5 * rho
    rho = -1 / math.sqrt(2)
    torch.testing.assert_close(w.phi_hat, torch.tensor([[0.0, rho / 2], [rho / 2, 0.0]], dtype=torch.float64),
                               rtol=0, atol=1e-7)
    # step 2, the same gradients: the correction makes cos(pc_i, g_j) exactly the target rho / 2
    _, weights = w.aggregate(jac, torch.ones(2), ctx(1))
    w = weights
    pc1 = g1 + (w[1] - 1.0) * g2  # pc1 = g1 + a1 g2, pc2 = g2 + a2 g1, weights = (1 + a2, 1 + a1)
    pc2 = g2 + (w[0] - 1.0) * g1
    assert cosine(pc1, g2) == pytest.approx(rho / 2, abs=1e-6)
    assert cosine(pc2, g1) == pytest.approx(rho / 2, abs=1e-6)
    assert float(w[1]) > 1.0 and float(w[0]) > 1.0


def test_gradvac_leaves_pairs_above_their_target_alone():
    w = make_weighting("gradvac", TWO)
    jac = rows([1.0, 0.2], [1.0, -0.1])  # cos > 0 = target
    update, weights = w.aggregate(jac, torch.ones(2), ctx(0))
    assert weights.tolist() == [1.0, 1.0]
    torch.testing.assert_close(update, jac.sum(0))
    c = cosine(jac[0].double(), jac[1].double())
    torch.testing.assert_close(w.phi_hat, torch.tensor([[0.0, c / 2], [c / 2, 0.0]], dtype=torch.float64),
                               rtol=0, atol=1e-7)


def test_gradvac_target_moves_by_beta():
    w = make_weighting("gradvac", TWO, beta=0.2)
    jac = rows([1.0, 0.0], [-1.0, 1.0])  # rho = -1/sqrt(2) both ways
    w.aggregate(jac, torch.ones(2), ctx(0))
    rho = -1 / math.sqrt(2)
    torch.testing.assert_close(w.phi_hat, torch.tensor([[0.0, 0.2 * rho], [0.2 * rho, 0.0]], dtype=torch.float64),
                               rtol=0, atol=1e-7)
    w.aggregate(jac, torch.ones(2), ctx(1))  # (1 - 0.2) * 0.2 rho + 0.2 rho
    torch.testing.assert_close(w.phi_hat[0, 1].item(), 0.8 * 0.2 * rho + 0.2 * rho, rtol=0, atol=1e-7)


def test_gradvac_matches_torchjd_over_steps():
    aggregation = pytest.importorskip("torchjd.aggregation")
    gen = torch.Generator().manual_seed(3)
    w = make_weighting("gradvac", TASKS)
    ref = aggregation.GradVacWeighting(beta=0.5)
    base = torch.randn(3, 40, generator=gen)
    for seed in range(5):
        jac = base + 0.8 * torch.randn(3, 40, generator=gen)
        gramian = (jac @ jac.T).double()
        step_ctx = StepContext(step=seed, epoch=1, generator=torch.Generator().manual_seed(seed),
                               gramian=gramian.float())
        update, weights = w.aggregate(jac, torch.ones(3), step_ctx)
        torch.manual_seed(seed)  # TorchJD draws each task's order with torch.randperm from the global generator
        expected = ref(gramian)
        torch.testing.assert_close(weights, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(w.phi_hat, ref._phi_t, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(update, expected.float() @ jac, rtol=1e-5, atol=1e-5)
    assert bool((w.phi_hat != 0).any())


def test_gradvac_state_dict_resumes_exactly():
    gen = torch.Generator().manual_seed(0)
    jacs = [torch.randn(3, 30, generator=gen) for _ in range(6)]
    a = make_weighting("gradvac", TASKS)
    for i in range(3):
        a.aggregate(jacs[i], torch.ones(3), ctx(i))
    b = make_weighting("gradvac", TASKS)
    b.load_state_dict(a.state_dict())
    for i in range(3, 6):
        ua, wa = a.aggregate(jacs[i], torch.ones(3), ctx(i))
        ub, wb = b.aggregate(jacs[i], torch.ones(3), ctx(i))
        assert torch.equal(ua, ub) and torch.equal(wa, wb)
    assert torch.equal(a.phi_hat, b.phi_hat)


# ----------------------------------------------------------------------------- DB-MTL

def test_db_mtl_takes_gradients_of_log_losses():
    w = make_weighting("db_mtl", TWO)
    out = w.transform_losses(torch.tensor([1.0, math.e]))
    torch.testing.assert_close(out, torch.tensor([1e-8, 1.0]), rtol=1e-6, atol=1e-7)


def test_db_mtl_two_steps_by_hand():
    w = make_weighting("db_mtl", TWO)
    # step 1: m = 0.1 J1 = [[.3, .4], [0, .1]], norms (0.5, 0.1), alpha = (1, 5)
    update, alpha = w.aggregate(rows([3.0, 4.0], [0.0, 1.0]), torch.ones(2), ctx())
    torch.testing.assert_close(alpha, torch.tensor([1.0, 5.0], dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(update, torch.tensor([0.3, 0.4 + 5 * 0.1]), rtol=1e-6, atol=1e-7)
    # step 2: m = 0.1 J2 + 0.9 m = [[.1 + .27, .36], [0, .2 + .09]]
    update, alpha = w.aggregate(rows([1.0, 0.0], [0.0, 2.0]), torch.ones(2), ctx())
    n0, n1 = math.hypot(0.37, 0.36), 0.29
    torch.testing.assert_close(alpha, torch.tensor([1.0, n0 / n1], dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(update, torch.tensor([0.37, 0.36 + n0]), rtol=1e-6, atol=1e-7)
    assert int(w.steps) == 2


def test_db_mtl_beta_sigma_decays_the_rate():
    w = make_weighting("db_mtl", TWO, beta_sigma=1.0)
    w.aggregate(rows([3.0, 4.0], [0.0, 1.0]), torch.ones(2), ctx())  # rate 0.9 / 1: m = [[.3, .4], [0, .1]]
    # rate 0.9 / 2 = 0.45: m = 0.55 J2 + 0.45 m = [[.55 + .135, .18], [0, 1.1 + .045]]
    update, alpha = w.aggregate(rows([1.0, 0.0], [0.0, 2.0]), torch.ones(2), ctx())
    n0, n1 = math.hypot(0.685, 0.18), 1.145
    torch.testing.assert_close(alpha, torch.tensor([n1 / n0, 1.0], dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(update, torch.tensor([n1 / n0 * 0.685, n1 / n0 * 0.18 + 1.145]), rtol=1e-6, atol=1e-7)


def test_db_mtl_average_is_saved_but_not_a_buffer_and_resumes_exactly():
    gen = torch.Generator().manual_seed(0)
    jacs = [torch.randn(3, 20, generator=gen) for _ in range(4)]
    a = make_weighting("db_mtl", TASKS)
    assert set(a.state_dict()) == {"steps", "momentum"} and a.state_dict()["momentum"].numel() == 0
    assert "momentum" not in dict(a.named_buffers())  # DDP would broadcast T x P numbers every forward
    fresh = make_weighting("db_mtl", TASKS)
    fresh.load_state_dict(a.state_dict())  # empty into empty
    for j in jacs[:2]:
        a.aggregate(j, torch.ones(3), ctx())
    assert a.state_dict()["momentum"].shape == (3, 20)
    b = make_weighting("db_mtl", TASKS)
    b.load_state_dict(a.state_dict())  # a sized average into a fresh method
    for j in jacs[2:]:
        ua, wa = a.aggregate(j, torch.ones(3), ctx())
        ub, wb = b.aggregate(j, torch.ones(3), ctx())
        assert torch.equal(ua, ub) and torch.equal(wa, wb)
    with pytest.raises(RuntimeError, match="momentum"):
        make_weighting("db_mtl", TASKS).load_state_dict({"steps": torch.tensor(1)})
    with pytest.raises(ValueError, match="saved moving average has shape"):
        b.aggregate(torch.ones(3, 21), torch.ones(3), ctx())


# ----------------------------------------------------------------------------- GradNorm

def test_gradnorm_first_epoch_is_equal_weighting_and_leaves_s_alone():
    w = make_weighting("gradnorm", TASKS)
    (s,) = list(w.parameters())
    assert list(w.weights().values()) == pytest.approx([1.0, 1.0, 1.0])  # T softmax(s) starts equal
    s.grad = torch.zeros(3)  # what the engine writes for the method's own parameters
    jac = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    update, weights = w.aggregate(jac, torch.ones(3, dtype=torch.float64), ctx())
    torch.testing.assert_close(update, jac.sum(0))
    assert weights.tolist() == [1.0, 1.0, 1.0] and s.grad is None


def test_gradnorm_records_the_first_epoch_losses_only():
    w = make_weighting("gradnorm", TASKS)
    w.epoch_end({"semantic": 2.0, "depth": 0.5, "normal": 0.25})
    w.epoch_end({"semantic": 1.0, "depth": 1.0, "normal": 1.0})
    assert w.initial_losses.tolist() == [2.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="'depth'.*finite"):
        make_weighting("gradnorm", TASKS).epoch_end({"semantic": 1.0, "depth": 0.0, "normal": 1.0})


def test_gradnorm_s_gradient_and_update_by_hand():
    w = make_weighting("gradnorm", TWO)
    w.epoch_end({"a": 1.0, "b": 1.0})
    jac = rows([3.0, 0.0], [0.0, 1.0])  # norms 3 and 1; w = (1, 1)
    update, weights = w.aggregate(jac, torch.tensor([0.5, 1.0], dtype=torch.float64), ctx())
    # r = (0.5, 1) / 0.75; G = (3, 1), Gbar = 2; G - 2 r^1.5 = (1.91, -2.08): signs (+, -)
    # dL/dw = (+3, -1); dw/ds = 2 (diag z - z z^T) with z = 1/2: [[.5, -.5], [-.5, .5]]
    # s.grad = (0.5 * 3 + 0.5 * 1, -0.5 * 3 - 0.5 * 1) = (2, -2)
    torch.testing.assert_close(w.log_weights.grad, torch.tensor([2.0, -2.0]), rtol=1e-6, atol=1e-6)
    assert weights.tolist() == pytest.approx([1.0, 1.0])
    torch.testing.assert_close(update, jac.sum(0))


def test_gradnorm_relative_rates_are_normalised_by_their_mean():
    w = make_weighting("gradnorm", TWO)
    w.epoch_end({"a": 1.0, "b": 1.0})
    jac = rows([1.0, 0.0], [0.0, 1.0])  # norms 1 and 1: G = (1, 1) = Gbar
    w.aggregate(jac, torch.tensor([2.0, 2.2], dtype=torch.float64), ctx())
    # r = (2, 2.2) / 2.1 = (0.952, 1.048); G - r^1.5 = (+0.071, -0.072): signs (+, -), dL/dw = (1, -1)
    # s.grad = [[.5, -.5], [-.5, .5]] (1, -1) = (1, -1)  (unnormalised rates 2, 2.2 would give (0, 0))
    torch.testing.assert_close(w.log_weights.grad, torch.tensor([1.0, -1.0]), rtol=1e-6, atol=1e-6)


def test_gradnorm_s_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(5)
    w = make_weighting("gradnorm", TASKS, alpha=1.5)
    with torch.no_grad():
        w.log_weights.copy_(torch.tensor([0.3, 1.2, -0.4]))
    w.epoch_end({"semantic": 2.0, "depth": 0.7, "normal": 0.4})
    jac = torch.randn(3, 50, generator=gen) * torch.tensor([[1.0], [3.0], [0.2]])
    values = torch.tensor([1.5, 0.3, 0.35], dtype=torch.float64)
    update, weights = w.aggregate(jac, values, ctx())

    norms = [float(r.double().norm()) for r in jac]
    s0 = [0.3, 1.2, -0.4]

    def task_weights(s):
        e = [math.exp(v) for v in s]
        return [3 * v / sum(e) for v in e]

    ratio = [float(v) / l0 for v, l0 in zip(values, [2.0, 0.7, 0.4])]
    r = [x / (sum(ratio) / 3) for x in ratio]
    g0 = [wi * n for wi, n in zip(task_weights(s0), norms)]
    target = [sum(g0) / 3 * ri ** 1.5 for ri in r]  # held fixed, as the method detaches it

    def l_grad(s):
        return sum(abs(wi * n - t) for wi, n, t in zip(task_weights(s), norms, target))

    h = 1e-6
    fd = [(l_grad([v + h * (i == k) for i, v in enumerate(s0)]) - l_grad([v - h * (i == k) for i, v in enumerate(s0)]))
          / (2 * h) for k in range(3)]
    torch.testing.assert_close(w.log_weights.grad.double(), torch.tensor(fd, dtype=torch.float64), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights, torch.tensor(task_weights(s0), dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(update, torch.tensor(task_weights(s0)).float() @ jac, rtol=1e-5, atol=1e-5)


def test_gradnorm_state_dict_resumes_exactly():
    gen = torch.Generator().manual_seed(1)
    jacs = [torch.randn(3, 12, generator=gen) for _ in range(4)]
    values = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)

    def steps(w, js):
        opt = torch.optim.SGD(w.parameters(), lr=0.1)
        out = []
        for j in js:
            update, _ = w.aggregate(j, values, ctx())
            opt.step()
            out.append(update)
        return out

    a = make_weighting("gradnorm", TASKS)
    a.epoch_end({"semantic": 1.0, "depth": 1.0, "normal": 0.5})
    steps(a, jacs[:2])
    b = make_weighting("gradnorm", TASKS)
    b.load_state_dict(a.state_dict())
    for ua, ub in zip(steps(a, jacs[2:]), steps(b, jacs[2:])):
        assert torch.equal(ua, ub)
    assert torch.equal(a.log_weights, b.log_weights)
    assert not torch.allclose(a.log_weights, torch.ones(3))


def test_gradnorm_through_the_engine_learns_s_after_the_first_epoch():
    torch.manual_seed(0)
    tasks = make_tasks(list(TASKS), num_classes=13)
    model = SmoothMTL(task_channels(tasks))
    w = make_weighting("gradnorm", list(tasks))
    opt = torch.optim.Adam([*model.parameters(), *w.parameters()], lr=1e-2)
    step = make_step(model=model, train_model=model, weighting=w, optimizer=opt,
                     scaler=speed.grad_scaler(torch.device("cpu"), "none"), tasks=tasks, device=torch.device("cpu"),
                     amp="none", channels_last=False, scope="all", model_name="smooth")
    batch = synthetic_batch(2, 8, seed=0)
    out = step(batch["image"], batch, StepContext(step=1, epoch=1, generator=step_generator(0, 1)), lambda v: None)
    assert torch.equal(w.log_weights.detach(), torch.ones(3))  # epoch 1: equal weights, s untouched
    w.epoch_end(dict(zip(TASKS, out["losses"].tolist())))
    out = step(batch["image"], batch, StepContext(step=2, epoch=2, generator=step_generator(0, 2)), lambda v: None)
    assert not torch.equal(w.log_weights.detach(), torch.ones(3))
    assert out["weights"].sum().item() == pytest.approx(3.0)


# ----------------------------------------------------------------------------- DDP: global loss values

def _global_values_worker(rank: int, port: int, report: str) -> None:
    import os

    from densemtl.engine import distributed
    from densemtl.engine.mtl_step import global_values

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        local = torch.tensor([[1.0, 4.0], [3.0, 2.0]][rank], requires_grad=True)  # global mean (2, 3)
        db = make_weighting("db_mtl", TWO)
        fed = db.transform_losses(global_values(local))  # what the engine hands non-linear methods
        (grad,) = torch.autograd.grad(fed.sum(), local)
        gn = make_weighting("gradnorm", TWO)
        gn.epoch_end({"a": 1.0, "b": 1.0})
        gn.aggregate(rows([1.0, 0.0], [0.0, 1.0]), global_values(local).detach().double(), ctx())
        torch.save({"fed": fed.detach(), "grad": grad, "s_grad": gn.log_weights.grad}, f"{report}/rank{rank}.pt")
    finally:
        distributed.shutdown()


def test_db_mtl_and_gradnorm_use_the_global_batch_loss_values_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    from test_ddp import free_port

    mp.start_processes(_global_values_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    out = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in out:  # log of the global values (2, 3); the local graph with the global value: d/dL = 1 / L_global
        torch.testing.assert_close(r["fed"], torch.log(torch.tensor([2.0, 3.0])))
        torch.testing.assert_close(r["grad"], torch.tensor([0.5, 1 / 3]))
    # GradNorm on the global values (2, 3): r = (0.8, 1.2), G - r^1.5 = (+0.28, -0.31): s.grad = (1, -1) on both
    # ranks (rank 1's local values (3, 2) alone would give (-1, 1))
    for r in out:
        torch.testing.assert_close(r["s_grad"], torch.tensor([1.0, -1.0]), rtol=1e-6, atol=1e-6)
