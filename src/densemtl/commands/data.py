"""``densemtl data synth | cityscapes | check``: make and verify datasets."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..data import build_dataset, dataset_info, parse_size
from ..data import synthetic
from .models import parse_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate, convert or check datasets")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    s = data_sub.add_parser("synth", help="render procedural indoor scenes in the NYUv2 layout")
    s.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    s.add_argument("--train", type=int, default=synthetic.DEFAULT_TRAIN,
                   help=f"training scenes (default {synthetic.DEFAULT_TRAIN})")
    s.add_argument("--val", type=int, default=synthetic.DEFAULT_VAL,
                   help=f"validation scenes (default {synthetic.DEFAULT_VAL})")
    s.add_argument("--size", default="x".join(map(str, synthetic.DEFAULT_SIZE)),
                   help="HEIGHTxWIDTH of the images (default %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=run_synth)

    c = data_sub.add_parser("cityscapes", help="convert official Cityscapes PNGs into MTAN's layout")
    c.add_argument("--src", required=True, help="Cityscapes root with leftImg8bit/, gtFine/ "
                                                "and optionally disparity/")
    c.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    c.add_argument("--size", help="resize to HEIGHTxWIDTH, e.g. 128x256 (default: keep)")
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.set_defaults(func=run_cityscapes)

    k = data_sub.add_parser("check", help="load and validate every sample of a dataset")
    k.add_argument("--data", required=True, help="dataset name, e.g. nyuv2, cityscapes, synthetic")
    k.add_argument("--root", required=True, help="dataset root folder")
    k.add_argument("--split", action="append", help="split to check (repeatable; default: all)")
    k.add_argument("--tasks", help="comma-separated tasks to check (default: all of the dataset's)")
    k.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. -o num_classes=19 for cityscapes (repeatable)")
    k.add_argument("--json", action="store_true", help="print the report as JSON")
    k.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    start = time.perf_counter()
    meta = synthetic.generate_dataset(args.out, args.train, args.val, size, args.seed,
                                      overwrite=args.overwrite, progress=True)
    seconds = time.perf_counter() - start
    n = args.train + args.val
    print(f"wrote {args.train} train + {args.val} val scenes ({size[0]}x{size[1]}, seed {meta['seed']}) "
          f"to {args.out} in {seconds:.1f} s ({1000 * seconds / n:.1f} ms per scene)")
    return 0


def run_cityscapes(args: argparse.Namespace) -> int:
    from ..data.cityscapes import convert_cityscapes

    size = parse_size(args.size) if args.size else None
    counts = convert_cityscapes(args.src, args.out, size, overwrite=args.overwrite)
    listing = ", ".join(f"{n} {split}" for split, n in counts.items())
    print(f"wrote {listing} frames to {args.out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    opts = parse_options(args.option)
    info = dataset_info(args.data, **opts)
    # Default: every split present (a sample dataset may hold only one); none present -> the
    # first split's build explains what is missing.
    present = [s for s in info.splits if (Path(args.root) / s).is_dir()]
    splits = args.split or present or list(info.splits[:1])
    tasks = args.tasks.split(",") if args.tasks else None
    reports = [build_dataset(args.data, args.root, split, tasks, **opts).check() for split in splits]
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    for r in reports:
        _print_report(r)
    return 0


def _print_report(r: dict) -> None:
    sizes = ", ".join(f"{h}x{w}" for h, w in r["sizes"])
    print(f"[{r['split']}] {r['variant']}: {r['samples']} samples, size {sizes}, "
          f"image range [{r['image_range'][0]:.3g}, {r['image_range'][1]:.3g}]")
    if "semantic" in r:
        sem = r["semantic"]
        classes = ", ".join(f"{name} {100 * f:.1f}%" for name, f in sem["class_fraction"].items())
        print(f"  semantic: unlabelled {100 * sem['unlabelled_fraction']:.1f}%; {classes}")
    if "depth" in r:
        d = r["depth"]
        rng = "none valid" if d["valid_range"] is None else f"{d['valid_range'][0]:.3g}..{d['valid_range'][1]:.3g}"
        print(f"  depth: valid range {rng}, invalid {100 * d['invalid_fraction']:.1f}%")
    if "normal" in r:
        n = r["normal"]
        print(f"  normal: invalid {100 * n['invalid_fraction']:.1f}%, "
              f"max deviation from unit length {n['max_unit_deviation']:.2g}")
    if len(r["sizes"]) > 1:
        print("  warning: samples differ in size, so they cannot be batched without resizing")
