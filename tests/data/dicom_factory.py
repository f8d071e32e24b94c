"""Write small, real DICOM files with pydicom for the ingestion tests (and the ingestion benchmark).

Every series is written as genuine Part-10 files (preamble, file meta, CT Image Storage, valid UIDs from
:func:`pydicom.uid.generate_uid`, full image-plane and rescale attributes), so the code under test reads them exactly
as it reads scanner exports. Variants (a gap, a tilt, a scout, an MR series...) are made by changing one aspect,
either through the keyword arguments or through an ``edit(index, dataset)`` hook called on each slice before saving.

Identifying values (PatientName, PatientID, PatientBirthDate) are written on purpose, with distinctive strings, so the
privacy tests can search every output for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = [
    "PHI",
    "WrittenSeries",
    "write_ct_series",
    "write_enhanced_ct",
    "write_text_file",
    "default_positions",
]

#: identifying values written into every generated file unless overridden; outputs must never contain them
PHI: dict[str, str] = {
    "PatientName": "Zyxwvut^Quinella",
    "PatientID": "MRN-77341902",
    "PatientBirthDate": "19431107",
}

_ENCAPSULATED = {JPEG2000Lossless, RLELossless}


@dataclass
class WrittenSeries:
    """What :func:`write_ct_series` wrote, with the values a correct reader must reproduce.

    Attributes:
        folder: the folder holding the files.
        files: the files, in the order of their positions along the slice normal (ascending).
        study_uid: StudyInstanceUID written.
        series_uid: SeriesInstanceUID written.
        hu: expected float32 HU volume, shape (columns, rows, slices) in the MONAI (X, Y, Z) convention.
        affine_ras: expected 4x4 RAS affine of that array.
        phi: the identifying values written (PatientName, PatientID, PatientBirthDate).
    """

    folder: Path
    files: list[Path]
    study_uid: str
    series_uid: str
    hu: np.ndarray
    affine_ras: np.ndarray
    phi: dict[str, str] = field(default_factory=dict)


def default_positions(
    n_slices: int,
    *,
    origin: Sequence[float],
    orientation: Sequence[float],
    slice_spacing: float,
    tilt_degrees: float = 0.0,
) -> list[tuple[float, float, float]]:
    """ImagePositionPatient of a regular stack; ``tilt_degrees`` shears it along the column direction (gantry tilt)."""
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    shear = np.tan(np.radians(tilt_degrees))
    origin = np.asarray(origin, dtype=float)
    return [tuple(float(v) for v in origin + k * slice_spacing * (normal + shear * col)) for k in range(n_slices)]


def write_ct_series(
    folder: str | Path,
    *,
    n_slices: int = 20,
    rows: int = 24,
    columns: int = 20,
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    slice_spacing: float = 2.0,
    origin: Sequence[float] = (-80.0, -90.0, -40.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    positions: Sequence[Sequence[float]] | None = None,
    tilt_degrees: float = 0.0,
    modality: str = "CT",
    sop_class_uid: str = CTImageStorage,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    transfer_syntax: str = ExplicitVRLittleEndian,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    accession: str = "ACC-5501",
    phi: dict[str, str] | None = None,
    seed: int = 0,
    file_prefix: str = "IM",
    edit: Callable[[int, Dataset], None] | None = None,
    stored: np.ndarray | None = None,
) -> WrittenSeries:
    """Write one CT series, one file per slice, into ``folder``.

    Files are named in an order unrelated to their positions and InstanceNumber runs against the positions, so a
    reader that trusts either gets the slice order wrong.

    Args:
        folder: folder to write into (created).
        n_slices: number of slices (files).
        rows: Rows of every slice.
        columns: Columns of every slice.
        pixel_spacing: PixelSpacing (row spacing, column spacing) in mm.
        slice_spacing: distance between neighbouring slices along the normal, in mm.
        origin: ImagePositionPatient of the first slice (LPS, mm).
        orientation: ImageOrientationPatient (row direction cosines, then column direction cosines).
        positions: explicit ImagePositionPatient per slice (overrides origin/slice_spacing/tilt_degrees).
        tilt_degrees: shear the stack along the column direction by this angle (simulated gantry tilt).
        modality: Modality.
        sop_class_uid: SOPClassUID.
        image_type: ImageType values.
        transfer_syntax: transfer syntax UID; JPEG 2000 Lossless and RLE Lossless are compressed for real.
        rescale_slope: RescaleSlope.
        rescale_intercept: RescaleIntercept.
        study_uid: StudyInstanceUID (generated when None).
        series_uid: SeriesInstanceUID (generated when None).
        accession: AccessionNumber.
        phi: identifying values to write (defaults to :data:`PHI`).
        seed: seed of the pixel noise.
        file_prefix: prefix of the file names.
        edit: called as ``edit(index, dataset)`` for each slice (index in position order) just before saving.
        stored: the stored pixel values, ``(n_slices, rows, columns)`` int16 in position order (default: a smooth
            blob plus noise); HU = stored * RescaleSlope + RescaleIntercept.

    Returns:
        A :class:`WrittenSeries` with the files and the expected HU volume and RAS affine.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    phi = dict(PHI if phi is None else phi)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference = generate_uid()
    if positions is None:
        positions = default_positions(
            n_slices, origin=origin, orientation=orientation, slice_spacing=slice_spacing, tilt_degrees=tilt_degrees
        )
    positions = [tuple(float(v) for v in p) for p in positions]
    n_slices = len(positions)

    rng = np.random.default_rng(seed)
    # a smooth body-like blob plus noise, so orientation or ordering errors change the values
    yy, xx = np.mgrid[0:rows, 0:columns]
    if stored is not None:
        stored = np.asarray(stored, dtype=np.int16)
        if stored.shape != (n_slices, rows, columns):
            raise ValueError(f"stored has shape {stored.shape}, expected {(n_slices, rows, columns)}")
    else:
        stored = np.empty((n_slices, rows, columns), dtype=np.int16)
        for k in range(n_slices):
            blob = 1000.0 * np.exp(-(((yy - rows / 2) / (rows / 3)) ** 2) - ((xx - columns / 3) / (columns / 3)) ** 2)
            stored[k] = (blob + 40.0 * k + 3.0 * xx + rng.integers(0, 30, size=(rows, columns))).astype(np.int16)

    files: list[Path] = []
    # file names and InstanceNumbers deliberately disagree with the position order
    name_order = rng.permutation(n_slices)
    for k, position in enumerate(positions):
        ds = _base_dataset(
            sop_class_uid=sop_class_uid,
            # compressed syntaxes are set by Dataset.compress (or _save), which starts from native data
            transfer_syntax=transfer_syntax if transfer_syntax == ImplicitVRLittleEndian else ExplicitVRLittleEndian,
            modality=modality,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference=frame_of_reference,
            accession=accession,
            phi=phi,
        )
        ds.ImageType = list(image_type)
        ds.SeriesNumber = 3
        ds.InstanceNumber = n_slices - k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
        ds.SliceThickness = f"{abs(slice_spacing):.3f}"
        ds.SliceLocation = f"{position[2]:.3f}"
        ds.RescaleSlope = f"{rescale_slope:g}"
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleType = "HU"
        _set_pixels(ds, stored[k])
        if edit is not None:
            edit(k, ds)
        path = folder / f"{file_prefix}{int(name_order[k]):04d}.dcm"
        _save(ds, path, transfer_syntax)
        files.append(path)

    hu = (stored.astype(np.float64) * rescale_slope + rescale_intercept).astype(np.float32)
    return WrittenSeries(
        folder=folder,
        files=files,
        study_uid=study_uid,
        series_uid=series_uid,
        hu=np.ascontiguousarray(hu.transpose(2, 1, 0)),
        affine_ras=_expected_affine(positions, orientation, pixel_spacing),
        phi=phi,
    )


