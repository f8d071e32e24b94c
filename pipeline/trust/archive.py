"""Reading a received bundle zip safely: layout and size caps from the central directory, capped streaming inflation.

MONAI's archive layout puts every member under one ``NAME/`` folder (``NAME/configs/metadata.json``, ...). Before a
single byte is inflated, :func:`open_bundle_archive` refuses, from the zip's central directory:

* absolute names, ``..`` components, backslashes, drive letters, links and other non-regular members, duplicate
  names (a later copy of a member would win on extraction), members outside the single top-level folder;
* more than :data:`~pipeline.contracts.defaults.BUNDLE_MAX_MEMBERS` members, a member above its size cap
  (``models/*``: ``BUNDLE_MAX_MODEL_BYTES``, anything else ``BUNDLE_MAX_TEXT_BYTES``), more than
  ``BUNDLE_MAX_TOTAL_BYTES`` in all, a compression ratio above ``BUNDLE_MAX_COMPRESSION_RATIO`` (zip bombs), stored
  sizes that add up to more than the zip file (overlapping members), encrypted members and unknown compression.

The declared sizes are not trusted alone: :func:`stream_member` inflates in 1 MiB chunks and stops as soon as a
member gives more bytes than it declared or than its cap (the standard library also stops at the declared size and
checks the CRC). :func:`extract_bundle` writes into a fresh folder and removes it on any failure. Hand-written
because neither MONAI (``monai.bundle`` extracts with ``ZipFile.extractall``) nor the standard library caps sizes.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.contracts import defaults
from pipeline.errors import UserError
from pipeline.trust.checksums import sha256_of_stream
from pipeline.trust.layout import CHECKSUM_FILENAME
from pipeline.trust.text import printable

__all__ = [
    "BUNDLE_NAME_PATTERN",
    "COMMENT_PREFIX",
    "ArchiveLimits",
    "BundleArchive",
    "extract_bundle",
    "open_bundle_archive",
    "read_member",
    "stream_member",
]

#: bundle names: what MONAI's model zoo uses (letters, digits, ``_ - .``), so the name is also a safe folder name
BUNDLE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: the zip comment: the digest of ``NAME/checksums.sha256`` (the one member the checksum file cannot list)
COMMENT_PREFIX = f"aamct-bundle {CHECKSUM_FILENAME} sha256="
_CHUNK = 1 << 20
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


@dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    """Caps on a received zip (defaults: :mod:`pipeline.contracts.defaults`; tests lower them).

    Attributes:
        max_members: most members.
        max_model_bytes: largest inflated member under ``models/``.
        max_text_bytes: largest inflated member elsewhere.
        max_total_bytes: largest inflated total.
        max_ratio: largest inflated / stored size of a member above ``ratio_floor_bytes``.
        ratio_floor_bytes: members below this inflated size are not ratio-checked.
    """

    max_members: int = defaults.BUNDLE_MAX_MEMBERS
    max_model_bytes: int = defaults.BUNDLE_MAX_MODEL_BYTES
    max_text_bytes: int = defaults.BUNDLE_MAX_TEXT_BYTES
    max_total_bytes: int = defaults.BUNDLE_MAX_TOTAL_BYTES
    max_ratio: float = defaults.BUNDLE_MAX_COMPRESSION_RATIO
    ratio_floor_bytes: int = defaults.BUNDLE_RATIO_FLOOR_BYTES

    def member_cap(self, member: str) -> int:
        """The inflated-size cap of a member (relative to ``NAME/``)."""
        return self.max_model_bytes if member.startswith("models/") else self.max_text_bytes


@dataclass(frozen=True)
class BundleArchive:
    """A bundle zip whose layout and sizes have been checked from its central directory.

    Attributes:
        path: the zip file.
        name: the top-level folder (the bundle name).
        members: file members relative to ``NAME/`` (POSIX paths), in archive order.
        checksum_file_sha256: the digest of ``checksums.sha256`` recorded in the zip comment, or ``None``.
        sizes: declared inflated size of each member.
        limits: the caps it was checked against (also applied while inflating).
    """

    path: Path
    name: str
    members: tuple[str, ...]
    checksum_file_sha256: str | None
    sizes: dict[str, int] = field(default_factory=dict)
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)

    @property
    def total_bytes(self) -> int:
        """Declared inflated size of all members."""
        return sum(self.sizes.values())

    def member_digests(self) -> dict[str, str]:
        """SHA-256 of every member's content, streamed from the zip (nothing written), caps applied while inflating.

        Returns:
            ``{relative path: hex digest}``.

        Raises:
            UserError: naming the member whose data is corrupt or larger than declared / its cap.
        """
        digests: dict[str, str] = {}
        with zipfile.ZipFile(self.path) as archive:
            for member in self.members:
                digests[member] = sha256_of_stream(_Chunks(stream_member(self, archive, member)))
        return digests


class _Chunks:
    """A ``read()``-able view of a chunk iterator (for :func:`sha256_of_stream`)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, _size: int = -1) -> bytes:
        return next(self._chunks, b"")


def _unsafe_name(raw: str) -> bool:
    pure = PurePosixPath(raw)
    return (
        raw.startswith(("/", "\\"))
        or "\\" in raw
        or ".." in pure.parts
        or bool(re.match(r"^[A-Za-z]:", raw))
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw)
    )


