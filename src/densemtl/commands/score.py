"""``densemtl score``: score predictions saved in the NYUv2 layout against ground truth.

Predictions from any codebase, saved as ``PRED_ROOT/label/{i}.npy`` (class indices, HxW),
``PRED_ROOT/depth/{i}.npy`` (HxW or HxWx1) and ``PRED_ROOT/normal/{i}.npy`` (HxWx3; normalised
here, as ``Task.activate`` does), are scored against ``GT_ROOT/SPLIT/{label,depth,normal}`` with
this library's meters, so numbers from different codebases are comparable under one
implementation. Any subset of the three tasks may be present. Samples are taken in index order,
``--batch-size`` at a time (only the ``mtan`` convention depends on it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..data._io import check_depth, check_label, check_normal, indexed_files, load_npy, require_dir
from ..errors import UserError
from ..metrics import CONVENTIONS
from ..report import ResultRow, results_table
from ..tasks import Task, make_tasks

FOLDERS = {"semantic": "label", "depth": "depth", "normal": "normal"}  # task -> folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score saved predictions (NYUv2 .npy layout) against ground truth",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, type=Path, metavar="PRED_ROOT",
                   help="folder with label/, depth/ and/or normal/ holding {i}.npy predictions")
    p.add_argument("--data-root", required=True, type=Path, metavar="GT_ROOT",
                   help="dataset root in the NYUv2 layout (GT_ROOT/SPLIT/label/{i}.npy, ...)")
    p.add_argument("--split", default="val", help="ground-truth split (default val)")
    p.add_argument("--convention", default="dataset", choices=CONVENTIONS,
                   help="dataset: every valid pixel once (default); mtan: per-batch means, as MTAN's code")
    p.add_argument("--batch-size", type=int, default=2,
                   help="samples per batch, for the mtan convention (default 2, as MTAN)")
    p.add_argument("--num-classes", type=int, default=13, help="segmentation classes (default 13)")
    p.add_argument("--json", action="store_true",
                   help="print flat JSON: {\"semantic.miou\": ..., \"depth.abs_err\": ..., ...}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = score(args.pred, args.data_root, args.split, args.convention, args.batch_size,
                    args.num_classes)
    if args.json:
        print(json.dumps(flatten_results(results), indent=2))
    else:
        tasks = make_tasks(list(results), num_classes=args.num_classes)
        print(results_table([ResultRow(str(args.pred), results)], tasks, split=args.split,
                            convention=args.convention), end="")
    return 0


def flatten_results(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{task: {metric: v}}`` -> ``{"task.metric": v}``."""
    return {f"{t}.{m}": v for t, metrics in results.items() for m, v in metrics.items()}


def score(pred_root: Path, gt_root: Path, split: str = "val", convention: str = "dataset",
          batch_size: int = 2, num_classes: int = 13) -> dict[str, dict[str, float]]:
    """Metrics ``{task: {metric: value}}`` of every task with a prediction folder."""
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    if batch_size < 1:
        raise UserError(f"option --batch-size must be >= 1, got {batch_size}")
    if num_classes < 1:
        raise UserError(f"option --num-classes must be >= 1, got {num_classes}")
    require_dir(pred_root, "prediction folder (--pred)")
    require_dir(gt_root, "ground-truth root (--data-root)")
    split_dir = require_dir(gt_root / split, f"ground-truth split folder (--split {split})")
    names = [t for t, folder in FOLDERS.items() if (pred_root / folder).is_dir()]
    if not names:
        raise UserError(f"prediction folder {pred_root} has none of the folders "
                        f"{', '.join(f + '/' for f in FOLDERS.values())}")
    tasks = make_tasks(names, num_classes=num_classes)
    results = {}
    for name, task in tasks.items():
        folder = FOLDERS[name]
        gt_dir = require_dir(split_dir / folder, f"ground-truth folder for {name} predictions")
        n = indexed_files(gt_dir)
        results[name] = _score_task(task, pred_root / folder, gt_dir, n, convention, batch_size)
        extra = _extra_predictions(pred_root / folder, n)
        if extra:
            print(f"note: {pred_root / folder} has {extra} prediction file(s) without ground truth; "
                  "they were not scored", file=sys.stderr)
    return results


