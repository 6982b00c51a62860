"""``densemtl models`` (list the registered architectures) and ``densemtl info MODEL`` (size and
compute of one architecture for a dataset's tasks)."""

from __future__ import annotations

import argparse
import json

import torch
import yaml

from ..errors import UserError
from ..models.info import count_gflops, count_params
from ..models.registry import check_input_size, create_model, get_entry, list_models
from ..tasks import make_tasks, task_channels


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run_models)

    p = sub.add_parser("info", help="parameters and GFLOPs of a model for a dataset's tasks")
    p.add_argument("model", help="registered model name (see `densemtl models`)")
    p.add_argument("--data", default="nyuv2", help="dataset whose tasks, classes and size to use (default nyuv2)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1)")
    p.add_argument("--size", help="input HEIGHTxWIDTH (default: the dataset's size)")
    p.add_argument("--tasks", help="comma-separated subset of the dataset's tasks "
                                   "(default: all; the first one for single-task models)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. -o mixing=mtan (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)


def run_models(args: argparse.Namespace) -> int:
    entries = [get_entry(n) for n in list_models()]
    if args.json:
        print(json.dumps([{"model": e.name, "family": e.family, "single_task": e.single_task,
                           "size_multiple": e.size_multiple, "options": e.options,
                           "description": e.description} for e in entries], indent=2))
        return 0
    name_w = max(len(e.name) for e in entries)
    fam_w = max(len(e.family) for e in entries)
    for e in entries:
        print(f"{e.name:<{name_w}}  {e.family:<{fam_w}}  {e.description}")
    return 0


def parse_options(items: list[str]) -> dict:
    """``["mixing=mtan", "paper_count=false"]`` -> ``{"mixing": "mtan", "paper_count": False}``."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"option -o/--option expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value) if value else ""
    return options


def model_info(name: str, data: str = "nyuv2", width: float = 1.0, size: tuple[int, int] | None = None,
               tasks: list[str] | None = None, options: dict | None = None) -> dict:
    """Parameters and GFLOPs (one image) of model ``name`` for dataset ``data``'s tasks.

    The model is built on the ``meta`` device (no memory, no initialisation cost), so full-width
    models are cheap to describe; only a model that cannot run on shapes alone is built for real.
    """
    from ..data import dataset_info

    entry = get_entry(name)
    info = dataset_info(data)
    if tasks is None:
        tasks = list(info.tasks[:1] if entry.single_task else info.tasks)
    unknown = [t for t in tasks if t not in info.available_tasks]
    if unknown:
        raise UserError(f"option --tasks: dataset {data!r} has no task(s) {unknown}; "
                        f"expected some of {list(info.available_tasks)}")
    size = size or info.size
    check_input_size(name, *size)
    channels = task_channels(make_tasks(tasks, num_classes=info.num_classes))
    options = options or {}
    with torch.device("meta"):
        model = create_model(name, channels, width=width, **options)
    params = count_params(model)
    try:
        gflops = count_gflops(model, size)
    except (NotImplementedError, RuntimeError):  # the model needs real values to run: build it for real
        gflops = count_gflops(create_model(name, channels, width=width, **options), size)
    return {"model": name, "family": entry.family, "data": data, "tasks": channels, "width": width,
            "size": list(size), "params": params, "gflops": round(gflops, 3), "options": options}


def run_info(args: argparse.Namespace) -> int:
    from ..data import parse_size

    result = model_info(
        args.model, data=args.data, width=args.width,
        size=parse_size(args.size) if args.size else None,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        options=parse_options(args.option),
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    h, w = result["size"]
    print(f"model   {result['model']} (family {result['family']})")
    print(f"data    {result['data']}: tasks {result['tasks']}, input {h}x{w}, width {result['width']:g}")
    if result["options"]:
        print(f"options {result['options']}")
    print(f"params  {result['params']:,}")
    print(f"GFLOPs  {result['gflops']:.2f} (one image, 2 FLOPs per multiply-add)")
    return 0
