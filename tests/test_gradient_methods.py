"""Gradient-level methods: each update against an independent computation.

References: TorchJD 0.18 (an independent MIT implementation; its quadprog / ECOS paths are not
used), closed forms derived by hand, brute force over the simplex, and the defining optimality
conditions of each method (KKT, fixed points, singular values). No expected value here comes
from densemtl's own solvers.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from densemtl.errors import UserError
from densemtl.weighting import SolverFailure, StepContext, make_weighting, weighting_class, weighting_options

TASKS3 = ("semantic", "depth", "normal")
TASKS2 = ("semantic", "depth")
METHODS = ("mgda", "mgda_ub", "pcgrad", "imtl_g", "imtl", "cagrad", "nash_mtl", "aligned_mtl",
           "aligned_mtl_ub", "upgrad")


def ctx(seed: int = 0) -> StepContext:
    return StepContext(step=0, epoch=0, generator=torch.Generator().manual_seed(seed))


def jac3() -> torch.Tensor:
    """Seeded 3 x 50 float32 Jacobian with a conflicting pair (rows 0 and 1)."""
    g = torch.Generator().manual_seed(1234)
    J = torch.randn(3, 50, generator=g)
    J[1] -= 0.8 * J[0]
    J[2] *= 0.3
    return J


def gram(J: torch.Tensor) -> torch.Tensor:
    return (J.double() @ J.double().T)


ONES3 = torch.ones(3, dtype=torch.float64)


def weights_of(name: str, J: torch.Tensor, seed: int = 0, context: StepContext | None = None, **options
               ) -> torch.Tensor:
    m = make_weighting(name, TASKS3[: J.shape[0]] if J.shape[0] <= 3 else [f"t{i}" for i in range(J.shape[0])],
                       **options)
    return m.gramian_weights(gram(J), torch.ones(J.shape[0], dtype=torch.float64), context or ctx(seed))


def update_of(name: str, J: torch.Tensor, seed: int = 0, **options) -> tuple[torch.Tensor, torch.Tensor]:
    m = make_weighting(name, TASKS3[: J.shape[0]], **options)
    update, w = m.aggregate(J, torch.ones(J.shape[0], dtype=torch.float64), ctx(seed))
    return update, w


def simplex_grid(T: int, n: int) -> np.ndarray:
    """All points of the simplex with coordinates in multiples of 1/n."""
    pts = [c for c in itertools.product(range(n + 1), repeat=T - 1) if sum(c) <= n]
    return np.array([[*c, n - sum(c)] for c in pts], dtype=np.float64) / n


# ------------------------------------------------------------------------------------------------
# registry, metadata, docstrings, options


EXPECTED = {  # name: (default_scope, head_weights, weights_only)
    "mgda": ("shared", "sum", True), "mgda_ub": ("representation", "weighted", True),
    "pcgrad": ("shared", "sum", True), "imtl_g": ("all", "weighted", True),
    "imtl": ("representation", "sum", True), "cagrad": ("shared", "sum", True),
    "nash_mtl": ("all", "weighted", True), "aligned_mtl": ("all", "sum", True),
    "aligned_mtl_ub": ("representation", "sum", True), "upgrad": ("all", "sum", True),
}


@pytest.mark.parametrize("name", METHODS)
def test_registered_with_scope_heads_and_documented_sections(name):
    cls = weighting_class(name)
    assert (cls.default_scope, cls.head_weights, cls.weights_only) == EXPECTED[name]
    assert cls.kind == "gradient" and cls.paper and cls.needs
    doc = cls.__doc__
    summary, rest = doc.split("\n\n", 1)
    assert "\n" not in summary.strip()
    for section in ("Options:", "Scale:", "AMP:", "DDP:", "Reference:"):
        assert f"\n    {section}" in doc, (name, section)


def test_official_defaults():
    assert weighting_options("cagrad") == {"c": 0.4, "rescale": 1, "scale": "sum"}
    assert weighting_options("nash_mtl") == {"optim_niter": 20, "max_norm": 1.0, "update_weights_every": 1}
    assert weighting_options("mgda") == {"scale": "sum", "normalization": "none"}
    assert weighting_options("mgda_ub") == {"scale": "mean", "normalization": "none"}
    assert weighting_options("aligned_mtl") == {"scale_mode": "min", "scale": "sum"}
    assert weighting_options("upgrad") == {"reg_eps": 1e-4, "norm_eps": 0.0}
    assert weighting_options("pcgrad") == {"reduction": "sum"}
    assert weighting_options("imtl_g") == {} and weighting_options("imtl") == {}


@pytest.mark.parametrize("name, options, message", [
    ("cagrad", {"c": -0.1}, "option c of 'cagrad'"),
    ("cagrad", {"rescale": 3}, "option rescale of 'cagrad'"),
    ("cagrad", {"c": "big"}, "expected a finite number"),
    ("cagrad", {"scale": "max"}, "option scale of 'cagrad'"),
    ("mgda", {"normalization": "norm"}, "option normalization of 'mgda'"),
    ("pcgrad", {"reduction": "max"}, "option reduction of 'pcgrad'"),
    ("nash_mtl", {"optim_niter": 0}, "option optim_niter of 'nash_mtl'"),
    ("nash_mtl", {"update_weights_every": 1.5}, "expected an integer"),
    ("nash_mtl", {"max_norm": -1.0}, "option max_norm of 'nash_mtl'"),
    ("aligned_mtl", {"scale_mode": "max"}, "option scale_mode of 'aligned_mtl'"),
    ("upgrad", {"reg_eps": -1e-3}, "option reg_eps of 'upgrad'"),
    ("upgrad", {"pref": "mean"}, "unknown option"),
])
def test_bad_options_are_user_errors(name, options, message):
    with pytest.raises(UserError, match=message):
        make_weighting(name, TASKS3, **options)


def test_integer_options_accept_integral_floats():
    m = make_weighting("nash_mtl", TASKS3, optim_niter=5.0, update_weights_every=2)
    assert m.optim_niter == 5 and isinstance(m.optim_niter, int)
    assert make_weighting("cagrad", TASKS3, rescale=2.0).rescale == 2


@pytest.mark.parametrize("name", [n for n in METHODS if n != "nash_mtl"])
def test_default_aggregate_is_weights_times_jacobian_and_logged(name):
    J = jac3()
    m = make_weighting(name, TASKS3)
    assert m.weights() == dict.fromkeys(TASKS3, 1.0)  # before any step
    update, w = m.aggregate(J, ONES3, ctx())
    assert update.dtype == torch.float32 and w.dtype == torch.float64
    torch.testing.assert_close(update, (w.double() @ J.double()).float(), rtol=1e-5, atol=1e-6)
    assert m.weights() == pytest.approx(dict(zip(TASKS3, w.tolist())))


# ------------------------------------------------------------------------------------------------
# MGDA


def test_mgda_two_tasks_closed_form_by_hand():
    # g1 = (1, 0), g2 = (-1/2, 1): gamma = (|g2|^2 - g1.g2) / |g1 - g2|^2 = 1.75 / 3.25 = 7/13;
    # d = 7/13 g1 + 6/13 g2 = (4/13, 6/13), with d.g1 = d.g2 = |d|^2 = 4/13
    J = torch.tensor([[1.0, 0.0], [-0.5, 1.0]])
    update, w = update_of("mgda", J)
    torch.testing.assert_close(w, torch.tensor([14 / 13, 12 / 13], dtype=torch.float64))  # x T = 2
    torch.testing.assert_close(update, torch.tensor([8 / 13, 12 / 13]))
    _, w_mean = update_of("mgda", J, scale="mean")
    torch.testing.assert_close(w_mean, torch.tensor([7 / 13, 6 / 13], dtype=torch.float64))


def test_mgda_exact_at_the_simplex_edge():
    # g2 = 2 g1: the min-norm element is g1 itself (the official solver stops at gamma = 0.999)
    J = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    _, w = update_of("mgda", J, scale="mean")
    assert w.tolist() == [1.0, 0.0]


def test_mgda_matches_torchjd_times_T():
    from torchjd.aggregation import MGDAWeighting

    J = jac3()
    ref = MGDAWeighting(epsilon=1e-10, max_iters=20000)(gram(J))
    torch.testing.assert_close(weights_of("mgda", J), 3 * ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights_of("mgda", J, scale="mean"), ref, rtol=0, atol=1e-5)


def _mgda_weights(J: torch.Tensor) -> np.ndarray:
    m = make_weighting("mgda", [f"t{i}" for i in range(J.shape[0])], scale="mean")
    return m.gramian_weights(gram(J), torch.ones(J.shape[0], dtype=torch.float64), ctx()).numpy()


def _assert_min_norm_kkt(G: np.ndarray, w: np.ndarray) -> None:
    """w minimises w^T G w on the simplex iff (G w)_i >= w^T G w, with equality where w_i > 0."""
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    value, scale = w @ G @ w, np.abs(G).max()
    assert np.all(G @ w >= value - 1e-9 * scale)
    np.testing.assert_allclose((G @ w)[w > 1e-9], value, atol=1e-9 * scale)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("T", [4, 13])
def test_mgda_kkt_conditions(seed, T):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, 2 * T, generator=g) + torch.linspace(0, 1.5, 2 * T)  # optima on faces and inside
    J[seed % T] *= 3.0
    w = _mgda_weights(J)
    _assert_min_norm_kkt(gram(J).numpy(), w)
    assert 1 < (w > 1e-9).sum() < T  # the optimum on a face: the hard case for active sets


def test_mgda_falls_back_to_projected_gradient_and_counts_only_its_failure(monkeypatch):
    import scipy.optimize

    from densemtl.weighting import solvers

    def fail(*a, **k):
        raise RuntimeError("Maximum number of iterations reached.")

    J = jac3()
    monkeypatch.setattr(scipy.optimize, "nnls", fail)
    c = ctx()
    w = make_weighting("mgda", TASKS3, scale="mean").gramian_weights(gram(J), ONES3, c)
    assert c.stats == {}
    _assert_min_norm_kkt(gram(J).numpy(), w.numpy())
    monkeypatch.setattr(solvers, "_min_norm_projected_gradient", lambda G, n, tol: (np.array([0.5, 0.25, 0.25]), False))
    c = ctx()
    w = make_weighting("mgda", TASKS3).gramian_weights(gram(J), ONES3, c)
    assert c.stats == {"solver_failures": 1.0} and w.tolist() == [1.5, 0.75, 0.75]  # its last iterate, x T


def test_mgda_zero_in_the_hull_gives_a_zero_update():
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    update, w = update_of("mgda", J, scale="mean")
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert update.abs().max() < 1e-7


def test_mgda_normalizations_are_mgda_on_rescaled_gradients():
    from torchjd.aggregation import MGDAWeighting

    J = jac3()
    losses = torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64)
    norms = J.double().norm(dim=1)
    fw = MGDAWeighting(epsilon=1e-10, max_iters=20000)
    for normalization, n in (("l2", norms), ("loss", losses), ("loss+", losses * norms)):
        m = make_weighting("mgda", TASKS3, scale="mean", normalization=normalization)
        w = m.gramian_weights(gram(J), losses, ctx())
        Jn = J.double() / n[:, None]
        torch.testing.assert_close(w, fw(Jn @ Jn.T), rtol=0, atol=1e-5)


def test_mgda_ub_is_mgda_with_simplex_weights():
    J = jac3()
    torch.testing.assert_close(weights_of("mgda_ub", J), weights_of("mgda", J) / 3)


# ------------------------------------------------------------------------------------------------
# PCGrad


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_two_tasks_by_hand_in_any_order(seed):
    # g1 = (1, 0), g2 = (-1, 1), g1.g2 = -1: g1' = g1 + g2/2 = (1/2, 1/2), g2' = g2 + g1 = (0, 1)
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    update, w = update_of("pcgrad", J, seed=seed)
    torch.testing.assert_close(update, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5], dtype=torch.float64))  # (1 + 1) g1 + (1/2 + 1) g2
    update, _ = update_of("pcgrad", J, seed=seed, reduction="mean")
    torch.testing.assert_close(update, torch.tensor([0.25, 0.75]))


def test_pcgrad_without_conflict_is_the_sum():
    J = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.0, 0.3, 1.0]])
    _, w = update_of("pcgrad", J)
    assert w.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", [0, 1, 7, 42])
def test_pcgrad_matches_torchjd_for_the_same_orders(seed):
    from torchjd.aggregation import PCGradWeighting

    J = jac3()
    torch.manual_seed(seed)  # TorchJD draws one randperm(T) per task from the global generator
    ref = PCGradWeighting()(gram(J))
    torch.testing.assert_close(weights_of("pcgrad", J, seed=seed), ref)


def test_pcgrad_is_deterministic_given_the_generator():
    J = torch.randn(3, 20, generator=torch.Generator().manual_seed(3))
    J[1] = -J[0] + 0.3 * J[2]
    J[2] -= J[0]
    a = [weights_of("pcgrad", J, seed=s) for s in range(6)]
    assert all(torch.equal(a[0], weights_of("pcgrad", J, seed=0)) for _ in range(2))
    assert len({tuple(x.tolist()) for x in a}) > 1  # the order matters for this Jacobian


# ------------------------------------------------------------------------------------------------
# IMTL-G, IMTL


def test_imtl_g_matches_torchjd_and_projects_equally():
    from torchjd.aggregation import IMTLGWeighting

    J = jac3()
    w = weights_of("imtl_g", J)
    torch.testing.assert_close(w, IMTLGWeighting()(gram(J)))
    assert float(w.sum()) == pytest.approx(1.0)
    d = w @ J.double()
    projections = (J.double() / J.double().norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(projections, projections[0].expand(3))


def test_imtl_g_two_tasks_by_hand():
    # g1 = (2, 0), g2 = (0, 1): equal projections on e1, e2 with a1 + a2 = 1: 2 a1 = a2 -> (1/3, 2/3)
    J = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    update, w = update_of("imtl_g", J)
    torch.testing.assert_close(w, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(update, torch.tensor([2 / 3, 2 / 3]))


def test_imtl_g_dependent_gradients_count_a_failure_and_use_the_generalisation():
    from torchjd.aggregation import IMTLGWeighting

    J = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # g2 = 2 g1: D U^T is singular
    c = ctx()
    w = weights_of("imtl_g", J, context=c)
    assert c.stats == {"solver_failures": 1.0}
    torch.testing.assert_close(w, IMTLGWeighting()(gram(J)))


def test_imtl_learns_loss_scales_with_imtl_g_weights():
    m = make_weighting("imtl", TASKS3)
    (s,) = list(m.parameters())
    assert s.tolist() == [0.0, 0.0, 0.0] and s.requires_grad
    losses = torch.tensor([2.0, 0.5, 1.5])
    torch.testing.assert_close(m.transform_losses(losses), losses)  # e^0 L - 0
    with torch.no_grad():
        s.copy_(torch.tensor([0.5, -1.0, 0.0]))
    out = m.transform_losses(losses)
    torch.testing.assert_close(out, torch.tensor([math.exp(0.5) * 2 - 0.5, math.exp(-1) * 0.5 + 1.0, 1.5]))
    out.sum().backward()
    torch.testing.assert_close(s.grad, torch.tensor([math.exp(0.5) * 2 - 1, math.exp(-1) * 0.5 - 1, 0.5]))
    J = jac3()
    torch.testing.assert_close(m.gramian_weights(gram(J), ONES3, ctx()), weights_of("imtl_g", J))
    assert "loss_scale" in m.state_dict()


# ------------------------------------------------------------------------------------------------
# CAGrad


def test_cagrad_matches_torchjd_after_the_documented_scale():
    from torchjd.aggregation import CAGradWeighting

    J = jac3()
    ref = CAGradWeighting(c=0.4)(gram(J))
    torch.testing.assert_close(weights_of("cagrad", J), ref * 3 / (1 + 0.4 ** 2), rtol=0, atol=2e-5)
    torch.testing.assert_close(weights_of("cagrad", J, rescale=0, scale="mean"), ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(weights_of("cagrad", J, rescale=2), ref * 3 / 1.4, rtol=0, atol=2e-5)
    ref8 = CAGradWeighting(c=0.8)(gram(J))
    torch.testing.assert_close(weights_of("cagrad", J, c=0.8, rescale=0, scale="mean"), ref8, rtol=0, atol=2e-5)


def _cagrad_dual_from_weights(w: np.ndarray, c: float, T: int) -> np.ndarray:
    """w_dual from the default weights T (1/T + lambda w_dual) / (1 + c^2)."""
    x = w * (1 + c ** 2) / T - 1.0 / T
    return x / x.sum()


@pytest.mark.parametrize("c", [0.4, 0.8])
def test_cagrad_dual_optimum_beats_a_grid_over_the_simplex(c):
    J = jac3()
    G = gram(J).numpy()
    b = np.full(3, 1 / 3)
    radius = c * math.sqrt(G.mean())

    def F(w):  # the CAGrad dual on the raw Gramian, evaluated row-wise
        return w @ G @ b + radius * np.sqrt(np.einsum("ij,jk,ik->i", w, G, w))

    grid = simplex_grid(3, 300)
    values = F(grid)
    w_dual = _cagrad_dual_from_weights(weights_of("cagrad", J, c=c).numpy(), c, 3)
    assert F(w_dual[None])[0] <= values.min() + 1e-9
    assert np.abs(w_dual - grid[values.argmin()]).max() <= 2 / 300
    # and the update is g0 + lambda g_w scaled: lambda = c |g0| / |g_w|
    gw = w_dual @ J.double().numpy()
    g0 = J.double().numpy().mean(0)
    expected = 3 * (g0 + radius / np.linalg.norm(gw) * gw) / (1 + c ** 2)
    update, _ = update_of("cagrad", J, c=c)
    np.testing.assert_allclose(update.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_cagrad_two_tasks_by_hand():
    # g1 = (1, 0), g2 = (0, 1), c = 0.4: by symmetry w = (1/2, 1/2), g_w = g0 = (1/2, 1/2),
    # lambda = c; update = T (1 + c) g0 / (1 + c^2)
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    update, _ = update_of("cagrad", J)
    torch.testing.assert_close(update, torch.full((2,), 2 * 1.4 * 0.5 / 1.16))


def test_cagrad_does_not_stall_on_small_or_large_gradients():
    # the official SLSQP call on the raw Gramian returns w = 1/T for these scales (ref 2.5)
    J = jac3()
    w1 = weights_of("cagrad", J)
    for s in (1e-5, 1e-4, 1e-2, 1e3):
        torch.testing.assert_close(weights_of("cagrad", J * s), w1, rtol=0, atol=1e-6)
    assert (w1 - w1.mean()).abs().max() > 0.1  # far from the mean gradient's weights


def test_cagrad_solver_failure_is_counted_and_uses_the_last_iterate(monkeypatch):
    import scipy.optimize

    J = jac3()
    G = gram(J).numpy()
    last = np.array([0.2, 0.7, 0.1])

    class Result:
        x, success = last, False

    monkeypatch.setattr(scipy.optimize, "minimize", lambda *a, **k: Result())
    c = ctx()
    w = weights_of("cagrad", J, context=c)
    assert c.stats == {"solver_failures": 1.0}
    lam = 0.4 * math.sqrt(G.mean()) / math.sqrt(last @ G @ last)
    np.testing.assert_allclose(w.numpy(), 3 * (1 / 3 + lam * last) / 1.16, rtol=1e-9)

    Result.x = np.array([np.nan, 0.5, 0.5])  # a non-finite iterate: the uniform starting point
    c = ctx()
    w = weights_of("cagrad", J, context=c)
    assert c.stats == {"solver_failures": 1.0}
    lam = 0.4 * math.sqrt(G.mean()) / math.sqrt(G.mean())
    np.testing.assert_allclose(w.numpy(), np.full(3, 3 * (1 / 3 + lam / 3) / 1.16), rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# Nash-MTL


def _nash_reference(G: np.ndarray) -> np.ndarray:
    """alpha > 0 with G alpha = 1/alpha by Newton's method on log alpha (independent solve)."""
    from scipy.optimize import least_squares

    res = least_squares(lambda y: np.exp(y) * (G @ np.exp(y)) - 1.0, np.zeros(len(G)), xtol=1e-15, ftol=1e-15,
                        gtol=1e-15)
    return np.exp(res.x)


