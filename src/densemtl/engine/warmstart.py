"""Warm start: initialise a model from another run's checkpoint (``densemtl train --init-from``).

Unlike resuming, a warm start only copies weights: every tensor of the checkpoint's model state
(parameters and buffers such as BN running statistics) whose name and shape match a tensor of the
new model is loaded; everything else keeps its fresh initialisation, and the optimiser, schedule,
weighting and epoch counter start anew. The checkpoint must come from the same architecture
family (e.g. ATI-Net starts from MTAN: both are family ``"mtan"``, and ATI-Net keeps every MTAN
tensor name), and it must fit: a checkpoint where more tensors differ in shape than
match (another width) is refused, while a few mismatches (e.g. another class count) are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from ..errors import UserError
from .checkpoint import load_checkpoint


@dataclass
class WarmStartReport:
    """What :func:`init_from_checkpoint` did: names of loaded and not-loaded tensors."""

    source: str  # the checkpoint file
    source_model: str  # the registered model name that wrote it
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, absent from the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    # (name, checkpoint shape, model shape)

    def summary(self, limit: int = 8) -> str:
        """Human-readable lines: counts, then up to ``limit`` names per not-loaded group."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        lines = [f"warm start from {self.source} ({self.source_model!r}): "
                 f"loaded {len(self.loaded)} of {total} tensors of the model"]
        groups = (
            ("kept fresh (not in the checkpoint)", self.missing),
            ("ignored (not in the model)", self.unexpected),
            ("kept fresh (shape differs)", [f"{n} {tuple(a)} vs {tuple(b)}" for n, a, b in self.mismatched]),
        )
        for title, names in groups:
            if names:
                shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
                lines.append(f"  {title}: {len(names)}: {shown}")
        return "\n".join(lines)


def init_from_checkpoint(model: nn.Module, ckpt_path: str | Path) -> WarmStartReport:
    """Load every tensor of the checkpoint at ``ckpt_path`` whose name and shape match ``model``.

    ``model`` must come from :func:`densemtl.models.create_model` (it carries its family).
    ``ckpt_path`` is a checkpoint file or a run folder (see
    :func:`~densemtl.engine.checkpoint.load_checkpoint`). Raises :class:`UserError` when the
    checkpoint belongs to another architecture family or does not fit (no parameter fits, or
    more tensors differ in shape than match: another width). Returns a
    :class:`WarmStartReport`; ``report.summary()`` is what the trainer prints.
    """
    family = getattr(model, "densemtl_family", None)
    if family is None:
        raise ValueError("init_from_checkpoint needs a model built by densemtl.models.create_model")
    try:
        ckpt = load_checkpoint(ckpt_path)
    except UserError as e:  # missing or unreadable: say which option pointed there
        raise UserError(f"--init-from (init_from): {e}") from None
    source = ckpt.get("path", str(ckpt_path))
    if ckpt.get("model_family") != family:
        raise UserError(
            f"--init-from {source}: the checkpoint holds a {ckpt.get('model_name')!r} model of family "
            f"{ckpt.get('model_family')!r}, but model {getattr(model, 'densemtl_name', '?')!r} is of family "
            f"{family!r}; warm starts work only within one architecture family"
        )
    stored: dict = ckpt["model"]
    own = model.state_dict()
    report = WarmStartReport(source, ckpt.get("model_name", "?"))
    fits = {}
    for name, tensor in own.items():
        if name not in stored:
            report.missing.append(name)
        elif tuple(stored[name].shape) != tuple(tensor.shape):
            report.mismatched.append((name, tuple(stored[name].shape), tuple(tensor.shape)))
        else:
            fits[name] = stored[name]
            report.loaded.append(name)
    report.unexpected = [name for name in stored if name not in own]
    fitting_params = [name for name, _ in model.named_parameters() if name in fits]
    if not fitting_params or len(report.mismatched) > len(report.loaded):
        raise UserError(
            f"--init-from {source}: the checkpoint does not fit model {getattr(model, 'densemtl_name', '?')!r}: "
            f"{len(fitting_params)} parameters fit, {len(report.mismatched)} tensors differ in shape "
            f"(e.g. {', '.join(n for n, _, _ in report.mismatched[:3]) or 'none'}); "
            "a warm start needs the same width"
        )
    model.load_state_dict(fits, strict=False)
    return report
