"""Reading and validating the ``.npy`` arrays of MTAN's dataset layouts.

Every check raises :class:`~densemtl.errors.UserError` naming the file and what was expected, so a
broken dataset fails with one clear line instead of a shape error deep inside a model. The checks
are cheap (one pass over a few hundred thousand values) and run on every sample as it is loaded.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError

_SIZE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*$")
_INDEXED = re.compile(r"^(\d+)\.npy$")
# Slack for values written through float32 arithmetic (resizing, normalising).
_TOL = 1e-3


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """``"96x128"`` -> ``(96, 128)`` (height, width); anything else is a UserError."""
    m = _SIZE.match(str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"option {option} expects HEIGHTxWIDTH with positive integers, e.g. 96x128; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a UserError saying what it should have been."""
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise UserError(f"{what} {path} {state}")
    return path


def indexed_files(folder: Path) -> int:
    """Number N of samples in ``folder``, which must hold exactly ``0.npy .. N-1.npy``."""
    require_dir(folder, "dataset folder")
    names = [n for n in os.listdir(folder) if not n.startswith(".")]
    if not names:
        raise UserError(f"dataset folder {folder} is empty; expected files 0.npy, 1.npy, ...")
    bad = sorted(n for n in names if not _INDEXED.match(n))
    if bad:
        raise UserError(
            f"dataset folder {folder} holds unexpected file(s) {bad[:3]}; expected only 0.npy, 1.npy, ..."
        )
    indices = sorted(int(_INDEXED.match(n).group(1)) for n in names)
    if indices != list(range(len(indices))):
        missing = sorted(set(range(len(indices))) - set(indices))
        raise UserError(
            f"dataset folder {folder} has {len(indices)} files but not 0.npy..{len(indices) - 1}.npy "
            f"(missing e.g. {missing[0]}.npy)"
        )
    return len(indices)


def load_npy(path: Path) -> np.ndarray:
    """Load a numeric array from ``path``; unreadable, pickled or non-numeric files are UserErrors."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"cannot read {path} as a .npy array ({e}); the file may be corrupt") from None
    if not isinstance(arr, np.ndarray) or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise UserError(f"{path} holds {getattr(arr, 'dtype', type(arr))} data; expected a numeric array")
    return arr


def _finite(arr: np.ndarray, path: Path) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise UserError(f"{path} contains {bad} NaN/inf value(s); expected finite numbers")


def _shape_error(path: Path, arr: np.ndarray, expected: str) -> UserError:
    return UserError(f"{path} has shape {tuple(arr.shape)}; expected {expected}")


def check_image(arr: np.ndarray, path: Path) -> np.ndarray:
    """HxWx3 RGB in [0, 1] -> float32 HxWx3."""
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _shape_error(path, arr, "H x W x 3 (RGB, channels last)")
    _finite(arr, path)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_TOL or hi > 1 + _TOL:
        raise UserError(f"{path} has values in [{lo:g}, {hi:g}]; expected RGB in [0, 1]")
    return arr.astype(np.float32, copy=False)


def _squeeze_last(arr: np.ndarray) -> np.ndarray:
    return arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def check_label(arr: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """HxW (or HxWx1) integer-valued classes in -1..C-1 -> int64 HxW."""
    arr = _squeeze_last(arr)
    if arr.ndim != 2:
        raise _shape_error(path, arr, "H x W (class index per pixel)")
    _finite(arr, path)
    labels = arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(labels, arr):
        raise UserError(f"{path} holds non-integer labels; expected whole numbers in -1..{num_classes - 1}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < -1 or hi >= num_classes:
        raise UserError(
            f"{path} has labels in [{lo}, {hi}]; expected -1 (unlabelled) or 0..{num_classes - 1}"
        )
    return labels


def check_depth(arr: np.ndarray, path: Path) -> np.ndarray:
    """HxWx1 (or HxW) non-negative depth, 0 = invalid -> float32 HxW."""
    arr = _squeeze_last(arr)
    if arr.ndim != 2:
        raise _shape_error(path, arr, "H x W x 1 (one depth value per pixel)")
    _finite(arr, path)
    if arr.size and float(arr.min()) < 0:
        raise UserError(f"{path} has negative depth (min {float(arr.min()):g}); expected >= 0, 0 = invalid")
    return arr.astype(np.float32, copy=False)


def check_normal(arr: np.ndarray, path: Path) -> np.ndarray:
    """HxWx3 vectors with components in [-1, 1], all-zero = invalid -> float32 HxWx3.

    Unit length is not enforced per pixel (resized normals of other preprocessings are slightly
    shorter); ``check()`` of the datasets reports how far from unit they are.
    """
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _shape_error(path, arr, "H x W x 3 (normal vector, channels last)")
    _finite(arr, path)
    if arr.size and float(np.abs(arr).max()) > 1 + _TOL:
        raise UserError(
            f"{path} has components up to {float(np.abs(arr).max()):g}; expected unit normals in [-1, 1]"
        )
    return arr.astype(np.float32, copy=False)


def check_same_size(arrays: dict[str, tuple[np.ndarray, Path]]) -> None:
    """All arrays share the first array's H x W."""
    (ref_key, (ref, ref_path)), *rest = arrays.items()
    for key, (arr, path) in rest:
        if arr.shape[:2] != ref.shape[:2]:
            raise UserError(
                f"{path} is {arr.shape[0]}x{arr.shape[1]} but {ref_path} is {ref.shape[0]}x{ref.shape[1]}; "
                f"every array of a sample must have the same height and width"
            )


@contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it to ``out`` only when the block succeeds.

    An interrupted or failed write therefore never leaves a half-written dataset at ``out`` that
    looks complete. ``out`` must not exist unless ``overwrite`` (then it is replaced at the end).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        if overwrite and out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)  # fails (OSError) if another writer created ``out`` meanwhile
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
