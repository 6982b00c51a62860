"""Warm start (--init-from): MTAN -> ATI-Net, reports, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from densemtl.engine.checkpoint import FORMAT, VERSION, atomic_save
from densemtl.engine.warmstart import init_from_checkpoint
from densemtl.errors import UserError
from densemtl.models import create_model, get_entry

NYUV2 = {"semantic": 13, "depth": 1, "normal": 3}
WIDTH = 0.125


def _save(model: torch.nn.Module, name: str, path: Path) -> Path:
    """A checkpoint in the trainer's format holding ``model``'s state (as after some training)."""
    atomic_save({
        "format": FORMAT, "version": VERSION,
        "model_name": name, "model_family": get_entry(name).family,
        "tasks": list(NYUV2), "epoch": 1, "history": [],
        "model": model.state_dict(),
    }, path)
    return path


def _trained_mtan(width: float = WIDTH) -> torch.nn.Module:
    """An MTAN whose weights and BN statistics differ from any fresh initialisation."""
    torch.manual_seed(1)
    mtan = create_model("mtan", NYUV2, width=width)
    with torch.no_grad():
        for p in mtan.parameters():
            p.add_(torch.randn_like(p))
        mtan(torch.rand(2, 3, 32, 32))  # updates the BN running statistics
    return mtan


def test_mtan_checkpoint_warm_starts_atinet(tmp_path):
    mtan = _trained_mtan()
    ckpt = _save(mtan, "mtan", tmp_path / "mtan.pt")
    torch.manual_seed(2)
    atinet = create_model("atinet", NYUV2, width=WIDTH)
    fresh_branch = {k: v.clone() for k, v in atinet.bottleneck.state_dict().items()}

    report = init_from_checkpoint(atinet, ckpt)

    source, target = mtan.state_dict(), atinet.state_dict()
    assert sorted(report.loaded) == sorted(source)  # every MTAN tensor, buffers included
    for name, tensor in source.items():
        assert torch.equal(target[name], tensor), name
    branch = {f"bottleneck.{k}" for k in fresh_branch}
    assert set(report.missing) == branch and report.unexpected == [] and report.mismatched == []
    for k, v in fresh_branch.items():  # the branch keeps its fresh initialisation
        assert torch.equal(atinet.bottleneck.state_dict()[k], v)
    text = report.summary()
    assert f"loaded {len(source)} of {len(target)} tensors" in text
    assert "not in the checkpoint" in text and "bottleneck." in text


def test_atinet_checkpoint_into_mtan_reports_the_branch_as_unexpected(tmp_path):
    torch.manual_seed(0)
    atinet = create_model("atinet", NYUV2, width=WIDTH)
    ckpt = _save(atinet, "atinet", tmp_path / "ati.pt")
    report = init_from_checkpoint(create_model("mtan", NYUV2, width=WIDTH), ckpt)
    assert report.missing == [] and report.mismatched == []
    assert report.unexpected and all(n.startswith("bottleneck.") for n in report.unexpected)


def test_different_classes_report_shape_mismatches(tmp_path):
    ckpt = _save(_trained_mtan(), "mtan", tmp_path / "mtan.pt")
    model = create_model("atinet", {"semantic": 7, "depth": 1, "normal": 3}, width=WIDTH)
    report = init_from_checkpoint(model, ckpt)
    out = model.heads["semantic"][1].weight.shape[0]
    assert {n for n, _, _ in report.mismatched} == {"heads.semantic.1.weight", "heads.semantic.1.bias"}
    assert dict((n, (a, b)) for n, a, b in report.mismatched)["heads.semantic.1.bias"] == ((13,), (out,))
    assert "shape differs" in report.summary()


def test_other_family_is_refused(tmp_path):
    ckpt = _save(create_model("single", {"depth": 1}, width=WIDTH), "single", tmp_path / "single.pt")
    assert get_entry("single").family != "mtan"
    with pytest.raises(UserError, match="family"):
        init_from_checkpoint(create_model("atinet", NYUV2, width=WIDTH), ckpt)


def test_other_width_is_refused(tmp_path):
    ckpt = _save(_trained_mtan(width=0.25), "mtan", tmp_path / "wide.pt")
    with pytest.raises(UserError, match="same width"):
        init_from_checkpoint(create_model("atinet", NYUV2, width=WIDTH), ckpt)


def test_missing_and_foreign_files_are_user_errors(tmp_path):
    model = create_model("atinet", NYUV2, width=WIDTH)
    with pytest.raises(UserError, match="does not exist"):
        init_from_checkpoint(model, tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a densemtl checkpoint"):
        init_from_checkpoint(model, tmp_path / "foreign.pt")
