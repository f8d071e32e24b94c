"""``--set KEY=JSON`` command-line overrides of bundle config keys, shared by the commands that take them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pipeline.errors import UserError

__all__ = ["parse_set_overrides"]


def parse_set_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["roi_size=[128,128,64]", "network_name=aam_student"]`` into a dict of config overrides.

    Values are parsed as JSON; a value that is not JSON is kept as a bare string (``network_name=aam_student``).

    Raises:
        UserError: an item without ``=`` or with an empty key.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=JSON")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides
