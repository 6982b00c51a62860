"""Gradient-level methods that edit or re-balance the per-task gradients themselves: GradDrop,
GradVac, DB-MTL and GradNorm (``ref/optimisation.md`` sections 1.2, 2.3, 2.9 and 2.11).

The engine (:mod:`densemtl.engine.mtl_step`) hands every method the unscaled float32 T x P
Jacobian of the run's scope (under DDP the global batch's, identical on every rank) and the
unscaled loss values; the methods here are deterministic given those and ``ctx.generator``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from .base import GradientWeighting, StepContext, register_weighting

#: the constant the reference implementations add to denominators and inside log(L)
EPS = 1e-8


def _check_range(method: str, option: str, value: float, low: float, high: float = math.inf) -> float:
    value = float(value)
    if not (low <= value <= high and math.isfinite(value)):
        hi = "inf)" if high == math.inf else f"{high:g}]"
        raise UserError(f"weighting option {option} of {method!r} must be in [{low:g}, {hi}, got {value!r}")
    return value


def uniform(n: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``n`` numbers from U[0, 1) in ``like``'s dtype and device, drawn from ``generator`` (a CPU
    generator). On another device a generator of that device is seeded from ``generator``, so
    the draw stays a function of the step's generator without a host-to-device copy of n numbers."""
    if like.device.type == "cpu":
        return torch.rand(n, generator=generator, dtype=like.dtype)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    local = torch.Generator(device=like.device)
    local.manual_seed(seed)
    return torch.rand(n, generator=local, dtype=like.dtype, device=like.device)


