"""Fused task attention for MTAN-SegNet: the tasks share one call per shared layer.

MTAN's per-task path (the paper's code, :class:`~densemtl.models.mtan.MTANSegNet` with
``fused=False``) runs the conv units that every task shares (``f_j`` in the encoder, ``g_k`` in
the decoder) once per task: 3 tasks x 10 units = 30 convolution calls with the same weights.
Here the task features travel *stacked* along the batch axis, task-major (task ``t`` owns rows
``t*N .. (t+1)*N - 1``), so each shared unit is one convolution over ``T*N`` images. That is the
same arithmetic, but one larger matrix product instead of T small ones, and the weight is
reordered for oneDNN / cuDNN once instead of T times (at the deep, low-resolution levels that
reordering costs more than the arithmetic).

Exactness: a shared unit's BatchNorm must see each task on its own, as in the per-task path.
:func:`shared_unit` normalises every task's slice with that slice's batch statistics and updates
the running statistics task after task, so outputs, gradients and buffers match the per-task
path (up to floating-point summation order). In eval mode the running statistics are the same
for every slice and the whole stack is normalised in one call.

The per-task modules (attention masks, heads) run on views of their task's slice, so parameter
names, ``state_dict`` keys and attention recording are those of the per-task model: checkpoints
load into either path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # imported for annotations only (mtan imports this module)
    from .backbones.segnet import Decoded, Encoded
    from .mtan import MTANSegNet


def shared_unit(unit: nn.Module, stacked: torch.Tensor, tasks: int) -> list[torch.Tensor]:
    """Apply ``unit`` (a chain of conv / BN / activation layers shared by all tasks) to
    task-stacked features; returns each task's output, equal to applying the unit to each
    task's slice separately.

    ``unit`` must be an :class:`~torch.nn.Sequential` (as built by
    :func:`~densemtl.models.blocks.conv_unit`). Layers before the first BatchNorm act per image
    and run once over the stack; in training mode the BatchNorm and every layer after it run
    per task slice (views of the stack), so no re-stacking copy is made. In eval mode the
    running statistics are shared and the whole unit runs over the stack.
    """
    layers = list(unit)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and (
            layer.training or not layer.track_running_stats
        ):
            rest = nn.Sequential(*layers[i:])
            return [rest(part) for part in stacked.chunk(tasks)]
        stacked = layer(stacked)
    return list(stacked.chunk(tasks))


def gate(masks: Sequence[torch.Tensor], shared: torch.Tensor) -> torch.Tensor:
    """Task-stacked ``mask_t * shared`` (N x C x H x W each). Multiplying before stacking keeps
    memory as in the per-task path: the products are temporaries, only the stack is saved for
    the backward pass (stacking the masks first would keep a second copy of them)."""
    return torch.cat([mask * shared for mask in masks])


def up2(x: torch.Tensor) -> torch.Tensor:
    """MTAN's decoder upsampling: bilinear x2 with aligned corners."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def attend_encoder(model: "MTANSegNet", enc: "Encoded") -> list[torch.Tensor]:
    """Fused form of :meth:`MTANSegNet.attend_encoder`: each task's a_t,4 (task order)."""
    tasks = len(model.task_names)
    feats: list[torch.Tensor] = []
    for j, (attention, conv) in enumerate(zip(model.encoder_attention, model.encoder_convs)):
        if not feats:
            masks = [mask(enc.first[j]) for mask in attention]
        else:
            masks = [mask(torch.cat((enc.first[j], a), dim=1)) for mask, a in zip(attention, feats)]
        feats = [F.max_pool2d(x, 2, 2) for x in shared_unit(conv, gate(masks, enc.last[j]), tasks)]
    return feats


def attend_decoder(model: "MTANSegNet", dec: "Decoded", task_bottleneck: Sequence[torch.Tensor]
                   ) -> list[torch.Tensor]:
    """Fused form of :meth:`MTANSegNet.attend_decoder`: each task's full-resolution feature."""
    tasks = len(task_bottleneck)
    stacked = torch.cat(list(task_bottleneck))
    for k, (attention, conv) in enumerate(zip(model.decoder_attention, model.decoder_convs)):
        ups = shared_unit(conv, up2(stacked), tasks)
        masks = [mask(torch.cat((dec.inputs[k], d), dim=1)) for mask, d in zip(attention, ups)]
        stacked = gate(masks, dec.outputs[k])
    return list(stacked.chunk(tasks))
