"""``densemtl compare``: train models x weightings x seeds against single-task baselines and
tabulate them as the MTAN paper does (see :mod:`densemtl.compare`)."""

from __future__ import annotations

import argparse

from ..engine.config import add_config_arguments, config_from_args

DEFAULT_MODELS = "single,split,dense,cross_stitch,mtan"
DEFAULT_WEIGHTINGS = "equal,uncertainty,dwa"
# Set per run by the comparison, so `densemtl train`'s flags for them do not apply here.
PER_RUN_KEYS = ("model.name", "weighting.name", "out")
# A warm start fits one model family, not every run of a grid (single-task baselines included).
NOT_FOR_COMPARE = ("init_from",)

EPILOG = """examples:
  densemtl compare --out runs/cmp --seeds 2 --width 0.125 --size 64x64 --epochs 10
  densemtl compare --data nyuv2 --data-root DIR --preset mtan --device cuda --seeds 3 --out runs/nyuv2
  densemtl compare --models single,stan,split_wide,mtan --weightings dwa --out runs/cmp2

Rerunning the same command skips the runs that finished and resumes an interrupted one.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="train models x weightings x seeds and compare them with single-task baselines",
        description="Train every multi-task model under every loss weighting for every seed, and the "
                    "single-task baselines once per task and seed (each run in OUT/runs/NAME), then write "
                    "the MTAN-paper-style table (#params, GFLOPs, every metric as mean ± std over seeds, "
                    "Δm against the single-task runs and, on nyuv2 / cityscapes, against the published "
                    "single-task constants) as compare.md/.csv/.json and plots of Δm and the training "
                    "curves. The training flags below apply to every run.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="comparison folder (runs/ and the tables)")
    p.add_argument("--models", default=DEFAULT_MODELS, metavar="A,B",
                   help=f"models to compare (default {DEFAULT_MODELS}); single-task models such as "
                        "single and stan are trained once per task and seed")
    p.add_argument("--weightings", default=DEFAULT_WEIGHTINGS, metavar="A,B",
                   help=f"loss weightings of the multi-task models (default {DEFAULT_WEIGHTINGS})")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="seeds per run: --seed, --seed + 1, ..., N in all (default 1)")
    p.add_argument("--baseline", default="single", metavar="MODEL",
                   help="single-task model of the Δm reference (default single; always trained)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p, exclude=(*PER_RUN_KEYS, *NOT_FOR_COMPARE))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import compare

    base = config_from_args(args)
    paths = compare(base, args.models, args.weightings, args.seeds, args.out, baseline=args.baseline,
                    progress=False if args.no_progress else None)
    print("\n" + paths["md"].read_text(), end="")
    return 0
