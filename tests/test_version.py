"""One version: ``pipeline.__version__`` is what the distribution, the CLI and the bundle metadata say."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import pipeline
from tests.conftest import REPO_ROOT

METADATA = REPO_ROOT / "bundle" / "configs" / "metadata.json"


def _bundle_metadata() -> dict:
    return json.loads(METADATA.read_text(encoding="utf-8"))


def test_package_bundle_and_installed_versions_are_one():
    metadata = _bundle_metadata()
    installed = importlib.metadata.version("aamct")
    assert metadata["version"] == pipeline.__version__, "bundle/configs/metadata.json 'version' != pipeline.__version__"
    assert metadata["required_packages_version"]["aamct"] == pipeline.__version__, (
        "bundle/configs/metadata.json required_packages_version['aamct'] != pipeline.__version__"
    )
    assert installed == pipeline.__version__, (
        f"installed distribution says {installed}, pipeline.__version__ {pipeline.__version__}: "
        "reinstall (pip install --no-deps -e .)"
    )
    assert pipeline.__version__ in metadata["changelog"], "metadata.json changelog has no entry for the version"


def test_pyproject_reads_the_version_from_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"], "pyproject.toml states a version of its own"
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "pipeline.__version__"


def test_setuptools_reads_the_version_statically():
    # what the build backend does with the attr directive; run in a fresh interpreter that never imports pipeline
    code = (
        "import sys; from setuptools.config.expand import read_attr; "
        "print(read_attr('pipeline.__version__', root_dir=sys.argv[1])); "
        "print('pipeline' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO_ROOT)], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    version, imported = result.stdout.split()
    assert version == pipeline.__version__
    assert imported == "False", "setuptools had to import the package to read its version"


def test_cli_says_the_version(capsys):
    from pipeline.cli import main

    try:
        main(["--version"])
    except SystemExit as stop:
        assert stop.code == 0
    assert capsys.readouterr().out.strip() == f"aamct {pipeline.__version__}"
