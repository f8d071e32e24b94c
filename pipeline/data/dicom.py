"""DICOM discovery and series checks: headers only, grouped by study and series, each series checked and explained.

MONAI has no series-discovery or geometry-validation component (its ``PydicomReader`` stacks whatever files it is
given, sorted by InstanceNumber, and ``ITKReader`` trusts GDCM's sorting without reporting gaps or tilt), so this
module is our own. It reads headers with ``pydicom.dcmread(stop_before_pixels=True)`` in a thread pool, groups files
by (StudyInstanceUID, SeriesInstanceUID), picks the primary axial CT series of every study and returns, for every
file and series it does not accept, a one-line reason naming the numbers involved.

The same :class:`SeriesCheck` and :func:`choose_series` are used by the project's reader
(:mod:`pipeline.data.reader`), so what ``aamct manifest build`` accepts is exactly what training reads.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import struct
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)

from pipeline.contracts.defaults import DEFAULT_MAX_VOXELS

__all__ = [
    "DEFAULT_MIN_SLICES",
    "DICOMDIR_REASON",
    "NATIVE_TRANSFER_SYNTAXES",
    "TIE_BREAK_RULE",
    "DicomSeries",
    "DiscoveryResult",
    "Rejection",
    "SeriesCheck",
    "SeriesGeometry",
    "SeriesRejected",
    "SliceHeader",
    "HeaderError",
    "choose_series",
    "discover_series",
    "group_series",
    "iter_files",
    "read_header",
    "scan_headers",
    "series_skip_reason",
    "special_file_kind",
    "transfer_syntax_problem",
    "unreadable_file_reasons",
]

logger = logging.getLogger(__name__)

#: uncompressed syntaxes whose pixel bytes can be taken straight from the file (deflate and big endian go via pydicom)
NATIVE_TRANSFER_SYNTAXES: frozenset[str] = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_ENHANCED_CT = frozenset({EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})
_PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_AXIS_NAMES = ("L-R: sagittal", "A-P: coronal", "S-I: axial")
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
#: fewest slices of an accepted series or volume, unless told otherwise (``aamct manifest build --min-slices``, the
#: scan loader's ``min_slices``): fewer is a localiser, a test shot or a partial export, not a diagnostic CT
DEFAULT_MIN_SLICES = 16


class HeaderError(Exception):
    """A file that cannot be used at all (not DICOM, a DICOMDIR, unreadable header); the message is the reason.

    Args:
        message: the one-line reason.
        kind: its category: ``"unreadable file"`` (a damaged or unreadable DICOM file: it blocks the series of its
            folder, see :func:`discover_series`), ``"not DICOM"`` or ``"DICOMDIR"`` (neither blocks anything).
    """

    def __init__(self, message: str, *, kind: str = "unreadable file") -> None:
        super().__init__(message)
        self.kind = kind


class SeriesRejected(Exception):
    """A series that fails a :class:`SeriesCheck`; the message is the one-line reason."""


@dataclass(frozen=True, slots=True)
class SliceHeader:
    """The header values of one DICOM file that discovery, the checks and the reader need.

    ``patient_id`` and ``accession`` hold raw identifiers: they are used only to compute pseudonyms and to match
    rows of a labels CSV, are excluded from ``repr`` and must never be written anywhere.
    """

    path: Path
    file_size: int
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    image_type: tuple[str, ...]
    rows: int | None
    columns: int | None
    samples_per_pixel: int | None
    photometric: str
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    number_of_frames: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    rescale_slope: float
    rescale_intercept: float
    has_modality_lut: bool
    gantry_tilt: float | None
    #: file offset of the PixelData value for native syntaxes (the reader reads the bytes from there), else None
    pixel_offset: int | None
    #: why the pixel data cannot be read (missing, truncated...), found while reading the header
    pixel_problem: str | None
    patient_id: str = field(default="", repr=False)
    accession: str = field(default="", repr=False)
    #: BodyPartExamined and StudyDescription: read for the scope check's notes only (never decisive, never written)
    body_part: str = field(default="", repr=False)
    study_description: str = field(default="", repr=False)

    @property
    def normal(self) -> np.ndarray | None:
        """Unit slice normal (row cosines x column cosines), or None without a usable orientation."""
        return _unit_normal(self.orientation)


def _unit_normal(orientation: tuple[float, ...] | None) -> np.ndarray | None:
    if orientation is None or len(orientation) != 6:
        return None
    n = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else None


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected file or series, as written to ``<manifest>.rejections.csv``.

    Attributes:
        path: the file, or the series folder.
        series_uid: SeriesInstanceUID when known (empty for files that could not be read).
        n_files: number of files this row accounts for.
        reason: one line, specific (names the numbers involved).
        kind: short category used to group the reasons in summaries (e.g. ``"too few slices"``).
    """

    path: Path
    series_uid: str
    n_files: int
    reason: str
    kind: str


@dataclass(frozen=True)
class SeriesGeometry:
    """Geometry of a checked series.

    Attributes:
        slices: the slices sorted along the slice normal (ascending), never by InstanceNumber.
        shape: array shape in the MONAI convention: (columns, rows, slices).
        spacing: voxel size in mm along those axes: (column spacing, row spacing, slice spacing).
        affine_ras: 4x4 affine of that array in RAS (voxel index -> mm).
    """

    slices: tuple[SliceHeader, ...]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine_ras: np.ndarray

    @property
    def spacing_mm(self) -> str:
        """Spacing as written to the manifest, e.g. ``0.977x0.977x2.000``."""
        return "x".join(f"{s:.3f}" for s in self.spacing)


@dataclass
class DicomSeries:
    """The files of one series (same StudyInstanceUID and SeriesInstanceUID, or same folder and frame of reference
    for files without a SeriesInstanceUID)."""

    study_uid: str
    series_uid: str
    slices: list[SliceHeader]
    geometry: SeriesGeometry | None = None

    @property
    def n_files(self) -> int:
        return len(self.slices)

    @cached_property
    def folders(self) -> list[Path]:
        """Distinct parent folders of the files, sorted (computed once: the slices do not change after grouping)."""
        return sorted({s.path.parent for s in self.slices})

    @property
    def folder(self) -> Path:
        """The series folder (the common parent folder of its files)."""
        folders = self.folders
        return folders[0] if len(folders) == 1 else Path(os.path.commonpath([str(f) for f in folders]))

    @property
    def study_key(self) -> str:
        """Study used to pick one primary series per study; a series without a StudyInstanceUID is its own study."""
        return self.study_uid or f"no-study:{self.folder}:{self.series_uid or self.slices[0].frame_of_reference_uid}"

    def fingerprint(self) -> str:
        """Identity of a series without UIDs, from content that does not change when the files move.

        Frame of reference, matrix size and the sorted slice positions identify one reconstruction.
        """
        first = self.slices[0]
        positions = sorted(
            ",".join(f"{v:.3f}" for v in s.position) if s.position is not None else "none" for s in self.slices
        )
        return "|".join(
            [first.frame_of_reference_uid, f"{first.rows}x{first.columns}", str(len(self.slices)), ";".join(positions)]
        )


