"""Bundle ``metadata.json``: validation against the MONAI metadata schema kept in this repository, and version bumps.

MONAI's ``verify_metadata`` downloads the schema named by the ``schema`` key and then runs ``jsonschema.validate``;
on an offline machine the download fails, so the schema lives in ``pipeline/sharing/schema/`` (see the ``$comment``
in that file for its source) and is passed as ``filepath=`` -- MONAI skips the download when the file exists. Here
the same ``jsonschema`` validation runs in-process to report the most relevant error in one line
(``jsonschema.exceptions.best_match``), which MONAI's own message (the whole error text) does not.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pipeline import __version__
from pipeline.errors import UserError

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

#: the MONAI bundle metadata schema, kept in the repository for offline validation
METADATA_SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "monai_bundle_metadata.schema.json"
#: the URL MONAI bundles put in ``metadata["schema"]``; this repository's schema file stands in for it offline
METADATA_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
)

VersionPart = Literal["major", "minor", "patch"]
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:[-+][0-9A-Za-z.-]+)?$")


@lru_cache(maxsize=1)
def _schema_cached(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_metadata_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The metadata JSON schema (the repository's copy unless ``path`` is given).

    Args:
        path: another schema file.

    Returns:
        The schema as a dict.

    Raises:
        UserError: if the file is missing or is not JSON.
    """
    schema_path = Path(path) if path is not None else METADATA_SCHEMA_PATH
    if not schema_path.is_file():
        raise UserError(f"{schema_path}: metadata schema file not found")
    try:
        return _schema_cached(str(schema_path))
    except json.JSONDecodeError as err:
        raise UserError(f"{schema_path}: metadata schema is not valid JSON ({err.msg}, line {err.lineno})") from err


def metadata_problems(metadata: Mapping[str, Any], *, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every schema violation of a bundle's metadata, most relevant first, as one-line messages.

    Args:
        metadata: the parsed ``metadata.json``.
        schema: the JSON schema (default: :func:`load_metadata_schema`).

    Returns:
        Messages such as ``"missing required key 'task'"`` or ``"network_data_format.inputs.image.num_channels:
        'one' is not of type 'integer'"``; empty when the metadata is valid.
    """
    from jsonschema import Draft7Validator
    from jsonschema.exceptions import best_match

    validator = Draft7Validator(dict(schema if schema is not None else load_metadata_schema()))
    errors = list(validator.iter_errors(dict(metadata)))
    if not errors:
        return []
    first = best_match(errors)
    ordered = [first] + [e for e in errors if e is not first]
    return [_describe(error) for error in ordered]


def _describe(error) -> str:
    where = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        message = f"missing required key {missing[0]!r}" if missing else error.message
    elif error.validator == "anyOf" and all(s.get("required") for s in error.validator_value):
        # e.g. required_packages_version / optional_packages_version: the message would print the whole instance
        keys = " or ".join(repr(s["required"][0]) for s in error.validator_value)
        message = f"missing required key {keys}"
    else:
        message = error.message
    # jsonschema messages quote the offending value, which may be a whole object: keep the line short
    message = " ".join(message.split())
    message = message if len(message) <= 200 else message[:197] + "..."
    return f"{where}: {message}" if where else message


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