def test_nash_mtl_fixed_point_clip_and_head_weights():
    J = jac3()
    G = gram(J).numpy()
    m = make_weighting("nash_mtl", TASKS3)
    update, alpha = m.aggregate(J, ONES3, ctx())
    a = alpha.numpy()
    np.testing.assert_allclose(a * (G @ a), 1.0, atol=1e-3)  # G alpha = 1/alpha
    np.testing.assert_allclose(a, _nash_reference(G), rtol=1e-3)
    raw = a @ J.double().numpy()
    assert raw @ raw == pytest.approx(3.0, rel=2e-3)  # ||sum alpha g||^2 = T
    # the official clip: coefficient max_norm / (norm + 1e-6)
    np.testing.assert_allclose(update.numpy(), raw / (np.linalg.norm(raw) + 1e-6), rtol=1e-5, atol=1e-7)
    assert m.weights() == pytest.approx(dict(zip(TASKS3, a.tolist())))
    unclipped, _ = make_weighting("nash_mtl", TASKS3, max_norm=0.0).aggregate(J, ONES3, ctx())
    np.testing.assert_allclose(unclipped.numpy(), raw, rtol=1e-5, atol=1e-6)


def test_nash_mtl_two_tasks_is_the_sum_of_normalised_gradients_up_to_scale():
    # T = 2: alpha_i = 1 / (|g_i| sqrt(1 + cos)) (the paper: normalised gradients, equal weights)
    J = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    _, alpha = make_weighting("nash_mtl", TASKS2).aggregate(J, torch.ones(2, dtype=torch.float64), ctx())
    cos = 1 / math.sqrt(2)
    expected = np.array([1 / (3 * math.sqrt(1 + cos)), 1 / (math.sqrt(2) * math.sqrt(1 + cos))])
    np.testing.assert_allclose(alpha.numpy(), expected, rtol=1e-3)


