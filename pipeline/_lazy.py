"""Lazy package exports, so that ``aamct --help`` does not import torch and MONAI.

A stage package maps each public name to the sub-module that defines it and installs the module-level
``__getattr__``/``__dir__`` this returns (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, home: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` that import ``package.<home[name]>`` on first access of ``name``.

    Args:
        package: the package's ``__name__``.
        home: public name -> sub-module name (relative to ``package``).

    Returns:
        ``(__getattr__, __dir__)`` for the package's ``__init__``.
    """

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(home)

    return __getattr__, __dir__