def open_bundle_archive(path: str | Path, *, limits: ArchiveLimits | None = None) -> BundleArchive:
    """Open a bundle zip and check its layout and sizes from the central directory (nothing is inflated).

    Args:
        path: the zip file.
        limits: caps (default :class:`ArchiveLimits`).

    Returns:
        The :class:`BundleArchive`.

    Raises:
        UserError: one line naming the zip, the member and the problem (missing file, not a zip, unsafe or
            duplicate name, link, too many members, a member or the total above its cap, a zip-bomb ratio,
            overlapping members, encryption, an unknown compression, not one bundle folder).
    """
    path = Path(path)
    limits = limits or ArchiveLimits()
    if not path.is_file():
        raise UserError(f"{path}: bundle zip not found")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            comment = archive.comment.decode("ascii", errors="replace")
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable zip file ({printable(err, limit=200)})") from None
    if not infos:
        raise UserError(f"{path}: the zip is empty")
    if len(infos) > limits.max_members:
        raise UserError(f"{path}: {len(infos)} members, more than the {limits.max_members} a bundle may hold")
    seen: set[str] = set()
    tops: set[str] = set()
    members: list[str] = []
    sizes: dict[str, int] = {}
    stored = 0
    for info in infos:
        raw = info.filename
        shown = printable(raw, limit=200)
        if raw in seen:
            raise UserError(f"{path}: member {shown} appears twice (a later copy would replace the first)")
        seen.add(raw)
        if _unsafe_name(raw):
            raise UserError(f"{path}: member {shown} has an unsafe path")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UserError(f"{path}: member {shown} is a symbolic link")
        pure = PurePosixPath(raw)
        tops.add(pure.parts[0])
        if info.is_dir():
            continue
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise UserError(f"{path}: member {shown} is not a regular file (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            raise UserError(f"{path}: member {shown} is encrypted")
        if info.compress_type not in _COMPRESSIONS:
            raise UserError(f"{path}: member {shown} uses compression method {info.compress_type} (stored/deflate)")
        if len(pure.parts) < 2:
            raise UserError(f"{path}: member {shown} is not inside the bundle folder (expected NAME/{shown})")
        member = PurePosixPath(*pure.parts[1:]).as_posix()
        cap = limits.member_cap(member)
        if info.file_size > cap:
            raise UserError(
                f"{path}: member {shown} inflates to {info.file_size:,} bytes, more than the {cap:,} allowed"
            )
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UserError(
                f"{path}: member {shown} inflates {info.file_size / max(info.compress_size, 1):,.0f}-fold "
                f"({info.compress_size:,} -> {info.file_size:,} bytes; at most {limits.max_ratio:g}-fold): a zip bomb"
            )
        stored += info.compress_size
        members.append(member)
        sizes[member] = info.file_size
    total = sum(sizes.values())
    if total > limits.max_total_bytes:
        raise UserError(f"{path}: members inflate to {total:,} bytes in all, more than {limits.max_total_bytes:,}")
    if stored > path.stat().st_size:
        raise UserError(f"{path}: members' stored sizes exceed the zip's size: overlapping members (a zip bomb)")
    if len(tops) != 1:
        raise UserError(
            f"{path}: expected one top-level bundle folder, found {printable(', '.join(sorted(tops)), limit=200)}"
        )
    name = tops.pop()
    if not BUNDLE_NAME_PATTERN.match(name):
        raise UserError(f"{path}: top-level folder {printable(name)!r} is not a valid bundle name")
    recorded = comment[len(COMMENT_PREFIX) :].strip() if comment.startswith(COMMENT_PREFIX) else None
    return BundleArchive(
        path=path,
        name=name,
        members=tuple(members),
        checksum_file_sha256=recorded,
        sizes=sizes,
        limits=limits,
    )


def stream_member(bundle: BundleArchive, archive: zipfile.ZipFile, member: str) -> Iterator[bytes]:
    """The inflated content of one member in 1 MiB chunks, stopped past its declared size or its cap.

    Args:
        bundle: from :func:`open_bundle_archive`.
        archive: the open zip.
        member: path relative to ``NAME/``.

    Yields:
        Chunks of the member's content.

    Raises:
        UserError: naming the member when its data is corrupt or inflates past its declared size or its cap.
    """
    cap = min(bundle.sizes.get(member, 0), bundle.limits.member_cap(member))
    name = f"{bundle.name}/{member}"
    seen = 0
    try:
        with archive.open(name) as source:
            while chunk := source.read(_CHUNK):
                seen += len(chunk)
                if seen > cap:
                    raise UserError(
                        f"{bundle.path}: member {printable(name)} inflates past its declared {cap:,} bytes: refused"
                    )
                yield chunk
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise UserError(f"{bundle.path}: member {printable(name)} is corrupt ({printable(err, limit=200)})") from None


def read_member(bundle: BundleArchive, member: str) -> bytes:
    """One (small) member's content, inflated with the caps of :func:`stream_member`.

    Raises:
        UserError: as :func:`stream_member`, or when ``member`` is not in the bundle.
    """
    if member not in bundle.members:
        raise UserError(f"{bundle.path}: no {bundle.name}/{member} in the bundle")
    with zipfile.ZipFile(bundle.path) as archive:
        return b"".join(stream_member(bundle, archive, member))


def extract_bundle(bundle: BundleArchive, destination: str | Path) -> Path:
    """Extract the (checked) bundle into ``destination/NAME`` and return that folder; nothing is left on failure.

    Members are written with their checked names only (no ``extractall``), streamed with the caps of
    :func:`stream_member`, so the disk used is at most the declared total.

    Args:
        bundle: from :func:`open_bundle_archive`.
        destination: a folder (created if needed); ``destination/NAME`` must not exist yet.

    Returns:
        ``destination / bundle.name``.

    Raises:
        UserError: naming a member whose data is corrupt or larger than declared; ``destination/NAME`` is removed.
    """
    root = Path(destination) / bundle.name
    root.mkdir(parents=True, exist_ok=False)
    try:
        with zipfile.ZipFile(bundle.path) as archive:
            for member in bundle.members:
                target = root / member
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as sink:
                    for chunk in stream_member(bundle, archive, member):
                        sink.write(chunk)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root