@pytest.mark.parametrize("s", [1e-5, 1e-3, 10.0, 1e3])
@pytest.mark.parametrize("niter", [1, 20])
def test_nash_mtl_alpha_scales_as_one_over_s(s, niter):
    J = jac3()
    m1, m_s = (make_weighting("nash_mtl", TASKS3, optim_niter=niter) for _ in range(2))
    J2 = J + 0.5 * torch.randn(J.shape, generator=torch.Generator().manual_seed(2))
    for step_J in (J, J2):  # two steps: the second warm-starts from the first's alpha
        a1 = m1.gramian_weights(gram(step_J), ONES3, ctx())
        c = ctx()
        a_s = m_s.gramian_weights(gram(step_J * s), ONES3, c)
        assert c.stats == {}
        torch.testing.assert_close(a_s * s, a1, rtol=2e-4, atol=0)  # Clarabel's accuracy


def test_nash_mtl_state_dict_resumes_exactly_and_reuses_weights():
    J = jac3()
    J2 = J + 0.3 * torch.randn(J.shape, generator=torch.Generator().manual_seed(9))
    a = make_weighting("nash_mtl", TASKS3, update_weights_every=2)
    first = a.gramian_weights(gram(J), ONES3, ctx())  # step 0: solved
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert set(state) == {"alpha", "steps"} and int(state["steps"]) == 1
    torch.testing.assert_close(state["alpha"], first)
    b = make_weighting("nash_mtl", TASKS3, update_weights_every=2)
    b.load_state_dict(state)
    # step 1: alpha of step 0 reused, by the original and by the resumed copy
    torch.testing.assert_close(a.gramian_weights(gram(J2), ONES3, ctx()), first)
    torch.testing.assert_close(b.gramian_weights(gram(J2), ONES3, ctx()), first)
    # step 2: both solve J2 from the same state
    a2, b2 = a.gramian_weights(gram(J2), ONES3, ctx()), b.gramian_weights(gram(J2), ONES3, ctx())
    torch.testing.assert_close(a2, b2, rtol=0, atol=0)
    assert not torch.allclose(a2, first)
    fresh = make_weighting("nash_mtl", TASKS3, update_weights_every=2)
    assert not torch.allclose(fresh.gramian_weights(gram(J2), ONES3, ctx()), first)  # a fresh one solves


