"""Loss-level methods: weights from the task losses, one ordinary backward (SPEC section 4,
``ref/optimisation.md`` section 1.1)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Weighting, register_weighting


@register_weighting("equal")
class Equal(Weighting):
    """Equal weighting (linear scalarisation): L = sum_k L_k.

    Options: none.
    Scale: the sum, as MTAN's, Nash-MTL's and LibMTL's code (TorchJD's ``Mean`` is 1/T of it).
    AMP: linear in the losses; the scaler scales the total.
    DDP: plain DDP (linear in the losses).
    Reference: the baseline of every multi-task paper ("LS" in Nash-MTL's tables).
    """

    paper = "linear scalarisation (LS)"

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum()

    def _weights(self) -> torch.Tensor:
        return torch.ones(len(self.task_names))


class LambdaWeighting(Weighting):
    """L = sum_k lambda_k L_k with the weights held in the float64 buffer ``lambdas`` (task
    order), which subclasses register and may update between epochs."""

    lambdas: torch.Tensor

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.lambdas.to(losses.dtype) * losses).sum()

    def _weights(self) -> torch.Tensor:
        return self.lambdas


@register_weighting("fixed")
class Fixed(LambdaWeighting):
    """Fixed weights: L = sum_k w_k L_k with constant ``weights={task: w_k}``.

    Options: ``weights``; a task it does not name keeps weight 1. SCA-MTL's official NYUD
    configs use ``{semantic: 1.44, depth: 1.15}``.
    Scale: the weighted sum.
    AMP: linear in the losses; the scaler scales the total.
    DDP: plain DDP (linear in the losses).
    Reference: SCA-MTL's official configs (Kim, Choi, Min, ICIP 2022) for the NYUD weights.
    """

    paper = "hand-set weights (e.g. SCA-MTL's official configs)"

    def __init__(self, task_names: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(task_names)
        given = {} if weights is None else weights
        if not isinstance(given, Mapping):
            raise UserError(f"weighting option weights: expected a mapping of task to weight, e.g. "
                            f"{{semantic: 1.44, depth: 1.15}}, got {weights!r}")
        unknown = sorted(set(given) - set(self.task_names))
        if unknown:
            raise UserError(f"weighting option weights: {unknown} not among the trained tasks "
                            f"{list(self.task_names)}")
        for task, w in given.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
                raise UserError(f"weighting option weights: the weight of {task!r} must be a finite "
                                f"number >= 0, got {w!r}")
        values = [float(given.get(t, 1.0)) for t in self.task_names]
        self.register_buffer("lambdas", torch.tensor(values, dtype=torch.float64))


@register_weighting("uncertainty")
class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting, in MTAN's form: L = sum_k L_k / (2 exp(s_k)) + s_k / 2.

    The s_k = log sigma_k^2 are learned (this module's parameters join the optimiser),
    initialised to ``init``.
    Options: ``init`` (-0.5, MTAN's code; Nash-MTL's code writes 0.5 (e^{-s} L + s) with s = 0).
    Scale: MTAN's form (LibMTL's L/(2e^s) + s/2 is the same; Nash-MTL's 0.5(e^{-s}L + s) too).
    AMP: the method sees the unscaled losses (the scaler scales the total).
    DDP: linear in the losses; DDP averages the gradients of model and s_k.
    Reference: Kendall, Gal, Cipolla, CVPR 2018.
    """

    paper = "Kendall, Gal, Cipolla, CVPR 2018"

    def __init__(self, task_names: Sequence[str], init: float = -0.5) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(init)))

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.log_vars.to(losses.dtype)
        return (losses * 0.5 * torch.exp(-s) + s / 2).sum()

    def _weights(self) -> torch.Tensor:
        return 0.5 * torch.exp(-self.log_vars)


