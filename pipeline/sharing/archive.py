"""The bundle zip: MONAI's archive layout (every member under one ``NAME/`` folder), written reproducibly, read safely.

MONAI's ``monai.bundle.download`` / ``load`` expect ``NAME.zip`` to unpack into ``NAME/configs/metadata.json``,
``NAME/models/model.pt`` and so on (see the MONAI Bundle Specification, "Archive Format"). MONAI extracts archives
but does not write them, so writing is done here with the standard library:

* members are sorted and stamped 1980-01-01 with mode 0644, so the same bundle content gives the same zip bytes;
* the zip comment records the SHA-256 of ``NAME/checksums.sha256`` (the one member the checksum file cannot list).

Reading a received zip (layout, size caps, capped extraction) is the received-bundle gate's:
:mod:`pipeline.trust.archive`, re-exported here.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import atomic_path
from pipeline.trust.archive import (
    BUNDLE_NAME_PATTERN,
    COMMENT_PREFIX,
    BundleArchive,
    extract_bundle,
    open_bundle_archive,
)
from pipeline.trust.checksums import sha256_of_file
from pipeline.trust.layout import CHECKSUM_FILENAME

__all__ = [
    "BundleArchive",
    "BUNDLE_NAME_PATTERN",
    "extract_bundle",
    "open_bundle_archive",
    "write_bundle_zip",
]

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
        archive.comment = f"{COMMENT_PREFIX}{sha256_of_file(checksum_file)}".encode("ascii")
    return Path(out_zip)
