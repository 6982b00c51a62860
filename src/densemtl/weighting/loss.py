"""Loss-level methods: weights from the task losses, one ordinary backward (SPEC section 4,
``ref/optimisation.md`` section 1.1)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from .base import Weighting, register_weighting


@register_weighting("equal")
class Equal(Weighting):
    """L = sum_k L_k."""

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
    """L = sum_k w_k L_k with constant weights: ``weights={task: w_k}``; a task it does not name
    keeps weight 1. SCA-MTL's official NYUD configs use ``{semantic: 1.44, depth: 1.15}``."""

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
    """Homoscedastic uncertainty (Kendall et al. 2018), in MTAN's form:
    L = sum_k L_k / (2 exp(s_k)) + s_k / 2, with learned s_k = log sigma_k^2 initialised to
    ``init`` (-0.5). The s_k are this module's parameters, so they join the optimiser."""

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
    """Dynamic Weight Average (MTAN, Liu et al. 2019).

    lambda_k = 1 in the first two epochs; afterwards w_k = Lbar_k(t-1) / Lbar_k(t-2) from the
    epoch-average unweighted training losses and lambda_k = K softmax_k(w / T). The weights
    are fixed within an epoch. The last two epochs' losses, the epoch count and the current
    weights are buffers, so ``state_dict`` resumes the schedule exactly.
    """

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
