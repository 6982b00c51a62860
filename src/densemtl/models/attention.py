"""Attention building blocks (SCA-MTL, SPEC 5.6) and attention recording for inspection.

Recording: modules that compute attention inherit :class:`RecordsAttention` and call
``self.save_attention(tag, maps)`` in their forward pass. Nothing is kept unless the model runs
inside :func:`record_attention`, which collects every map under ``"<module path>.<tag>"``.
A recorded map is always an ``N x K x H x W`` tensor (K maps per image, spatial like the
feature the module sees), so :mod:`densemtl.attention_viz` can draw any of them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


class RecordsAttention(nn.Module):
    """Mixin for modules whose attention weights can be recorded for inspection."""

    _attention_sink: dict[str, torch.Tensor] | None = None
    _attention_path: str = ""

    def save_attention(self, tag: str, maps: torch.Tensor) -> None:
        """Keep ``maps`` (N x K x H x W) under ``"<module path>.<tag>"`` while recording."""
        if self._attention_sink is None:
            return
        if maps.dim() != 4:
            raise ValueError(f"attention maps must be N x K x H x W, got shape {tuple(maps.shape)}")
        key = f"{self._attention_path}.{tag}" if self._attention_path else tag
        self._attention_sink[key] = maps.detach().float().cpu()


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the attention maps of every forward pass run inside the ``with`` block.

    Yields a dict that fills as the model runs: ``{"<module path>.<tag>": N x K x H x W}``.
    A later forward pass overwrites the maps of an earlier one.
    """
    sink: dict[str, torch.Tensor] = {}
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, RecordsAttention)]
    for name, module in modules:
        module._attention_sink = sink
        module._attention_path = name
    try:
        yield sink
    finally:
        for _, module in modules:
            module._attention_sink = None
