"""``densemtl`` command line: ``densemtl train | evaluate | predict | score | models | info | data ...``"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMAND_MODULES

    parser = argparse.ArgumentParser(
        prog="densemtl", description="Multi-task dense scene understanding: train, evaluate, compare."
    )
    parser.add_argument("--version", action="version", version=f"densemtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"densemtl.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"densemtl.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except UserError as e:
        print(f"densemtl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `densemtl models --json | head`: the reader left; not an error
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 0
    except KeyboardInterrupt:
        print(f"densemtl {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
