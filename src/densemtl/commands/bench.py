"""``densemtl bench``: ms/step, images/s, peak memory, parameters and GFLOPs per model."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import UserError

EPILOG = """examples:
  densemtl bench --models mtan --baseline                       # CPU: width 1, 64x64, batch 2
  densemtl bench --models mtan --baseline --paired 20           # + speedup from alternating steps
  densemtl bench --models mtan,split --threads 2 --out benchmarks/speed_cpu
  densemtl bench --models mtan --weighting mgda,cagrad,nash_mtl,famo --phases train
  densemtl bench --models mtan --device cuda --size 288x384 --amp bf16 --compile --json
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure training / inference speed, memory and FLOPs of models",
        description="Time a training step (forward, task losses, backward, Adam step) and an "
                    "inference forward of each model on a synthetic batch: median and p10/p90 "
                    "ms/step after a warm-up, images/s, peak memory, parameters, GFLOPs. Each "
                    "measurement runs in a fresh process.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="mtan", metavar="A,B", help="comma-separated model names (default mtan)")
    p.add_argument("--size", default="64x64", metavar="HxW", help="input size (default 64x64)")
    p.add_argument("--batch-size", type=int, default=2, metavar="B", help="batch size (default 2)")
    p.add_argument("--width", type=float, default=1.0, metavar="W", help="channel multiplier (default 1.0)")
    p.add_argument("--tasks", default="semantic,depth,normal", metavar="A,B",
                   help="tasks (default semantic,depth,normal; single-task models take the first)")
    p.add_argument("--num-classes", type=int, default=13, metavar="N", help="segmentation classes (default 13)")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="autocast precision (default none)")
    p.add_argument("--channels-last", default=True, action=argparse.BooleanOptionalAction,
                   help="NHWC memory format (default on, as training)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default off)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's)")
    p.add_argument("--baseline", action="store_true",
                   help="also measure the reference: MTAN per-task loop, fp32, NCHW, eager, plain Adam")
    p.add_argument("--weighting", metavar="A,B",
                   help="also time the training step of these multi-task optimisation methods through the "
                        "trainer's step (with equal as the reference of the 'x equal' column)")
    p.add_argument("--phases", default="train,infer", metavar="A,B", help="train, infer or both (default)")
    p.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE", help="model option (repeatable)")
    p.add_argument("--steps", type=int, default=10, metavar="N", help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps first (default 3)")
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="measure everything R times, interleaved; report the median repeat (default 1)")
    p.add_argument("--paired", type=int, default=0, metavar="R",
                   help="with --baseline: also time baseline and model steps in alternation in one "
                        "process, R rounds, and report the per-round speedup (default 0: off)")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster start; memory peaks less isolated)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--out", metavar="DIR", help="write bench.md and bench.csv into DIR")
    p.set_defaults(func=run)


def _names(value: str, flag: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise UserError(f"{flag}: expected a comma-separated list, got {value!r}")
    return names


def run(args: argparse.Namespace) -> int:
    from .. import bench
    from ..engine.build import device_of
    from ..engine.config import _parse_options, check_positive, parse_size
    from ..models.registry import check_input_size
    from ..tasks import make_tasks

    size = parse_size(args.size, "--size")
    models = _names(args.models, "--models")
    phases = tuple(_names(args.phases, "--phases"))
    for phase in phases:
        if phase not in bench.PHASES:
            raise UserError(f"--phases: expected train and/or infer, got {phase!r}")
    device_of(args.device)
    make_tasks(_names(args.tasks, "--tasks"), num_classes=args.num_classes)  # unknown tasks fail here
    for flag in ("batch_size", "width", "num_classes", "steps", "threads", "repeat"):
        check_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    check_positive("--warmup", args.warmup, allow_zero=True)
    check_positive("--paired", args.paired, allow_zero=True)
    if args.paired and not args.baseline:
        raise UserError("--paired: compares against the baseline; add --baseline")
    specs = bench.plan(
        models, phases, baseline=args.baseline, size=size, batch_size=args.batch_size, width=args.width,
        tasks=tuple(_names(args.tasks, "--tasks")), num_classes=args.num_classes, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, device=args.device, steps=args.steps,
        warmup=args.warmup, threads=args.threads, options=_parse_options(args.model_opt, "model.options"),
        weightings=_names(args.weighting, "--weighting") if args.weighting else None,
    )
    for spec in specs:
        check_input_size(spec.model, *size)
    env = bench.environment()
    rows = bench.run_benchmark(specs, isolate=not args.in_process, repeat=args.repeat, paired=args.paired,
                               progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    command = bench.command_line()
    if args.out:
        for path in bench.write_results(rows, env, args.out, command):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(bench.as_json(rows, env), indent=2))
    else:
        print(bench.to_markdown(rows, env, command), end="")
    return 0