def test_nash_mtl_solver_failure_keeps_the_previous_alpha(monkeypatch):
    from densemtl.weighting import solvers

    J = jac3()
    m = make_weighting("nash_mtl", TASKS3)
    good = m.gramian_weights(gram(J), ONES3, ctx()).clone()
    monkeypatch.setattr(solvers.NashProblem, "solve", lambda self: False)
    c = ctx()
    assert torch.equal(m.gramian_weights(gram(J * 2), ONES3, c), good)
    assert c.stats == {"solver_failures": 1.0}
    c = ctx()
    first = make_weighting("nash_mtl", TASKS3).gramian_weights(gram(J), ONES3, c)
    assert c.stats == {"solver_failures": 1.0}  # the first step keeps its start, beta = 1
    torch.testing.assert_close(first, torch.ones(3, dtype=torch.float64) / gram(J).norm().sqrt())


# ------------------------------------------------------------------------------------------------
# Aligned-MTL


def test_aligned_mtl_matches_torchjd_times_T_and_equalises_singular_values():
    from torchjd.aggregation import AlignedMTLWeighting

    J = jac3()
    G = gram(J)
    w = weights_of("aligned_mtl", J)
    torch.testing.assert_close(w, 3 * AlignedMTLWeighting()(G))
    torch.testing.assert_close(weights_of("aligned_mtl", J, scale="mean"), AlignedMTLWeighting()(G))
    for mode in ("median", "rmse"):
        torch.testing.assert_close(weights_of("aligned_mtl", J, scale_mode=mode, scale="mean"),
                                   AlignedMTLWeighting(scale_mode=mode)(G))
    # the aligned gradients B J (w = B 1): singular values all sqrt(lambda_min(G))
    lam, V = torch.linalg.eigh(G)
    B = lam[0].sqrt() * V @ torch.diag(lam.rsqrt()) @ V.T  # built here from its definition
    torch.testing.assert_close(w, B.sum(1))
    sv = torch.linalg.svdvals(B @ J.double())
    torch.testing.assert_close(sv, lam[0].sqrt().expand(3))


