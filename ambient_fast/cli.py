"""`ambient-fast` command line: one subcommand per step of the pipeline.

Each area of the package contributes its subcommands through a `register(subparsers)` function listed in
SUBCOMMAND_MODULES, so that this file stays a dispatcher and the areas stay independent.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define register(subparsers); each subcommand sets `func` (args -> int exit code).
SUBCOMMAND_MODULES = ("ambient_fast.info", "ambient_fast.train.cli", "ambient_fast.experiments.cli", "ambient_fast.annotate.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ambient-fast", description="Ambient Diffusion Omni: annotate, train, sample and evaluate."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
