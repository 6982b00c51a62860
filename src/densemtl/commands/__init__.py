"""CLI subcommands. Each module defines ``add_parser(subparsers)``, which adds its subcommand(s)
and sets ``func`` (called with the parsed args; returns an exit code or None)."""

# Module names, in the order `densemtl --help` lists them. A module listed here that is not
# written yet is skipped, so commands can land one at a time.
COMMAND_MODULES = ("train", "evaluate", "predict", "score", "compare", "bench", "models", "weightings", "data")
