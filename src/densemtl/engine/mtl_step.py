"""One training step for every kind of multi-task optimisation method.

The trainer builds a step with :func:`make_step` and calls ``step(images, batch, ctx, check)``;
it never names a method. Which step runs is decided by the method's kind and the run's
``weighting.scope`` through :data:`STEPS` (one class per way of obtaining gradients):

- :class:`LossStep` (loss-level methods): ``weighting.combine(losses)`` and one ordinary
  backward. Under DDP, a method that is non-linear in its loss values
  (``nonlinear_in_losses``: SI, GLS, FAMO; and the gradient methods DB-MTL, GradNorm) sees the
  losses of the *global* batch (:func:`global_values`): the step all-reduces the T loss values
  and feeds the method ``L_local - L_local.detach() + L_global``, whose value is the global loss
  and whose gradient is the local one, so the average of the gradients over the ranks equals
  the single-process gradient of the global batch. FAMO's re-forward
  (``needs_reforward``) runs after the optimiser step on the same batch without gradients.
- :class:`ParameterStep` (gradient-level methods, scope ``all`` or ``shared``): one forward, then
  T backward passes (``torch.autograd.grad`` of each task's loss, the graph retained until the
  last) that fill ONE float32 T x P Jacobian of the scope's parameters; the parameters outside
  the scope (heads, task branches, the method's own parameters) get their gradients from the
  same passes. Under DDP the forward skips DDP's reducer (``no_sync``) and the step all-reduces
  the Jacobian (T x P numbers: T times plain DDP's traffic) and the other gradients, so every
  rank holds the Jacobian of the global batch and the method computes the same update
  everywhere. The method's update is written into ``.grad`` and the optimiser steps as usual.
- :class:`RepresentationStep` (scope ``representation``, the -UB methods): one forward that
  records the features the heads read (the model's ``Representation`` marker), T backward
  passes through the heads only (``autograd.grad`` with respect to those features), the
  T x T Gramian of the feature gradients, the method's weights, then ONE ordinary backward of
  ``sum_t w_t L_t`` through the whole network (DDP's reducer, the scaler and the fused
  optimiser work unchanged). Under DDP the features of different ranks are different
  coordinates of the global feature gradient, so the global Gramian is the sum of the ranks'
  Gramians / W^2 (one all-reduce of T x T numbers).

AMP: the forward pass runs under autocast; the backward passes take gradients of the scaled
losses (``scaler.get_scale()`` under fp16, so small gradients do not underflow), and the step
divides them by the scale before any method sees them: every method gets unscaled gradients
and losses, whether or not its output is scale-equivariant. The update is multiplied back by
the scale and written into ``.grad``, so ``scaler.step`` unscales it, skips steps with
non-finite gradients and adapts the scale as for an ordinary backward. A step whose Jacobian
is not finite skips the method.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn as nn

from ..errors import UserError
from ..models.scope import check_representation, flatten_features, representation_modules, scope_parameters
from ..tasks import Task
from ..weighting import GradientWeighting, StepContext, Weighting
from . import distributed, speed

CheckFn = Callable[[dict[str, float]], None]


def task_of(key: str) -> str:
    """Model output key -> task: ``"semantic@scale1"`` (deep supervision) -> ``"semantic"``."""
    return key.split("@", 1)[0]


def compute_losses(tasks: dict[str, Task], outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
    """Unweighted loss per task; deep-supervision outputs add to their task's loss."""
    losses: dict[str, torch.Tensor] = {}
    for key, raw in outputs.items():
        name = task_of(key)
        if name not in tasks:
            raise RuntimeError(f"model output {key!r} belongs to no task of this run ({', '.join(tasks)})")
        loss = tasks[name].loss(raw, batch[name])
        losses[name] = losses[name] + loss if name in losses else loss
    return losses


