"""``densemtl train``: train a model; with no flags, the CPU demo (MTAN on synthetic scenes)."""

from __future__ import annotations

import argparse

from ..engine.config import add_config_arguments, config_from_args, flag_overrides, merge, read_yaml

EPILOG = """examples:
  densemtl train                                   # demo: MTAN on synthetic scenes, CPU, < 10 min
  densemtl train --data nyuv2 --data-root DIR --preset mtan --device cuda
  densemtl train --config my.yaml --lr 3e-4 --weighting dwa
  densemtl train --resume runs/RUN                 # continue an interrupted run
  densemtl train --preset atinet --init-from runs/MTAN_RUN ...   # warm start ATI-Net from MTAN
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a multi-task model (default: the CPU demo)",
        description="Train a model, evaluating on the val split every epoch. Everything goes to a run "
                    "folder: config.yaml, metrics.jsonl, checkpoints/, pictures/, summary.md/json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (flags given override its config)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    progress = False if args.no_progress else None
    if args.resume:
        overrides = merge(read_yaml(args.config) if args.config else {}, flag_overrides(args))
    else:
        config = config_from_args(args)  # config errors surface before anything heavy is imported

    from ..engine.trainer import Trainer
    from ..report import run_summary_markdown

    from ..engine import distributed

    try:  # under torchrun the Trainer joins the process group; leave it however training ends
        if args.resume:
            trainer = Trainer.resume(args.resume, overrides, progress=progress)
        else:
            trainer = Trainer(config, progress=progress)
        summary = trainer.fit()
    finally:
        distributed.shutdown()
    if trainer.is_main:
        print(run_summary_markdown(summary, trainer.tasks))
    return 0
