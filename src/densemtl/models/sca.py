"""SCA-MTL: sequential cross attention for multi-task learning (Kim, Choi, Min, ICIP 2022; SPEC 5.6).

MTI-Net's skeleton (:class:`~densemtl.models.mtinet.CoarseToFineNet`) on HRNet-W18-small-v2
with three changes:

1. window self-attention on every backbone scale, concatenated in front of the CNN feature
   (channels double: 36/72/144/288 at width 1);
2. cross-task attention (:class:`~densemtl.models.attention.CTAM`) at every scale, whose output
   is both propagated to the next finer scale (by :class:`~densemtl.models.attention.FPMA`) and
   passed to the heads;
3. cross-scale attention heads (:class:`~densemtl.models.attention.CrossScaleHead`).

Outputs: every task at input size, and the initial predictions ``"task@scaleK"`` (K = 0 at 1/4
... 3 at 1/32) for deep supervision.
"""

from __future__ import annotations

import torch.nn as nn

from .attention import CTAM, FPMA, CrossScaleHead, WindowSelfAttention, heads_for
from .mtinet import CoarseToFineNet, hrnet_backbone, scale_predictors
from .registry import register_model, scaled

CONTEXT_HEADS = 6  # window self-attention on the backbone scales
PROPAGATION_HEADS = 4  # window attention inside FPMA


@register_model("sca_mtl", family="sca_mtl", options={"pretrained": None, "mlp_ratio": 0.0},
                description="SCA-MTL on HRNet-W18-small-v2 (Kim et al. 2022)")
def sca_mtl(tasks: dict[str, int], width: float = 1.0, pretrained: str | None = None,
            mlp_ratio: float = 0.0) -> CoarseToFineNet:
    """Build SCA-MTL for ``tasks`` ({name: output channels}).

    ``pretrained``: HRNet ImageNet weights (``hrnet_w18_small_model_v2.pth``, width 1 only).
    ``mlp_ratio``: > 0 adds Swin's MLP to every window-attention block (the official code has
    none). Head counts shrink with ``width`` to the largest divisor of the channel count.
    """
    backbone = hrnet_backbone(width, pretrained)
    names = list(tasks)
    context_heads, propagation_heads = scaled(CONTEXT_HEADS, width), scaled(PROPAGATION_HEADS, width)
    context = nn.ModuleList(
        WindowSelfAttention(c, heads_for(c, context_heads), depth=2, mlp_ratio=mlp_ratio) for c in backbone.channels
    )
    ch = [2 * c for c in backbone.channels]
    return CoarseToFineNet(
        backbone,
        context=context,
        predict=scale_predictors(tasks, ch),
        interact=nn.ModuleList(CTAM(names, c) for c in ch),
        propagate=nn.ModuleList(FPMA(names, c, heads=propagation_heads, mlp_ratio=mlp_ratio) for c in ch[1:]),
        heads=nn.ModuleDict({t: CrossScaleHead(ch, out) for t, out in tasks.items()}),
        propagate_interacted=True,
    )
