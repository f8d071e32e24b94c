"""What code a bundle's configs would run: every ``$`` expression and every ``_target_``.

MONAI's ``ConfigParser`` evaluates ``"$..."`` strings with ``eval`` and instantiates ``_target_`` by import, so these
are exactly the places where a config executes code. Listing them (file, key path in MONAI's ``#`` id syntax, value)
lets a recipient read what a bundle would do before running it. MONAI has no such listing, hence this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from monai.bundle.utils import ID_SEP_KEY

from pipeline.errors import UserError

__all__ = [
    "CONFIG_SUFFIXES",
    "CodeReference",
    "code_references",
    "load_config_file",
    "references_to_package",
]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
_EXPRESSION_PREFIX = "$"
_TARGET_KEY = "_target_"


@dataclass(frozen=True)
class CodeReference:
    """One place in a config that runs code.

    Attributes:
        file: config file name (e.g. ``inference.json``).
        key_path: MONAI id of the value, e.g. ``network_def#_target_`` or ``imports#0``.
        kind: ``"expression"`` for a ``$`` string, ``"target"`` for a ``_target_`` value.
        value: the string as written.
    """

    file: str
    key_path: str
    kind: Literal["expression", "target"]
    value: str

    def line(self) -> str:
        """``file  key_path  kind  value`` for a terminal listing (value on one line)."""
        value = " ".join(self.value.split())
        return f"{self.file}  {self.key_path}  {self.kind}  {value}"


def load_config_file(path: str | Path) -> Any:
    """Parse a JSON or YAML bundle config (MONAI's ``ConfigParser.load_config_file``).

    Raises:
        UserError: if the file cannot be parsed.
    """
    from monai.bundle import ConfigParser

    path = Path(path)
    try:
        return ConfigParser.load_config_file(str(path))
    except (json.JSONDecodeError, ValueError) as err:
        raise UserError(f"{path}: not a valid bundle config ({' '.join(str(err).split())[:200]})") from err
    except Exception as err:  # yaml errors have their own hierarchy; keep them one line too
        raise UserError(f"{path}: cannot parse ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from err


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, bool]]:
    """Yield ``(path, value, is_target)`` for every string leaf."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            child = (*path, str(key))
            if key == _TARGET_KEY and isinstance(value, str):
                yield child, value, True
            else:
                yield from _walk(value, child)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, str(index)))
    elif isinstance(node, str):
        yield path, node, False


def code_references(config: Any, *, file: str) -> list[CodeReference]:
    """Every ``$`` expression and ``_target_`` in a parsed config, in document order.

    Args:
        config: the parsed config (dict / list).
        file: file name to report.

    Returns:
        The references.
    """
    found: list[CodeReference] = []
    for path, value, is_target in _walk(config, ()):
        key_path = ID_SEP_KEY.join(path)
        if is_target:
            found.append(CodeReference(file, key_path, "target", value))
        elif value.startswith(_EXPRESSION_PREFIX):
            found.append(CodeReference(file, key_path, "expression", value))
    return found


def references_to_package(references: Sequence[CodeReference], package: str) -> list[CodeReference]:
    """The references that import or name ``package`` (e.g. ``pipeline``): ``_target_: pipeline.x.Y``,
    ``$import pipeline``, ``$from pipeline.x import y``, ``$pipeline.x.f(...)``.

    Args:
        references: from :func:`code_references`.
        package: top-level package name.

    Returns:
        The matching references.
    """
    name = re.escape(package)
    # a dotted name starting with the package, not preceded by a dot or word char (so "monai.pipeline" or
    # "my_pipeline" do not match)
    pattern = re.compile(rf"(?<![\w.@#]){name}(?=\.|\s|$|\))|\bimport\s+{name}\b|\bfrom\s+{name}\b")
    return [ref for ref in references if pattern.search(ref.value)]
