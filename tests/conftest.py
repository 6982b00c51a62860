"""Shared fixtures. Real data lives in ../shared/data beside the repository (or $DENSEMTL_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DENSEMTL_SHARED", REPO.parent / "shared"))

# Two cores: keep every test process to one intra-op thread so parallel work stays predictable.
torch.set_num_threads(1)


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"real test data not found at {path}; put the project's shared/ folder beside the "
            "repository or set DENSEMTL_SHARED"
        )
    return path


@pytest.fixture(scope="session")
def nyuv2_mini() -> Path:
    """The 12 real NYUv2 frames in MTAN's layout (8 train / 4 val, 288x384)."""
    return _require(SHARED / "data" / "nyuv2_mini")


@pytest.fixture(scope="session")
def cityscapes_sample() -> Path:
    """One real Cityscapes frame's label PNGs (128x256)."""
    return _require(
        SHARED / "data" / "cityscapes_sample" / "raw" / "isabella232__mmsegmentation" / "tests" / "data"
        / "pseudo_cityscapes_dataset"
    )
