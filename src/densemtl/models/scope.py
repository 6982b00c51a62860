"""What a model shares between its tasks: parameter roles and the representation the heads read.

Gradient-level optimisation methods (``densemtl.weighting``) need per-task gradients of a
*shared scope*. Published numbers on MTAN used two parameter scopes (ref/optimisation.md 2.0):

- ``"all"``: every trainable parameter except the task heads (Nash-MTL, Aligned-MTL: MTAN's
  task attention counts as shared; 44,117,184 parameters on MTAN-SegNet at width 1);
- ``"shared"``: only the parameters no single task owns (CAGrad: MTAN's shared SegNet and shared
  attention conv units, 35,163,456 parameters);

plus ``"representation"``: gradients with respect to the features the task heads read (the
-UB methods), marked in ``forward`` by a :class:`Representation` module.

A model declares its roles with a method ``parameter_roles() -> {module prefix: role}``, role
``"head"`` (a task's prediction head) or ``"task"`` (a task-specific branch, e.g. MTAN's
attention); parameters under no prefix are ``"shared"``. Without the method, parameters under
``heads.`` are heads and everything else is shared.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from ..errors import UserError

ROLES = ("shared", "task", "head")
DEFAULT_ROLES = {"heads.": "head"}


class Representation(nn.Module):
    """Identity marker of the features the task heads read (a tensor, or a list / tuple / dict
    of tensors). The training engine hooks it to take per-task gradients with respect to its
    output; it has no parameters and changes nothing."""

    def forward(self, features):
        return features


def declared_roles(model: nn.Module) -> dict[str, str]:
    """The model's ``{module prefix: role}`` (prefixes end with a dot)."""
    roles = model.parameter_roles() if hasattr(model, "parameter_roles") else DEFAULT_ROLES
    for prefix, role in roles.items():
        if role not in ("task", "head"):
            raise ValueError(f"{type(model).__name__}.parameter_roles: role of {prefix!r} must be "
                             f"'task' or 'head', got {role!r}")
    return dict(roles)


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """``{parameter name: "shared" | "task" | "head"}`` for every trainable parameter."""
    roles = declared_roles(model)
    ordered = sorted(roles, key=len, reverse=True)  # the longest matching prefix wins
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        out[name] = next((roles[pre] for pre in ordered if name.startswith(pre)), "shared")
    return out


def scope_parameters(model: nn.Module, scope: str) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters of a parameter scope (``"all"`` or ``"shared"``), in model order."""
    if scope not in ("all", "shared"):
        raise ValueError(f"scope_parameters: expected 'all' or 'shared', got {scope!r}")
    keep = ("shared", "task") if scope == "all" else ("shared",)
    roles = parameter_roles(model)
    return [(n, p) for n, p in model.named_parameters() if roles.get(n) in keep]


def representation_modules(model: nn.Module) -> list[Representation]:
    """The :class:`Representation` markers of ``model`` (empty: it declares no representation)."""
    return [m for m in model.modules() if isinstance(m, Representation)]


def flatten_features(features) -> list[torch.Tensor]:
    """The tensors of a :class:`Representation` output, in a fixed order."""
    if isinstance(features, torch.Tensor):
        return [features]
    if isinstance(features, dict):
        return [t for k in features for t in flatten_features(features[k])]
    if isinstance(features, (list, tuple)):
        return [t for f in features for t in flatten_features(f)]
    raise TypeError(f"Representation: expected tensors, got {type(features).__name__}")


def check_representation(model: nn.Module, name: str) -> None:
    """UserError when ``model`` declares no representation (scope ``representation``)."""
    if not representation_modules(model):
        raise UserError(f"weighting.scope representation: model {name!r} declares no shared "
                        "representation (no Representation marker); use scope all or shared")


def count(params: Iterable[tuple[str, nn.Parameter]]) -> int:
    return sum(p.numel() for _, p in params)
