"""``densemtl evaluate``: score a trained checkpoint on a split of its dataset."""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score a checkpoint on its dataset's val split",
        description="Evaluate a checkpoint (a file, or a run folder: its final.pt, else last.pt) with the "
                    "streaming metrics. The dataset, tasks and size come from the checkpoint's config.",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint file or run folder")
    p.add_argument("--data-root", metavar="DIR", help="read the dataset from DIR instead of the training root")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--convention", default=None, metavar="NAME",
                   help="dataset (default: the run's) or mtan (per-batch means, MTAN's code)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="evaluation batch size (default: the run's; the mtan convention uses 2)")
    p.add_argument("--model", metavar="NAME", help="refuse a checkpoint of any other model")
    p.add_argument("--trivial", action="store_true",
                   help="also score trivial predictors (majority class, mean train depth, mean normal)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=0, metavar="N", help="data-loading processes")
    p.add_argument("--json", action="store_true", help="print JSON (metrics as flat 'task.metric' keys)")
    p.set_defaults(func=run)


def flatten(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{task: {metric: v}}`` -> ``{"task.metric": v}`` (the keys ``densemtl score`` uses)."""
    return {f"{t}.{m}": v for t, values in metrics.items() for m, v in values.items()}


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..engine import build
    from ..engine.baselines import evaluate_trivial, trivial_predictions
    from ..engine.checkpoint import load_checkpoint
    from ..engine.config import validate
    from ..engine.trainer import evaluate_model
    from ..report import ResultRow, results_table

    ckpt = load_checkpoint(args.checkpoint)
    cfg, tasks, model = build.model_from_checkpoint(ckpt, "cpu", expect_model=args.model)
    overrides = {"device": args.device, "num_workers": args.num_workers}
    if args.convention is not None:
        overrides["convention"] = args.convention
    if args.batch_size is not None:
        overrides["eval_batch_size"] = args.batch_size
    cfg = validate(dataclasses.replace(cfg, **overrides))
    device = build.device_of(cfg.device)
    model = model.to(device)
    dataset = build.build_dataset(cfg, args.split, root=args.data_root)
    if len(dataset) == 0:
        raise UserError(f"split {args.split!r} of {args.data_root or cfg.data.root or cfg.data.name} is empty")
    batch = cfg.eval_batch_size or (2 if cfg.convention == "mtan" else cfg.batch_size)
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=cfg.num_workers)
    metrics, _, _ = evaluate_model(model, tasks, loader, cfg.convention, device, amp=cfg.amp,
                                   channels_last=cfg.channels_last)
    result = {
        "checkpoint": ckpt["path"], "model": cfg.model.name, "epoch": int(ckpt["epoch"]),
        "data": cfg.data.name, "data_root": args.data_root or cfg.data.root, "split": args.split,
        "samples": len(dataset), "convention": cfg.convention, "metrics": flatten(metrics),
    }
    rows = [ResultRow(f"{cfg.model.name} (epoch {result['epoch']})", metrics)]
    if args.trivial:
        with torch.no_grad():
            constants = trivial_predictions(build.build_dataset(cfg, "train", root=args.data_root), tasks)
        trivial = evaluate_trivial(constants, loader, tasks, cfg.convention)
        result["trivial"] = flatten(trivial)
        rows.append(ResultRow("trivial predictors", trivial))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{ckpt['path']}: {len(dataset)} samples")
        print(results_table(rows, tasks, variant=cfg.data.name, split=args.split, convention=cfg.convention))
    return 0
