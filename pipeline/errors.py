"""The one exception type for user mistakes.

A :class:`UserError` carries a single-line message naming the file and the problem. The CLI prints it as
``aamct: error: <message>`` and exits with status 2, without a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A problem with the user's input (a missing file, a bad value), reported in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