@register_weighting("dwa")
class DWA(LambdaWeighting):
    """Dynamic Weight Average: weights from the ratio of the last two epochs' losses.

    lambda_k = 1 in the first two epochs; afterwards w_k = Lbar_k(t-1) / Lbar_k(t-2) from the
    epoch-average unweighted training losses and lambda_k = K softmax_k(w / T). The weights
    are fixed within an epoch. The last two epochs' losses, the epoch count and the current
    weights are buffers, so ``state_dict`` resumes the schedule exactly.

    Options: ``T`` (temperature, 2.0). Nash-MTL's code has a per-iteration variant (windows of 25
    iterations); this is MTAN's per-epoch one.
    Scale: the weights sum to K (MTAN's code; Nash-MTL's variant returns the mean instead).
    AMP: the method sees the unscaled epoch losses.
    DDP: the epoch losses are averaged over the ranks before ``epoch_end``.
    Reference: Liu, Johns, Davison, CVPR 2019 (MTAN).
    """

    paper = "Liu, Johns, Davison, CVPR 2019"
    needs = "the epoch-mean task losses"

    def __init__(self, task_names: Sequence[str], T: float = 2.0) -> None:
        super().__init__(task_names)
        if not T > 0:
            raise UserError(f"weighting option T (DWA temperature) must be > 0, got {T}")
        self.T = float(T)
        k = len(self.task_names)
        self.register_buffer("lambdas", torch.ones(k, dtype=torch.float64))
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))  # [t-2, t-1]
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))

    def epoch_end(self, mean_unweighted_losses: Mapping[str, float]) -> None:
        values = [float(v) for v in self._ordered("epoch_end", mean_unweighted_losses)]
        for task, v in zip(self.task_names, values):
            if not (v > 0 and v != float("inf")):
                raise ValueError(f"DWA: mean loss of task {task!r} is {v}; expected finite and > 0")
        current = torch.tensor(values, dtype=torch.float64, device=self.history.device)
        self.history.copy_(torch.stack([self.history[1], current]))
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            ratio = self.history[1] / self.history[0]
            self.lambdas.copy_(len(self.task_names) * torch.softmax(ratio / self.T, dim=0))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, T={self.T}"


# ----------------------------------------------------------------------------- more loss-level methods
# (ref/optimisation.md 1.1 and 2.10; the code behind the published NYUv2 SegNet-MTAN numbers)

#: the constant the reference implementations add inside log(L - L_min) (FAMO)
FAMO_EPS = 1e-8


