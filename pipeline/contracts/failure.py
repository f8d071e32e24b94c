"""``fail()``: end a bundle run with one ``aamct: error: ...`` line instead of a traceback.

``python -m monai.bundle run`` prints a full traceback for any exception, which buries a user's mistake (a mistyped
datalist path, a label outside the class list) under forty lines of MONAI and ignite internals. The config helpers
of every stage therefore end such runs with ``SystemExit("aamct: error: <one line>")``: Python prints exactly that
line on stderr and exits with status 1, and MONAI's config machinery lets ``SystemExit`` through (it only wraps
``Exception``). The ``aamct`` CLI does the same for :class:`~pipeline.errors.UserError` (exit status 2).

A user mistake found while MONAI builds a config component (a missing weights file, a manifest that is not there)
cannot be caught by the stage's own code: MONAI raises it wrapped in its own ``RuntimeError`` while resolving
references. :func:`one_line_user_errors`, called first in every config's ``initialize``, reports those in one line
too.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from pipeline.errors import UserError

__all__ = ["ERROR_PREFIX", "TRACEBACK_ENV", "fail", "one_line_user_errors", "user_error_line"]

#: how every one-line user error starts, in the CLI and in bundle runs alike
ERROR_PREFIX = "aamct: error: "


def fail(message: str) -> NoReturn:
    """End the run with one line on stderr and exit status 1 (no traceback).

    Args:
        message: what went wrong and, where possible, which file; newlines are folded into spaces.

    Raises:
        SystemExit: always.
    """
    line = " ".join(str(message).split())
    raise SystemExit(f"{ERROR_PREFIX}{line}")


#: set to 1 to see the full traceback of a user mistake in a bundle run (the ``aamct`` CLI's ``-v``)
TRACEBACK_ENV = "AAMCT_TRACEBACK"


def user_error_line(error: BaseException) -> str | None:
    """The one line a user mistake ends with, or ``None`` when ``error`` is not one (a bug).

    A user mistake is a :class:`~pipeline.errors.UserError` anywhere in the exception chain (MONAI's config machinery
    wraps them in ``RuntimeError("Failed to instantiate ...")``), or an ``OSError`` naming a file (a path that cannot
    be read or written).

    Args:
        error: the uncaught exception.

    Returns:
        ``"aamct: error: <message>"``, or ``None``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            return f"{ERROR_PREFIX}{current}"
        if isinstance(current, OSError) and current.filename:
            return f"{ERROR_PREFIX}{current.filename}: {current.strerror or current}"
        current = current.__cause__ or current.__context__
    return None


def one_line_user_errors() -> None:
    """Make a bundle run end a user mistake with one line on stderr instead of a traceback.

    Installs a :data:`sys.excepthook` (the configs call this first in ``initialize``): an uncaught exception that
    :func:`user_error_line` recognises prints that line and the process exits with status 1, as after :func:`fail`;
    anything else (a bug) keeps Python's full traceback. With ``AAMCT_TRACEBACK=1`` the traceback is printed too.
    """
    previous = sys.excepthook

    def hook(kind, error, traceback) -> None:
        line = user_error_line(error) if isinstance(error, Exception) else None
        if line is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            previous(kind, error, traceback)
        if line is not None:
            print(" ".join(line.split()), file=sys.stderr)

    sys.excepthook = hook