def gradient_stats(gramian: torch.Tensor, names: list[str]) -> dict:
    """Per-task gradient norms, pairwise cosines and the condition number of a T x T Gramian."""
    g = gramian.double().cpu()
    norms = torch.sqrt(torch.clamp(torch.diagonal(g), min=0))
    stats: dict = {"grad_norm": dict(zip(names, norms.tolist()))}
    cos = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            d = float(norms[i] * norms[j])
            cos[f"{names[i]}/{names[j]}"] = float(g[i, j]) / d if d > 0 else 0.0
    stats["grad_cosine"] = cos
    scale = float(torch.diagonal(g).mean())
    stats["gramian_condition"] = None
    if scale > 0 and math.isfinite(scale):
        try:
            eig = torch.linalg.eigvalsh((g + g.T) / (2 * scale))
        except torch.linalg.LinAlgError:  # LAPACK gave up (it has, once, on a 3 x 3): no figure this step
            return stats
        lo, hi = float(eig[0]), float(eig[-1])
        stats["gramian_condition"] = hi / lo if lo > 0 and hi > 0 else None
    return stats


def global_values(losses: torch.Tensor) -> torch.Tensor:
    """Under DDP: ``losses`` with the values of the global batch (the mean over ranks, one
    all-reduce of T numbers) and the local graph, ``L - L.detach() + mean_r L_r``: a function
    of them has the global value, and after DDP's average of the gradients over the ranks, the
    gradient of the global batch. One process: ``losses`` unchanged."""
    if distributed.world_size() <= 1:
        return losses
    return losses - losses.detach() + distributed.all_reduce_sum(losses.detach()) / distributed.world_size()