def chest_phantom_hu(
    *,
    n_slices: int = 30,
    rows: int = 40,
    columns: int = 48,
    pixel_mm: float = 8.0,
    slice_mm: float = 10.0,
    lungs: bool = True,
    gas_pockets: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """A coarse chest (or abdomen) phantom in HU, ``(n_slices, rows, columns)``, slice 0 the most inferior.

    A body ellipse (fat rim, soft tissue) in air; with ``lungs`` two lung ellipsoids at -850 HU (about 3.5 L at the
    default size: 384 x 320 mm field, 300 mm of slices) and a midline trachea of air above them; ``gas_pockets``
    spheres of air (bowel gas) scattered in the body's lower half.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(
        (np.arange(n_slices) - (n_slices - 1) / 2) * slice_mm,
        (np.arange(rows) - (rows - 1) / 2) * pixel_mm,
        (np.arange(columns) - (columns - 1) / 2) * pixel_mm,
        indexing="ij",
    )
    hu = np.full(x.shape, -1000.0)
    hu[(x / 165) ** 2 + (y / 120) ** 2 < 1] = -100.0
    hu[(x / 150) ** 2 + (y / 105) ** 2 < 1] = 40.0
    if lungs:
        for side in (-1, 1):
            hu[((x - side * 70) / 55) ** 2 + (y / 80) ** 2 + ((z + 10) / 125) ** 2 < 1] = -850.0
        hu[(x**2 + (y + 30) ** 2 < 10**2) & (z > 100)] = -1000.0  # trachea
    for _ in range(gas_pockets):
        centre = rng.uniform([-100, -60, -slice_mm * n_slices / 2], [100, 60, 0])
        hu[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < 32**2] = -1000.0
    return (hu + rng.normal(0, 15, hu.shape)).astype(np.float32)


def write_enhanced_ct(
    path: str | Path, *, n_frames: int = 20, rows: int = 16, columns: int = 16, phi: dict[str, str] | None = None
) -> Path:
    """Write one multi-frame Enhanced CT file (per-frame functional groups carry the plane positions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(
        sop_class_uid=EnhancedCTImageStorage,
        transfer_syntax=ExplicitVRLittleEndian,
        modality="CT",
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        frame_of_reference=generate_uid(),
        accession="ACC-ENH",
        phi=dict(PHI if phi is None else phi),
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = n_frames
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = ["0.8", "0.8"]
    measures.SliceThickness = "2.0"
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(n_frames):
        frame = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = ["-60", "-60", f"{2.0 * k:.1f}"]
        frame.PlanePositionSequence = [pos]
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "-1024"
    _set_pixels(ds, np.zeros((n_frames, rows, columns), dtype=np.int16))
    _save(ds, path, ExplicitVRLittleEndian)
    return path


def write_text_file(path: str | Path, text: str = "not a DICOM file\n") -> Path:
    """Write a plain text file (a non-DICOM file in a DICOM tree)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _base_dataset(
    *,
    sop_class_uid: str,
    transfer_syntax: str,
    modality: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference: str,
    accession: str,
    phi: dict[str, str],
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.AccessionNumber = accession
    ds.StudyDate = "20240102"
    ds.PatientName = phi.get("PatientName", "")
    ds.PatientID = phi.get("PatientID", "")
    ds.PatientBirthDate = phi.get("PatientBirthDate", "")
    ds.PatientSex = "O"
    ds.Manufacturer = "aamct-test-factory"
    ds.PatientPosition = "HFS"
    ds.GantryDetectorTilt = "0"
    if sop_class_uid == MRImageStorage:
        ds.MagneticFieldStrength = "1.5"
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    if transfer_syntax in _ENCAPSULATED:
        ds.compress(transfer_syntax)
    elif transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        # a syntax the tests want to see rejected: wrap the native bytes as one encapsulated fragment, so the file
        # is well formed and only its declared syntax is unsupported
        ds.PixelData = encapsulate([bytes(ds.PixelData)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.save_as(path, enforce_file_format=True)
        return
    ds.save_as(path, enforce_file_format=True)


def _expected_affine(
    positions: Sequence[Sequence[float]], orientation: Sequence[float], pixel_spacing: Sequence[float]
) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row, col)
    pos = np.asarray(positions, dtype=float)
    order = np.argsort(pos @ normal)
    pos = pos[order]
    step = (pos[-1] - pos[0]) / (len(pos) - 1) if len(pos) > 1 else normal
    lps = np.eye(4)
    lps[:3, 0] = row * float(pixel_spacing[1])
    lps[:3, 1] = col * float(pixel_spacing[0])
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_back(path: str | Path) -> Dataset:
    """Read one written file back (full dataset), for tests that edit files after writing them."""
    return pydicom.dcmread(path)
