"""The registry and the two interfaces every multi-task optimisation method implements.

A method is one class decorated with :func:`register_weighting`. Its constructor takes
``task_names`` plus keyword options (typed by their defaults), which :func:`make_weighting`
checks by name and type. Two kinds share the base class :class:`Weighting` (an ``nn.Module``:
its ``parameters()`` join the optimiser, its ``state_dict()`` carries everything a resumed run
needs):

- **loss-level** (``kind = "loss"``): ``combine(losses) -> scalar`` from the unweighted task
  losses; the engine back-propagates the scalar once. Optional hooks: ``epoch_end`` (DWA),
  ``after_step(new_losses)`` with ``needs_reforward = True`` (FAMO: the engine re-runs the
  forward pass on the same batch without gradients after the optimiser step).
- **gradient-level** (:class:`GradientWeighting`): the engine computes the per-task gradients of
  a *shared scope* and calls ``aggregate(jacobian, losses, ctx) -> (update, weights)``.
  Methods that only need task weights from the T x T Gramian override ``gramian_weights``;
  ``aggregate``'s default turns those weights into the update ``weights @ jacobian``.
  The scope (``"all"``: every parameter but the task heads, ``"shared"``: only parameters no
  task owns, ``"representation"``: gradients with respect to the features the heads read) is the
  run's ``weighting.scope``; each method names its official default in ``default_scope``.

How the engine obtains gradients, and what happens under DDP and AMP, is in
:mod:`densemtl.engine.mtl_step`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..engine.config import SCOPES  # noqa: F401  (re-exported: where gradient methods read gradients)
from ..errors import UserError, unknown_name

_REGISTRY: dict[str, type["Weighting"]] = {}


def register_weighting(name: str) -> Callable[[type["Weighting"]], type["Weighting"]]:
    """Class decorator: make a :class:`Weighting` subclass available under ``name``."""

    def deco(cls: type["Weighting"]) -> type["Weighting"]:
        if name in _REGISTRY:
            raise ValueError(f"weighting {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_weightings() -> list[str]:
    return sorted(_REGISTRY)


def weighting_class(name: str) -> type["Weighting"]:
    if name not in _REGISTRY:
        raise unknown_name("weighting", name, _REGISTRY)
    return _REGISTRY[name]


def weighting_options(name: str) -> dict[str, object]:
    """``{option: default}`` of a registered method (for docs, configs and checks)."""
    params = list(inspect.signature(weighting_class(name).__init__).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _check_option_type(method: str, key: str, value, default) -> None:
    """A value of the wrong type for an option whose default is a bool / number / string."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if isinstance(default, int) and ok:
            ok = float(value).is_integer()
        want = "an integer" if isinstance(default, int) else "a finite number"
    elif isinstance(default, str):
        ok = isinstance(value, str)
        want = "a string"
    else:
        return
    if not ok:
        raise UserError(f"weighting option {key} of {method!r}: expected {want}, got {value!r}")


def make_weighting(name: str, task_names: Sequence[str], **options) -> "Weighting":
    """Build the weighting method ``name`` for ``task_names`` (in the order losses are logged)."""
    valid = weighting_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(valid) or "none"
        raise UserError(f"unknown option(s) {unknown} for weighting {name!r}; valid options: {listed}")
    for key, value in options.items():
        _check_option_type(name, key, value, valid[key])
        if isinstance(valid[key], int) and not isinstance(valid[key], bool) and value is not None:
            options[key] = int(value)
    return _REGISTRY[name](task_names, **options)


def describe_weighting(name: str) -> dict:
    """What ``densemtl weightings`` prints for one method."""
    cls = weighting_class(name)
    doc = inspect.getdoc(cls) or ""
    return {
        "name": name,
        "kind": cls.kind_label(),
        "needs": cls.needs,
        "default_scope": getattr(cls, "default_scope", None),
        "options": weighting_options(name),
        "paper": cls.paper,
        "summary": doc.split("\n", 1)[0],
    }


