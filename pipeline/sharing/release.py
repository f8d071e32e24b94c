"""Which version an export releases: a new one for new weights only.

A released version names the trained weights it ships. The exported ``configs/metadata.json`` records them as
:data:`WEIGHTS_DIGEST_KEY` (:func:`state_dict_sha256`, a digest of the tensors themselves: the sha256 of a checkpoint file
depends on how it was saved -- the training stage nests the state dict (``{"network": ...}``), the export writes it
bare, and ``torch.save`` records the file's name inside the archive) and the source bundle's version as
:data:`SOURCE_VERSION_KEY`. On the next export:

* the source metadata records the same weights (the source is an unpacked earlier export): its version is kept;
* an earlier ``NAME_vX.Y.Z.zip`` in the output folder holds the same weights, exported from the same source
  version: that version is kept (the zip of that name is written again);
* otherwise the version is bumped past both the source's and every earlier export's in the folder, so new weights
  never reuse a version that named other weights.

Other changes with the same weights (a new evaluation report and threshold, edited configs) keep the version; a
change of the source bundle's version (new configs or code) releases a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.sharing.metadata import VersionPart, bump_version, version_key

__all__ = [
    "SOURCE_VERSION_KEY",
    "WEIGHTS_DIGEST_KEY",
    "EarlierRelease",
    "ReleaseVersion",
    "earlier_releases",
    "release_version",
    "state_dict_sha256",
]

logger = logging.getLogger(__name__)

#: key of the exported metadata holding :func:`state_dict_sha256` of the shipped weights
WEIGHTS_DIGEST_KEY = "weights_sha256"
#: key of the exported metadata holding the version of the bundle it was exported from
SOURCE_VERSION_KEY = "source_bundle_version"


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state dict's content: every entry's name, dtype, shape and bytes, in name order.

    Args:
        state: parameter / buffer name -> tensor.

    Returns:
        The digest; equal for equal weights however (and however often) they were saved.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class EarlierRelease:
    """An earlier export found in the output folder.

    Attributes:
        zip_path: the zip.
        version: its ``metadata.json`` version.
        weights_sha256: its recorded weights digest (``None`` for exports that predate the record).
        source_version: the source bundle version it was exported from (``None`` when not recorded).
        changelog_entry: its changelog text for ``version``.
    """

    zip_path: Path
    version: str
    weights_sha256: str | None
    source_version: str | None
    changelog_entry: str | None


@dataclass(frozen=True)
class ReleaseVersion:
    """The version an export releases.

    Attributes:
        version: the version.
        kept_from: what already released these weights under ``version`` (a zip name or ``"the source metadata"``);
            ``None`` for a new version.
        changelog_entry: that release's changelog text, to repeat (``None`` for a new version).
    """

    version: str
    kept_from: str | None = None
    changelog_entry: str | None = None


def _zip_version(path: Path, name: str) -> str | None:
    match = re.fullmatch(rf"{re.escape(name)}_v(\d+\.\d+\.\d+)\.zip", path.name)
    return match.group(1) if match else None


def earlier_releases(folder: str | Path, name: str) -> list[EarlierRelease]:
    """The ``NAME_vX.Y.Z.zip`` files in ``folder`` with what their metadata records, oldest version first.

    A zip whose metadata cannot be read still counts with the version of its file name (a new release must not
    take that name).

    Args:
        folder: the export's output folder.
        name: the bundle name.

    Returns:
        One entry per zip.
    """
    found: list[EarlierRelease] = []
    folder = Path(folder)
    if not folder.is_dir():
        return found
    for path in folder.glob(f"{name}_v*.zip"):
        named = _zip_version(path, name)
        if named is None:
            continue
        metadata: dict[str, Any] = {}
        try:
            with zipfile.ZipFile(path) as archive:
                metadata = json.loads(archive.read(f"{name}/configs/metadata.json"))
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as err:
            logger.warning("%s: metadata not readable (%s); its version %s counts as taken", path, err, named)
        if not isinstance(metadata, dict):
            metadata = {}
        version = str(metadata.get("version") or named)
        try:
            version_key(version)
        except UserError:
            version = named
        changelog = metadata.get("changelog")
        found.append(
            EarlierRelease(
                zip_path=path,
                version=version,
                weights_sha256=metadata.get(WEIGHTS_DIGEST_KEY),
                source_version=metadata.get(SOURCE_VERSION_KEY),
                changelog_entry=changelog.get(version) if isinstance(changelog, Mapping) else None,
            )
        )
    return sorted(found, key=lambda release: version_key(release.version))


def release_version(
    source_metadata: Mapping[str, Any],
    *,
    weights_sha256: str,
    earlier: Sequence[EarlierRelease] = (),
    part: VersionPart = "patch",
) -> ReleaseVersion:
    """The version to release weights with digest ``weights_sha256`` under (rules in the module docstring).

    Args:
        source_metadata: the source bundle's metadata (``version`` required).
        weights_sha256: :func:`state_dict_sha256` of the weights to ship.
        earlier: the earlier exports in the output folder (:func:`earlier_releases`).
        part: the version part a new release bumps.

    Returns:
        The :class:`ReleaseVersion`.

    Raises:
        UserError: if a version is not semantic.
    """
    source_version = str(source_metadata["version"])
    if source_metadata.get(WEIGHTS_DIGEST_KEY) == weights_sha256:
        changelog = source_metadata.get("changelog")
        entry = changelog.get(source_version) if isinstance(changelog, Mapping) else None
        return ReleaseVersion(source_version, kept_from="the source metadata", changelog_entry=entry)
    same = [r for r in earlier if r.weights_sha256 == weights_sha256 and r.source_version == source_version]
    if same:
        newest = max(same, key=lambda release: version_key(release.version))
        return ReleaseVersion(newest.version, kept_from=newest.zip_path.name, changelog_entry=newest.changelog_entry)
    taken = [source_version, *(release.version for release in earlier)]
    return ReleaseVersion(bump_version(max(taken, key=version_key), part))