@dataclass
class DiscoveryResult:
    """Everything :func:`discover_series` found under a root.

    Attributes:
        root: the folder searched.
        n_files: files examined.
        series: every series found (accepted or not).
        accepted: the accepted series (one per study at most), with their geometry set.
        rejections: one entry per rejected file or series.
    """

    root: Path
    n_files: int
    series: list[DicomSeries]
    accepted: list[DicomSeries]
    rejections: list[Rejection]

    @property
    def n_studies(self) -> int:
        return len({s.study_key for s in self.series})


# ----------------------------------------------------------------------------------------------------------------
# headers


def iter_files(
    root: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (), recursive: bool = True
) -> tuple[list[Path], list[Rejection]]:
    """Every file under ``root`` (sorted, symlinked folders not followed).

    Args:
        root: folder to walk.
        exclude: files to leave out (e.g. the labels CSV or the manifest being written inside the tree).
        recursive: also walk the sub-folders (False: the files directly inside ``root``, as a series reader sees it).

    Returns:
        The files, and a rejection for every folder that could not be listed.
    """
    excluded = {os.path.realpath(p) for p in exclude}
    # realpath costs a few system calls per file: only names that could be an excluded file are resolved
    excluded_names = {os.path.basename(p) for p in excluded}
    files: list[Path] = []
    problems: list[Rejection] = []

    def on_error(err: OSError) -> None:
        problems.append(
            Rejection(Path(err.filename or root), "", 0, f"cannot list folder: {err.strerror or err}", "unreadable")
        )

    for folder, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(folder, name)
            if name in excluded_names and os.path.realpath(path) in excluded:
                continue
            files.append(Path(path))
        if not recursive:
            break
    return files, problems


