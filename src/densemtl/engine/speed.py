"""Training speed options shared by the trainer and ``densemtl bench``: mixed precision,
channels-last memory format, ``torch.compile`` and the fused optimiser step.

None of them changes the mathematics of a model (AMP changes the precision of the forward
pass only; losses and metrics stay in float32), so every registered model accepts all of them.

- ``amp``: ``"none"`` (float32), ``"bf16"`` or ``"fp16"``: the forward pass runs under
  :func:`torch.autocast`; fp16 scales the loss with a :class:`torch.amp.GradScaler` so small
  gradients do not underflow (bf16 has float32's range and needs none).
- ``channels_last``: parameters and input images in NHWC memory order, which oneDNN (CPU) and
  cuDNN (tensor cores) convolve faster; outputs are identical. On CPU, convolutions with very
  large weights (:data:`NCHW_WEIGHT_ELEMENTS`) stay in NCHW: see :func:`prepare_model`.
- ``compile``: :meth:`torch.nn.Module.compile` in place, so ``state_dict`` keys do not change
  and checkpoints stay interchangeable. On CPU, inductor needs a C++ compiler (gcc).
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn as nn

from ..errors import UserError
from .config import AMP_MODES
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, key: str = "amp") -> str:
    """``amp`` if it is one of :data:`AMP_MODES`, else a UserError naming ``key``."""
    if amp not in AMP_MODES:
        raise UserError(f"{key}: expected one of {', '.join(AMP_MODES)}, got {amp!r}")
    return amp


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context of the forward pass (a no-op context for ``amp="none"``)."""
    if check_amp(amp) == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (a disabled scaler passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=check_amp(amp) == "fp16")


#: Spatial convolutions with at least this many weight elements (SegNet's and ResNet's 512 -> 512
#: 3x3 convolutions at width 1: 2,359,296) keep NCHW under ``channels_last`` on CPU. At the deep,
#: low-resolution levels they run at, the weight outweighs the activations by 10-100x, and in
#: NHWC oneDNN's weight gradient comes back in its plain layout and is copied into the weight's
#: NHWC strides on every step (9.4 MB per convolution). Measured on MTAN-SegNet, width 1, 64x64,
#: batch 2, 2 CPU threads, steps alternating with the baseline's: 1.48x the baseline's speed with
#: these layers in NCHW against 1.32x without (benchmarks/speed_cpu/). Measured at that scale
#: only; on CUDA every convolution goes channels-last.
NCHW_WEIGHT_ELEMENTS = 2 ** 21


def _nchw_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a convolution kept in NCHW: its input in NCHW too (a cheap copy at
    the low resolutions where such convolutions run), so oneDNN picks its NCHW kernels."""
    return (args[0].contiguous(),) + tuple(args[1:])


def _keep_nchw(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.weight.device.type == "cpu" \
        and conv.kernel_size != (1, 1) and conv.weight.numel() >= NCHW_WEIGHT_ELEMENTS


def prepare_model(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Apply the memory-format and compile options to ``model`` in place; returns it.

    ``channels_last`` converts every parameter to NHWC except, on CPU, the spatial convolutions
    with :data:`NCHW_WEIGHT_ELEMENTS` or more weights, which keep NCHW weights and get an NCHW
    input (a forward pre-hook). Either way the outputs are the same numbers.
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
        for module in model.modules():
            if _keep_nchw(module):
                module.weight.data = module.weight.data.contiguous()
                if not getattr(module, "_densemtl_nchw", False):  # prepared before: one hook only
                    module.register_forward_pre_hook(_nchw_input)
                    module._densemtl_nchw = True
    if compile:
        model.compile()
    return model


def prepare_images(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Input images in the memory format the model was prepared for."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def make_optimizer(name: str, params: Iterable[nn.Parameter], *, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9, fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam or SGD, by default with the fused kernel where torch has one (CPU and CUDA float
    parameters): the same update, one pass over each parameter instead of about six.

    ``fused=False`` gives torch's default per-parameter loop (the benchmark's baseline).
    """
    params = [p for p in params if p.requires_grad]
    if fused is None:
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    raise UserError(f"optimizer: expected adam or sgd, got {name!r}")


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """``loss.backward()`` and ``optimizer.step()`` through the (possibly disabled) scaler."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
