"""``aamct <stage> ...``: one subcommand per pipeline stage.

Each stage package contributes its subcommands through a ``register(subparsers)`` function in its own ``cli``
module, so this file only wires them together and turns :class:`~pipeline.errors.UserError` into a one-line
message with exit status 2 (no traceback for user mistakes).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import UserError

__all__ = ["build_parser", "main"]

#: modules that contribute subcommands, in the order they appear in ``aamct --help``
STAGE_CLI_MODULES: tuple[str, ...] = (
    "pipeline.data.cli",
    "pipeline.evaluation.cli",
    "pipeline.inference.cli",
    "pipeline.sharing.cli",
    "pipeline.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``aamct`` argument parser with every stage's subcommands."""
    parser = argparse.ArgumentParser(
        prog="aamct", description="aamct: MONAI pipeline for 3D CT classification, one subcommand per stage."
    )
    parser.add_argument("--version", action="version", version=f"aamct {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name in STAGE_CLI_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aamct`` console script. Returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result = args.func(args)
    except UserError as err:
        print(f"aamct: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aamct: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
