"""Helpers shared by the multi-task optimisation tests (not a test module)."""

from __future__ import annotations

import torch

from densemtl.models.scope import Representation


class SmoothMTL(torch.nn.Module):
    """A tiny model without BatchNorm or pooling (whose argmax switches make fp16 and fp32
    gradients of SegNet differ by tens of percent at init): two tanh convolutions shared, a
    Representation marker, one 1x1 head per task."""

    def __init__(self, tasks: dict[str, int]) -> None:
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                                         torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Tanh())
        self.representation = Representation()
        self.heads = torch.nn.ModuleDict({t: torch.nn.Conv2d(8, c, 1) for t, c in tasks.items()})

    def forward(self, x):
        z = self.representation(self.trunk(x))
        return {t: head(z) for t, head in self.heads.items()}


def synthetic_batch(n: int = 2, size: int = 32, seed: int = 0) -> dict:
    """Random images and valid targets of the three NYUv2 tasks (13 classes)."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(n, 3, size, size, generator=g)
    return {
        "image": torch.rand(n, 3, size, size, generator=g),
        "semantic": torch.randint(0, 13, (n, size, size), generator=g),
        "depth": 0.5 + torch.rand(n, 1, size, size, generator=g),
        "normal": normal / normal.norm(dim=1, keepdim=True),
    }
