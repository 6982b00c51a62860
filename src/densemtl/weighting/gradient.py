"""Gradient-level methods: MGDA(-UB), PCGrad, IMTL(-G), CAGrad, Nash-MTL, Aligned-MTL(-UB), UPGrad.

Each is one :class:`~.base.GradientWeighting` that turns the T x T Gramian of the per-task
gradients (float64, unscaled) into task weights; the update is ``weights @ jacobian``. Nash-MTL
also needs the Jacobian itself (its update-norm clip). Facts, scale differences between
libraries and solver pitfalls: ``ref/optimisation.md`` sections 2.0-2.8; the solvers are in
:mod:`.solvers`.

Scale convention of the ``scale`` options: ``"sum"`` puts the update on the scale of the
gradient of sum_t L_t (what the official CAGrad, Nash-MTL and Aligned-MTL code do, "to match
the sum loss"), ``"mean"`` on the scale of the gradient of the mean loss (TorchJD, LibMTL and
Sener's MGDA). The two differ by the factor T.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from . import solvers
from .base import GradientWeighting, SolverFailure, StepContext, normalised, register_weighting

SCALES = ("sum", "mean")


def _choice(method: str, key: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"weighting option {key} of {method!r}: expected one of "
                        f"{', '.join(map(repr, choices))}, got {value!r}")
    return value


def _at_least(method: str, key: str, value, low, what: str = ""):
    if not value >= low:
        raise UserError(f"weighting option {key} of {method!r}: expected {what or f'a value >= {low}'}, "
                        f"got {value!r}")
    return value


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _tensor(a, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, device=like.device)


# ------------------------------------------------------------------------------------------------
# MGDA


@register_weighting("mgda")
class MGDA(GradientWeighting):
    """MGDA: the minimum-norm element of the convex hull of the task gradients.

    w = argmin_{w in simplex} || sum_t w_t g_t ||^2 (on the gradients divided by Sener's
    normalisers n_t when ``normalization`` is not "none"); update = k sum_t w_t g_t with k = T
    (``scale="sum"``) or 1 (``"mean"``). Solved exactly: closed form for T = 2, an equivalent
    non-negative least-squares problem (scipy's active-set NNLS) for T >= 3
    (:func:`.solvers.min_norm_simplex`; if NNLS fails, projected gradient descent, and a
    failure is counted only if that does not converge, its last iterate then used). The
    official solver stops at gamma = 0.001 / 0.999 on the simplex's edges; this one does not.

    Options: scale = "sum" (weights sum to T: the code of the published NYUv2/MTAN number,
    CAGrad's ``mgd``, multiplies Sener's simplex weights by 3 "to match the sum loss", as does
    Nash-MTL's) or "mean" (Sener, LibMTL, TorchJD: weights sum to 1); normalization = "none"
    (CAGrad's and Nash-MTL's runs), "l2" (n_t = ||g_t||), "loss" (n_t = L_t), "loss+"
    (n_t = L_t ||g_t||; Sener's sample config).

    Scale: "sum" is T x TorchJD's ``MGDA``; "mean" equals it. The weights do not change when
    the Gramian is multiplied by a positive number.

    AMP: scale-invariant weights; the engine hands unscaled gradients and losses anyway.

    DDP: parameter scopes: the engine all-reduces the T x P Jacobian, so every rank solves the
    same problem on the global batch.

    Reference: Desideri 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018; defaults from CAGrad's nyuv2 code (scope ``shared``: MTAN's
    task attention is not shared; heads get the plain sum of the task gradients).
    """

    paper = "Sener & Koltun, NeurIPS 2018"
    needs = "per-task gradients of the shared scope (T backward passes) + an exact min-norm solve"
    default_scope = "shared"
    head_weights = "sum"

    def __init__(self, task_names: Sequence[str], scale: str = "sum", normalization: str = "none") -> None:
        super().__init__(task_names)
        self.scale = _choice(self.name, "scale", scale, SCALES)
        self.normalization = _choice(self.name, "normalization", normalization, ("none", "l2", "loss", "loss+"))

    def _normalisers(self, G: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        norms = torch.sqrt(torch.clamp(torch.diagonal(G), min=0))
        if self.normalization in ("none", "l2"):
            n = norms if self.normalization == "l2" else torch.ones_like(norms)
        else:
            losses = losses.to(G)
            n = losses if self.normalization == "loss" else losses * norms
        # a zero or non-finite normaliser (a zero gradient, a zero loss) leaves that task as it is
        return torch.where(torch.isfinite(n) & (n > 0), n, torch.ones_like(n))

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        G, _ = normalised(gramian)
        n = self._normalisers(G, losses)
        G, _ = normalised(G / torch.outer(n, n))
        w, converged = solvers.min_norm_simplex(_numpy(G))
        if not converged:
            ctx.count("solver_failures")
        weights = _tensor(w, gramian)
        return weights * len(self.task_names) if self.scale == "sum" else weights

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale!r}, normalization={self.normalization!r}"


@register_weighting("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB: MGDA on the gradients with respect to the shared representation.

    w = argmin_{w in simplex} || sum_t w_t z_t ||^2 with z_t = dL_t/dz the gradient of task t's
    loss with respect to the features the heads read; then one backward of k sum_t w_t L_t
    through the whole network (k = 1 for ``scale="mean"``, T for "sum"), so the heads get the
    weighted gradients too, as in the official code. The solver is MGDA's (exact). Sener &
    Koltun's upper-bound approximation: the min-norm problem on the feature gradients bounds
    the shared parameters' one, and needs one backward through the encoder instead of T.

    Options: scale = "mean" (the official code backpropagates sum_t w_t L_t with simplex
    weights, as does Aligned-MTL's ``mgdaub``) or "sum"; normalization as MGDA ("none").

    Scale: "mean" equals TorchJD's ``MGDA`` weights on the representation Gramian.

    AMP: scale-invariant weights; the engine hands unscaled gradients.

    DDP: scope representation: the engine all-reduces the T x T Gramian of the feature
    gradients (the ranks' features are different coordinates of the global batch's).

    Reference: Sener & Koltun, NeurIPS 2018 (``use_approximation`` in their official code).
    """

    paper = "Sener & Koltun, NeurIPS 2018 (MGDA-UB)"
    needs = ("per-task gradients of the shared representation (T backward passes through the heads) "
             "+ one backward of the weighted sum")
    default_scope = "representation"
    head_weights = "weighted"

    def __init__(self, task_names: Sequence[str], scale: str = "mean", normalization: str = "none") -> None:
        super().__init__(task_names, scale=scale, normalization=normalization)


# ------------------------------------------------------------------------------------------------
# PCGrad


@register_weighting("pcgrad")
class PCGrad(GradientWeighting):
    """PCGrad: project each task gradient off the gradients it conflicts with, then add them.

    For each task i, in a random order of the other tasks j (drawn from ``ctx.generator``):
    if g_i^PC . g_j < 0 then g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j; update =
    sum_i g_i^PC (``reduction="sum"``) or its mean. Computed on the Gramian (the projected
    gradients are combinations of the g_t), so the weights also apply at scope representation.

    Options: reduction = "sum" (CAGrad's nyuv2 code, whose run gave the published NYUv2/MTAN
    number, and Nash-MTL's default; TorchJD) or "mean" (Nash-MTL's option).

    Scale: "sum" equals TorchJD's ``PCGrad`` for the same orders (one ``randperm(T)`` per task
    from the generator, the task itself skipped, as TorchJD draws them); the official code's
    +1e-8 in the norms is left out. The weights do not change with the scale of the Gramian.

    AMP: scale-invariant weights; the engine hands unscaled gradients.

    DDP: parameter scopes: the engine all-reduces the T x P Jacobian; the generator is the same
    on every rank, so the orders, and the update, are too.

    Reference: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020; defaults
    from CAGrad's nyuv2 code (scope ``shared``, heads get the plain sum).
    """

    paper = "Yu et al., NeurIPS 2020"
    needs = "per-task gradients of the shared scope (T backward passes) + O(T^2) projections"
    default_scope = "shared"
    head_weights = "sum"
    random = True  # the orders come from ctx.generator

    def __init__(self, task_names: Sequence[str], reduction: str = "sum") -> None:
        super().__init__(task_names)
        self.reduction = _choice(self.name, "reduction", reduction, SCALES)

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        G, _ = normalised(gramian.detach().to("cpu", torch.float64))
        T = G.shape[0]
        weights = torch.zeros(T, dtype=torch.float64)
        for i in range(T):
            order = torch.randperm(T, generator=ctx.generator)
            c = torch.zeros(T, dtype=torch.float64)
            c[i] = 1.0
            for j in order.tolist():
                if j == i:
                    continue
                inner = float(G[j] @ c)  # g_i^PC . g_j
                if inner < 0.0 and G[j, j] > 0:
                    c[j] -= inner / G[j, j]
            weights += c
        if self.reduction == "mean":
            weights /= T
        return weights.to(gramian.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction!r}"


# ------------------------------------------------------------------------------------------------
# IMTL-G and IMTL


def imtl_g_weights(G: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """IMTL-G's closed form from a (normalised) Gramian: with u_t = g_t / ||g_t||,
    D = g_1 - g_{2..T}, U = u_1 - u_{2..T}: alpha_{2..T} = g_1 U^T (D U^T)^{-1},
    alpha_1 = 1 - sum alpha_{2..T}. Returns (alpha, ok); ok is False when a gradient is zero or
    D U^T is singular, and alpha is then TorchJD's generalisation pinv(G) sqrt(diag G),
    normalised to sum 1 (zeros if that sum vanishes)."""
    T = G.shape[0]
    if T == 1:
        return torch.ones(1, dtype=G.dtype, device=G.device), True
    norms = torch.sqrt(torch.clamp(torch.diagonal(G), min=0))
    ok = bool((norms > 0).all())
    if ok:
        a = G[0, 0] / norms[0] - G[0, 1:] / norms[1:]  # g_1 . (u_1 - u_j)
        # (D U^T)_{ij} = (g_1 - g_i) . (u_1 - u_j), i, j = 2..T
        M = (G[0, 0] / norms[0] - G[0, 1:] / norms[1:])[None, :] \
            - (G[1:, 0] / norms[0])[:, None] + G[1:, 1:] / norms[1:][None, :]
        try:
            rest = torch.linalg.solve(M.T, a)  # a^T M^{-1}
            ok = bool(torch.isfinite(rest).all())
        except RuntimeError:
            ok = False
        if ok:
            return torch.cat([1 - rest.sum().reshape(1), rest]), True
    v = torch.linalg.pinv(G) @ norms
    total = v.sum()
    return (torch.zeros_like(v) if total.abs() < 1e-12 else v / total), False


@register_weighting("imtl_g")
class IMTLG(GradientWeighting):
    """IMTL-G: the update with equal projections on every task's unit gradient.

    alpha with sum_t alpha_t = 1 and u_t . (sum_s alpha_s g_s) equal for all t (u_t = g_t/||g_t||):
    alpha_{2..T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2..T}, with D = g_1 - g_{2..T}
    and U = u_1 - u_{2..T}; update = sum_t alpha_t g_t. The heads get sum_t alpha_t dL_t (the
    official code back-propagates sum_t alpha_t L_t).

    Options: none.

    Scale: weights sum to 1 in the official code, LibMTL and TorchJD (identical on linearly
    independent gradients; TorchJD's pinv(G) sqrt(diag G) also covers dependent ones). The
    weights do not change with the scale of the Gramian. Failure: when a task gradient is zero
    or D U^T is singular (the official code then inverts D U^T + 1e-8 I), a solver failure is
    counted and TorchJD's generalisation is used.

    AMP: scale-invariant weights; the engine hands unscaled gradients.

    DDP: parameter scopes: the engine all-reduces the T x P Jacobian.

    Reference: Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021; defaults from
    Nash-MTL's code, whose run gave the published NYUv2/MTAN number (scope ``all``: MTAN's
    task attention counts as shared; the paper says those runs used feature-level gradients,
    the released code uses the shared parameters).
    """

    paper = "Liu et al., ICLR 2021"
    needs = "per-task gradients of the shared scope (T backward passes) + a (T-1) x (T-1) solve"
    default_scope = "all"
    head_weights = "weighted"

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        G, _ = normalised(gramian)
        alpha, ok = imtl_g_weights(G)
        if not ok:
            ctx.count("solver_failures")
        return alpha


@register_weighting("imtl")
class IMTL(IMTLG):
    """IMTL: IMTL-L's learned loss scales, then IMTL-G on the scaled losses' gradients (LibMTL).

    L'_t = e^{s_t} L_t - s_t with learnable s_t initialised to 0 (this module's parameter
    ``loss_scale``, trained by the run's optimiser with the gradients of the L'_t); the per-task
    gradients are those of L'_t; alpha = IMTL-G(Gramian of the dL'_t) and the update is
    sum_t alpha_t dL'_t. The heads get the plain sum of the dL'_t (LibMTL's per-task backward).
    The s_t get e^{s_t} L_t - 1 at parameter scopes, as in LibMTL; at scope representation the
    engine's one backward of sum_t alpha_t L'_t gives them alpha_t (e^{s_t} L_t - 1) instead.

    Options: none.

    Scale: as IMTL-G (weights sum to 1, LibMTL's scale).

    AMP: IMTL-L needs the unscaled loss values, which the engine provides (the s_t would
    otherwise learn the loss scale).

    DDP: scope representation (the default): the engine all-reduces the T x T Gramian of the
    feature gradients; parameter scopes: the T x P Jacobian.

    Reference: Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021; LibMTL's
    ``IMTL``, whose NYUv2 run used ``rep_grad`` (scope ``representation``; LibMTL sums the
    feature gradients over the batch before the Gramian, the engine does not).
    """

    paper = "Liu et al., ICLR 2021 (IMTL-G + IMTL-L, as LibMTL)"
    needs = ("the task losses and per-task gradients of the representation (T backward passes "
             "through the heads) + one backward; T learned loss scales")
    default_scope = "representation"
    head_weights = "sum"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self.loss_scale = nn.Parameter(torch.zeros(len(self.task_names)))

    def transform_losses(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.loss_scale.to(device=losses.device, dtype=losses.dtype)
        return torch.exp(s) * losses - s


# ------------------------------------------------------------------------------------------------
# CAGrad


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """CAGrad: the average gradient, moved towards the worst task within a ball around it.

    w = argmin_{w in simplex} w^T G 1/T + c ||g0|| sqrt(w^T G w) (g0 = mean_t g_t, ||g0|| =
    sqrt(mean G)); g_w = sum_t w_t g_t; lambda = c ||g0|| / ||g_w||; update = k (g0 + lambda g_w)
    / r, i.e. weights k (1/T + lambda w_t) / r, with r = 1, 1 + c^2, 1 + c for ``rescale`` 0, 1,
    2 and k = T (``scale="sum"``) or 1. The dual is solved with scipy's SLSQP from w = 1/T, as
    the official code, but on the normalised Gramian (the official call on the raw Gramian
    stalls at its starting point for small or large gradients and CAGrad silently becomes the
    mean gradient), with analytic gradients and ftol 1e-12. If ||g_w|| < 1e-8 ||g_t||_rms (a
    Pareto-stationary point) lambda is 0. Failure (SLSQP reports no success): counted, and its
    last iterate, projected onto the simplex, is used, as the official code uses ``res.x``
    whatever the status (a non-finite iterate: the starting point w = 1/T).

    Options: c = 0.4 (NYUv2 in the paper and the official ``run.sh``; CityScapes: 0.2 in the
    paper's text, 0.4 in its appendix and ``run.sh``), rescale = 1 (official nyuv2 code),
    scale = "sum" (official: x T "to match the sum loss") or "mean".

    Scale: the default (rescale 1, "sum") is T / (1 + c^2) x TorchJD's ``CAGrad`` (2.586 for
    T = 3, c = 0.4); rescale 0 with "mean" equals TorchJD (and Aligned-MTL's ``cagrad``).
    The weights do not change with the scale of the Gramian.

    AMP: scale-invariant weights; the engine hands unscaled gradients, so the solver never sees
    the loss scale.

    DDP: parameter scopes: the engine all-reduces the T x P Jacobian.

    Reference: Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
    2021; defaults from the official nyuv2 code (scope ``shared``: it excludes MTAN's attention;
    heads get the plain sum of the per-task backward passes).
    """

    paper = "Liu et al., NeurIPS 2021"
    needs = "per-task gradients of the shared scope (T backward passes) + a scipy SLSQP solve on the CPU"
    default_scope = "shared"
    head_weights = "sum"

    def __init__(self, task_names: Sequence[str], c: float = 0.4, rescale: int = 1, scale: str = "sum") -> None:
        super().__init__(task_names)
        self.c = float(_at_least(self.name, "c", c, 0.0))
        if rescale not in (0, 1, 2):
            raise UserError(f"weighting option rescale of {self.name!r}: expected 0 (none), 1 (divide by "
                            f"1 + c^2) or 2 (divide by 1 + c), got {rescale!r}")
        self.rescale = int(rescale)
        self.scale = _choice(self.name, "scale", scale, SCALES)

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        G, _ = normalised(gramian)
        A = _numpy(G)
        T = A.shape[0]
        w, ok = solvers.cagrad_dual(A, self.c)
        if not ok:
            ctx.count("solver_failures")
        w = solvers.project_to_simplex(w) if np.all(np.isfinite(w)) else np.full(T, 1.0 / T)
        radius = self.c * float(np.sqrt(max(np.mean(A), 0.0)))
        gw_norm = float(np.sqrt(max(float(w @ A @ w), 0.0)))
        lam = radius / gw_norm if gw_norm >= 1e-8 else 0.0
        weights = np.full(T, 1.0 / T) + lam * w
        weights /= (1.0, 1.0 + self.c ** 2, 1.0 + self.c)[self.rescale]
        if self.scale == "sum":
            weights *= T
        return _tensor(weights, gramian)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c={self.c}, rescale={self.rescale}, scale={self.scale!r}"


# ------------------------------------------------------------------------------------------------
# Nash-MTL


@register_weighting("nash_mtl")
class NashMTL(GradientWeighting):
    """Nash-MTL: the Nash bargaining solution of the tasks, alpha > 0 with G alpha = 1/alpha.

    alpha solves (G alpha)_t = 1 / alpha_t (G the Gramian), found as the official code does:
    up to ``optim_niter`` concave-convex steps (the paper's Eq. 5), each a convex problem solved
    by cvxpy (Clarabel here, ECOS there), from the previous step's alpha
    (:func:`.solvers.nash_ccp`); recomputed every ``update_weights_every`` steps and reused in
    between. Deviation: the steps are solved for beta = sqrt(n) alpha on G / n (n = ||G||_F),
    i.e. the official problem for gradients rescaled to ||G||_F = 1, then alpha = beta /
    sqrt(n). The official code keeps n in the objective, so its iterates (not the solution of
    G alpha = 1/alpha) depend on the units of the losses, and with Clarabel its problem fails on
    small gradients (most random 3-task cases at task-gradient norms of 1e-3 and below; this
    one solved them all). Update = sum_t alpha_t g_t, scaled down
    to norm ``max_norm`` when longer: the official code clips the shared parameters' gradient
    (``clip_grad_norm_``, coefficient max_norm / (norm + 1e-6)), here part of the update of the
    scope; since ||sum alpha_t g_t||^2 = T at the solution, the clip to 1 acts at every step.
    The heads get sum_t alpha_t dL_t, unclipped (official: ``sum alpha_t L_t`` back-propagated,
    the clip on the shared parameters only); ``weights()`` logs alpha. Failure (the solver raises
    or finds the sub-problem infeasible or unbounded): counted, and the current iterate (the
    previous step's alpha on the first solve) is kept, as the official code does. The first
    step starts at beta = 1 (the official alpha = 1, for the rescaled gradients). State (alpha,
    step counter) is in buffers.

    Options: optim_niter = 20, max_norm = 1.0 (0 disables the clip), update_weights_every = 1
    (all as the official code and every library).

    Scale: official; TorchJD's ``NashMTL`` instead rescales alpha so that ||alpha^T J|| <=
    max_norm (same direction and norm for the update, but its heads' weights are rescaled too).
    alpha scales exactly as 1/s when the gradients are multiplied by s (at every step, not only
    at convergence); at scope representation there is no parameter update to clip, and the
    weights alpha are applied unclipped.

    AMP: alpha depends on the gradients' scale (1/s), so it needs the unscaled gradients the
    engine hands it; the clip acts on the unscaled update, as the standard AMP recipe clips
    after unscaling.

    DDP: parameter scopes: the engine all-reduces the T x P Jacobian (every rank solves the same
    problem and keeps the same state).

    Reference: Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022; defaults
    from the official code (scope ``all``: MTAN's task attention counts as shared).
    """

    paper = "Navon et al., ICML 2022"
    needs = ("per-task gradients of the shared scope (T backward passes) + up to optim_niter "
             "cvxpy (Clarabel) solves on the CPU")
    default_scope = "all"
    head_weights = "weighted"

    def __init__(self, task_names: Sequence[str], optim_niter: int = 20, max_norm: float = 1.0,
                 update_weights_every: int = 1) -> None:
        super().__init__(task_names)
        self.optim_niter = int(_at_least(self.name, "optim_niter", optim_niter, 1, "an integer >= 1"))
        self.max_norm = float(_at_least(self.name, "max_norm", max_norm, 0.0, "a number >= 0 (0: no clip)"))
        self.update_weights_every = int(_at_least(self.name, "update_weights_every", update_weights_every, 1,
                                                  "an integer >= 1"))
        T = len(self.task_names)
        self.register_buffer("alpha", torch.ones(T, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._problem: solvers.NashProblem | None = None  # the cvxpy problem, built on first use

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        step = int(self.steps)
        self.steps += 1
        if step % self.update_weights_every == 0:
            G, s = normalised(gramian)
            frobenius = float(torch.linalg.matrix_norm(G))
            if not (frobenius > 0 and np.isfinite(frobenius) and bool(torch.isfinite(G).all())):
                ctx.count("solver_failures")  # a zero Gramian: no bargaining problem; keep alpha
            else:
                if self._problem is None or self._problem.T != len(self.task_names):
                    self._problem = solvers.NashProblem(len(self.task_names))
                # scale-free variable beta = sqrt(nf) alpha (nf = ||G||_F of the raw Gramian): the
                # official problem with nf = 1 on the normalised Gramian; alpha = beta / sqrt(nf)
                root = math.sqrt(s * frobenius)
                start = np.ones(len(self.task_names)) if step == 0 else _numpy(self.alpha) * root
                beta, failures = solvers.nash_ccp(self._problem, _numpy(G) / frobenius, 1.0, start,
                                                  self.optim_niter)
                if failures:
                    ctx.count("solver_failures", failures)
                self.alpha.copy_(torch.as_tensor(beta / root, dtype=torch.float64))
        return self.alpha.detach().clone().to(gramian.device)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor, ctx: StepContext
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        gramian = ctx.gramian if ctx.gramian is not None else jacobian @ jacobian.T
        alpha = self.gramian_weights(gramian.double(), losses.double(), ctx)
        self._last = alpha.detach().clone()
        update = alpha.to(jacobian.dtype) @ jacobian
        if self.max_norm > 0:
            coefficient = self.max_norm / (float(torch.linalg.vector_norm(update)) + 1e-6)
            if coefficient < 1.0:
                update = update * coefficient
        return update, alpha

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, optim_niter={self.optim_niter}, max_norm={self.max_norm}, "
                f"update_weights_every={self.update_weights_every}")


# ------------------------------------------------------------------------------------------------
# Aligned-MTL


def aligned_balance(G: torch.Tensor, scale_mode: str) -> torch.Tensor:
    """Aligned-MTL's balance matrix B = sqrt(sigma) V Lambda^{-1/2} V^T from the eigen-
    decomposition G = V Lambda V^T, over the eigenvalues above max(Lambda) * T * eps(float32)
    (the official tolerance; the Gramian comes from float32 gradients); sigma = the smallest
    kept eigenvalue ("min"), their median (lower middle, as ``torch.median``) or mean ("rmse").
    The identity when no eigenvalue is kept (a zero Gramian)."""
    T = G.shape[0]
    lam, V = torch.linalg.eigh(G)
    tol = lam.max() * T * torch.finfo(torch.float32).eps
    keep = lam > tol
    if not bool(keep.any()):
        return torch.eye(T, dtype=G.dtype, device=G.device)
    order = torch.argsort(lam, descending=True)
    order = order[keep[order]]
    lam, V = lam[order], V[:, order]
    sigma = {"min": lam[-1], "median": torch.median(lam), "rmse": lam.mean()}[scale_mode]
    return torch.sqrt(sigma) * (V / torch.sqrt(lam)[None, :]) @ V.T


@register_weighting("aligned_mtl")
class AlignedMTL(GradientWeighting):
    """Aligned-MTL: make the task gradients orthogonal with equal norms, then add them.

    G = V Lambda V^T (the Gramian's eigen-decomposition, rank r); B = sqrt(sigma) V Lambda^{-1/2}
    V^T (sigma = smallest eigenvalue for ``scale_mode="min"``); the aligned gradients are the
    rows of B J, whose non-zero singular values all equal sqrt(sigma); update = k 1^T B J, i.e.
    weights k B 1, with k = 1 (``scale="sum"``: the official code adds the aligned gradients)
    or 1/T ("mean"). ``torch.linalg.eigh`` replaces the official ``torch.symeig`` (removed in
    torch 2). The heads get the plain sum of the task gradients (official
    ``scale_decoder_grad=False``).

    Options: scale_mode = "min" (official default; also "median", "rmse" = mean eigenvalue),
    scale = "sum" or "mean".

    Scale: "sum" is T x TorchJD's ``AlignedMTL`` (which applies B to the mean weights); "mean"
    equals it. The weights do not change with the scale of the Gramian.

    AMP: scale-invariant weights; the engine hands unscaled gradients.

    DDP: parameter scopes: the engine all-reduces the T x P Jacobian.

    Reference: Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
    CVPR 2023; defaults from the official code (SamsungLabs/MTL ``amtl``; scope ``all``: its
    MTAN counts the task attention as shared).
    """

    paper = "Senushkin et al., CVPR 2023"
    needs = "per-task gradients of the shared scope (T backward passes) + a T x T eigen-decomposition"
    default_scope = "all"
    head_weights = "sum"

    def __init__(self, task_names: Sequence[str], scale_mode: str = "min", scale: str = "sum") -> None:
        super().__init__(task_names)
        self.scale_mode = _choice(self.name, "scale_mode", scale_mode, ("min", "median", "rmse"))
        self.scale = _choice(self.name, "scale", scale, SCALES)

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        G, _ = normalised(gramian)
        weights = aligned_balance(G, self.scale_mode).sum(dim=1)
        return weights if self.scale == "sum" else weights / len(self.task_names)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_mode={self.scale_mode!r}, scale={self.scale!r}"


@register_weighting("aligned_mtl_ub")
class AlignedMTLUB(AlignedMTL):
    """Aligned-MTL-UB: Aligned-MTL on the gradients with respect to the shared representation.

    B from the Gramian of z_t = dL_t/dz (the features the heads read), as Aligned-MTL; one
    backward of k sum_t (B 1)_t L_t through the network (k = 1 for ``scale="sum"``, 1/T for
    "mean"), which equals back-propagating the sum of the aligned feature gradients into the
    encoder as the official ``amtlub``.

    Options: scale_mode = "min", scale = "sum" (as Aligned-MTL).

    Scale: as Aligned-MTL ("sum" is T x TorchJD's weights on the representation Gramian).

    AMP: scale-invariant weights; the engine hands unscaled gradients.

    DDP: scope representation: the engine all-reduces the T x T Gramian of the feature gradients.

    Reference: Senushkin et al., CVPR 2023 (SamsungLabs/MTL ``amtlub``; official heads get the
    plain per-task gradients).
    """

    paper = "Senushkin et al., CVPR 2023 (Aligned-MTL-UB)"
    needs = ("per-task gradients of the shared representation (T backward passes through the heads) "
             "+ one backward of the weighted sum")
    default_scope = "representation"
    head_weights = "sum"


# ------------------------------------------------------------------------------------------------
# UPGrad


@register_weighting("upgrad")
class UPGrad(GradientWeighting):
    """UPGrad: each task's share of the mean gradient, projected onto the dual cone, summed.

    A = G / trace(G) + reg_eps I (G = 0 when trace(G) < norm_eps); for each task i,
    v_i = argmin_v v^T A v s.t. v >= e_i / T (the weights of the projection of g_i / T onto
    {x : g_t . x >= 0 for all t}); weights = sum_i v_i; update = weights @ J. Each small QP is
    solved exactly as a non-negative least-squares problem (v = u + x, x >= 0, A = R^T R; scipy's
    NNLS; :func:`.solvers.dual_cone_weights`), not with quadprog (GPL). Failure (NNLS does not
    converge): counted, then :class:`~.base.SolverFailure` is raised, as TorchJD raises when
    quadprog finds no solution.

    Options: reg_eps = 1e-4 (TorchJD's default), norm_eps = 0.0: TorchJD's 1e-4 is an absolute
    threshold on trace(G) below which its weights become the mean weights (1/T each), which
    would silently turn small unscaled gradients (||J||_F < 0.01) into the mean gradient; set
    1e-4 to reproduce TorchJD exactly.

    Scale: TorchJD's (the authors' code): weights of the mean scale (1/T each when no gradient
    conflicts). The weights do not change with the scale of the Gramian (for norm_eps = 0).

    AMP: scale-invariant weights; the engine hands unscaled gradients.

    DDP: parameter scopes: the engine all-reduces the T x P Jacobian.

    Reference: Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv
    2406.16232 (2024); TorchJD's ``UPGrad`` (scope ``all``: TorchJD's shared parameters are all
    those the features depend on; heads get the plain per-task gradients).
    """

    paper = "Quinton & Rey, arXiv 2406.16232 (2024)"
    needs = "per-task gradients of the shared scope (T backward passes) + T non-negative least-squares problems"
    default_scope = "all"
    head_weights = "sum"

    def __init__(self, task_names: Sequence[str], reg_eps: float = 1e-4, norm_eps: float = 0.0) -> None:
        super().__init__(task_names)
        self.reg_eps = float(_at_least(self.name, "reg_eps", reg_eps, 0.0, "a number >= 0"))
        self.norm_eps = float(_at_least(self.name, "norm_eps", norm_eps, 0.0, "a number >= 0"))

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        T = gramian.shape[0]
        trace = float(torch.diagonal(gramian).sum())
        if trace < self.norm_eps or not trace > 0:
            A = np.zeros((T, T))
        else:
            G, _ = normalised(gramian)
            A = _numpy(G) / T  # G / trace(G)
        A = A + self.reg_eps * np.eye(T)
        try:
            W = [solvers.dual_cone_weights(A, np.eye(T)[i] / T) for i in range(T)]
        except SolverFailure:
            ctx.count("solver_failures")
            raise
        return _tensor(np.sum(W, axis=0), gramian)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reg_eps={self.reg_eps}, norm_eps={self.norm_eps}"