class TrainStep:
    """Shared parts of the steps: the forward pass, loss computation and the scaler."""

    def __init__(self, *, model: nn.Module, train_model: nn.Module, weighting: Weighting,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, tasks: dict[str, Task],
                 device: torch.device, amp: str, channels_last: bool, scope: str | None, model_name: str) -> None:
        self.model, self.train_model, self.weighting = model, train_model, weighting
        self.optimizer, self.scaler, self.tasks = optimizer, scaler, tasks
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.names = list(weighting.task_names)
        self.scope, self.model_name = scope, model_name

    def forward(self, images: torch.Tensor, batch: dict, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        with speed.autocast(self.device, self.amp):
            outputs = (module or self.train_model)(speed.prepare_images(images, self.channels_last))
        return compute_losses(self.tasks, outputs, batch)  # float32, outside autocast

    def check(self, check: CheckFn, losses: torch.Tensor, **extra: torch.Tensor) -> None:
        values = dict(zip(self.names, losses.detach().double().tolist()))
        values.update({k: float(v.detach().double()) for k, v in extra.items()})
        check(values)

    def __call__(self, images: torch.Tensor, batch: dict, ctx: StepContext, check: CheckFn) -> dict:
        """One optimiser step. Returns ``{"losses": T float64 (task order), "weights": T or None,
        "stats": {...}}``."""
        raise NotImplementedError


class LossStep(TrainStep):
    def __call__(self, images, batch, ctx, check):
        w = self.weighting
        w.begin_step(ctx)
        self.optimizer.zero_grad(set_to_none=True)
        losses = w.stack(self.forward(images, batch))
        fed = global_values(losses) if w.nonlinear_in_losses else losses
        weights = torch.tensor(list(w.weights().values()), dtype=torch.float64)
        total = w._combine(fed)
        self.check(check, losses, **{"total (weighted)": total})
        speed.backward_and_step(total, self.optimizer, self.scaler)
        if w.needs_reforward:
            with torch.no_grad():
                new = w.stack(self.forward(images, batch, self.model)).detach()
            if distributed.world_size() > 1:
                new = distributed.all_reduce_sum(new) / distributed.world_size()
            w.after_step(new)
        return {"losses": losses.detach().double(), "weights": weights, "stats": {}}


def _flat(grads, params, dtype=torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """The gradients (None: zeros) as one flat vector, written into ``out`` when given."""
    if not params:
        return torch.zeros(0) if out is None else out
    parts = [(g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for g, p in zip(grads, params)]
    return torch.cat(parts) if out is None else torch.cat(parts, out=out)


def _finite(*tensors: torch.Tensor) -> bool:
    """All entries finite, tested through their sums (a NaN or inf anywhere makes the sum
    non-finite; a sum that overflows marks gradients too large to use): one pass, no T x P
    boolean mask (``isfinite(J).all()`` took 0.4 s a step on MTAN at width 1)."""
    return all(math.isfinite(float(t.sum())) for t in tensors)


def _write(vector: torch.Tensor, params: list[nn.Parameter]) -> None:
    """Split ``vector`` into the ``.grad`` of ``params`` (in their dtype and memory format)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = torch.empty_like(p).copy_(vector[offset:offset + n].view(p.shape))  # p's memory format
        offset += n


class GradientStep(TrainStep):
    """Common parts of the gradient-level steps."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        if not isinstance(self.weighting, GradientWeighting):
            raise UserError(f"weighting.scope {self.scope}: {self.weighting.name!r} is a loss-level method; "
                            "a scope applies to gradient-level methods only")

    def scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def no_sync(self):
        return self.train_model.no_sync() if hasattr(self.train_model, "no_sync") else contextlib.nullcontext()


class ParameterStep(GradientStep):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        scope = scope_parameters(self.model, self.scope)
        in_scope = {id(p) for _, p in scope}
        self.shared = [p for _, p in scope]
        self.others = [p for p in self.model.parameters() if p.requires_grad and id(p) not in in_scope]
        self.own = [p for p in self.weighting.parameters() if p.requires_grad]
        if not self.shared:
            raise UserError(f"weighting.scope {self.scope}: model {self.model_name!r} has no parameter in "
                            "that scope")

    def __call__(self, images, batch, ctx, check):
        w: GradientWeighting = self.weighting  # type: ignore[assignment]
        w.begin_step(ctx)
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.own:
            p.grad = None
        with self.no_sync():
            losses = w.stack(self.forward(images, batch))
        if w.nonlinear_in_losses:
            losses = global_values(losses)
        fed = w.transform_losses(losses)
        self.check(check, losses, **{"total (transformed)": fed.sum()})
        scaled = self.scaler.scale(fed)  # x the loss scale under fp16 (identity otherwise)
        s = self.scale()
        T, P = len(self.names), sum(p.numel() for p in self.shared)
        jac = torch.empty(T, P, dtype=torch.float32, device=self.device)
        weighted = w.head_weights == "weighted"
        other_rows = torch.zeros(T if weighted else 1, sum(p.numel() for p in self.others),
                                 dtype=torch.float32, device=self.device)
        own = torch.zeros(sum(p.numel() for p in self.own), dtype=torch.float32, device=self.device)
        inputs = [*self.shared, *self.others, *self.own]
        n1, n2 = len(self.shared), len(self.shared) + len(self.others)
        for t in range(T):
            grads = torch.autograd.grad(scaled[t], inputs, retain_graph=t < T - 1, allow_unused=True)
            _flat(grads[:n1], self.shared, out=jac[t])
            other_rows[t if weighted else 0] += _flat(grads[n1:n2], self.others)
            own += _flat(grads[n2:], self.own)
        if s != 1.0:
            for m in (jac, other_rows, own):
                m.div_(s)
        for m in (jac, other_rows, own):  # DDP: the global batch's gradients on every rank
            distributed.all_reduce_mean_(m)
        stats: dict = {}
        weights = None
        gramian = jac @ jac.T  # float32; non-finite when any gradient is (or overflows)
        if _finite(gramian, other_rows, own):
            ctx.gramian = gramian
            stats = gradient_stats(gramian, self.names)
            if self.own:
                _write(own, self.own)  # the method's own parameters (IMTL-L's s); aggregate may add more
            update, weights = w.aggregate(jac, losses.detach().double(), ctx)
            if weighted and weights is not None:
                others = weights.to(other_rows.dtype).to(other_rows.device) @ other_rows
            else:
                others = other_rows.sum(0)
        else:  # fp16 overflow: the scaler sees the non-finite gradient and skips the step
            update, others = jac.sum(0), other_rows.sum(0)
        _write(update * s if s != 1.0 else update, self.shared)
        _write(others * s if s != 1.0 else others, self.others)
        if s != 1.0:
            for p in self.own:
                if p.grad is not None:
                    p.grad.mul_(s)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"losses": losses.detach().double(), "weights": None if weights is None else weights.detach().double().cpu(),
                "stats": stats}


class RepresentationStep(GradientStep):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        if not self.weighting.weights_only:
            raise UserError(f"weighting.scope representation: {self.weighting.name!r} needs the parameter "
                            "gradients themselves (it does not reduce to task weights); use scope all or shared")
        check_representation(self.model, self.model_name)
        self._features: list[torch.Tensor] = []
        for module in representation_modules(self.model):
            module.register_forward_hook(self._record)

    def _record(self, module, inputs, output) -> None:
        if torch.is_grad_enabled() and module.training:
            self._features.extend(f for f in flatten_features(output) if f.requires_grad)

    def __call__(self, images, batch, ctx, check):
        w: GradientWeighting = self.weighting  # type: ignore[assignment]
        w.begin_step(ctx)
        self.optimizer.zero_grad(set_to_none=True)
        self._features = []
        losses = w.stack(self.forward(images, batch))
        feats, self._features = self._features, []
        if w.nonlinear_in_losses:
            losses = global_values(losses)
        fed = w.transform_losses(losses)
        self.check(check, losses, **{"total (transformed)": fed.sum()})
        scaled = self.scaler.scale(fed)
        s = self.scale()
        rows = []
        for t in range(len(self.names)):
            grads = torch.autograd.grad(scaled[t], feats, retain_graph=True, allow_unused=True)
            rows.append(_flat(grads, feats) / s)
        rep = torch.stack(rows)
        gramian = rep @ rep.T
        if distributed.world_size() > 1:
            gramian = distributed.all_reduce_sum(gramian) / distributed.world_size() ** 2
        stats: dict = {}
        if _finite(gramian):
            ctx.gramian = gramian
            stats = gradient_stats(gramian, self.names)
            weights = w.gramian_weights(gramian.double(), losses.detach().double(), ctx)
            w._last = weights.detach().clone()
        else:
            weights = torch.ones(len(self.names), dtype=torch.float64)
        # the method's own parameters (IMTL-L's s) get the plain gradient of their losses, as at
        # the parameter scopes; the network gets sum_t w_t grad L_t from one ordinary backward
        own = [p for p in w.parameters() if p.requires_grad]
        own_grads = torch.autograd.grad(scaled.sum(), own, retain_graph=True, allow_unused=True) if own else ()
        total = (weights.to(fed.device, fed.dtype) * fed).sum()
        self.scaler.scale(total).backward()
        for p, g in zip(own, own_grads):
            p.grad = None if g is None else distributed.all_reduce_mean_(g.clone())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"losses": losses.detach().double(), "weights": weights.detach().double().cpu(), "stats": stats}


#: scope -> step class for gradient-level methods; loss-level methods take LossStep
STEPS: dict[str, type[GradientStep]] = {"all": ParameterStep, "shared": ParameterStep,
                                          "representation": RepresentationStep}


def make_step(**kw) -> TrainStep:
    """The step for ``kw["weighting"]`` at ``kw["scope"]`` (see :data:`STEPS`)."""
    if kw["weighting"].kind == "loss":
        if kw["scope"] is not None:
            raise UserError(f"weighting.scope: {kw['weighting'].name!r} is a loss-level method (one ordinary "
                            "backward); a scope applies to gradient-level methods only")
        return LossStep(**kw)
    return STEPS[kw["scope"]](**kw)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of global step ``step``: the same on every rank and on resume."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_033 + step * 104_729 + 17) % (2 ** 63 - 1))
    return g


class EpochStats:
    """Per-epoch means of the per-step weights and gradient statistics (metrics.jsonl)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.weights = torch.zeros(len(names), dtype=torch.float64)
        self.n_weights = 0
        self.sums: dict[str, dict[str, float]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.failures = 0.0

    def add(self, result: dict, ctx: StepContext) -> None:
        if result["weights"] is not None:
            self.weights += result["weights"].to(self.weights.dtype).cpu()
            self.n_weights += 1
        for key, value in result["stats"].items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            for sub, v in items:
                if v is None or not math.isfinite(v):
                    continue
                self.sums.setdefault(key, {}).setdefault(sub, 0.0)
                self.counts.setdefault(key, {}).setdefault(sub, 0)
                self.sums[key][sub] += v
                self.counts[key][sub] += 1
        self.failures += ctx.stats.get("solver_failures", 0.0)

    def record(self) -> dict:
        """``{"weights": {task: mean}, "gradients": {...}}`` (gradients only where measured)."""
        out: dict = {}
        if self.n_weights:
            out["weights"] = dict(zip(self.names, (self.weights / self.n_weights).tolist()))
        if self.sums:
            grads: dict = {}
            for key, subs in self.sums.items():
                means = {k: v / self.counts[key][k] for k, v in subs.items()}
                grads[key] = means[""] if set(means) == {""} else means
            grads["solver_failures"] = int(self.failures)
            out["gradients"] = grads
        return out