def _score_task(task: Task, pred_dir: Path, gt_dir: Path, n: int, convention: str,
                batch_size: int) -> dict[str, float]:
    """Feed samples 0..n-1 to the task's meter, ``batch_size`` at a time, in index order."""
    meter = task.make_meter(convention)
    for start in range(0, n, batch_size):
        pairs = [_load_pair(task, pred_dir, gt_dir, i) for i in range(start, min(n, start + batch_size))]
        sizes = {p.shape[-2:] for p, _ in pairs}
        if len(sizes) > 1:  # a batch must stack; score such samples with --batch-size 1
            raise UserError(f"samples {start}..{start + len(pairs) - 1} of {gt_dir} differ in size "
                            f"{sorted(sizes)}; use --batch-size 1")
        meter.update(torch.stack([p for p, _ in pairs]), torch.stack([g for _, g in pairs]))
    out = meter.compute()
    if any(math.isnan(v) for v in out.values()):
        raise UserError(f"ground truth in {gt_dir} has no valid pixel; cannot score {task.name}")
    return out


def _load_pair(task: Task, pred_dir: Path, gt_dir: Path, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and ground truth of sample ``i`` as the task's meter takes them (channels first)."""
    gt_path, pred_path = gt_dir / f"{i}.npy", pred_dir / f"{i}.npy"
    if not pred_path.is_file():
        raise UserError(f"prediction file {pred_path} is missing (ground truth {gt_path} exists)")
    pred = load_npy(pred_path)
    if np.issubdtype(pred.dtype, np.floating) and not np.isfinite(pred).all():
        raise UserError(f"{pred_path} contains {int((~np.isfinite(pred)).sum())} NaN/inf value(s)")
    kind = task.target_kind
    if kind == "label":
        gt = check_label(load_npy(gt_path), gt_path, task.num_classes)
        pred = _squeeze(pred)
        _same_shape(pred, gt, pred_path, gt_path)
        labels = pred.astype(np.int64)
        if not np.array_equal(labels, pred):
            raise UserError(f"{pred_path} holds non-integer values; expected class indices")
        scored = labels[gt >= 0]  # pixels unlabelled in the ground truth are not scored
        if scored.size and (scored.min() < 0 or scored.max() >= task.num_classes):
            raise UserError(f"{pred_path} has classes in [{scored.min()}, {scored.max()}] at labelled "
                            f"pixels; expected 0..{task.num_classes - 1} (--num-classes {task.num_classes})")
        return torch.from_numpy(labels), torch.from_numpy(gt)
    if kind == "depth":
        gt = check_depth(load_npy(gt_path), gt_path)
        pred = _squeeze(pred)
        _same_shape(pred, gt, pred_path, gt_path)
        return (torch.from_numpy(pred.astype(np.float32))[None],
                torch.from_numpy(np.ascontiguousarray(gt))[None])
    gt = check_normal(load_npy(gt_path), gt_path)
    _same_shape(pred, gt, pred_path, gt_path)
    as_map = lambda a: torch.from_numpy(np.ascontiguousarray(a.astype(np.float32).transpose(2, 0, 1)))  # noqa: E731
    return task.activate(as_map(pred)[None])[0], as_map(gt)


def _squeeze(arr: np.ndarray) -> np.ndarray:
    """HxWx1 -> HxW (other shapes unchanged, for the shape check to report)."""
    return arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def _same_shape(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> None:
    if pred.shape != gt.shape:
        raise UserError(f"prediction {pred_path} has shape {tuple(pred.shape)} but ground truth "
                        f"{gt_path} has shape {tuple(gt.shape)}")


def _extra_predictions(pred_dir: Path, n: int) -> int:
    """Number of ``{i}.npy`` prediction files with ``i >= n`` (beyond the ground truth)."""
    return sum(1 for p in pred_dir.glob("*.npy") if p.stem.isdigit() and int(p.stem) >= n)
