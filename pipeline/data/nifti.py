"""NIfTI input checks for ``aamct manifest build --nifti-glob`` and for the project's reader.

MONAI's ``NibabelReader`` loads whatever nibabel can open; it does not tell a 3D CT volume from a 4D time series,
a file with NaNs or an affine that cannot be inverted. These checks (our own; nibabel does the reading) turn such
files into one-line rejection reasons before they reach training. The header checks come first and need no voxel
(:func:`check_nifti_header`, the loader's cheap probe); the voxel checks (readable, finite) follow on the voxels the
reader returns (:func:`read_checked_nifti`), so the manifest builder and the reader give one reason for one file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.contracts.defaults import DEFAULT_MAX_VOXELS
from pipeline.data.dicom import special_file_kind

__all__ = [
    "SANE_SPACING_MM",
    "NiftiHeader",
    "NiftiInfo",
    "NiftiRejected",
    "check_nifti",
    "check_nifti_header",
    "file_sha256",
    "read_checked_nifti",
]

#: voxel sizes outside this range (mm) are almost certainly a wrong header, not a CT
SANE_SPACING_MM: tuple[float, float] = (0.1, 20.0)


class NiftiRejected(Exception):
    """A NIfTI file that fails :func:`check_nifti`; the message is the one-line reason."""


@dataclass(frozen=True)
class NiftiInfo:
    """What :func:`check_nifti` learned about an accepted file.

    Attributes:
        path: the file.
        shape: spatial shape (X, Y, Z) as stored.
        spacing: voxel size in mm along those axes (from the affine's columns).
        affine: 4x4 RAS affine.
        n_slices: number of slices along the array axis closest to S-I.
        sha256: digest of the file's bytes (a move-proof identity for the pseudonymous case id).
    """

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    n_slices: int
    sha256: str

    @classmethod
    def of(cls, header) -> NiftiInfo:
        """The info of a checked header (:func:`read_checked_nifti`), with the file's digest."""
        return cls(
            path=header.path,
            shape=header.shape,
            spacing=header.spacing,
            affine=header.affine,
            n_slices=header.n_slices,
            sha256=file_sha256(header.path),
        )

    @property
    def spacing_mm(self) -> str:
        """Spacing as written to the manifest, e.g. ``0.977x0.977x2.000``."""
        return "x".join(f"{s:.3f}" for s in self.spacing)


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def check_nifti(
    path: str | os.PathLike,
    *,
    min_slices: int = 1,
    spacing_range_mm: tuple[float, float] = SANE_SPACING_MM,
) -> NiftiInfo:
    """Check one NIfTI file: a single 3D volume, finite values, sane spacing, an invertible oriented affine.

    The voxel data are read in full, so a truncated ``.nii.gz`` is caught here rather than in the middle of training.
    The project's reader (:func:`pipeline.data.reader.read_nifti`) applies the same checks through
    :func:`read_checked_nifti`, so both give a file the same verdict and the same reason.

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        min_slices: fewest slices along the axis closest to S-I.
        spacing_range_mm: accepted voxel size range in mm.

    Returns:
        A :class:`NiftiInfo`.

    Raises:
        NiftiRejected: the file fails a check; the message is the reason.
    """
    header, _ = read_checked_nifti(path, min_slices=min_slices, spacing_range_mm=spacing_range_mm)
    return NiftiInfo.of(header)


@dataclass(frozen=True)
class NiftiHeader:
    """What the header checks of :func:`check_nifti_header` learned (no voxel was read).

    Attributes:
        path: the file.
        shape: spatial shape (X, Y, Z) as stored (a trailing singleton 4th axis dropped).
        spacing: voxel size in mm along those axes (from the affine's columns).
        affine: 4x4 RAS affine (nibabel's: the sform, else the qform).
        n_slices: number of slices along the array axis closest to S-I.
        image: the nibabel image (its voxels not loaded yet).
    """

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    n_slices: int
    image: Any = field(repr=False)


def check_nifti_header(
    path: str | os.PathLike,
    *,
    min_slices: int = 1,
    spacing_range_mm: tuple[float, float] = SANE_SPACING_MM,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> NiftiHeader:
    """The checks of :func:`check_nifti` that need only the header: file type, shape and voxel count, voxel type,
    orientation, affine, spacing.

    Only a regular file is opened (a FIFO, device or socket is refused by name, never read: reading one can block
    for ever), and the voxel count the header declares is capped before any voxel is decompressed (a 4.7 MB
    ``.nii.gz`` can declare 1024 x 1024 x 512 voxels: 2 GiB as float32).

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        min_slices: fewest slices along the axis closest to S-I.
        spacing_range_mm: accepted voxel size range in mm.
        max_voxels: most voxels the header may declare (default
            :data:`~pipeline.contracts.defaults.DEFAULT_MAX_VOXELS`).

    Returns:
        A :class:`NiftiHeader`.

    Raises:
        NiftiRejected: the header fails a check; the message is the reason.
    """
    import nibabel as nib

    path = Path(path)
    try:
        kind = special_file_kind(os.stat(path).st_mode)
    except OSError as err:
        raise NiftiRejected(f"unreadable file: {err.strerror or err}") from None
    if kind is not None:
        raise NiftiRejected(f"not a regular file: {kind}; only regular files are read")
    try:
        image = nib.load(path)
    except Exception as err:
        raise NiftiRejected(f"unreadable NIfTI: {type(err).__name__}: {_one_line(err)}") from None
    shape = tuple(int(v) for v in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise NiftiRejected(f"not a 3D volume: shape {tuple(image.shape)} (3D, or 4D with one volume, expected)")
    if min(shape) < 1:
        raise NiftiRejected(f"empty volume: shape {shape}")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise NiftiRejected(
            f"too large: the header declares {' x '.join(map(str, shape))} = {voxels:,} voxels, above the cap of "
            f"{max_voxels:,} (refused before decompressing)"
        )
    header = image.header
    stored = np.dtype(image.get_data_dtype())
    if stored.kind not in "iubf" or stored.fields is not None:
        raise NiftiRejected(f"unsupported voxel type {stored} (a scalar volume expected)")
    codes = [int(header.get("sform_code", 0)), int(header.get("qform_code", 0))]
    if not any(codes):
        raise NiftiRejected(
            "no orientation: sform_code and qform_code are both 0, so the voxel-to-patient mapping is unknown"
        )
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        raise NiftiRejected("affine has non-finite values")
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    shown = "x".join(f"{s:.3g}" for s in spacing)
    zero = [axis for axis, s in enumerate(spacing) if s == 0.0]
    if zero:
        raise NiftiRejected(f"zero voxel size along array axis {zero[0]} (voxel size {shown} mm)")
    determinant = float(np.linalg.det(affine[:3, :3]))
    if abs(determinant) < 1e-6:
        raise NiftiRejected(f"singular affine (determinant {determinant:.3g}): voxel positions cannot be inverted")
    low, high = spacing_range_mm
    if not all(low <= s <= high for s in spacing):
        raise NiftiRejected(f"voxel size {shown} mm is outside {low:g}-{high:g} mm (a wrong header?)")
    axis_si = int(np.argmax(np.abs(affine[2, :3]) / np.maximum(spacing, 1e-12)))
    n_slices = shape[axis_si]
    if n_slices < min_slices:
        raise NiftiRejected(f"too few slices: {n_slices} (minimum {min_slices})")
    return NiftiHeader(
        path=path,
        shape=shape,  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        affine=affine,
        n_slices=n_slices,
        image=image,
    )


def read_checked_nifti(
    path: str | os.PathLike,
    *,
    min_slices: int = 1,
    spacing_range_mm: tuple[float, float] = SANE_SPACING_MM,
) -> tuple[NiftiHeader, np.ndarray]:
    """Apply every check of :func:`check_nifti` and return the voxels they read (once).

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        min_slices: fewest slices along the axis closest to S-I.
        spacing_range_mm: accepted voxel size range in mm.

    Returns:
        The :class:`NiftiHeader` and the (X, Y, Z) float32 voxels, scaled by ``scl_slope`` / ``scl_inter``.

    Raises:
        NiftiRejected: the file fails a check; the message is the reason.
    """
    header = check_nifti_header(path, min_slices=min_slices, spacing_range_mm=spacing_range_mm)
    try:
        # scaled by scl_slope/scl_inter, so a broken scaling shows up as non-finite values below
        data = np.asarray(header.image.dataobj, dtype=np.float32).reshape(header.shape, order="F")
    except Exception as err:
        raise NiftiRejected(f"cannot read the voxel data: {type(err).__name__}: {_one_line(err)}") from None
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise NiftiRejected(f"non-finite values: {bad} of {data.size} voxels are NaN or infinite")
    return header, data


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("..." if len(text) > 200 else "")