def read_header(path: str | os.PathLike) -> SliceHeader:
    """Read the header of one file (no pixel data) and locate its pixel data.

    The common case (a Part-10 file in an uncompressed or encapsulated little-endian syntax) is parsed with
    pydicom's own element parser, :func:`pydicom.filereader.data_element_generator`, keeping only the attributes
    needed here; building a full ``Dataset`` (what ``dcmread`` does) cost more than parsing the file
    (benchmarks/bench_ingestion.py). Anything unusual (no preamble, deflate, a VR encoding that contradicts the
    transfer syntax, a parser error) is read by ``pydicom.dcmread`` instead, so damaged files get pydicom's reasons.

    Args:
        path: the file.

    Returns:
        The :class:`SliceHeader`.

    Raises:
        HeaderError: the file is not DICOM, is a DICOMDIR, or its header cannot be parsed; the message is the
            reason and ``kind`` its category.
    """
    path = Path(path)
    try:
        with _open_regular(path) as fp:
            size = os.fstat(fp.fileno()).st_size
            parsed = _parse_fast(fp)
            if parsed is None:
                fp.seek(0)
                parsed = _parse_with_pydicom(fp)
            h = parsed.values
            dims = dict(
                rows=h.int("Rows"),
                columns=h.int("Columns"),
                samples=h.int("SamplesPerPixel"),
                bits=h.int("BitsAllocated"),
                frames=h.int("NumberOfFrames") or 1,
            )
            fp.seek(parsed.pixels_at)
            probe = fp.read(12)
            pixel_offset, pixel_problem = _locate_pixels(parsed.syntax, size, parsed.pixels_at, probe, fp, **dims)
    except HeaderError:
        raise
    except OSError as err:
        raise HeaderError(f"unreadable file: {err.strerror or err}") from None
    except Exception as err:  # pydicom raises many types on damaged files
        raise HeaderError(f"unreadable DICOM header: {type(err).__name__}: {_one_line(err)}") from None
    try:
        return _header_from_values(path, size, parsed, dims, pixel_offset, pixel_problem)
    except HeaderError:
        raise
    except Exception as err:
        raise HeaderError(f"unusable DICOM header: {type(err).__name__}: {_one_line(err)}") from None


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def special_file_kind(mode: int) -> str | None:
    """What a non-regular file is (``"a FIFO (named pipe)"``...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _SPECIAL_FILES if test(mode)), "not a regular file")


def _open_regular(path: Path):
    """Open a file for reading only if it is a regular file; never block on a FIFO or a device.

    ``O_NONBLOCK`` makes opening a FIFO with no writer return at once (a plain ``open`` waits for ever), and the
    type is checked on the opened descriptor, so a file swapped after a check cannot slip through.

    Raises:
        HeaderError: the path is a FIFO, a device, a socket or a folder (``kind`` ``"unreadable file"``: it blocks
            the series of its folder, so the case becomes an error row naming it).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        kind = special_file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise HeaderError(f"not a regular file: {kind}; only regular files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True, slots=True)
class _ParsedHeader:
    values: _HeaderValues
    syntax: str
    media_sop_class: str
    #: file offset where the pixel data element starts (or the end of the file)
    pixels_at: int


#: SOP Class of a DICOMDIR: an index of the files on a medium, with no image of its own
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
DICOMDIR_REASON = (
    "a DICOMDIR (media directory: an index of the files on the medium, not an image); the series it lists are "
    "read from their own files"
)
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_TRANSFER_SYNTAX_TAG = 0x00020010
_MEDIA_SOP_CLASS_TAG = 0x00020002


def _stop_at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_DATA_TAGS


def _stop_after_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002


def _raw_uid(element) -> str:
    if element is None or element.value is None:
        return ""
    value = element.value
    return (value.decode("latin-1") if isinstance(value, bytes) else str(value)).strip(" \x00")


def _parse_fast(fp) -> _ParsedHeader | None:
    """Parse a Part-10 file with pydicom's element generator; None where ``dcmread`` should handle the file."""
    head = fp.read(132)
    if len(head) < 132 or head[128:] != b"DICM":
        return None
    try:
        meta = {int(e.tag): e for e in data_element_generator(fp, False, True, stop_when=_stop_after_meta)}
    except Exception:
        return None
    syntax = _raw_uid(meta.get(_TRANSFER_SYNTAX_TAG))
    media_class = _raw_uid(meta.get(_MEDIA_SOP_CLASS_TAG))
    if media_class == _MEDIA_DIRECTORY:
        # checked before the directory records are parsed: a DICOMDIR of a large export holds thousands of them
        raise HeaderError(DICOMDIR_REASON, kind="DICOMDIR")
    if syntax and not _UID_PATTERN.fullmatch(syntax):
        raise HeaderError("unreadable DICOM header: TransferSyntaxUID is not a valid UID")
    if not syntax or syntax == DeflatedExplicitVRLittleEndian:
        return None
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    start = fp.tell()
    peek = fp.read(6)
    if len(peek) == 6 and (0x40 < peek[4] < 0x5B and 0x40 < peek[5] < 0x5B) == implicit:
        return None  # the data set's VR encoding contradicts the transfer syntax: dcmread copes (and says so)
    fp.seek(start)
    elements: dict[str, Any] = {}
    charset = None
    try:
        for element in data_element_generator(
            fp, implicit, little, stop_when=_stop_at_pixels, specific_tags=_TAGS_READ
        ):
            tag = int(element.tag)
            if tag == _SPECIFIC_CHARACTER_SET:
                charset = element
            else:
                elements[_KEYWORD_BY_TAG[tag]] = element
    except Exception:
        return None
    pixels_at = fp.tell()
    if pixels_at == start:
        raise HeaderError("unreadable DICOM header: no data elements after the file meta information")
    return _ParsedHeader(_HeaderValues(elements, charset), syntax, media_class, pixels_at)


def _parse_with_pydicom(fp) -> _ParsedHeader:
    # pydicom warns (and logs) about invalid values quoting them, and a damaged file's values may be anything,
    # identifiers included: nothing of that may reach the output. The warning filters and the logger are
    # process-wide, hence the lock; this path is taken by unusual files only.
    with _QUIET_PYDICOM, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom_logger = logging.getLogger("pydicom")
        was_disabled, pydicom_logger.disabled = pydicom_logger.disabled, True
        try:
            return _parse_dataset(fp)
        finally:
            pydicom_logger.disabled = was_disabled


_QUIET_PYDICOM = threading.Lock()


def _parse_dataset(fp) -> _ParsedHeader:
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        ds = _read_without_preamble(fp)
    pixels_at = fp.tell()
    if len(ds) == 0:
        raise HeaderError("unreadable DICOM header: no data elements after the file meta information")
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")).strip() if meta is not None else ""
    if media_class == _MEDIA_DIRECTORY or str(ds.get("SOPClassUID", "")).strip() == _MEDIA_DIRECTORY:
        raise HeaderError(DICOMDIR_REASON, kind="DICOMDIR")
    syntax = str(meta.get("TransferSyntaxUID", "")).strip() if meta is not None else ""
    if syntax and not _UID_PATTERN.fullmatch(syntax):
        raise HeaderError("unreadable DICOM header: TransferSyntaxUID is not a valid UID")
    if not syntax:
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    elements = {_KEYWORD_BY_TAG[tag]: elem for tag, elem in ds.items() if tag in _KEYWORD_BY_TAG}
    return _ParsedHeader(_HeaderValues(elements, ds.get_item(_SPECIFIC_CHARACTER_SET)), syntax, media_class, pixels_at)


def _read_without_preamble(fp) -> pydicom.Dataset:
    # old ACR-NEMA style files have no 128-byte preamble and 'DICM'; they start with a group 0x0002 or 0x0008 tag
    # (little or big endian); anything else is not worth a forced parse
    fp.seek(0)
    start = fp.read(4)
    if len(start) < 4 or start[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        raise HeaderError("not a DICOM file (no DICM prefix)", kind="not DICOM")
    fp.seek(0)
    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    if "SOPClassUID" not in ds and "Modality" not in ds:
        raise HeaderError("not a DICOM file (no DICM prefix and no SOP Class or Modality)", kind="not DICOM")
    return ds


def _header_from_values(
    path: Path,
    size: int,
    parsed: _ParsedHeader,
    dims: dict[str, int | None],
    pixel_offset: int | None,
    pixel_problem: str | None,
) -> SliceHeader:
    h = parsed.values
    return SliceHeader(
        path=path,
        file_size=size,
        transfer_syntax=parsed.syntax,
        sop_class_uid=h.text("SOPClassUID") or parsed.media_sop_class,
        sop_instance_uid=h.text("SOPInstanceUID"),
        modality=h.text("Modality").upper(),
        study_uid=h.text("StudyInstanceUID"),
        series_uid=h.text("SeriesInstanceUID"),
        frame_of_reference_uid=h.text("FrameOfReferenceUID"),
        image_type=tuple(str(v).strip().upper() for v in h.values("ImageType")),
        rows=dims["rows"],
        columns=dims["columns"],
        samples_per_pixel=dims["samples"],
        photometric=h.text("PhotometricInterpretation").upper(),
        bits_allocated=dims["bits"],
        bits_stored=h.int("BitsStored"),
        pixel_representation=h.int("PixelRepresentation"),
        number_of_frames=dims["frames"],  # type: ignore[arg-type]
        orientation=h.floats("ImageOrientationPatient", 6),
        position=h.floats("ImagePositionPatient", 3),  # type: ignore[arg-type]
        pixel_spacing=h.floats("PixelSpacing", 2),  # type: ignore[arg-type]
        slice_thickness=h.float("SliceThickness"),
        rescale_slope=h.float("RescaleSlope", 1.0),  # type: ignore[arg-type]
        rescale_intercept=h.float("RescaleIntercept", 0.0),  # type: ignore[arg-type]
        has_modality_lut=h.has("ModalityLUTSequence") and not h.has("RescaleSlope"),
        gantry_tilt=h.float("GantryDetectorTilt"),
        pixel_offset=pixel_offset,
        pixel_problem=pixel_problem,
        patient_id=h.text("PatientID"),
        accession=h.text("AccessionNumber"),
        body_part=h.text("BodyPartExamined").upper(),
        study_description=h.text("StudyDescription"),
    )


def _locate_pixels(
    syntax: str,
    size: int,
    pixels_at: int,
    probe: bytes,
    fp,
    *,
    rows: int | None,
    columns: int | None,
    samples: int | None,
    bits: int | None,
    frames: int | None,
) -> tuple[int | None, str | None]:
    """Find the PixelData value in the file and check it is complete, without decoding it."""
    if len(probe) < 8:
        return None, "no pixel data (the file ends before a PixelData element)"
    if syntax in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        return None, None  # offsets inside a deflated stream / big-endian tags: pydicom reads these itself
    group, element = struct.unpack("<HH", probe[:4])
    if (group, element) != _PIXEL_DATA_TAG:
        return None, f"no PixelData element (found ({group:04X},{element:04X}) where the pixel data should start)"
    if syntax == ImplicitVRLittleEndian:
        (length,) = struct.unpack("<I", probe[4:8])
        value_at = pixels_at + 8
    else:
        if len(probe) < 12:
            return None, "truncated PixelData element header"
        (length,) = struct.unpack("<I", probe[8:12])
        value_at = pixels_at + 12
    if syntax not in NATIVE_TRANSFER_SYNTAXES:
        if length != _UNDEFINED_LENGTH:
            if value_at + length > size:
                return None, f"truncated pixel data: {max(size - value_at, 0)} of {length} bytes present"
            return None, None
        return None, _encapsulated_problem(fp, value_at, size)
    if length == _UNDEFINED_LENGTH:
        return None, f"native transfer syntax {UID(syntax).name} but encapsulated (undefined length) pixel data"
    if rows is None or columns is None or bits is None:
        return None, None  # reported by the checks as missing attributes
    expected = rows * columns * (samples or 1) * (frames or 1) * max(bits // 8, 1)
    present = min(length, size - value_at)
    if present < expected:
        return None, f"truncated pixel data: {max(present, 0)} of {expected} bytes ({rows}x{columns}x{bits} bits)"
    return value_at, None


_ITEM_TAG = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER_TAG = (0xFFFE, 0xE0DD)


def _encapsulated_problem(fp, value_at: int, size: int) -> str | None:
    """Walk the items of encapsulated pixel data (item headers only) and say why the stream is incomplete.

    A cut-off compressed file keeps a well-formed header; its last fragment is short or its sequence delimiter is
    missing. Finding that here (a few seeks per file) lets the manifest reject the file instead of the decoder
    failing later.
    """
    fp.seek(value_at)
    items = 0
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return (
                f"truncated pixel data: the encapsulated pixel data ends after {items} item(s), without its "
                "sequence delimiter"
            )
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == _SEQUENCE_DELIMITER_TAG:
            return None
        if (group, element) != _ITEM_TAG or length == _UNDEFINED_LENGTH:
            return f"damaged pixel data: ({group:04X},{element:04X}) where item {items + 1} of the encapsulated pixel data should start"
        at = fp.tell()
        if at + length > size:
            return (
                f"truncated pixel data: item {items + 1} of the encapsulated pixel data has {size - at} of its "
                f"{length} bytes"
            )
        fp.seek(at + length)
        items += 1


def scan_headers(
    paths: Sequence[str | os.PathLike],
    *,
    workers: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[SliceHeader], list[Rejection]]:
    """Read the headers of many files, sequentially by default.

    Sequential by default because header parsing holds the GIL: on files in the page cache, threads measured
    slower than one thread (benchmarks/bench_ingestion.py). Threads (``workers`` > 1) overlap file I/O, which can
    pay off on a cold network share.

    Args:
        paths: files to read.
        workers: threads (default 1: sequential).
        progress: called with 1 after each file (e.g. ``tqdm.update``).

    Returns:
        The headers of the DICOM files, and one rejection per file that is not usable DICOM.
    """
    workers = workers or 1
    if workers <= 1 or len(paths) < 2 * workers:
        if progress is None:
            results = [_try_header(p) for p in paths]
        else:
            results = []
            for p in paths:
                results.append(_try_header(p))
                progress(1)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-header") as pool:
            results = []
            for result in pool.map(_try_header, paths):
                results.append(result)
                if progress is not None:
                    progress(1)
    headers = [r for r in results if isinstance(r, SliceHeader)]
    rejections = [r for r in results if isinstance(r, Rejection)]
    return headers, rejections


def _try_header(path: str | os.PathLike) -> SliceHeader | Rejection:
    try:
        return read_header(path)
    except HeaderError as err:
        reason = str(err)
        kind = err.kind
        if kind == "not DICOM" and str(path).lower().endswith((".nii", ".nii.gz")):
            reason += "; a NIfTI file: pass it with --nifti-glob"
        return Rejection(Path(path), "", 1, reason, kind)


def unreadable_file_reasons(rejections: Iterable[Rejection]) -> dict[Path, str]:
    """For every folder holding damaged DICOM files, the reason that blocks the series of that folder.

    A file that starts like DICOM but cannot be read (a damaged header, a read error) is most likely one of the
    slices of the series beside it, so that series cannot be known to be complete: it is rejected with a reason
    naming the file, rather than accepted short of a slice (or rejected for a gap that the damaged file explains).
    Files that are not DICOM at all and DICOMDIRs block nothing.

    Args:
        rejections: file rejections from :func:`scan_headers`.

    Returns:
        ``{folder: reason}``.
    """
    by_folder: dict[Path, list[Rejection]] = defaultdict(list)
    for r in rejections:
        if r.kind == "unreadable file" and r.n_files == 1:
            by_folder[r.path.parent].append(r)
    reasons: dict[Path, str] = {}
    for folder, bad in by_folder.items():
        bad.sort(key=lambda r: str(r.path))
        names = ", ".join(r.path.name for r in bad[:2]) + (f" and {len(bad) - 2} more" if len(bad) > 2 else "")
        what = "unreadable file" if len(bad) == 1 else f"{len(bad)} unreadable files"
        which = "that slice" if len(bad) == 1 else "those slices"
        reasons[folder] = f"{what} in the series folder: {names} ({bad[0].reason}); the series may be missing {which}"
    return reasons


# ----------------------------------------------------------------------------------------------------------------
# grouping and choosing


def group_series(headers: Iterable[SliceHeader]) -> list[DicomSeries]:
    """Group slices into series by (StudyInstanceUID, SeriesInstanceUID).

    Files without a SeriesInstanceUID (anonymisers sometimes blank it) are grouped by folder and FrameOfReferenceUID
    instead, so a folder holding one such series still forms one series.

    Returns:
        The series, sorted by folder then UID for a deterministic order.
    """
    groups: dict[tuple[str, ...], list[SliceHeader]] = defaultdict(list)
    for h in headers:
        key = (
            (h.study_uid, h.series_uid)
            if h.series_uid
            else (h.study_uid, "", str(h.path.parent), h.frame_of_reference_uid)
        )
        groups[key].append(h)
    series = [
        DicomSeries(study_uid=key[0], series_uid=key[1], slices=sorted(s, key=lambda h: str(h.path)))
        for key, s in groups.items()
    ]
    return sorted(series, key=lambda s: (str(s.folder), s.series_uid, str(s.slices[0].path)))


def series_skip_reason(series: DicomSeries) -> str | None:
    """Why a series is not a candidate primary axial CT series (None if it is one).

    A candidate has modality CT, ImageType ORIGINAL\\PRIMARY (not DERIVED or SECONDARY), is not a scout/LOCALIZER
    and has a slice normal closest to the S-I axis. Reasons start with ``skipped:``.
    """
    per_slice = Counter(_slice_skip_reason(s) for s in series.slices)
    reasons = [(r, n) for r, n in per_slice.most_common() if r is not None]
    if not reasons:
        return None
    reason, count = reasons[0]
    if count < series.n_files:
        odd = [s for s in series.slices if _slice_skip_reason(s) == reason]
        return f"{reason} in {count} of {series.n_files} files ({_files(odd)})"
    return reason


def _slice_skip_reason(s: SliceHeader) -> str | None:
    return _skip_reason(s.modality, s.image_type, s.orientation)


@lru_cache(maxsize=4096)
def _skip_reason(modality: str, image_type: tuple[str, ...], orientation: tuple[float, ...] | None) -> str | None:
    # cached: every slice of a series repeats the same few (modality, ImageType, orientation) combinations
    if modality != "CT":
        return f"skipped: modality {modality or '(none)'} (not CT)"
    shown = "\\".join(image_type) or "(none)"
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return f"skipped: scout/LOCALIZER series (ImageType {shown})"
    if (image_type[:1] == ("DERIVED",)) or (image_type[1:2] == ("SECONDARY",)):
        return f"skipped: DERIVED/SECONDARY images (ImageType {shown})"
    normal = _unit_normal(orientation)
    if normal is not None:
        axis = int(np.argmax(np.abs(normal)))
        if axis != 2:
            return f"skipped: not axial (slice normal mostly {_AXIS_NAMES[axis]})"
    return None


#: how equally long candidate series are ranked (the first in this order that passes the checks is primary)
TIE_BREAK_RULE = "folder path, then SeriesInstanceUID, in sorting order"


def choose_series(
    candidates: Sequence[DicomSeries],
    check: SeriesCheck,
    *,
    blocked: Mapping[Path, str] | None = None,
) -> tuple[DicomSeries | None, list[Rejection]]:
    """Pick the primary series among ``candidates`` (one study, or one folder) and explain every other one.

    Candidates (see :func:`series_skip_reason`) are tried from the most slices down (equally long ones ranked by
    :data:`TIE_BREAK_RULE`); the first that passes ``check`` is chosen (its ``geometry`` is set), the ones that fail
    are rejected with the check's reason, and the remaining candidates are skipped as not primary.

    Args:
        candidates: the series to choose from.
        check: the geometry check a chosen series must pass.
        blocked: folders whose series fail regardless of the check, with the reason (see
            :func:`unreadable_file_reasons`).

    Returns:
        The chosen series (or None) and the rejections of all the others.
    """
    blocked = blocked or {}
    rejections: list[Rejection] = []
    eligible: list[DicomSeries] = []
    for s in candidates:
        reason = series_skip_reason(s)
        if reason is None:
            eligible.append(s)
        else:
            rejections.append(_series_rejection(s, reason))
    eligible.sort(key=lambda s: (-s.n_files, str(s.folder), s.series_uid))
    chosen: DicomSeries | None = None
    for s in eligible:
        if chosen is not None:
            if s.n_files == chosen.n_files:
                where = "in the same folder" if chosen.folder == s.folder else f"in {chosen.folder.name}"
                reason = (
                    f"skipped: not the primary series of its study: a tie ({s.n_files} slices each) with the primary "
                    f"series {where}, broken by {TIE_BREAK_RULE} (the first that passes the checks is primary)"
                )
            else:
                reason = (
                    f"skipped: not the primary series of its study ({s.n_files} slices; the primary has "
                    f"{chosen.n_files})"
                )
            rejections.append(_series_rejection(s, reason))
            continue
        block = next((blocked[f] for f in s.folders if f in blocked), None)
        if block is not None:
            rejections.append(_series_rejection(s, block))
            continue
        try:
            s.geometry = check(s.slices)
        except SeriesRejected as err:
            rejections.append(_series_rejection(s, str(err)))
        else:
            chosen = s
    return chosen, rejections


def _series_rejection(series: DicomSeries, reason: str) -> Rejection:
    # a one-file series is named by its file: in an export that keeps many series flat in one folder, the folder
    # alone would not say which of its files the row is about
    path = series.slices[0].path if series.n_files == 1 else series.folder
    return Rejection(path, series.series_uid, series.n_files, reason, _kind(reason))


def _kind(reason: str) -> str:
    """The reason without its specifics (numbers, file names), to count reasons of one kind together."""
    head = reason.removeprefix("skipped: ")
    for sep in (":", " (", ";"):
        head = head.split(sep)[0]
    head = re.sub(r"-?\d+(\.\d+)?", "N", head.strip())
    return ("skipped: " if reason.startswith("skipped: ") else "") + head


def discover_series(
    root: str | os.PathLike,
    *,
    check: SeriesCheck | None = None,
    workers: int | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    recursive: bool = True,
    progress: Callable[[int, int], object] | None = None,
) -> DiscoveryResult:
    """Walk ``root``, read every header, group the series, choose one primary axial CT series per study.

    The same function serves ``aamct manifest build`` (a whole tree) and the scan loader (one series folder,
    ``recursive=False``), so both give a series the same verdict and the same reason.

    Args:
        root: folder searched.
        check: geometry check for the chosen series (default :class:`SeriesCheck` with its defaults).
        workers: header-reading threads (default: sequential, see :func:`scan_headers`).
        exclude: files under ``root`` to leave out (the labels CSV, the outputs).
        recursive: search the sub-folders too.
        progress: called as ``progress(files_read, files_found)`` once the files are listed and after each header.

    Returns:
        A :class:`DiscoveryResult`; every file is either in an accepted series or accounted for in a rejection.
    """
    root = Path(root)
    check = check or SeriesCheck()
    files, rejections = iter_files(root, exclude=exclude, recursive=recursive)
    step = None
    if progress is not None:
        done = 0
        progress(0, len(files))

        def step(n: int) -> None:
            nonlocal done
            done += n
            progress(done, len(files))

    headers, file_rejections = scan_headers(files, workers=workers, progress=step)
    rejections.extend(file_rejections)
    blocked = unreadable_file_reasons(file_rejections)
    series = group_series(headers)
    by_study: dict[str, list[DicomSeries]] = defaultdict(list)
    for s in series:
        by_study[s.study_key].append(s)
    by_folder: dict[Path, list[DicomSeries]] = defaultdict(list)
    for s in series:
        for folder in s.folders:
            by_folder[folder].append(s)
    accepted: list[DicomSeries] = []
    reader_check = check.relaxed()
    for study in by_study.values():
        chosen, study_rejections = choose_series(study, check, blocked=blocked)
        rejections.extend(study_rejections)
        if chosen is None:
            continue
        problem = _folder_problem(chosen, by_folder, reader_check, blocked)
        if problem:
            rejections.append(_series_rejection(chosen, problem))
            chosen.geometry = None
        else:
            accepted.append(chosen)
    logger.debug("discovered %d series in %d files under %s", len(series), len(files), root)
    return DiscoveryResult(root=root, n_files=len(files), series=series, accepted=accepted, rejections=rejections)


def _folder_problem(
    chosen: DicomSeries,
    by_folder: dict[Path, list[DicomSeries]],
    reader_check: SeriesCheck,
    blocked: Mapping[Path, str],
) -> str | None:
    """Why the manifest cannot point at this series' folder (the reader would not read exactly this series)."""
    folders = chosen.folders
    if len(folders) > 1:
        shown = ", ".join(f.name for f in folders[:3]) + (", ..." if len(folders) > 3 else "")
        return f"files of the series are spread over {len(folders)} folders ({shown}); the manifest needs one folder per series"
    folder = folders[0]
    in_folder = by_folder[folder]
    if len(in_folder) == 1:
        return None
    # the reader repeats the choice inside the folder: it must land on the same series
    copies = [
        DicomSeries(s.study_uid, s.series_uid, [h for h in s.slices if h.path.parent == folder]) for s in in_folder
    ]
    picked, _ = choose_series(copies, reader_check, blocked=blocked)
    if picked is not None and picked.study_uid == chosen.study_uid and picked.series_uid == chosen.series_uid:
        return None
    return (
        f"its folder also holds {len(in_folder) - 1} other series and a reader of the folder would pick another one; "
        "put each series in its own folder"
    )


# ----------------------------------------------------------------------------------------------------------------
# geometry checks


@lru_cache(maxsize=64)
def transfer_syntax_problem(uid: str) -> str | None:
    """Why pixel data in transfer syntax ``uid`` cannot be decoded here (None if it can).

    Uses pydicom's own decoder registry, so JPEG 2000 counts as decodable exactly when pylibjpeg-openjpeg (or GDCM)
    is installed.
    """
    if uid in NATIVE_TRANSFER_SYNTAXES or uid in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        return None
    name = UID(uid).name
    label = f"{name} ({uid})" if name != uid else uid
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"unsupported transfer syntax {label}: pydicom has no decoder for it"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        return f"transfer syntax {label} cannot be decoded here (needs {missing})"
    return None


class SeriesCheck:
    """Geometry and decodability checks of one series; raises :class:`SeriesRejected` with a one-line reason.

    Checked, in order: single-frame files (multi-frame Enhanced CT is rejected: its geometry lives in per-frame
    functional groups that MONAI's readers ignore); decodable transfer syntax; complete pixel data; grayscale pixels
    with a rescale (not a Modality LUT); the image-plane attributes present; equal Rows/Columns, PixelSpacing and
    orientation in every slice; an orthonormal orientation; the minimum slice count; no duplicate positions; positions
    on one line along the slice normal (gantry tilt); uniform spacing with no missing slices.

    Slices are sorted by their position along the normal (row cosines x column cosines), never by InstanceNumber,
    which scanners and anonymisers renumber freely.

    Gantry tilt is rejected, not resampled: a tilted acquisition stores a sheared stack, and correcting it means
    interpolating every slice by a different in-plane shift, i.e. changing the pixel data the model sees in a
    scanner-dependent way; the stock MONAI/ITK readers silently build a non-sheared affine for such stacks, which puts
    every voxel in the wrong place. Rejecting keeps the cohort honest, and the project's reader raises the same
    reason, so no stage (and no heatmap) ever claims a geometry the series does not have. Convert such series with a
    tool that corrects tilt explicitly and pass the NIfTI files instead: ``dcm2niix -z y -o OUT SERIES_FOLDER`` writes,
    beside the sheared volume, a copy resampled onto an orthogonal grid with ``_Tilt`` in its name, which
    ``aamct manifest build --nifti-glob 'OUT/*_Tilt*.nii.gz'`` then takes.

    A stack whose slices are complete but one of which sits off the regular grid (a moved ImagePositionPatient) is
    reported as a slice position inconsistency naming that file, not as missing slices.

    Args:
        min_slices: fewest slices a series may have.
        spacing_tolerance_mm: absolute tolerance on the slice spacing (positions are often rounded to 0.01 mm).
        spacing_tolerance_fraction: relative tolerance on the slice spacing; the larger of the two applies.
        max_tilt_shift_pixels: largest in-plane drift of the slice positions over the whole stack, in pixels, before
            the stack counts as tilted (half a pixel: below that, ignoring the shear moves no voxel by more than
            half its size).
        orientation_tolerance: largest difference between direction cosines that still counts as the same orientation.
        max_voxels: most voxels (Rows x Columns x slices) a series may have, checked before any pixel is decoded
            (default :data:`~pipeline.contracts.defaults.DEFAULT_MAX_VOXELS`).
    """

    def __init__(
        self,
        *,
        min_slices: int = DEFAULT_MIN_SLICES,
        spacing_tolerance_mm: float = 0.02,
        spacing_tolerance_fraction: float = 0.01,
        max_tilt_shift_pixels: float = 0.5,
        orientation_tolerance: float = 1e-4,
        max_voxels: int = DEFAULT_MAX_VOXELS,
    ) -> None:
        if min_slices < 1:
            raise ValueError(f"min_slices must be at least 1, got {min_slices}")
        self.min_slices = int(min_slices)
        self.spacing_tolerance_mm = float(spacing_tolerance_mm)
        self.spacing_tolerance_fraction = float(spacing_tolerance_fraction)
        self.max_tilt_shift_pixels = float(max_tilt_shift_pixels)
        self.orientation_tolerance = float(orientation_tolerance)
        self.max_voxels = int(max_voxels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_slices={self.min_slices}, spacing_tolerance_mm={self.spacing_tolerance_mm}, "
            f"spacing_tolerance_fraction={self.spacing_tolerance_fraction}, "
            f"max_tilt_shift_pixels={self.max_tilt_shift_pixels}, orientation_tolerance={self.orientation_tolerance})"
        )

    def relaxed(self) -> SeriesCheck:
        """The same check without the minimum slice count (what a reader of one explicit series applies)."""
        return SeriesCheck(
            min_slices=1,
            spacing_tolerance_mm=self.spacing_tolerance_mm,
            spacing_tolerance_fraction=self.spacing_tolerance_fraction,
            max_tilt_shift_pixels=self.max_tilt_shift_pixels,
            orientation_tolerance=self.orientation_tolerance,
            max_voxels=self.max_voxels,
        )

    def reason(self, slices: Sequence[SliceHeader]) -> str | None:
        """The rejection reason for ``slices``, or None when the series passes."""
        try:
            self(slices)
        except SeriesRejected as err:
            return str(err)
        return None

    def __call__(self, slices: Sequence[SliceHeader]) -> SeriesGeometry:
        """Check ``slices`` (one series) and return its geometry.

        Raises:
            SeriesRejected: the series fails a check; the message is the reason.
        """
        if not slices:
            raise SeriesRejected("no slices")
        slices = list(slices)
        self._check_files(slices)
        self._check_consistent(slices)
        first = slices[0]
        row = np.asarray(first.orientation[:3], dtype=float)  # type: ignore[index]
        col = np.asarray(first.orientation[3:], dtype=float)  # type: ignore[index]
        if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
            raise SeriesRejected(
                f"ImageOrientationPatient {_fmt(first.orientation)} is not two orthogonal unit vectors"
            )
        normal = np.cross(row, col)
        n = len(slices)
        if n < self.min_slices:
            raise SeriesRejected(f"too few slices: {n} (minimum {self.min_slices})")
        voxels = int(first.rows) * int(first.columns) * n  # type: ignore[arg-type]
        if voxels > self.max_voxels:
            raise SeriesRejected(
                f"too large: {first.columns} x {first.rows} x {n} slices = {voxels:,} voxels, above the cap of "
                f"{self.max_voxels:,} (read before any pixel is decoded)"
            )
        positions = np.asarray([s.position for s in slices], dtype=float)
        along = positions @ normal
        order = np.argsort(along, kind="stable")
        slices = [slices[i] for i in order]
        positions, along = positions[order], along[order]
        row_spacing, col_spacing = first.pixel_spacing  # type: ignore[misc]
        if n == 1:
            step = normal * (first.slice_thickness or 1.0)
        else:
            self._check_positions(slices, positions, along, normal, min(row_spacing, col_spacing))
            step = (positions[-1] - positions[0]) / (n - 1)
        lps = np.eye(4)
        lps[:3, 0] = row * col_spacing
        lps[:3, 1] = col * row_spacing
        lps[:3, 2] = step
        lps[:3, 3] = positions[0]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        return SeriesGeometry(
            slices=tuple(slices),
            shape=(int(first.columns), int(first.rows), n),  # type: ignore[arg-type]
            spacing=(float(col_spacing), float(row_spacing), float(np.linalg.norm(step))),
            affine_ras=affine,
        )

    def _check_files(self, slices: list[SliceHeader]) -> None:
        multi = [s for s in slices if s.number_of_frames > 1 or s.sop_class_uid in _ENHANCED_CT]
        if multi:
            frames = max(s.number_of_frames for s in multi)
            if any(s.sop_class_uid in _ENHANCED_CT for s in multi):
                raise SeriesRejected(
                    f"multi-frame Enhanced CT is not supported ({len(multi)} file(s), up to {frames} frames); convert "
                    "it to NIfTI (e.g. dcm2niix) and pass it with --nifti-glob"
                )
            raise SeriesRejected(f"multi-frame images are not supported ({len(multi)} file(s), up to {frames} frames)")
        for syntax in sorted({s.transfer_syntax for s in slices}):
            problem = transfer_syntax_problem(syntax)
            if problem:
                raise SeriesRejected(problem)
        broken = [s for s in slices if s.pixel_problem]
        if broken:
            raise SeriesRejected(f"{broken[0].pixel_problem} in {_files(broken)}")
        for attr, label in (
            ("rows", "Rows"),
            ("columns", "Columns"),
            ("position", "ImagePositionPatient"),
            ("orientation", "ImageOrientationPatient"),
            ("pixel_spacing", "PixelSpacing"),
        ):
            missing = [s for s in slices if getattr(s, attr) is None]
            if missing:
                raise SeriesRejected(
                    f"missing or invalid {label} in {len(missing)} of {len(slices)} files ({_files(missing)})"
                )
        colour = [s for s in slices if (s.samples_per_pixel or 1) != 1 or not s.photometric.startswith("MONOCHROME")]
        if colour:
            raise SeriesRejected(
                f"not a grayscale image (PhotometricInterpretation {colour[0].photometric or '(none)'}, "
                f"SamplesPerPixel {colour[0].samples_per_pixel})"
            )
        bits = sorted({s.bits_allocated for s in slices if s.bits_allocated not in (8, 16, 32)}, key=str)
        if bits:
            raise SeriesRejected(f"unsupported BitsAllocated {bits[0]} (8, 16 or 32 expected)")
        if any(s.has_modality_lut for s in slices):
            raise SeriesRejected(
                "pixel values are mapped by a Modality LUT Sequence, which is not supported (no RescaleSlope)"
            )
        bad_spacing = [s for s in slices if not all(np.isfinite(v) and v > 0 for v in s.pixel_spacing)]  # type: ignore[union-attr]
        if bad_spacing:
            raise SeriesRejected(f"PixelSpacing {_fmt(bad_spacing[0].pixel_spacing)} mm is not positive")

    def _check_consistent(self, slices: list[SliceHeader]) -> None:
        sizes = Counter((s.rows, s.columns) for s in slices)
        if len(sizes) > 1:
            shown = ", ".join(f"{r}x{c} ({k} slices)" for (r, c), k in sizes.most_common(3))
            raise SeriesRejected(f"slice sizes (Rows x Columns) differ: {shown}")
        spacings = np.asarray([s.pixel_spacing for s in slices], dtype=float)
        differs = np.any(np.abs(spacings - spacings[0]) > 1e-5 + 1e-4 * np.abs(spacings[0]), axis=1)
        odd = [s for s, d in zip(slices, differs, strict=True) if d]
        if odd:
            seen = sorted({"x".join(f"{v:.4f}" for v in s.pixel_spacing) for s in slices})  # type: ignore[union-attr]
            raise SeriesRejected(f"PixelSpacing differs between slices: {', '.join(seen[:4])} mm ({_files(odd)})")
        orientations = np.asarray([s.orientation for s in slices], dtype=float)
        differs = np.max(np.abs(orientations - orientations[0]), axis=1) > self.orientation_tolerance
        odd = [s for s, d in zip(slices, differs, strict=True) if d]
        if odd:
            raise SeriesRejected(
                f"orientation differs between slices: {_fmt(slices[0].orientation)} vs {_fmt(odd[0].orientation)} "
                f"in {len(odd)} of {len(slices)} files ({_files(odd)})"
            )

    def _check_positions(
        self,
        slices: list[SliceHeader],
        positions: np.ndarray,
        along: np.ndarray,
        normal: np.ndarray,
        pixel_size: float,
    ) -> None:
        gaps = np.diff(along)
        duplicate_tolerance = max(1e-3, 1e-3 * float(np.median(np.abs(gaps))))
        dup = np.flatnonzero(gaps < duplicate_tolerance)
        if dup.size:
            i = int(dup[0])
            same_instance = slices[i].sop_instance_uid and slices[i].sop_instance_uid == slices[i + 1].sop_instance_uid
            note = "; the same SOPInstanceUID: copies of one file" if same_instance else ""
            raise SeriesRejected(
                f"duplicate slice positions: {dup.size + 1} slices share positions, e.g. {along[i]:.3f} mm along the "
                f"normal ({slices[i].path.name}, {slices[i + 1].path.name}{note})"
            )
        # in-plane component of every position relative to the first: zero for a stack along the normal
        offsets = positions - positions[0]
        inplane = offsets - np.outer(offsets @ normal, normal)
        span = float(along[-1] - along[0])
        drift = inplane[-1]
        expected = np.outer((along - along[0]) / span, drift)
        off_line = np.linalg.norm(inplane - expected, axis=1)
        scatter = float(np.max(off_line))
        limit = self.max_tilt_shift_pixels * pixel_size
        if scatter > limit:
            raise SeriesRejected(
                f"slice positions are not on one line: up to {scatter:.3f} mm off the line through the first and last "
                f"slice, in {slices[int(np.argmax(off_line))].path.name} (limit {limit:.3f} mm)"
            )
        drift_mm = float(np.linalg.norm(drift))
        if drift_mm > limit:
            angle = float(np.degrees(np.arctan2(drift_mm, span)))
            header_tilt = {s.gantry_tilt for s in slices if s.gantry_tilt}
            tag = f"; GantryDetectorTilt {_fmt(sorted(header_tilt))}" if header_tilt else ""
            raise SeriesRejected(
                f"gantry tilt of {angle:.2f} degrees: slice positions drift {drift_mm:.2f} mm in-plane over "
                f"{span:.2f} mm{tag}; tilted stacks are rejected, not resampled"
            )
        spacing = float(np.median(gaps))
        tolerance = max(self.spacing_tolerance_mm, self.spacing_tolerance_fraction * spacing)
        if float(np.max(np.abs(gaps - spacing))) > tolerance:
            moved = _moved_slice(slices, along, spacing, tolerance)
            if moved is not None:
                raise SeriesRejected(moved)
        big = np.flatnonzero(gaps > 1.5 * spacing)
        if big.size:
            i = int(big[np.argmax(gaps[big])])
            missing = int(round(gaps[i] / spacing)) - 1
            more = f" ({big.size} gaps in all)" if big.size > 1 else ""
            raise SeriesRejected(
                f"missing slices: a gap of {gaps[i]:.3f} mm between {along[i]:.3f} and {along[i + 1]:.3f} mm along the "
                f"normal where the spacing is {spacing:.3f} mm (about {max(missing, 1)} slice(s) missing){more}"
            )
        if float(np.max(np.abs(gaps - spacing))) > tolerance:
            seen = sorted({f"{g:.3f}" for g in gaps}, key=float)
            shown = ", ".join(seen[:6]) + (", ..." if len(seen) > 6 else "")
            raise SeriesRejected(
                f"non-uniform slice spacing: {gaps.min():.3f} to {gaps.max():.3f} mm (seen: {shown}; tolerance "
                f"{tolerance:.3f} mm)"
            )


def _moved_slice(slices: Sequence[SliceHeader], along: np.ndarray, spacing: float, tolerance: float) -> str | None:
    """The reason for a stack where one slice sits off the regular grid of the others (None if that is not it).

    A slice whose ImagePositionPatient was shifted leaves a gap where it belongs and crowds its new neighbours. The
    number of slices is right, so "missing slices" or "non-uniform spacing" would blame the wrong thing: the slice
    whose removal leaves a regular grid with exactly one empty place is named instead.
    """
    gaps = np.diff(along)
    crowded = np.flatnonzero(gaps < spacing - tolerance)
    for j in sorted({int(i) for c in crowded for i in (c, c + 1)}):
        rest = np.delete(along, j)
        rest_gaps = np.diff(rest)
        double = np.abs(rest_gaps - 2.0 * spacing) <= tolerance
        regular = np.abs(rest_gaps - spacing) <= tolerance
        if rest_gaps.size and np.count_nonzero(double) == 1 and bool(np.all(double | regular)):
            hole = float(rest[int(np.flatnonzero(double)[0])] + spacing)
            return (
                f"slice position inconsistency: {slices[j].path.name} lies at {along[j]:.3f} mm along the normal, off "
                f"the {spacing:.3f} mm grid of the other {len(along) - 1} slices, which has an empty place at "
                f"{hole:.3f} mm (a moved slice: its ImagePositionPatient disagrees with the rest of the series)"
            )
    return None


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _files(slices: Sequence[SliceHeader], limit: int = 2) -> str:
    names = [s.path.name for s in slices[:limit]]
    return ", ".join(names) + (f" and {len(slices) - limit} more" if len(slices) > limit else "")


def _fmt(values: Iterable[float] | None) -> str:
    if values is None:
        return "(none)"
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


#: binary (US) attributes decoded from the raw bytes
_US_KEYWORDS = frozenset({"Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation"})
#: free-text attributes whose non-ASCII bytes need the Specific Character Set (left to pydicom then)
_CHARSET_KEYWORDS = frozenset({"PatientID", "AccessionNumber", "BodyPartExamined", "StudyDescription"})
_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImageType",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
    "GantryDetectorTilt",
    "ModalityLUTSequence",
    *sorted(_US_KEYWORDS),
    *sorted(_CHARSET_KEYWORDS),
)
_SPECIFIC_CHARACTER_SET = 0x00080005
_KEYWORD_BY_TAG: dict[int, str] = {int(tag_for_keyword(k)): k for k in _KEYWORDS}  # type: ignore[arg-type]


#: tags handed to pydicom's element generator: the values of all others are skipped, not read
_TAGS_READ: list[int] = sorted(_KEYWORD_BY_TAG)


class _HeaderValues:
    """The attributes discovery needs from one file, decoded straight from the raw elements where that is safe.

    pydicom's attribute access converts and validates every element it touches, which costs more than parsing the
    whole header; the codes, UIDs and numbers needed here are ASCII text (or US binary), so a direct decode of the
    unconverted elements is enough.

    Args:
        elements: the elements read, by keyword (raw or already converted).
        charset: the Specific Character Set element, if any.
    """

    __slots__ = ("elements", "charset")

    def __init__(self, elements: dict[str, Any], charset: Any = None) -> None:
        self.elements = elements
        self.charset = charset

    def has(self, keyword: str) -> bool:
        return keyword in self.elements

    def values(self, keyword: str) -> list:
        element = self.elements.get(keyword)
        if element is None:
            return []
        if not isinstance(element, RawDataElement):
            return self._converted(keyword)
        raw = element.value
        if not raw:
            return []
        if keyword in _CHARSET_KEYWORDS and not raw.isascii():
            return [self._decode_text(raw)]
        if keyword in _US_KEYWORDS:
            count = len(raw) // 2
            return list(struct.unpack(("<" if element.is_little_endian else ">") + "H" * count, raw[: 2 * count]))
        text = raw.decode("latin-1").strip(" \x00")
        return [v.strip(" \x00") for v in text.split("\\")] if text else []

    def _decode_text(self, raw: bytes) -> str:
        # decoded with the Specific Character Set but without pydicom's value validation, whose warnings quote the
        # value: PatientID must never reach a log
        try:
            charset = self.charset
            names = (
                charset.value.decode("ascii", "replace").split("\\") if isinstance(charset, RawDataElement) else None
            )
            if names is None and charset is not None:
                names = list(charset.value) if not isinstance(charset.value, str) else [charset.value]
            text = decode_bytes(raw, convert_encodings([n.strip() for n in names or []] or None), set())
        except Exception:
            text = raw.decode("latin-1")
        return text.strip(" \x00")

    def _converted(self, keyword: str) -> list:
        try:
            value = self.elements[keyword].value
        except Exception:
            return []
        if value is None:
            return []
        if isinstance(value, str | bytes):
            return [value]
        try:
            return list(value)
        except TypeError:
            return [value]

    def text(self, keyword: str) -> str:
        return "\\".join(str(v) for v in self.values(keyword)).strip()

    def int(self, keyword: str) -> int | None:
        values = self.values(keyword)
        try:
            return int(values[0]) if values else None
        except (TypeError, ValueError):
            return None

    def float(self, keyword: str, default: float | None = None) -> float | None:
        values = self.values(keyword)
        try:
            value = float(values[0]) if values else default
        except (TypeError, ValueError):
            return default
        return value if value is None or math.isfinite(value) else default

    def floats(self, keyword: str, count: int) -> tuple[float, ...] | None:
        values = self.values(keyword)
        if len(values) != count:
            return None
        try:
            floats = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            return None
        return floats if all(math.isfinite(v) for v in floats) else None
