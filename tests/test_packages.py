"""Every public name a stage package lists in ``__all__`` resolves (lazy exports point at a module that defines it)."""

from __future__ import annotations

import importlib

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = sorted(
    f"pipeline.{path.parent.name}"
    for path in (REPO_ROOT / "pipeline").glob("*/__init__.py")
    if path.parent.name != "schema"
)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_listed_name_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert not missing, f"{package} lists names it cannot give: {missing}"