def test_aligned_mtl_rank_deficient_keeps_the_nonzero_spectrum():
    J = jac3()
    J[2] = J[0] + J[1]
    w = weights_of("aligned_mtl", J)
    lam, V = torch.linalg.eigh(gram(J))
    assert lam[0] < 1e-5 * lam[-1]
    V2, lam2 = V[:, 1:], lam[1:]
    B = lam2[0].sqrt() * V2 @ torch.diag(lam2.rsqrt()) @ V2.T
    torch.testing.assert_close(w, B.sum(1), rtol=1e-4, atol=1e-6)
    sv = torch.linalg.svdvals(B @ J.double())
    torch.testing.assert_close(sv[:2], lam2[0].sqrt().expand(2), rtol=1e-4, atol=0)
    assert sv[2] < 1e-4 * sv[0]


def test_aligned_mtl_ub_is_aligned_mtl_on_the_representation():
    J = jac3()
    torch.testing.assert_close(weights_of("aligned_mtl_ub", J), weights_of("aligned_mtl", J))


# ------------------------------------------------------------------------------------------------
# UPGrad


class ClarabelProjector:
    """A dual-cone projector for TorchJD's UPGradWeighting: TorchJD's own normalise / regularise,
    then each QP min v^T G v s.t. v >= u solved by cvxpy + Clarabel (not quadprog)."""

    def __init__(self, norm_eps=1e-4, reg_eps=1e-4):
        self.norm_eps, self.reg_eps = norm_eps, reg_eps

    def __call__(self, U, G):
        import cvxpy as cp
        from torchjd._linalg import normalize, regularize

        A = regularize(normalize(G, self.norm_eps), self.reg_eps).double().numpy()
        A = (A + A.T) / 2
        A = A / np.abs(A).max()  # the QP's solution does not change; Clarabel's tolerances do
        rows = []
        for u in U.double().numpy():
            v = cp.Variable(len(u))
            cp.Problem(cp.Minimize(cp.quad_form(v, cp.psd_wrap(A))), [v >= u]).solve(
                solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
            rows.append(v.value)
        return torch.as_tensor(np.array(rows), dtype=G.dtype)


def _torchjd_upgrad(G, **kw):
    from torchjd.aggregation import UPGradWeighting
    from torchjd.linalg import DualConeProjector

    class P(ClarabelProjector, DualConeProjector):
        pass

    return UPGradWeighting(projector=P(**kw))(G)


def test_upgrad_matches_torchjd_with_an_independent_qp_solver():
    J = jac3()
    torch.testing.assert_close(weights_of("upgrad", J), _torchjd_upgrad(gram(J)), rtol=0, atol=1e-6)


def test_upgrad_kkt_and_dual_cone():
    J = jac3()
    G = gram(J).numpy()
    A = G / np.trace(G) + 1e-4 * np.eye(3)
    w = weights_of("upgrad", J).numpy()
    # w = sum_i v_i; re-derive each v_i from its KKT conditions to check w
    total = np.zeros(3)
    for i in range(3):
        u = np.eye(3)[i] / 3
        best = None
        for active in itertools.product([0, 1], repeat=3):  # v_k = u_k where active
            act = np.array(active, bool)
            free = ~act
            v = u.copy()
            if free.any():
                v[free] = -np.linalg.solve(A[np.ix_(free, free)], A[np.ix_(free, act)] @ u[act])
            mu = 2 * A @ v  # multipliers of v >= u
            if np.all(v >= u - 1e-12) and np.all(mu[act] >= -1e-12) and np.allclose(mu[free], 0, atol=1e-12):
                best = v
        total += best
    np.testing.assert_allclose(w, total, rtol=1e-9, atol=1e-12)
    assert np.all(G @ w >= -1e-4 * np.trace(G))  # the update lies in the dual cone (up to reg_eps)


def test_upgrad_two_tasks_torchjd_doc_example():
    # TorchJD's documented example: J = [[-4, 1, 1], [6, 1, 1]] -> weights (1.1109, 0.7894)
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    _, w = update_of("upgrad", J)
    torch.testing.assert_close(w, torch.tensor([1.1109, 0.7894], dtype=torch.float64), rtol=0, atol=1e-4)


def test_upgrad_norm_eps_reproduces_torchjd_on_small_gradients():
    J = jac3() * 1e-4
    assert float(gram(J).trace()) < 1e-4
    small = weights_of("upgrad", J, norm_eps=1e-4)
    torch.testing.assert_close(small, _torchjd_upgrad(gram(J)), rtol=0, atol=1e-6)
    torch.testing.assert_close(small, torch.full((3,), 1 / 3, dtype=torch.float64))  # the mean
    torch.testing.assert_close(weights_of("upgrad", J), weights_of("upgrad", jac3()))  # default: scale-free


def test_upgrad_solver_failure_is_counted_and_raised(monkeypatch):
    import scipy.optimize

    def fail(*a, **k):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(scipy.optimize, "nnls", fail)
    c = ctx()
    with pytest.raises(SolverFailure):
        weights_of("upgrad", jac3(), context=c)
    assert c.stats == {"solver_failures": 1.0}


# ------------------------------------------------------------------------------------------------
# scale invariance


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "imtl_g", "cagrad", "aligned_mtl", "upgrad"])
@pytest.mark.parametrize("s", [1e-4, 1e-2, 1e3])
def test_weights_do_not_change_with_the_scale_of_the_gradients(name, s):
    J = jac3()
    torch.testing.assert_close(weights_of(name, J * s), weights_of(name, J), rtol=1e-6, atol=1e-6)
