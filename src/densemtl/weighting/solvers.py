"""Small solvers of the gradient-level methods (:mod:`.gradient`), on T x T Gramians.

Everything here works in float64 numpy on the CPU: T is the number of tasks (2 to a dozen), so
the problems are tiny and exactness matters more than speed. Callers pass a Gramian already
normalised by :func:`densemtl.weighting.base.normalised` (mean diagonal 1), so absolute solver
tolerances mean the same thing whatever the scale of the gradients (ref/optimisation.md 2.5:
the official CAGrad call stalls on small or large Gramians).

A solver that fails returns ``ok = False`` (or raises :class:`SolverFailure`); the method counts
the failure and does what its reference code does.
"""

from __future__ import annotations

import warnings

import numpy as np

from .base import SolverFailure

# --------------------------------------------------------------------------------------------
# the simplex


def project_to_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``y`` onto {w >= 0, sum w = 1} (sort-based, exact)."""
    y = np.asarray(y, dtype=np.float64)
    s = np.sort(y)[::-1]
    cumulative = np.cumsum(s) - 1.0
    k = np.arange(1, len(y) + 1)
    rho = np.nonzero(s - cumulative / k > 0)[0][-1]
    theta = cumulative[rho] / (rho + 1)
    return np.maximum(y - theta, 0.0)


def min_norm_two(g11: float, g12: float, g22: float) -> float:
    """gamma in [0, 1] minimising ||gamma g1 + (1 - gamma) g2||^2 (the two-task MGDA solution):
    gamma = (g22 - g12) / (g11 + g22 - 2 g12), clipped to [0, 1]; 1/2 when g1 = g2."""
    denominator = g11 + g22 - 2.0 * g12
    if not denominator > 0:
        return 0.5
    return float(min(1.0, max(0.0, (g22 - g12) / denominator)))


def min_norm_simplex(G: np.ndarray, max_iter: int = 100_000, tol: float = 1e-13) -> tuple[np.ndarray, bool]:
    """The exact minimiser of w^T G w over the simplex (MGDA's min-norm element of the convex hull
    of the gradients), for a PSD ``G``. Returns (w, converged).

    T = 2: closed form. T >= 3: with R^T R = G, the non-negative least-squares problem
    min_{x >= 0} ||R x||^2 + (sum x - 1)^2 (the distance from (0, 1) to the cone of the points
    (g_t, 1)) has the solution x = w / (1 + w^T G w) with w the min-norm weights: for x = s w,
    w in the simplex, the best s gives w^T G w / (1 + w^T G w), increasing in w^T G w. scipy's
    Lawson-Hanson NNLS solves it exactly (an active-set method); if it fails, accelerated
    projected gradient descent on the simplex to ``tol`` (``converged`` False if it does not
    get there)."""
    from scipy.optimize import nnls

    G = np.asarray(G, dtype=np.float64)
    T = G.shape[0]
    if T == 1:
        return np.ones(1), True
    if T == 2:
        gamma = min_norm_two(G[0, 0], G[0, 1], G[1, 1])
        return np.array([gamma, 1.0 - gamma]), True
    A = np.vstack([_psd_factor((G + G.T) / 2), np.ones((1, T))])
    b = np.zeros(T + 1)
    b[T] = 1.0
    try:
        x, _ = nnls(A, b, maxiter=50 * T)
    except (RuntimeError, ValueError):
        x = np.zeros(T)
    if np.all(np.isfinite(x)) and x.sum() > 0:
        return x / x.sum(), True
    return _min_norm_projected_gradient(G, max_iter, tol)


def _min_norm_projected_gradient(G: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, bool]:
    T = G.shape[0]
    lipschitz = 2.0 * max(float(np.linalg.eigvalsh(G)[-1]), 1e-300)
    w = np.full(T, 1.0 / T)
    z, t = w.copy(), 1.0
    for _ in range(max_iter):
        w_next = project_to_simplex(z - (2.0 * G @ z) / lipschitz)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = w_next + ((t - 1.0) / t_next) * (w_next - w)
        if np.linalg.norm(w_next - w) < tol:
            return w_next, True
        w, t = w_next, t_next
    return w, False


# --------------------------------------------------------------------------------------------
# CAGrad


def cagrad_objective(G: np.ndarray, c: float):
    """CAGrad's dual objective and its gradient: F(w) = w^T G b + c ||g0|| sqrt(w^T G w), with
    b = 1/T and ||g0|| = sqrt(mean(G)) (the norm of the mean gradient)."""
    T = G.shape[0]
    b = np.full(T, 1.0 / T)
    radius = c * float(np.sqrt(max(np.mean(G), 0.0)))
    Gb = G @ b
    eps = 1e-12  # inside the root, so F stays differentiable at a Pareto-stationary w

    def value(w):
        return float(w @ Gb + radius * np.sqrt(max(float(w @ G @ w), 0.0) + eps))

    def gradient(w):
        return Gb + radius * (G @ w) / np.sqrt(max(float(w @ G @ w), 0.0) + eps)

    return value, gradient, radius


def cagrad_dual(G: np.ndarray, c: float, ftol: float = 1e-12, maxiter: int = 500) -> tuple[np.ndarray, bool]:
    """min_{w in simplex} w^T G b + c ||g0|| sqrt(w^T G w) with scipy's SLSQP from the uniform
    point, as the official CAGrad code, but with analytic gradients and a tight ``ftol`` (on the
    normalised Gramian the objective is O(1)). Returns (w, success)."""
    from scipy.optimize import minimize

    T = G.shape[0]
    value, gradient, _ = cagrad_objective(G, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = minimize(value, np.full(T, 1.0 / T), jac=gradient, method="SLSQP",
                       bounds=[(0.0, 1.0)] * T,
                       constraints=({"type": "eq", "fun": lambda w: 1.0 - np.sum(w),
                                     "jac": lambda w: -np.ones_like(w)},),
                       options={"ftol": ftol, "maxiter": maxiter})
    return np.asarray(res.x, dtype=np.float64), bool(res.success)


# --------------------------------------------------------------------------------------------
# Nash-MTL


class NashProblem:
    """Nash-MTL's convex sub-problem of one concave-convex step, built once per T as the official
    code does (cvxpy parameters: the Frobenius-normalised Gramian ``G``, the previous iterate and
    the normalisation factor ``nf``):

        min_{alpha >= 0}  sum(G alpha) + phi'(alpha_prev) . (alpha - alpha_prev) / nf
        s.t.  log(alpha_i nf) + log((G alpha)_i) >= 0   for every task i,

    with phi'(a) = 1/a + G^T (1 / (G a)) the gradient of sum_i log a_i + log (G a)_i. Solved
    with Clarabel (Apache-2.0; the official code used ECOS, GPL), without the solver's own warm
    start (``warm_start=True`` in the official call): with it, cvxpy's cached solver state makes
    the result depend on the problem object's history, which a resumed run does not have."""

    def __init__(self, T: int) -> None:
        import cvxpy as cp

        self.T = T
        self.alpha = cp.Variable(shape=(T,), nonneg=True)
        self.prev = cp.Parameter(shape=(T,), value=np.ones(T))
        self.G = cp.Parameter(shape=(T, T), value=np.eye(T))
        self.nf = cp.Parameter(shape=(1,), value=np.ones(1))
        G_prev = self.G @ self.prev
        phi_grad = 1 / self.prev + (1 / G_prev) @ self.G
        phi = phi_grad @ (self.alpha - self.prev)
        G_alpha = self.G @ self.alpha
        constraints = [-cp.log(self.alpha[i] * self.nf) - cp.log(G_alpha[i]) <= 0 for i in range(T)]
        self.problem = cp.Problem(cp.Minimize(cp.sum(G_alpha) + phi / self.nf), constraints)

    def solve(self) -> bool:
        """One solve from the current parameter values; False if the solver raised or returned
        no solution."""
        import cvxpy as cp

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "not DPP", "solution may be inaccurate" (Nash #14)
                self.problem.solve(solver=cp.CLARABEL, warm_start=False, max_iter=100)
        except Exception:  # noqa: BLE001  (any solver error: the official code catches everything)
            return False
        value = self.alpha.value
        return value is not None and bool(np.all(np.isfinite(value)))


def nash_ccp(problem: NashProblem, G: np.ndarray, nf: float, alpha: np.ndarray, niter: int) -> tuple[np.ndarray, int]:
    """The official concave-convex loop on the Frobenius-normalised Gramian ``G`` (raw Gramian
    = nf * G), from the previous step's alpha. Stops after ``niter`` solves, or when the iterate
    satisfies ||G alpha_t - 1/alpha_t|| < 1e-3 (tested on the normalised G, as the official code
    does), or moves by < 1e-6; on a stop the iterate *before* the last solve is kept (official
    order of operations). A failed solve keeps the current iterate and ends the loop. Returns
    (alpha, number of failed solves)."""
    problem.G.value = G
    problem.nf.value = np.array([nf])
    alpha_t = np.asarray(alpha, dtype=np.float64).copy()
    failures = 0
    for _ in range(niter):
        problem.alpha.value = alpha_t
        problem.prev.value = alpha_t
        if not problem.solve():
            failures += 1
            break
        new = np.asarray(problem.alpha.value, dtype=np.float64)
        if (np.linalg.norm(G @ alpha_t - 1.0 / (alpha_t + 1e-10)) < 1e-3
                or np.linalg.norm(new - alpha_t) < 1e-6):
            break
        alpha_t = new
    return alpha_t, failures


# --------------------------------------------------------------------------------------------
# UPGrad


def _psd_factor(A: np.ndarray) -> np.ndarray:
    """R with R^T R = A (Cholesky; eigen-decomposition when A is only semi-definite)."""
    try:
        return np.linalg.cholesky(A).T
    except np.linalg.LinAlgError:
        lam, V = np.linalg.eigh(A)
        return np.sqrt(np.maximum(lam, 0.0))[:, None] * V.T


def dual_cone_weights(A: np.ndarray, u: np.ndarray) -> np.ndarray:
    """argmin_v v^T A v subject to v >= u, for a PSD ``A`` (UPGrad's projection of J^T u onto the
    dual cone of the rows of J, in weight space). With v = u + x, x >= 0, the problem is the
    non-negative least-squares problem min ||R x + R u|| (A = R^T R), solved exactly by
    scipy's Lawson-Hanson active-set NNLS. Raises :class:`SolverFailure` when NNLS fails."""
    from scipy.optimize import nnls

    R = _psd_factor(np.asarray(A, dtype=np.float64))
    u = np.asarray(u, dtype=np.float64)
    try:
        x, _ = nnls(R, -R @ u, maxiter=50 * max(1, len(u)))
    except (RuntimeError, ValueError) as e:  # iteration limit, non-finite input
        raise SolverFailure(f"NNLS failed: {e}") from e
    v = u + x
    if not np.all(np.isfinite(v)):
        raise SolverFailure("NNLS returned a non-finite solution")
    return v