def _check_range(method: str, option: str, value: float, low: float, high: float = math.inf,
                 low_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or (low, high] with ``low_open``), else a UserError."""
    value = float(value)
    ok = (value > low if low_open else value >= low) and value <= high and math.isfinite(value)
    if not ok:
        lo = "(" if low_open else "["
        hi = "inf)" if high == math.inf else f"{high:g}]"
        raise UserError(f"weighting option {option} of {method!r} must be in {lo}{low:g}, {hi}, got {value!r}")
    return value


@register_weighting("rlw")
class RLW(LambdaWeighting):
    """Random loss weighting: every step new weights lambda = softmax(N(0, I)), L = sum_k lambda_k L_k.

    The weights are drawn in ``begin_step`` from the step's generator (``StepContext.generator``),
    so every rank of a data-parallel run and a resumed run draw the same numbers; the current
    draw is the ``lambdas`` buffer (1/T before the first step). ``weights()`` reports it.

    Options: none.
    Scale: the weights sum to 1 (mean-loss scale, 1/T of ``equal`` on average), as in the code
    behind the published NYUv2 number (Nash-MTL's ``RLW``) and in LibMTL, Aligned-MTL's code and
    TorchJD's ``Random``.
    AMP: linear in the losses; nothing to unscale.
    DDP: linear in the losses: plain DDP (the draw is identical on every rank).
    Reference: Lin, Ye, Zhang, Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022 (arXiv 2111.10603), Algorithm 2.
    """

    paper = "Lin et al., TMLR 2022 (arXiv 2111.10603)"
    random = True

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        k = len(self.task_names)
        self.register_buffer("lambdas", torch.full((k,), 1.0 / k, dtype=torch.float64))

    def begin_step(self, ctx) -> None:
        draw = torch.randn(len(self.task_names), generator=ctx.generator)  # float32, as the reference
        self.lambdas.copy_(torch.softmax(draw.double(), dim=0))


@register_weighting("si")
class ScaleInvariant(Weighting):
    """Scale-invariant loss: L = sum_k log L_k.

    The gradient is sum_k grad L_k / L_k: each task's gradient divided by its loss value, so
    multiplying a loss by a constant does not change the update. The losses must be > 0.
    ``weights()`` reports the coefficients of the log-losses (all 1), as the reference code does.

    Options: none.
    Scale: sum_k grad L_k / L_k (Nash-MTL's ``scaleinvls``, the code behind the published NYUv2
    number; FAMO's copy is the same). Aligned-MTL's code uses log(1 + L_k) instead.
    AMP: not scale-equivariant in the losses (log(s L) has the gradient of log L); the engine
    combines the unscaled losses and scales the total, so the step is right under fp16.
    DDP: non-linear in the loss values (``nonlinear_in_losses``): the engine feeds the losses of
    the global batch (one all-reduce of T numbers), so the step equals the single-process one.
    Reference: the "SI" baseline of Navon et al., "Multi-Task Learning as a Bargaining Game",
    ICML 2022.
    """

    paper = "Navon et al., ICML 2022 (SI baseline)"
    nonlinear_in_losses = True

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.log(losses).sum()

    def _weights(self) -> torch.Tensor:
        return torch.ones(len(self.task_names), dtype=torch.float64)


@register_weighting("gls")
class GeometricLoss(Weighting):
    """Geometric loss strategy: L = (prod_k L_k)^(1/T), computed as exp(mean_k log L_k).

    The gradient is sum_k L / (T L_k) grad L_k. The losses must be > 0. ``weights()`` reports the
    exponents 1/T.

    Options: none.
    Scale: the geometric mean of the losses (LibMTL's ``GLS``, TorchJD's ``GeometricMean``); it
    is positively homogeneous of degree 1, so the update is on the scale of a mean loss.
    AMP: scale-equivariant; the engine combines the unscaled losses anyway.
    DDP: non-linear in the loss values (``nonlinear_in_losses``): the engine feeds the losses of
    the global batch (one all-reduce of T numbers).
    Reference: Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and Geometric
    Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.
    """

    paper = "Chennupati et al., CVPRW 2019"
    nonlinear_in_losses = True

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.exp(torch.log(losses).mean())

    def _weights(self) -> torch.Tensor:
        k = len(self.task_names)
        return torch.full((k,), 1.0 / k, dtype=torch.float64)


@register_weighting("imtl_l")
class IMTLL(Weighting):
    """IMTL-L, the loss-balancing half of impartial multi-task learning: L = sum_k (e^{s_k} L_k - s_k).

    The learned scales s_k (the module's parameter ``log_scale``, initialised to 0, so training
    starts as ``equal``) join the main optimiser; at the optimum of s_k the scaled loss
    e^{s_k} L_k equals 1. ``weights()`` reports e^{s_k}.

    Options: none.
    Scale: sum of the scaled losses (LibMTL's IMTL-L inside ``IMTL``, TorchJD's ``IMTLL``).
    AMP: s_k learns the scale of the loss values it sees; the engine hands it the unscaled
    losses and scales the total, so fp16 does not shift s_k.
    DDP: linear in the losses (and the gradient of s_k is linear in them): plain DDP averages
    the model's and the s_k's gradients exactly.
    Reference: Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
    """

    paper = "Liu et al., ICLR 2021"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self.log_scale = nn.Parameter(torch.zeros(len(self.task_names)))

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.log_scale.to(losses.dtype)
        return (torch.exp(s) * losses - s).sum()

    def _weights(self) -> torch.Tensor:
        return torch.exp(self.log_scale.detach().double())


@register_weighting("famo")
class FAMO(Weighting):
    """Fast adaptive multitask optimisation: L = c sum_k z_k log D_k with z = softmax(xi).

    D_k = L_k - L_min,k + 1e-8 (L_min = 0), c = (sum_k z_k / D_k)^-1 treated as a constant, so the
    gradient sum_k (c z_k / D_k) grad L_k is a convex combination of the task gradients. After the
    optimiser step the engine re-runs the forward pass on the same batch without gradients and
    calls ``after_step(new_losses)``: delta_k = log D_k(before) - log D_k(after), the gradient of
    the logits is the softmax Jacobian times delta, J^T delta = z * (delta - z . delta), and ONE
    Adam step (lr ``w_lr``, L2 weight decay ``gamma``, betas 0.9 / 0.999, eps 1e-8: the
    ``torch.optim.Adam`` update, carried out on buffers) moves xi. The logits, the Adam moments
    and step count, and the last losses are buffers: xi never joins the main optimiser, and
    ``state_dict`` resumes FAMO exactly. ``weights()`` reports z.

    Options: ``w_lr`` (0.025, the logits' Adam learning rate); ``gamma`` (0.001, the logits'
    weight decay: the paper's and ``nyuv2/run.sh``'s NYUv2 value; CityScapes uses 0.01, the
    official CLI default; the official class default is 1e-5).
    Scale: the weights c z_k / D_k sum to 1 (a convex combination, on the scale of one task's
    gradient, 1/T of ``equal`` at balance), as the official code.
    AMP: the engine combines the unscaled losses (D_k is a loss value, not a scaled one) and
    scales the total; the re-forward runs under the same autocast.
    DDP: non-linear in the loss values (``nonlinear_in_losses``): the engine feeds the global
    batch's losses (one all-reduce of T numbers) and all-reduces the re-forward's T losses, so
    the logits are identical on every rank.
    Reference: Liu, Feng, Stone, Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023,
    Algorithm 2 (official code Cranial-XIX/FAMO).
    """

    paper = "Liu et al., NeurIPS 2023"
    needs = "the task losses, and the same batch's losses after the optimiser step (one no-grad re-forward)"
    needs_reforward = True
    nonlinear_in_losses = True
    #: torch.optim.Adam's defaults, as the official code
    BETAS = (0.9, 0.999)
    ADAM_EPS = 1e-8

    def __init__(self, task_names: Sequence[str], w_lr: float = 0.025, gamma: float = 0.001) -> None:
        super().__init__(task_names)
        self.w_lr = _check_range("famo", "w_lr", w_lr, 0.0)
        self.gamma = _check_range("famo", "gamma", gamma, 0.0)
        k = len(self.task_names)
        self.register_buffer("logits", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("adam_exp_avg", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("prev_losses", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))

    def _z(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        d = losses + FAMO_EPS  # L_min = 0
        z = self._z().to(losses.dtype)
        c = 1.0 / (z / d).sum().detach()
        with torch.no_grad():
            self.prev_losses.copy_(losses.detach().double())
            self.has_prev.fill_(True)
        return (c * z * torch.log(d)).sum()

    def _weights(self) -> torch.Tensor:
        return self._z()

    def logits_grad(self, new_losses: torch.Tensor) -> torch.Tensor:
        """J_softmax(xi)^T delta with delta = log D(before) - log D(after)."""
        new = new_losses.detach().to(self.logits.device, torch.float64)
        delta = torch.log(self.prev_losses + FAMO_EPS) - torch.log(new + FAMO_EPS)
        z = self._z()
        return z * (delta - (z * delta).sum())

    @torch.no_grad()
    def adam_step_(self, grad: torch.Tensor) -> None:
        """One ``torch.optim.Adam`` step (L2 weight decay ``gamma``, no amsgrad) on ``logits``."""
        beta1, beta2 = self.BETAS
        self.adam_step += 1
        t = int(self.adam_step)
        g = grad.to(self.logits) + self.gamma * self.logits
        self.adam_exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
        self.adam_exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = self.adam_exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t) + self.ADAM_EPS
        self.logits.addcdiv_(self.adam_exp_avg, denom, value=-self.w_lr / (1 - beta1 ** t))

    @torch.no_grad()
    def after_step(self, new_losses: torch.Tensor) -> None:
        if not bool(self.has_prev):
            raise RuntimeError("FAMO.after_step: no losses combined yet (call combine first)")
        self.adam_step_(self.logits_grad(new_losses))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_lr={self.w_lr}, gamma={self.gamma}"
