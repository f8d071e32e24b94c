"""Metadata schema kept in the repository (offline), MONAI's verify_metadata with it, and release version bumps."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.sharing.metadata import (
    METADATA_SCHEMA_PATH,
    bump_version,
    load_metadata_schema,
    metadata_problems,
    release_metadata,
)

REPO_METADATA = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "metadata.json"


@pytest.fixture
def metadata() -> dict:
    if not REPO_METADATA.is_file():
        pytest.skip("bundle/configs/metadata.json not present yet")
    return json.loads(REPO_METADATA.read_text())


def _monai_verify_metadata(meta_file: Path, monkeypatch) -> list[str]:
    """The stock MONAI command a recipient would run (``python -m monai.bundle verify_metadata --meta_file ...
    --filepath SCHEMA``), as the function that command calls, in this process; returns what it logged. Offline: the
    schema file exists, so MONAI must not download it; a download attempt fails the test."""
    import monai.apps.utils
    from monai.bundle import scripts

    def no_download(*args, **kwargs):
        raise AssertionError(f"verify_metadata tried to download: {args} {kwargs}")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", no_download)
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    scripts.logger.addHandler(handler)  # MONAI's bundle logger does not propagate to the root logger
    try:
        scripts.verify_metadata(meta_file=str(meta_file), filepath=str(METADATA_SCHEMA_PATH))
    finally:
        scripts.logger.removeHandler(handler)
    return messages


def test_schema_file_is_a_draft7_schema_with_the_spec_required_keys():
    from jsonschema import Draft7Validator

    schema = load_metadata_schema()
    Draft7Validator.check_schema(schema)
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors"):
        assert key in schema["required"]
    assert "network_data_format" in schema["required"]


def test_project_metadata_is_valid(metadata):
    assert metadata_problems(metadata) == []


@pytest.mark.parametrize("key", ["task", "version", "network_data_format", "authors"])
def test_missing_required_key_is_named(metadata, key):
    del metadata[key]
    assert metadata_problems(metadata)[0] == f"missing required key {key!r}"


def test_tensor_format_errors_name_their_path(metadata):
    metadata["network_data_format"]["inputs"]["image"]["num_channels"] = "one"
    problem = metadata_problems(metadata)[0]
    assert problem.startswith("network_data_format.inputs.image.num_channels:")


def test_package_versions_under_either_name(metadata):
    packages = metadata.pop("required_packages_version", None) or metadata.pop("optional_packages_version", {})
    assert "packages_version" in metadata_problems(metadata)[0]
    metadata["optional_packages_version"] = packages
    assert metadata_problems(metadata) == []


def test_monai_verify_metadata_passes_offline_with_the_repository_schema(metadata, tmp_path, monkeypatch):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(metadata))
    messages = _monai_verify_metadata(good, monkeypatch)
    assert any("verified with no error" in message for message in messages), messages


def test_monai_verify_metadata_rejects_a_missing_key_with_the_repository_schema(metadata, tmp_path):
    from monai.bundle import verify_metadata

    del metadata["task"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="required"):
        verify_metadata(meta_file=str(bad), filepath=str(METADATA_SCHEMA_PATH))


@pytest.mark.parametrize(
    ("version", "part", "expected"),
    [
        ("0.1.0", "patch", "0.1.1"),
        ("1.9.9", "minor", "1.10.0"),
        ("2.3.4", "major", "3.0.0"),
        ("0.1.0-rc1", "patch", "0.1.1"),
    ],
)
def test_bump_version(version, part, expected):
    assert bump_version(version, part) == expected


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "", "one"])
def test_bump_rejects_non_semantic_versions(version):
    with pytest.raises(UserError, match="semantic version"):
        bump_version(version)


def test_release_bumps_and_logs_without_touching_the_source(metadata):
    before = json.dumps(metadata, sort_keys=True)
    released = release_metadata(metadata, change="retrained  on\nsite-c", today=dt.date(2025, 1, 2))
    assert json.dumps(metadata, sort_keys=True) == before
    assert released["version"] == bump_version(metadata["version"])
    first_version, first_text = next(iter(released["changelog"].items()))
    assert first_version == released["version"]
    assert first_text == "2025-01-02: retrained on site-c"
    assert set(metadata["changelog"]) < set(released["changelog"])
    assert released["pytorch_version"] == importlib.metadata.version("torch")
    assert metadata_problems(released) == []


@pytest.mark.parametrize("packages_key", ["required_packages_version", "optional_packages_version"])
def test_release_records_this_package_version(metadata, packages_key):
    import pipeline

    metadata.pop("required_packages_version", None)
    metadata[packages_key] = {"aamct": "0.0.1", "nibabel": "5.0"}
    released = release_metadata(metadata, change="x")
    assert released[packages_key] == {"aamct": pipeline.__version__, "nibabel": "5.0"}
    assert ("optional_packages_version" in released) == (packages_key == "optional_packages_version")


def test_release_with_a_given_version_replaces_its_changelog_entry(metadata):
    metadata["changelog"] = {"0.3.1": "old text", **metadata["changelog"]}
    released = release_metadata(metadata, change="again", version="0.3.1", today=dt.date(2025, 1, 2))
    assert released["version"] == "0.3.1"
    assert list(released["changelog"]).count("0.3.1") == 1 and released["changelog"]["0.3.1"] == "2025-01-02: again"
    with pytest.raises(UserError, match="semantic version"):
        release_metadata(metadata, change="x", version="v1")
