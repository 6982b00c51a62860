"""Checkpoints: atomic writes survive failures and kills, reads are checked, RNG states round-trip."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from densemtl.engine import checkpoint as ck
from densemtl.errors import UserError


def make_ckpt(model_name: str = "mtan", value: float = 1.0, **extra) -> dict:
    return {"format": ck.FORMAT, "version": ck.VERSION, "model_name": model_name, "epoch": 1,
            "model": {"w": torch.full((3,), value)}, **extra}


def test_round_trip_with_rng_state(tmp_path):
    path = tmp_path / "a.pt"
    ck.atomic_save(make_ckpt(rng=ck.rng_state()), path)
    loaded = ck.load_checkpoint(path)
    assert loaded["model_name"] == "mtan" and torch.equal(loaded["model"]["w"], torch.ones(3))
    assert loaded["path"] == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary left behind


def test_failure_mid_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.atomic_save(make_ckpt(value=1.0), path)
    before = path.read_bytes()

    def half_write_then_fail(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_save(make_ckpt(value=2.0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.undo()
    assert torch.equal(ck.load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_kill_mid_save_keeps_previous_file(tmp_path):
    """A process killed while writing (no cleanup runs) leaves the old checkpoint loadable."""
    path = tmp_path / "last.pt"
    ck.atomic_save(make_ckpt(value=1.0), path)
    script = textwrap.dedent(f"""
        import os, torch
        from densemtl.engine import checkpoint as ck
        def dying_save(obj, f):
            with open(f, "wb") as fh:
                fh.write(b"PK partial bytes")
                fh.flush()
            os._exit(9)  # like SIGKILL: no exception handler, no finally
        torch.save = dying_save
        ck.atomic_save({{"format": ck.FORMAT}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9
    assert torch.equal(ck.load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_atomic_copy_and_text(tmp_path):
    src = tmp_path / "last.pt"
    ck.atomic_save(make_ckpt(value=3.0), src)
    ck.atomic_copy(src, tmp_path / "final.pt")
    assert (tmp_path / "final.pt").read_bytes() == src.read_bytes()
    ck.atomic_write_text("hello\n", tmp_path / "x.txt")
    assert (tmp_path / "x.txt").read_text() == "hello\n"


def test_load_from_run_folder_prefers_final(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    ck.atomic_save(make_ckpt(value=1.0), tmp_path / "checkpoints" / "last.pt")
    assert float(ck.load_checkpoint(tmp_path)["model"]["w"][0]) == 1.0
    ck.atomic_save(make_ckpt(value=2.0), tmp_path / "checkpoints" / "final.pt")
    assert float(ck.load_checkpoint(tmp_path)["model"]["w"][0]) == 2.0
    with pytest.raises(UserError, match="no checkpoints/final.pt"):
        ck.load_checkpoint(tmp_path / "checkpoints")


def test_bad_files_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="missing.pt does not exist"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(UserError, match="garbage.pt is not a readable densemtl checkpoint"):
        ck.load_checkpoint(garbage)
    truncated = tmp_path / "truncated.pt"
    ck.atomic_save(make_ckpt(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated.pt is not a readable"):
        ck.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(nn.Linear(2, 2).state_dict(), foreign)
    with pytest.raises(UserError, match="foreign.pt is not a densemtl checkpoint"):
        ck.load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save(make_ckpt() | {"version": ck.VERSION + 1}, future)
    with pytest.raises(UserError, match="format version"):
        ck.load_checkpoint(future)


def test_model_checks_name_both_models(tmp_path):
    path = tmp_path / "c.pt"
    ck.atomic_save(make_ckpt("single"), path)
    loaded = ck.load_checkpoint(path)
    with pytest.raises(UserError) as e:
        ck.check_model_name(loaded, "mtan")
    assert "'single'" in str(e.value) and "'mtan'" in str(e.value) and "c.pt" in str(e.value)
    ck.check_model_name(loaded, "single")
    with pytest.raises(UserError, match="does not fit the model"):
        ck.load_model_state(nn.Linear(2, 2), loaded)
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(3))
    ck.load_model_state(model, loaded)
    assert torch.equal(model.w.detach(), torch.ones(3))


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    ck.atomic_save({"rng": ck.rng_state()}, tmp_path / "r.pt")
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    ck.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    second = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]
