"""Checkpoints: atomic writes, checked reads, RNG state capture.

A checkpoint is a plain dict saved with :func:`torch.save` and read back with
``weights_only=True`` (so loading never runs code from the file). Keys:

- ``format`` (:data:`FORMAT`) and ``version``;
- ``model_name``, ``model_family``: what built the weights (checked before loading);
- ``config``: the run's resolved config as a nested dict (see :mod:`densemtl.engine.config`);
- ``epoch``: the number of finished epochs; ``history``: one metrics record per finished epoch;
- ``model``, ``optimizer``, ``scheduler``, ``weighting``: state dicts; ``rng``: RNG states.

Every write goes to a temporary file in the same folder, is flushed to disk, and then replaces
the target with :func:`os.replace`, so a crash or a kill mid-write leaves the previous file intact.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError

FORMAT = "densemtl-checkpoint"
VERSION = 1


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (config, summaries, rewritten metrics)."""
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically (e.g. ``last.pt`` -> ``final.pt``)."""
    _atomic_write(Path(dst), lambda tmp: shutil.copyfile(src, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Read a densemtl checkpoint onto the CPU; UserError if missing, corrupt or foreign."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "final.pt", path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise UserError(f"checkpoint folder {path} has no checkpoints/final.pt or checkpoints/last.pt")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure (struct, zip, EOF, ...) = unreadable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} is not a readable densemtl checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {path} is not a densemtl checkpoint (expected a file written by "
            "`densemtl train`, e.g. RUN/checkpoints/final.pt)"
        )
    if ckpt.get("version", 0) > VERSION:
        raise UserError(
            f"checkpoint {path} has format version {ckpt['version']}; this densemtl reads up to {VERSION}"
        )
    ckpt["path"] = str(path)
    return ckpt


def check_model_name(ckpt: dict, expected: str) -> None:
    """Refuse a checkpoint trained with another model, naming both."""
    if ckpt["model_name"] != expected:
        raise UserError(
            f"checkpoint {ckpt.get('path', '')} holds a {ckpt['model_name']!r} model, "
            f"but model {expected!r} was requested"
        )


def load_model_state(model: nn.Module, ckpt: dict) -> None:
    """Load the checkpoint's weights into ``model`` (strict); UserError on any mismatch."""
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise UserError(
            f"checkpoint {ckpt.get('path', '')} ({ckpt['model_name']!r}) does not fit the model "
            f"built for it: {detail}"
        ) from None


def rng_state() -> dict:
    """Every RNG a training run draws from, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
