"""Bundle ``metadata.json``: validation against the MONAI metadata schema kept in this repository, and version bumps.

MONAI's ``verify_metadata`` downloads the schema named by the ``schema`` key and then runs ``jsonschema.validate``;
on an offline machine the download fails, so the schema lives in ``pipeline/trust/schema/`` with its validator
(:mod:`pipeline.trust.metadata_schema`: the received-bundle gate checks metadata too), re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pipeline import __version__
from pipeline.errors import UserError
from pipeline.trust.metadata_schema import (
    METADATA_SCHEMA_PATH,
    METADATA_SCHEMA_URL,
    load_metadata_schema,
    metadata_problems,
)

__all__ = [
    "METADATA_SCHEMA_PATH",
    "METADATA_SCHEMA_URL",
    "VersionPart",
    "bump_version",
    "load_metadata_schema",
    "metadata_problems",
    "release_metadata",
    "version_key",
]

VersionPart = Literal["major", "minor", "patch"]
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.-]+)?$")


def version_key(version: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a semantic version, for ordering (``0.3.10`` after ``0.3.9``; suffixes ignored).

    Raises:
        UserError: if ``version`` is not a semantic version.
    """
    match = _SEMVER.match(str(version).strip())
    if match is None:
        raise UserError(f"metadata.json: version {version!r} is not a semantic version MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def bump_version(version: str, part: VersionPart = "patch") -> str:
    """The next semantic version (``0.1.3`` -> ``0.1.4`` for ``patch``; lower parts reset, suffixes dropped).

    Args:
        version: current ``MAJOR.MINOR.PATCH`` version.
        part: which part to increase.

    Returns:
        The bumped version string.

    Raises:
        UserError: if ``version`` is not a semantic version or ``part`` is unknown.
    """
    major, minor, patch = version_key(version)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise UserError(f"unknown version part {part!r} (use major, minor or patch)")


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def release_metadata(
    metadata: Mapping[str, Any],
    *,
    part: VersionPart = "patch",
    change: str,
    version: str | None = None,
    today: _dt.date | None = None,
) -> dict[str, Any]:
    """A copy of the metadata for a release: version bumped, changelog entry on top, software versions of this run.

    The source metadata is not modified. ``monai_version`` / ``pytorch_version`` / ``numpy_version`` are set to the
    versions the export runs with (the bundle spec defines them as the versions the bundle was generated on), the
    package-version table (``required_packages_version``, or the older ``optional_packages_version`` where the source
    uses that name) gets this package's ``aamct`` version (``pipeline.__version__``, the code the configs' ``_target_``
    entries need), and the ``schema`` key is filled in when absent so that ``python -m monai.bundle verify_metadata``
    can run.

    Args:
        metadata: the source bundle's metadata.
        part: version part to bump.
        change: what changed, one line (the date is prefixed).
        version: the release's version (default: the source's with ``part`` bumped), e.g. the version of an earlier
            release of the same weights.
        today: the release date (default: today, UTC).

    Returns:
        The new metadata dict.

    Raises:
        UserError: if the source version is missing or not semantic.
    """
    if "version" not in metadata:
        raise UserError("metadata.json: missing required key 'version' (cannot bump the bundle version)")
    released = json.loads(json.dumps(dict(metadata)))  # deep copy, JSON types only
    new_version = bump_version(released["version"], part) if version is None else str(version)
    version_key(new_version)  # a given version must be semantic too
    date = (today or _dt.datetime.now(_dt.timezone.utc).date()).isoformat()
    changelog = released.get("changelog") or {}
    if not isinstance(changelog, Mapping):
        raise UserError("metadata.json: changelog must be an object mapping versions to descriptions")
    released["version"] = new_version
    earlier = {key: text for key, text in changelog.items() if key != new_version}
    released["changelog"] = {new_version: f"{date}: {' '.join(change.split())}", **earlier}
    released.setdefault("schema", METADATA_SCHEMA_URL)
    for key, distribution in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        installed = _installed_version(distribution)
        if installed is not None:
            released[key] = installed
    packages_key = (
        "optional_packages_version" if "optional_packages_version" in released else "required_packages_version"
    )
    packages = released.get(packages_key)
    released[packages_key] = {**(packages if isinstance(packages, Mapping) else {}), "aamct": __version__}
    return released