class Weighting(nn.Module):
    """Base class: turns per-task losses into one scalar (loss-level methods define ``_combine``)."""

    name = ""
    kind = "loss"
    #: per step, in words (``densemtl weightings``)
    needs = "the task losses"
    #: the method's reference (``densemtl weightings``)
    paper = ""
    #: True: the engine calls :meth:`after_step` with the losses of a no-grad re-forward of the
    #: same batch after the optimiser step (FAMO)
    needs_reforward = False
    #: True: the method uses its loss values in a way that does not commute with the all-reduce
    #: of a data-parallel run; the engine then gives it (``combine``, ``transform_losses``,
    #: ``aggregate``) the losses of the global batch (the mean over ranks) with the local
    #: graph (exact; one all-reduce of T numbers per step; engine/mtl_step.global_values)
    nonlinear_in_losses = False
    #: True: the method draws random numbers (from the step's generator, see StepContext)
    random = False

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        names = tuple(task_names)
        if not names or len(set(names)) != len(names):
            raise UserError(f"weighting needs distinct task names, got {list(names)}")
        self.task_names = names

    @classmethod
    def kind_label(cls) -> str:
        return cls.kind

    def _ordered(self, what: str, values: Mapping[str, object]) -> list:
        if set(values) != set(self.task_names):
            raise ValueError(
                f"{type(self).__name__}.{what}: expected the tasks {list(self.task_names)}, "
                f"got {sorted(values)}"
            )
        return [values[t] for t in self.task_names]

    def stack(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The losses as a 1-D tensor in ``task_names`` order."""
        return torch.stack(self._ordered("losses", losses))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted total of the per-task (unweighted, scalar) losses."""
        return self._combine(self.stack(losses))

    def _combine(self, losses: torch.Tensor) -> torch.Tensor:
        """``losses``: 1-D tensor in ``task_names`` order -> scalar."""
        raise NotImplementedError

    def _weights(self) -> torch.Tensor:
        """The current weights, 1-D in ``task_names`` order."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """Current weight of each task's loss."""
        return dict(zip(self.task_names, self._weights().detach().cpu().tolist()))

    def epoch_end(self, mean_unweighted_losses: Mapping[str, float]) -> None:
        """Called after every training epoch; methods that adapt per epoch override it."""
        self._ordered("epoch_end", mean_unweighted_losses)

    def begin_step(self, ctx: "StepContext") -> None:
        """Called by the engine before every training step (random methods draw here from
        ``ctx.generator``, which is identical on every rank)."""

    def after_step(self, new_losses: torch.Tensor) -> None:
        """With ``needs_reforward``: the losses (task order, no grad) of the same batch after the
        optimiser step."""

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}"


@dataclass
class StepContext:
    """What the engine tells a gradient-level method about the current step.

    ``generator``: a CPU generator seeded by (run seed, global step), identical on every rank,
    for random methods (PCGrad's order, GradDrop's thresholds). ``stats``: counters the method
    adds to (``solver_failures``), summed per epoch into metrics.jsonl. ``gramian``: the step's
    T x T Gramian (float32) once the engine has computed it, so methods need not recompute it.
    """

    step: int
    epoch: int
    generator: torch.Generator
    stats: dict[str, float] = field(default_factory=dict)
    gramian: torch.Tensor | None = None

    def count(self, key: str, n: float = 1.0) -> None:
        self.stats[key] = self.stats.get(key, 0.0) + n


class SolverFailure(RuntimeError):
    """A method's solver did not converge; the method handles it as its paper says and counts it."""


class GradientWeighting(Weighting):
    """Base class of the methods that combine per-task gradients.

    Subclasses override :meth:`gramian_weights` (weights from the T x T Gramian; most methods)
    or :meth:`aggregate` (the update from the T x P Jacobian itself: GradDrop, GradVac, DB-MTL).
    ``head_weights``: how the parameters outside the scope (the task heads, and under scope
    ``shared`` the task branches) are updated: ``"sum"`` each gets the plain gradient of the
    loss that reaches it (the reference codes' per-task backward passes), ``"weighted"`` it
    gets ``weights[t]`` times it (the reference codes that back-propagate ``sum_t w_t L_t``).
    """

    kind = "gradient"
    needs = "per-task gradients of the shared scope (T backward passes)"
    default_scope = "all"
    head_weights = "sum"
    #: False: the method's weights cannot be applied through a representation (it needs the
    #: parameter Jacobian itself); scope ``representation`` is refused
    weights_only = True

    @classmethod
    def kind_label(cls) -> str:
        return "representation" if cls.default_scope == "representation" else "gradient"

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is a gradient-level method: the engine calls aggregate()")

    def transform_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """The losses (1-D, task order, float32, with their graphs) whose gradients the engine
        takes: identity by default; IMTL applies IMTL-L's ``e^s L - s``, DB-MTL ``log L``."""
        return losses

    def gramian_weights(self, gramian: torch.Tensor, losses: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """``gramian``: float64 T x T (un-normalised), ``losses``: float64 T (unscaled). -> weights
        (float64 T) such that the update is ``weights @ jacobian``."""
        raise NotImplementedError

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor, ctx: StepContext
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``jacobian``: float32 T x P (row t: gradient of task t's loss), unscaled. -> (update
        vector P float32, effective task weights float64 T or None)."""
        gramian = ctx.gramian if ctx.gramian is not None else jacobian @ jacobian.T  # float32, T x T
        w = self.gramian_weights(gramian.double(), losses.double(), ctx)
        self._last = w.detach().clone()
        return w.to(jacobian.dtype) @ jacobian, w

    def _weights(self) -> torch.Tensor:
        last = getattr(self, "_last", None)
        return last if last is not None else torch.ones(len(self.task_names), dtype=torch.float64)


def normalised(gramian: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``gramian / trace``-style normalisation before a solver: returns (G / s, s) with s the
    mean of the diagonal (s = 1 when the Gramian is zero). Weights that are invariant to a
    positive scale of G are then solved on a well-conditioned problem."""
    s = float(torch.diagonal(gramian).mean())
    if not s > 0 or not math.isfinite(s):
        s = 1.0
    return gramian / s, s
