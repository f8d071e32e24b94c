"""Text from a received bundle made safe to print: control and format characters escaped.

A received bundle chooses its member names, config keys and values; printed raw, an ANSI escape (``\\x1b[2K``), a
carriage return or a bidirectional override could erase or rewrite a terminal line, e.g. forge "verified: OK".
Every listing the gate and ``aamct bundle verify`` / ``inspect`` print passes its bundle-chosen text through
:func:`printable`. Written here because the standard library has no such escaper (``repr`` also quotes and escapes
non-ASCII letters that are fine to show).
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

#: Unicode categories escaped: controls (C0, C1, DEL), format characters (bidi overrides, zero-width), line and
#: paragraph separators, surrogates, private use and unassigned code points
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object, *, limit: int | None = None) -> str:
    """``text`` with every control / format character written as a visible escape (``\\x1b``, ``\\r``, ``\\u202e``).

    Args:
        text: anything; converted with ``str``.
        limit: cut the result to this many characters (with ``...``), after escaping.

    Returns:
        One printable line (newlines and tabs are escaped too).
    """
    out = "".join(_escape(c) if unicodedata.category(c) in _ESCAPED_CATEGORIES else c for c in str(text))
    if limit is not None and len(out) > limit:
        return out[: max(limit - 3, 0)] + "..."
    return out
