"""The bundle zip: MONAI's archive layout (every member under one ``NAME/`` folder), written reproducibly, read safely.

MONAI's ``monai.bundle.download`` / ``load`` expect ``NAME.zip`` to unpack into ``NAME/configs/metadata.json``,
``NAME/models/model.pt`` and so on (see the MONAI Bundle Specification, "Archive Format"). MONAI extracts archives
but does not write them, so writing is done here with the standard library:

* members are sorted and stamped 1980-01-01 with mode 0644, so the same bundle content gives the same zip bytes;
* the zip comment records the SHA-256 of ``NAME/checksums.sha256`` (the one member the checksum file cannot list).

Reading refuses absolute paths, ``..`` components, links, duplicate names and members outside the single top-level
folder, so extracting a received bundle cannot write outside the target folder.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import UserError
from pipeline.io import atomic_path
from pipeline.sharing.checksums import CHECKSUM_FILENAME, sha256_of_file, sha256_of_stream

__all__ = [
    "BundleArchive",
    "BUNDLE_NAME_PATTERN",
    "extract_bundle",
    "open_bundle_archive",
    "write_bundle_zip",
]

#: bundle names: what MONAI's model zoo uses (letters, digits, ``_ - .``), so the name is also a safe folder name
BUNDLE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMENT_PREFIX = f"aamct-bundle {CHECKSUM_FILENAME} sha256="
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def write_bundle_zip(bundle_root: str | Path, out_zip: str | Path, *, name: str) -> Path:
    """Zip a staged bundle folder as ``NAME/...`` members, atomically.

    Args:
        bundle_root: the staged bundle folder (holding ``configs/``, ``models/``, ``docs/``, ``LICENSE`` and
            ``checksums.sha256``).
        out_zip: the zip to write.
        name: the top-level folder name inside the zip.

    Returns:
        ``out_zip``.

    Raises:
        UserError: if ``name`` is not a valid bundle name or the checksum file is missing.
    """
    root = Path(bundle_root)
    if not BUNDLE_NAME_PATTERN.match(name):
        raise UserError(f"{out_zip}: bundle name {name!r} must be letters, digits, '_', '-' or '.'")
    checksum_file = root / CHECKSUM_FILENAME
    if not checksum_file.is_file():
        raise UserError(f"{root}: {CHECKSUM_FILENAME} missing; write it before zipping")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with atomic_path(out_zip, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for path in files:
            info = zipfile.ZipInfo(f"{name}/{path.relative_to(root).as_posix()}", date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            with open(path, "rb") as source, archive.open(info, "w") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
        archive.comment = f"{_COMMENT_PREFIX}{sha256_of_file(checksum_file)}".encode("ascii")
    return Path(out_zip)


@dataclass(frozen=True)
class BundleArchive:
    """A bundle zip whose layout has been checked.

    Attributes:
        path: the zip file.
        name: the top-level folder (the bundle name).
        members: file members relative to ``NAME/`` (POSIX paths), in archive order.
        checksum_file_sha256: the digest of ``checksums.sha256`` recorded in the zip comment, or ``None``.
    """

    path: Path
    name: str
    members: tuple[str, ...]
    checksum_file_sha256: str | None

    def member_digests(self) -> dict[str, str]:
        """SHA-256 of every member's content, streamed from the zip.

        Returns:
            ``{relative path: hex digest}``.

        Raises:
            UserError: naming the member whose stored data is corrupt (bad CRC, broken compressed stream).
        """
        digests: dict[str, str] = {}
        with zipfile.ZipFile(self.path) as archive:
            for member in self.members:
                try:
                    with archive.open(f"{self.name}/{member}") as stream:
                        digests[member] = sha256_of_stream(stream)
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise UserError(
                        f"{self.path}: member {self.name}/{member} is corrupt ({' '.join(str(err).split())})"
                    ) from err
        return digests


def open_bundle_archive(path: str | Path) -> BundleArchive:
    """Open a bundle zip and check its layout (one top-level folder, safe member names, no duplicates).

    Args:
        path: the zip file.

    Returns:
        The :class:`BundleArchive`.

    Raises:
        UserError: if the file is missing, not a zip, or its layout is unsafe or not a bundle's.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: bundle zip not found")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            comment = archive.comment.decode("ascii", errors="replace")
    except zipfile.BadZipFile as err:
        raise UserError(f"{path}: not a readable zip file ({err})") from err
    if not infos:
        raise UserError(f"{path}: the zip is empty")
    seen: set[str] = set()
    tops: set[str] = set()
    members: list[str] = []
    for info in infos:
        raw = info.filename
        if raw in seen:
            raise UserError(f"{path}: member {raw} appears twice")
        seen.add(raw)
        pure = PurePosixPath(raw)
        if raw.startswith(("/", "\\")) or "\\" in raw or ".." in pure.parts or re.match(r"^[A-Za-z]:", raw):
            raise UserError(f"{path}: member {raw} has an unsafe path")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UserError(f"{path}: member {raw} is a symbolic link")
        tops.add(pure.parts[0])
        if info.is_dir():
            continue
        if len(pure.parts) < 2:
            raise UserError(f"{path}: member {raw} is not inside the bundle folder (expected NAME/{raw})")
        members.append(PurePosixPath(*pure.parts[1:]).as_posix())
    if len(tops) != 1:
        raise UserError(f"{path}: expected one top-level bundle folder, found {', '.join(sorted(tops))}")
    name = tops.pop()
    if not BUNDLE_NAME_PATTERN.match(name):
        raise UserError(f"{path}: top-level folder {name!r} is not a valid bundle name")
    recorded = comment[len(_COMMENT_PREFIX) :].strip() if comment.startswith(_COMMENT_PREFIX) else None
    return BundleArchive(path=path, name=name, members=tuple(members), checksum_file_sha256=recorded)


def extract_bundle(bundle: BundleArchive, destination: str | Path) -> Path:
    """Extract the (checked) bundle into ``destination/NAME`` and return that folder.

    Args:
        bundle: from :func:`open_bundle_archive` (its layout checks make plain extraction safe).
        destination: an existing folder.

    Returns:
        ``destination / bundle.name``.

    Raises:
        UserError: naming a member whose stored data is corrupt.
    """
    destination = Path(destination)
    with zipfile.ZipFile(bundle.path) as archive:
        for member in bundle.members:
            target = destination / bundle.name / member
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(f"{bundle.name}/{member}") as source, open(target, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise UserError(
                    f"{bundle.path}: member {bundle.name}/{member} is corrupt ({' '.join(str(err).split())})"
                ) from err
    return destination / bundle.name