@register_weighting("graddrop")
class GradDrop(GradientWeighting):
    """Gradient sign dropout: per coordinate, keep only the gradients of one sign, chosen at random.

    Per coordinate p: purity P_p = (1 + sum_t g_tp / (sum_t |g_tp| + 1e-8)) / 2 and U_p ~ U[0, 1);
    the mask M_tp = [P_p > U_p and g_tp > 0] or [P_p < U_p and g_tp < 0]; the update is
    sum_t (leak + (1 - leak) M_tp) g_tp. It works on the parameter gradients of the scope, as the
    CAGrad, FAMO and TorchJD implementations (the paper and LibMTL apply it to the gradient with
    respect to the shared features, times their sign, per sample): the update is not a
    combination of whole task gradients, so scope ``representation`` is refused
    (``weights_only = False``) and no task weights are logged. U is drawn from the step's
    generator (``StepContext.generator``): identical on every rank and on resume.

    Options: ``leak`` (0.0: none of a dropped gradient passes; 1.0 turns the method into the sum).
    Scale: the sum of the kept gradients (the official code's mean x T; TorchJD's ``GradDrop``
    also sums; TorchJD has no 1e-8 in the purity).
    AMP: the mask is invariant to a positive scale of the gradients (but for the 1e-8), the update
    scales with them; the engine hands unscaled gradients anyway.
    DDP: the engine all-reduces the T x P Jacobian, and U is the same on every rank, so every rank
    computes the same update.
    Reference: Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
    Dropout", NeurIPS 2020. Default scope ``shared``: the published NYUv2 SegNet-MTAN number comes
    from CAGrad's code, whose shared modules exclude MTAN's task attention; every other parameter
    gets the plain gradient of its task's loss (``head_weights = "sum"``), as there.
    """

    paper = "Chen et al., NeurIPS 2020"
    needs = "per-task gradients of the shared scope (T backward passes) and one random number per coordinate"
    default_scope = "shared"
    head_weights = "sum"
    weights_only = False
    random = True

    def __init__(self, task_names: Sequence[str], leak: float = 0.0) -> None:
        super().__init__(task_names)
        self.leak = _check_range("graddrop", "leak", leak, 0.0, 1.0)

    def draw(self, purity: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The thresholds U (one per coordinate)."""
        return uniform(purity.numel(), purity, ctx.generator)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor, ctx: StepContext
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        purity = 0.5 * (1.0 + jacobian.sum(0) / (jacobian.abs().sum(0) + EPS))
        u = self.draw(purity, ctx)
        positive, negative = purity > u, purity < u
        update = torch.zeros_like(jacobian[0])
        for g in jacobian:  # one row at a time: P-sized temporaries, not T x P
            keep = (positive & (g > 0)) | (negative & (g < 0))
            if self.leak == 0.0:
                update += torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))
            else:
                update += (self.leak + (1.0 - self.leak) * keep.to(g.dtype)) * g
        self._last = None
        return update, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, leak={self.leak}"


@register_weighting("gradvac")
class GradVac(GradientWeighting):
    """Gradient vaccine: raise each pair's gradient cosine to an EMA target by adding the other gradient.

    For each task i, for the other tasks j in a random order: rho = cos(g_i^PC, g_j) (1e-8 in the
    denominator); if rho < phi_ij, g_i^PC += g_j ||g_i^PC|| (phi_ij sqrt(1 - rho^2) -
    rho sqrt(1 - phi_ij^2)) / (||g_j|| sqrt(1 - phi_ij^2) + 1e-8), which makes the cosine exactly
    phi_ij; then phi_ij <- (1 - beta) phi_ij + beta rho for every visited pair. The update is
    sum_i g_i^PC. Every g_i^PC is a combination sum_k C_ik g_k of the current gradients, so the
    method runs on the T x T Gramian alone and returns the weights C.sum(0) (it also works at
    scope ``representation``). The targets phi (T x T, starting at 0) are the buffer ``phi_hat``;
    the visiting orders come from the step's generator (``StepContext.generator``).

    Options: ``beta`` (0.5, the EMA rate of the targets); one group, the whole scope (LibMTL's
    ``GradVac_group_type`` 0; per-layer groups are not implemented).
    Scale: the sum of the modified gradients (LibMTL, Aligned-MTL's code and TorchJD's
    ``GradVac``: all the same).
    AMP: cosines and the correction factors are invariant to a positive scale of the gradients
    (but for the 1e-8); the engine hands unscaled gradients anyway.
    DDP: the engine all-reduces the T x P Jacobian; the Gramian, the random orders and so the
    targets are the same on every rank.
    Reference: Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving
    Multi-task Optimization in Massively Multilingual Models", ICLR 2021. The published NYUv2
    SegNet-MTAN number comes from Aligned-MTL's code (MTAN's attention counted as shared: default
    scope ``all``), whose copy updates a target only when it corrects the pair (so the targets can
    only fall); densemtl updates every visited pair as the paper, LibMTL and TorchJD. Heads get the
    plain sum of the task gradients (``head_weights = "sum"``), as LibMTL's per-task backward passes.
    """

    paper = "Wang et al., ICLR 2021"
    needs = "per-task gradients of the shared scope (T backward passes); T x T cosine targets"
    default_scope = "all"
    head_weights = "sum"
    weights_only = True
    random = True

    def __init__(self, task_names: Sequence[str], beta: float = 0.5) -> None:
        super().__init__(task_names)
        self.beta = _check_range("gradvac", "beta", beta, 0.0, 1.0)
        k = len(self.task_names)
        self.register_buffer("phi_hat", torch.zeros(k, k, dtype=torch.float64))

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        G = gramian.detach().double().cpu().tolist()
        phi = self.phi_hat.detach().double().cpu().tolist()
        k, beta = len(G), self.beta
        coef = [[1.0 if a == b else 0.0 for b in range(k)] for a in range(k)]
        for i in range(k):
            others = [j for j in range(k) if j != i]
            order = torch.randperm(len(others), generator=ctx.generator).tolist()
            dots = list(G[i])  # dots[m] = g_i^PC . g_m
            sq = G[i][i]  # ||g_i^PC||^2
            for idx in order:
                j = others[idx]
                norm_i, norm_j = math.sqrt(max(sq, 0.0)), math.sqrt(max(G[j][j], 0.0))
                rho = dots[j] / (norm_i * norm_j + EPS)
                target = phi[i][j]
                if rho < target:
                    root_rho = math.sqrt(max(1.0 - rho * rho, 0.0))
                    root_target = math.sqrt(max(1.0 - target * target, 0.0))
                    a = norm_i * (target * root_rho - rho * root_target) / (norm_j * root_target + EPS)
                    coef[i][j] += a
                    sq += 2.0 * a * dots[j] + a * a * G[j][j]
                    dots = [d + a * gj for d, gj in zip(dots, G[j])]
                phi[i][j] = (1.0 - beta) * target + beta * rho
        self.phi_hat.copy_(torch.tensor(phi, dtype=torch.float64))
        return torch.tensor(coef, dtype=torch.float64, device=gramian.device).sum(0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"


@register_weighting("db_mtl")
class DBMTL(GradientWeighting):
    """Dual-balancing MTL: balance the log-losses' gradients to the largest EMA gradient norm.

    The engine takes the gradients of log(L_t + 1e-8) (``transform_losses``; the heads get those
    too). An EMA m_t <- g_t + beta_s (m_t - g_t), beta_s = beta / s^beta_sigma at the s-th step
    (m starts at 0, no bias correction); alpha_t = max_j ||m_j|| / (||m_t|| + 1e-8); the update is
    sum_t alpha_t m_t, so it is not a combination of the current gradients
    (``weights_only = False``, scope ``representation`` refused). The logged weights are alpha.
    m (T x P float32, sized on the first step) and the step count are saved in ``state_dict``
    (m under the key ``momentum``; it is kept out of the module's buffers so that DDP does not
    broadcast T x P numbers every forward pass; the checkpoint grows by T x P floats).

    Options: ``beta`` (0.9, the EMA rate), ``beta_sigma`` (0.0, the decay exponent of beta).
    Scale: every alpha_t m_t has the largest EMA norm, so the update's norm is at most T times it;
    m starts at 0, so the first steps are small (0.1 g at the first). LibMTL's, the only reference
    implementation.
    AMP: not scale-equivariant: log(s L) has the gradient of log L, so scaled losses would give
    an update 1/s too small after the unscale. The engine takes the log of the unscaled losses,
    scales the log-losses for the backward passes and hands unscaled gradients, so fp16 is right.
    DDP: log is non-linear in the loss values (``nonlinear_in_losses``): the engine hands
    ``transform_losses`` the global batch's losses with the local graphs (one all-reduce of T
    numbers), so the all-reduced T x P Jacobian is that of log L of the global batch; m is the
    same on every rank.
    Reference: Lin et al., "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029 (LibMTL
    ``DB_MTL``). There is no official SegNet-MTAN number: default scope ``all``; LibMTL's MTAN
    shares only the encoder without the attention (scope ``shared`` here).
    """

    paper = "Lin et al., arXiv 2308.12029"
    needs = "per-task gradients of log L (T backward passes); a T x P moving average of them"
    default_scope = "all"
    head_weights = "sum"
    weights_only = False
    nonlinear_in_losses = True
    MOMENTUM_KEY = "momentum"

    def __init__(self, task_names: Sequence[str], beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__(task_names)
        self.beta = _check_range("db_mtl", "beta", beta, 0.0, 1.0)
        self.beta_sigma = _check_range("db_mtl", "beta_sigma", beta_sigma, 0.0)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.momentum = torch.zeros(0)  # T x P float32 from the first step on

    def transform_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.log(losses + EPS)

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor, ctx: StepContext
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.momentum
        if m.numel() == 0:
            m = torch.zeros_like(jacobian)
        elif m.shape != jacobian.shape:
            raise ValueError(f"DB-MTL: the saved moving average has shape {tuple(m.shape)}, the step's "
                             f"Jacobian {tuple(jacobian.shape)} (another model or scope than the run it "
                             "was saved from?)")
        m = m.to(device=jacobian.device, dtype=jacobian.dtype)
        self.steps += 1
        b = self.beta / float(self.steps) ** self.beta_sigma
        m.mul_(b).add_(jacobian, alpha=1.0 - b)  # = g + b (m - g)
        self.momentum = m
        norms = torch.linalg.vector_norm(m, dim=1).double()
        alpha = norms.max() / (norms + EPS)
        self._last = alpha.detach().clone()
        return alpha.to(m.dtype) @ m, alpha

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + self.MOMENTUM_KEY] = self.momentum if keep_vars else self.momentum.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        key = prefix + self.MOMENTUM_KEY
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        if key in state_dict:
            self.momentum = state_dict[key].detach().clone().to(torch.float32)
        elif strict:
            missing_keys.append(key)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, beta_sigma={self.beta_sigma}"


@register_weighting("gradnorm")
class GradNorm(GradientWeighting):
    """Gradient normalisation: learn task weights that equalise the weighted gradient norms' training rates.

    Weights w = T softmax(s), with s the module's parameter (initialised to 1, so w starts
    equal). During the first epoch the update is the plain sum of the gradients (w = 1). From
    then on, with L(0) the first epoch's mean training losses (recorded by ``epoch_end``),
    r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0)), G_t = w_t ||g_t|| and Gbar = mean_t G_t:
    L_grad = sum_t |G_t - Gbar r_t^alpha| with the target Gbar r^alpha held constant;
    ``aggregate`` writes dL_grad/ds into ``s.grad`` itself (the main optimiser steps s) and
    returns the update sum_t w_t g_t with the weights w. L(0) and whether it is set are buffers.
    Scope ``representation`` is refused (``weights_only = False``): the representation step has
    no place for the gradient of s under AMP.

    Options: ``alpha`` (1.5, the restoring force).
    Scale: sum_t w_t g_t with the weights summing to T (LibMTL's, whose recipe this is: norms of
    all the scope's gradients, first-epoch L(0), equal weights in epoch one).
    AMP: the engine hands unscaled gradients and losses, and scales s.grad with the update, so
    fp16 changes nothing.
    DDP: the engine all-reduces the T x P Jacobian and (``nonlinear_in_losses``) hands the global
    batch's loss values, which enter r (one all-reduce of T numbers), so s moves identically on
    every rank.
    Reference: Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for
    Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018 (LibMTL ``GradNorm``). The
    paper uses the last shared layer's gradients; Aligned-MTL's code (its NYUv2 MTAN number) uses
    the last shared layer, alpha 2 and the first step's losses as L(0). Default scope ``all``.
    """

    paper = "Chen et al., ICML 2018"
    default_scope = "all"
    head_weights = "sum"
    weights_only = False
    nonlinear_in_losses = True

    def __init__(self, task_names: Sequence[str], alpha: float = 1.5) -> None:
        super().__init__(task_names)
        self.alpha = _check_range("gradnorm", "alpha", alpha, 0.0)
        k = len(self.task_names)
        self.log_weights = nn.Parameter(torch.ones(k))  # s; w = T softmax(s)
        self.register_buffer("initial_losses", torch.ones(k, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))

    def task_weights(self) -> torch.Tensor:
        return len(self.task_names) * torch.softmax(self.log_weights.double(), dim=0)

    def _weights(self) -> torch.Tensor:
        return self.task_weights().detach()

    def epoch_end(self, mean_unweighted_losses: Mapping[str, float]) -> None:
        values = [float(v) for v in self._ordered("epoch_end", mean_unweighted_losses)]
        if int(self.epochs_seen) == 0:
            for task, v in zip(self.task_names, values):
                if not (v > 0 and math.isfinite(v)):
                    raise ValueError(f"GradNorm: mean loss of task {task!r} is {v}; expected finite and > 0")
            self.initial_losses.copy_(torch.tensor(values, dtype=torch.float64))
        self.epochs_seen += 1

    def grad_loss(self, norms: torch.Tensor, losses: torch.Tensor, s: torch.Tensor | None = None,
                  target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_grad, its target Gbar r^alpha) for gradient norms ``norms`` and loss values
        ``losses`` at logits ``s`` (default: the parameter); a given ``target`` is used as is."""
        s = self.log_weights if s is None else s
        w = len(self.task_names) * torch.softmax(s.double(), dim=0)
        g = w * norms.to(w)
        if target is None:
            ratio = losses.to(w) / self.initial_losses.to(w)
            r = ratio / ratio.mean()
            target = (g.mean() * r ** self.alpha).detach()
        return (g - target).abs().sum(), target

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor, ctx: StepContext
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.log_weights
        if int(self.epochs_seen) == 0:  # the first epoch: equal weights, s untouched
            s.grad = None
            w = torch.ones(len(self.task_names), dtype=torch.float64, device=jacobian.device)
            self._last = w.clone()
            return jacobian.sum(0), w
        norms = torch.linalg.vector_norm(jacobian, dim=1).double().to(s.device)
        values = losses.detach().double().to(s.device)
        with torch.enable_grad():
            l_grad, _ = self.grad_loss(norms, values)
            (grad,) = torch.autograd.grad(l_grad, s)
        s.grad = grad.to(s.dtype)
        w = self.task_weights().detach().to(jacobian.device)
        self._last = w.clone()
        return w.to(jacobian.dtype) @ jacobian, w

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"
