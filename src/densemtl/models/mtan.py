"""MTAN on SegNet (Liu, Johns, Davison, CVPR 2019; SPEC 5.2) and its one-task form STAN.

A shared SegNet computes every feature once; each task then reads the shared features through
its own soft attention masks, level by level:

- encoder level j: ``mask_t = att_t,j(u_j)`` (j = 0) or ``att_t,j(cat(u_j, a_t,j-1))``, then
  ``a_t,j = maxpool2(f_j(mask_t * p_j))`` with ``f_j`` a conv unit shared by all tasks
  (u_j / p_j: output of level j's first / last conv unit);
- bottleneck: :attr:`MTANSegNet.bottleneck` may rewrite the shared decoder's input (identity in
  MTAN; ATI-Net plugs its task-interaction stage in here);
- decoder level k (deepest first): ``d = g_k(up2(previous task feature))``, ``mask_t =
  att_t,k(cat(unpooled shared input of level k, d))``, task feature = ``mask_t * (shared output
  of level k)``;
- the full-resolution task feature goes to the task's :class:`PredictionHead`.

At width 1 with the NYUv2 tasks (13 classes, depth, normal) the model has 44,229,073 parameters,
as the official code (without its uncertainty log-variances, which live in the weighting here).
Shared scope: ``all`` = everything but the heads (44,117,184, Nash-MTL's definition), ``shared``
= without the task attention masks (35,163,456, CAGrad's); representation = the per-task
full-resolution features the heads read (the official Aligned-MTL code's MTAN representation).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones.segnet import LEVELS, SIZE_MULTIPLE, Encoded, Decoded, SegNet, segnet_filters
from . import fused as _fused
from .blocks import AttentionMask, PerTask, PredictionHead, check_input, conv_unit, init_segnet_
from .scope import Representation
from ..errors import UserError
from .registry import register_model


class KeepShared(nn.Module):
    """MTAN's bottleneck: the shared decoder starts from the shared encoder's output, unchanged."""

    def forward(self, shared: torch.Tensor, task_features: dict[str, torch.Tensor]) -> torch.Tensor:
        return shared


class MTANSegNet(nn.Module):
    """Multi-task attention network on SegNet; ``forward(images) -> {task: raw output}``.

    Submodules (attention modules are indexed ``[level][task]``, task order as given):

    - ``segnet``: the shared :class:`SegNet` (``encoder`` / ``decoder`` stages);
    - ``encoder_attention[j]`` / ``decoder_attention[k]``: a :class:`PerTask` of
      :class:`AttentionMask` per level (a fused implementation may replace a whole level);
    - ``encoder_convs[j]`` / ``decoder_convs[k]``: the conv units f_j / g_k shared by the tasks;
    - ``bottleneck``: hook called as ``bottleneck(shared, task_features) -> shared'`` between the
      task-attention encoder and the shared decoder. ``shared`` is the shared encoder's pooled
      deepest feature (N x f[4] x H/32 x W/32, f[4] = 512 at width 1) and ``task_features``
      ``{task: a_t,4}``, each task's attended encoder feature at the same size and channel count.
      It returns the tensor the shared decoder starts from (same shape as ``shared``; the max-unpool
      uses the encoder's indices). The task decoders still start from ``task_features``.
      Default :class:`KeepShared` (MTAN). ATI-Net sets its own module here;
    - ``heads[task]``: :class:`PredictionHead` (f[0] -> task channels).

    ``fused`` (default True) runs the task-attention encoder and decoder through
    :mod:`densemtl.models.fused` (the tasks share one call per shared conv unit; same outputs,
    gradients, parameters and state_dict keys); ``fused=False`` is the paper's per-task loop.
    """

    def __init__(self, tasks: dict[str, int], width: float = 1.0, fused: bool = True) -> None:
        super().__init__()
        if not isinstance(fused, bool):
            raise UserError(f"model option fused: expected true or false, got {fused!r}")
        self.fused = fused
        self.task_names = list(tasks)
        n = len(self.task_names)
        f = segnet_filters(width)
        self.filters = f
        self.segnet = SegNet(f)

        self.encoder_attention = nn.ModuleList(
            PerTask(AttentionMask(f[0] if j == 0 else 2 * f[j], f[j], f[j]) for _ in range(n))
            for j in range(LEVELS)
        )
        self.encoder_convs = nn.ModuleList(conv_unit(f[j], f[min(j + 1, LEVELS - 1)]) for j in range(LEVELS))

        self.decoder_attention = nn.ModuleList()
        self.decoder_convs = nn.ModuleList()
        prev = f[-1]  # channels of the task feature entering the decoder (encoder_convs[-1] output)
        for stage in self.segnet.decoder:
            c_in, c_out = stage.channels[0], stage.out_channels
            self.decoder_convs.append(conv_unit(prev, c_out))
            self.decoder_attention.append(PerTask(AttentionMask(c_in + c_out, c_out, c_out) for _ in range(n)))
            prev = c_out

        self.bottleneck: nn.Module = KeepShared()
        self.representation = Representation()  # the per-task features the heads read
        self.heads = nn.ModuleDict({t: PredictionHead(f[0], c) for t, c in tasks.items()})
        init_segnet_(self)

    def parameter_roles(self) -> dict[str, str]:
        """Shared scope (models/scope.py): the task attention masks are task-specific; the shared
        SegNet and the attention conv units f_j / g_k are shared; heads are heads."""
        return {"encoder_attention.": "task", "decoder_attention.": "task", "heads.": "head"}

    def attend_encoder(self, enc: Encoded) -> list[torch.Tensor]:
        """Task-attention encoder: each task's feature a_t,4 at the bottleneck (task order)."""
        if self.fused:
            return _fused.attend_encoder(self, enc)
        feats: list[torch.Tensor] = []
        for j, (attention, conv) in enumerate(zip(self.encoder_attention, self.encoder_convs)):
            inputs = [enc.first[j]] * len(self.task_names) if j == 0 else \
                [torch.cat((enc.first[j], a), dim=1) for a in feats]
            masks = attention(inputs)
            feats = [F.max_pool2d(conv(m * enc.last[j]), 2, 2) for m in masks]
        return feats

    def attend_decoder(self, dec: Decoded, task_bottleneck: list[torch.Tensor]) -> list[torch.Tensor]:
        """Task-attention decoder: each task's full-resolution feature (task order)."""
        if self.fused:
            return _fused.attend_decoder(self, dec, task_bottleneck)
        feats = task_bottleneck
        for k, (attention, conv) in enumerate(zip(self.decoder_attention, self.decoder_convs)):
            ups = [conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)) for x in feats]
            masks = attention([torch.cat((dec.inputs[k], d), dim=1) for d in ups])
            feats = [m * dec.outputs[k] for m in masks]
        return feats

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(images, SIZE_MULTIPLE, getattr(self, "densemtl_name", "mtan"))
        enc = self.segnet.encode(images)
        task_bottleneck = self.attend_encoder(enc)
        shared = self.bottleneck(enc.bottleneck, dict(zip(self.task_names, task_bottleneck)))
        dec = self.segnet.decode(shared, enc.indices)
        feats = self.representation(self.attend_decoder(dec, task_bottleneck))
        return {t: self.heads[t](x) for t, x in zip(self.task_names, feats)}


@register_model("mtan", family="mtan", size_multiple=SIZE_MULTIPLE, options={"fused": True},
                description="MTAN: shared SegNet + per-task soft attention (Liu et al. 2019)")
def mtan(tasks: dict[str, int], width: float = 1.0, fused: bool = True) -> MTANSegNet:
    return MTANSegNet(tasks, width, fused)


@register_model("stan", family="mtan", single_task=True, size_multiple=SIZE_MULTIPLE,
                options={"fused": True},
                description="STAN: MTAN with a single task (single-task attention baseline)")
def stan(tasks: dict[str, int], width: float = 1.0, fused: bool = True) -> MTANSegNet:
    return MTANSegNet(tasks, width, fused)
