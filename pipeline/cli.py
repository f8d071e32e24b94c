"""``aamct <stage> ...``: one subcommand per pipeline stage.

Each stage package contributes its subcommands through a ``register(subparsers)`` function in its own ``cli``
module, so this file only wires them together and turns failures into one line on stderr:

* a user mistake (:func:`pipeline.contracts.user_error_line`: a :class:`~pipeline.errors.UserError`, worded for the
  user, or an ``OSError`` naming a path that cannot be read or written, e.g. ``--out`` under a read-only folder):
  ``aamct: error: <message>``, status 2;
* anything else is a bug: one line naming it and asking for ``-v``, status 1.

With ``-v`` the traceback is printed as well. Without it, Python's warnings (MONAI's reader and transform notices)
are not shown either: a run's output is its own log lines and results.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

from pipeline import __version__
from pipeline.contracts.failure import ERROR_PREFIX, user_error_line

__all__ = ["build_parser", "main"]

#: modules that contribute subcommands, in the order they appear in ``aamct --help``
STAGE_CLI_MODULES: tuple[str, ...] = (
    "pipeline.data.cli",
    "pipeline.evaluation.cli",
    "pipeline.evaluation.stress",
    "pipeline.evaluation.demo_page",
    "pipeline.inference.cli",
    "pipeline.sharing.cli",
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
    if args.verbose:
        logging.getLogger("highdicom").setLevel(logging.DEBUG)
    else:
        warnings.simplefilter("ignore")
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("aamct: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        line = user_error_line(err)
        if line is not None:
            return _report(args, line, 2)
        # a bug: still one line by default, the traceback with -v
        text = " ".join(str(err).split())[:300]
        return _report(args, f"{ERROR_PREFIX}unexpected {type(err).__name__}: {text} (rerun with -v for details)", 1)
    return int(result or 0)


def _report(args: argparse.Namespace, line: str, status: int) -> int:
    """Print ``line`` on stderr (after the traceback with ``-v``) and return ``status``."""
    if args.verbose:
        traceback.print_exc()
    print(line, file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
