"""SHA-256 checksums of a bundle's members, in ``sha256sum`` format.

The checksum file sits at the bundle root (``NAME/checksums.sha256``) and lists every other member relative to that
root, so a recipient without this package can also run ``cd NAME && sha256sum -c checksums.sha256``. The checksum
file cannot list itself; its own digest is recorded in the zip comment (see :mod:`pipeline.trust.archive`), so a
flipped byte in it is detected too. Written here because neither MONAI nor the standard library ships a
``sha256sum``-format reader/writer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from pipeline.errors import UserError
from pipeline.trust.layout import CHECKSUM_FILENAME, SIGNATURE_FILENAME

__all__ = [
    "CHECKSUM_FILENAME",
    "ChecksumMismatch",
    "compare_checksums",
    "digests_of_tree",
    "format_checksums",
    "parse_checksums",
    "sha256_of_file",
    "sha256_of_stream",
]

_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_CHUNK = 1 << 20


def sha256_of_stream(stream: BinaryIO) -> str:
    """Hex SHA-256 of everything readable from ``stream`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    with open(path, "rb") as stream:
        return sha256_of_stream(stream)


def format_checksums(digests: Mapping[str, str]) -> str:
    """``sha256sum`` text: one ``<hex>  <relative path>`` line per member, sorted by path.

    Args:
        digests: relative POSIX path -> hex SHA-256.

    Returns:
        The file content, ending with a newline.

    Raises:
        ValueError: for a path with a newline or a malformed digest (these would make the file unreadable).
    """
    lines = []
    for path in sorted(digests):
        digest = digests[path]
        if "\n" in path or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"cannot record checksum {digest!r} for {path!r}")
        lines.append(f"{digest}  {path}")
    return "\n".join(lines) + "\n"


def parse_checksums(text: str, *, source: str) -> dict[str, str]:
    """Read ``sha256sum`` text back into ``{relative path: hex digest}``.

    Args:
        text: the file content.
        source: name of the file, for messages.

    Returns:
        The mapping, in file order.

    Raises:
        UserError: on a malformed line or a path listed twice.
    """
    digests: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise UserError(f"{source}: line {number} is not '<sha256>  <path>'")
        digest, path = match.groups()
        if path in digests:
            raise UserError(f"{source}: {path} is listed twice")
        digests[path] = digest
    return digests


@dataclass(frozen=True)
class ChecksumMismatch:
    """One difference between the recorded and the actual members.

    Attributes:
        member: relative path of the member.
        kind: ``"changed"`` (digest differs), ``"missing"`` (listed, not in the bundle) or ``"unlisted"`` (in the
            bundle, not listed).
        expected: recorded digest (``None`` for unlisted members).
        actual: recomputed digest (``None`` for missing members).
    """

    member: str
    kind: Literal["changed", "missing", "unlisted"]
    expected: str | None = None
    actual: str | None = None

    def describe(self) -> str:
        """One line for the user."""
        if self.kind == "changed":
            return f"{self.member}: sha256 {self.actual[:12]}... does not match the recorded {self.expected[:12]}..."
        if self.kind == "missing":
            return f"{self.member}: listed in {CHECKSUM_FILENAME} but missing from the bundle"
        return f"{self.member}: present in the bundle but not listed in {CHECKSUM_FILENAME}"


def compare_checksums(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[ChecksumMismatch]:
    """Changed, missing and unlisted members, each group sorted by path (changed first: the likeliest tampering).

    Args:
        expected: recorded digests.
        actual: recomputed digests of the members present.

    Returns:
        The mismatches; empty when everything matches.
    """
    changed = [
        ChecksumMismatch(path, "changed", expected[path], actual[path])
        for path in sorted(expected)
        if path in actual and actual[path] != expected[path]
    ]
    missing = [ChecksumMismatch(path, "missing", expected[path]) for path in sorted(expected) if path not in actual]
    unlisted = [
        ChecksumMismatch(path, "unlisted", actual=actual[path]) for path in sorted(actual) if path not in expected
    ]
    return changed + missing + unlisted


def digests_of_tree(
    root: str | Path, *, exclude: Iterable[str] = (CHECKSUM_FILENAME, SIGNATURE_FILENAME)
) -> dict[str, str]:
    """SHA-256 of every file under ``root`` keyed by its POSIX path relative to ``root``.

    Args:
        root: bundle folder.
        exclude: relative paths left out (the checksum file itself and the signature of it).

    Returns:
        ``{relative path: hex digest}``.
    """
    root = Path(root)
    skipped = set(exclude)
    return {
        rel: sha256_of_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and (rel := path.relative_to(root).as_posix()) not in skipped
    }
