"""ATI-Net on MTAN-SegNet (Sinodinos & Armanfard, ICPR 2022; SPEC 5.7).

ATI-Net is MTAN-SegNet with a task-interaction stage at the encoder bottleneck, plugged into
:attr:`MTANSegNet.bottleneck <densemtl.models.mtan.MTANSegNet>`:

1. per task, a 1x1 conv-BN-ReLU projection of the shared bottleneck feature
   512 -> 256 -> 128 -> 64 (a low-dimensional task feature);
2. PAD-Net multi-modal distillation among the 64-channel task features
   (:class:`~densemtl.models.distill.MultiModalDistillation`, with conv bias as in the official
   code);
3. per task, a 1x1 conv-BN-ReLU projection back 64 -> 128 -> 256 -> 512;
4. the mean over tasks of the projected-back features is the contextualised feature, which
   either **replaces** the bottleneck feature fed to the shared decoder (``mode="replace"``, the
   paper's figure, default) or is **added** to it (``mode="add"``).

The released code computes that mean and never uses it, so its branch receives no gradient and
the model trains exactly like MTAN; here the branch feeds the shared decoder as the paper draws.
The task-attention decoders still start from MTAN's per-task encoder features.

Parameters at width 1 with the NYUv2 tasks (13 classes, depth, normal): MTAN's 44,229,073 plus
the branch's 1,487,424 = 45,716,497, the official count. The branch, per task:
projection down 131,840 + 33,152 + 8,384 = 173,376; projection back 8,576 + 33,536 + 132,608
= 174,720 (each 1x1 conv with bias, each BN with weight and bias); distillation: 6 ordered task
pairs x 2 3x3 convs (64 -> 64, bias) x 36,928 = 443,136. 3 x 348,096 + 443,136 = 1,487,424.

Our extension (off by default): ``aux=True`` adds, per task, a 1x1 conv predicting the task from
its distilled 64-channel feature at 1/32 resolution, emitted as ``"<task>@bottleneck"``; the
standard loss path supervises it like the task itself (the loss resizes it to the target).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..errors import UserError
from .backbones.segnet import SIZE_MULTIPLE
from .blocks import init_segnet_
from .distill import MultiModalDistillation
from .mtan import MTANSegNet
from .registry import register_model, scaled

MODES = ("replace", "add")
LOW_DIMS = (256, 128, 64)  # channels of the projection to the low-dimensional task feature (width 1)
AUX_TAG = "bottleneck"


def pointwise_projection(channels: Sequence[int]) -> nn.Sequential:
    """1x1 conv (bias) -> BN -> ReLU for each step of ``channels`` = [c0, c1, ..., cn]."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class TaskInteraction(nn.Module):
    """ATI-Net's bottleneck stage, an :class:`MTANSegNet` ``bottleneck`` hook.

    ``forward(shared, task_features) -> shared'``: ``shared`` is the shared encoder's pooled
    bottleneck feature (N x C x h x w); the result has the same shape. ``task_features`` (MTAN's
    per-task encoder features) is not used: as in the official code, every task's projection
    reads the shared feature. With ``aux``, the auxiliary predictions of the last forward pass
    are kept until :meth:`take_aux_outputs` collects them.
    """

    def __init__(self, tasks: dict[str, int], channels: int, width: float, mode: str, aux: bool) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.mode = mode
        low = [scaled(c, width) for c in LOW_DIMS]
        self.reduce = nn.ModuleDict({t: pointwise_projection([channels, *low]) for t in tasks})
        self.distill = MultiModalDistillation(self.task_names, low[-1], bias=True)
        self.expand = nn.ModuleDict({t: pointwise_projection([*reversed(low), channels]) for t in tasks})
        self.aux_heads = nn.ModuleDict({t: nn.Conv2d(low[-1], c, 1) for t, c in tasks.items()}) if aux else None
        self._aux_outputs: dict[str, torch.Tensor] = {}

    def forward(self, shared: torch.Tensor, task_features: dict[str, torch.Tensor]) -> torch.Tensor:
        distilled = self.distill({t: self.reduce[t](shared) for t in self.task_names})
        context = torch.stack([self.expand[t](distilled[t]) for t in self.task_names]).mean(dim=0)
        if self.aux_heads is not None:
            self._aux_outputs = {f"{t}@{AUX_TAG}": self.aux_heads[t](distilled[t]) for t in self.task_names}
        return context if self.mode == "replace" else shared + context

    def take_aux_outputs(self) -> dict[str, torch.Tensor]:
        """The auxiliary outputs of the last forward pass (empty without ``aux``), forgotten here."""
        out, self._aux_outputs = self._aux_outputs, {}
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, aux={self.aux_heads is not None}"


class ATINet(MTANSegNet):
    """MTAN-SegNet whose shared decoder starts from ATI-Net's task-interaction feature.

    Every MTAN submodule keeps its name (so MTAN checkpoints warm-start it); the branch lives
    under ``bottleneck`` (:class:`TaskInteraction`). ``forward(images) -> {task: raw output}``,
    plus ``"<task>@bottleneck"`` outputs when built with ``aux=True``.
    """

    def __init__(self, tasks: dict[str, int], width: float = 1.0, mode: str = "replace",
                 aux: bool = False) -> None:
        if mode not in MODES:
            raise UserError(f"model option mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(aux, bool):
            raise UserError(f"model option aux: expected true or false, got {aux!r}")
        super().__init__(tasks, width)
        self.bottleneck = TaskInteraction(tasks, self.filters[-1], width, mode, aux)
        init_segnet_(self.bottleneck)

    def parameter_roles(self) -> dict[str, str]:
        """MTAN's roles; the interaction branch is shared (its mean over tasks feeds the shared
        decoder, so every task's loss reaches it); the auxiliary predictions are heads."""
        return {**super().parameter_roles(), "bottleneck.aux_heads.": "head"}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(images)
        out.update(self.bottleneck.take_aux_outputs())
        return out


@register_model("atinet", family="mtan", size_multiple=SIZE_MULTIPLE,
                options={"mode": "replace", "aux": False},
                description="ATI-Net: MTAN + task interaction (distillation) at the bottleneck "
                            "(Sinodinos & Armanfard 2022)")
def atinet(tasks: dict[str, int], width: float = 1.0, mode: str = "replace", aux: bool = False) -> ATINet:
    return ATINet(tasks, width, mode, aux)
