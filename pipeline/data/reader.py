"""The project's CT reader: a DICOM series folder (uncompressed or JPEG 2000) or a NIfTI file -> float32 HU volume.

Stages do not use this module directly: they load scans through :mod:`pipeline.data.loading` (``LoadScand``),
whose loader holds exactly this reader and nothing to fall back to. :class:`CTImageReader` is a MONAI
:class:`~monai.data.ImageReader`; its conventions match MONAI's ``PydicomReader`` / ``ITKReader``
(``affine_lps_to_ras=True``) and ``NibabelReader``:

* the array is indexed (X, Y, Z) like the affine's columns: i = columns (x), j = rows (y), k = slices; for DICOM it
  is an F-ordered view of a C-ordered (slices, rows, columns) buffer, the layout ``ITKReader`` also returns;
* ``affine`` / ``original_affine`` map voxel indices to RAS millimetres;
* meta holds ``spatial_shape``, ``spacing``, ``pixdim``, ``original_channel_dim`` (NaN: no channel), ``space``,
  ``filename_or_obj``, ``source`` (``dicom`` / ``nifti``) and nothing identifying (no PatientName, PatientID...).

Every refusal is a :class:`ScanRejected` (a :class:`~pipeline.errors.UserError`) worded ``"<path>: <reason>"``,
where the reason comes from the same functions as ``aamct manifest build``'s (:func:`~pipeline.data.dicom.
discover_series` on the series folder, :func:`~pipeline.data.nifti.read_checked_nifti` for NIfTI), so a scan the
manifest builder rejects is refused here with the same words.

Why our own reader rather than ``PydicomReader`` or ``ITKReader``: ``PydicomReader`` orders slices by InstanceNumber
and estimates the spacing from z only, and ``ITKReader`` needs ``itk`` (1.5 GB) and silently ignores gantry tilt and
gaps. This reader sorts along the slice normal and applies the ingestion's checks. It is also faster (figures in
benchmarks/results/ingestion.json, from benchmarks/bench_ingestion.py):

* headers are parsed sequentially with pydicom's element parser (see :func:`~pipeline.data.dicom.read_header`);
* uncompressed pixel data is taken with ``np.frombuffer`` at the offset found while reading the header (no pydicom
  pixel handler), sequentially: each slice is a file read plus a numpy cast, which threads do not speed up;
* JPEG 2000 slices are decoded by GDCM (the decoder inside SimpleITK, already a dependency) in a thread pool:
  measured faster per slice than pylibjpeg-openjpeg, multi-threaded inside, and it releases the GIL, whereas
  pylibjpeg-openjpeg holds it (threads gave it nothing) and a process pool pays for pickling every slice (and
  cannot run inside a DataLoader worker). GDCM applies RescaleSlope/Intercept itself; on grayscale JPEG 2000 its
  HU equal pydicom's exactly (tested). It writes OpenJPEG's complaints about a damaged codestream straight to the
  process's stderr, so that stream is captured while GDCM decodes (see :func:`_decoder_stderr_captured`) and the
  text goes into the one-line reason instead;
* other compressed syntaxes (RLE, JPEG, JPEG-LS...) go through pydicom's own decoders, sequentially.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.uid import JPEG2000, JPEG2000Lossless

from pipeline.data.dicom import (
    NATIVE_TRANSFER_SYNTAXES,
    DiscoveryResult,
    SeriesCheck,
    SeriesGeometry,
    SeriesRejected,
    SliceHeader,
    discover_series,
    group_series,
    scan_headers,
)
from pipeline.data.nifti import NiftiRejected, read_checked_nifti
from pipeline.errors import UserError

__all__ = [
    "CTImageReader",
    "ScanRejected",
    "default_decode_workers",
    "is_nifti_path",
    "read_dicom_series",
    "read_series_geometry",
    "read_nifti",
    "read_volume",
    "series_folder_reason",
]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")
#: decoded by GDCM (through SimpleITK); see the module docstring for why
_GDCM_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})


class ScanRejected(UserError):
    """A scan that cannot be used: its message is ``"<path>: <reason>"``.

    Attributes:
        path: the scan as given (a series folder, a file, a NIfTI file).
        reason: the one-line reason, the same words ``aamct manifest build`` writes to its rejections CSV for the
            same files (where the manifest builder can see the problem from the headers).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for ``.nii`` and ``.nii.gz`` names."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def read_volume(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    workers: int | None = None,
    use_processes: bool = False,
    min_slices: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a CT volume as float32 HU.

    Args:
        path: a DICOM series folder, the list of files of one DICOM series, one DICOM file, or a NIfTI file.
        workers: slice-decoding workers; 1 decodes sequentially. Default: one thread per CPU for JPEG 2000,
            sequential otherwise (see the module docstring).
        use_processes: decode slices in a process pool instead of threads (slower for typical series; kept for the
            benchmark).
        min_slices: fewest slices accepted (``aamct manifest build --min-slices``); 1 checks the geometry only.

    Returns:
        The (X, Y, Z) float32 array and its meta dict (see the module docstring).

    Raises:
        ScanRejected: the path is missing, holds no readable series, or the scan fails a check.
    """
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            path = path[0]
        else:
            files = [Path(p) for p in path]
            return read_dicom_series(
                files, workers=workers, use_processes=use_processes, check=SeriesCheck(min_slices=min_slices)
            )
    path = Path(path)  # type: ignore[arg-type]
    if not path.exists():
        raise ScanRejected(path, "no such file or folder")
    if path.is_dir():
        return read_dicom_series(
            path, workers=workers, use_processes=use_processes, check=SeriesCheck(min_slices=min_slices)
        )
    if is_nifti_path(path):
        return read_nifti(path, min_slices=min_slices)
    return read_dicom_series(
        [path], workers=workers, use_processes=use_processes, check=SeriesCheck(min_slices=min_slices)
    )


def series_folder_reason(folder: Path, discovery: DiscoveryResult) -> str:
    """Why a series folder yields no series: the reason of its series row, as the manifest builder writes it.

    Args:
        folder: the folder given.
        discovery: :func:`~pipeline.data.dicom.discover_series` of that folder (``recursive=False``) with no
            accepted series.

    Returns:
        The one-line reason.
    """
    rows = [r for r in discovery.rejections if r.path == folder]
    if rows:
        # a failing candidate explains more than a skipped one; among those, the series with the most files
        rows.sort(key=lambda r: (r.reason.startswith("skipped: "), -r.n_files, r.reason))
        return rows[0].reason
    files = [r for r in discovery.rejections if r.path.parent == folder and r.n_files == 1]
    if files:
        first = files[0]
        more = f" (and {len(files) - 1} other file(s) that are not images either)" if len(files) > 1 else ""
        return f"no DICOM images: {first.path.name}: {first.reason}{more}"
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if subfolders:
        shown = ", ".join(subfolders[:3]) + (", ..." if len(subfolders) > 3 else "")
        return f"no DICOM files directly inside; it holds sub-folders ({shown}): point at one series folder"
    return "no DICOM files"


def read_dicom_series(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    workers: int | None = None,
    use_processes: bool = False,
    check: SeriesCheck | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM series: a folder (its files, not sub-folders) or an explicit list of files.

    A folder is resolved by :func:`~pipeline.data.dicom.discover_series` on that folder alone, the function
    ``aamct manifest build`` uses on the whole tree: the primary axial CT series (most slices, passing the checks)
    is read; files that are not DICOM and DICOMDIRs are ignored, while a damaged DICOM file rejects the series
    beside it. An explicit list of files must be exactly one series.

    Args:
        source: the folder or the files.
        workers: slice-decoding workers (default: see :func:`read_volume`).
        use_processes: decode in a process pool instead of threads.
        check: geometry check (default: :class:`SeriesCheck` with no minimum slice count).

    Returns:
        The (X, Y, Z) float32 HU array and its meta dict.

    Raises:
        ScanRejected: no series, several series where one is needed, a failed check, or undecodable pixel data.
    """
    check = check or SeriesCheck(min_slices=1)
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise ScanRejected(folder, "not a folder")
        name = folder
        try:
            discovery = discover_series(folder, check=check, recursive=False)
        except OSError as err:
            raise ScanRejected(folder, f"cannot list the folder: {err.strerror or err}") from None
        if not discovery.accepted:
            raise ScanRejected(folder, series_folder_reason(folder, discovery))
        geometry = discovery.accepted[0].geometry
    else:
        files = [Path(p) for p in source]
        if not files:
            raise UserError("no DICOM files given")
        missing = [p for p in files if not p.exists()]  # a FIFO or device is refused by the header reader, by name
        if missing:
            raise ScanRejected(missing[0], "no such file")
        name = files[0].parent if len(files) > 1 else files[0]
        headers, unreadable = scan_headers(files)
        if unreadable:
            raise ScanRejected(unreadable[0].path, unreadable[0].reason)
        series = group_series(headers)
        if len(series) > 1:
            raise ScanRejected(name, f"the files given belong to {len(series)} series; pass the files of one series")
        try:
            geometry = check(series[0].slices)
        except SeriesRejected as err:
            raise ScanRejected(name, str(err)) from None
    volume = _read_pixels(geometry, name, workers=workers, use_processes=use_processes)  # type: ignore[arg-type]
    return volume.transpose(2, 1, 0), _dicom_meta(geometry, name)  # type: ignore[arg-type]


def read_series_geometry(
    geometry: SeriesGeometry, name: str | os.PathLike, *, workers: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a series already discovered and checked (its :class:`~pipeline.data.dicom.SeriesGeometry`).

    The manifest builder holds every accepted series' geometry from discovery; this reads the pixels without
    reading the headers a second time, into the same array and meta as :func:`read_dicom_series`.

    Args:
        geometry: the checked series.
        name: the name used in reasons and ``filename_or_obj`` (the series folder).
        workers: slice-decoding workers (default: see :func:`read_volume`).

    Returns:
        The (X, Y, Z) float32 HU array and its meta dict.

    Raises:
        ScanRejected: undecodable pixel data.
    """
    name = Path(name)
    volume = _read_pixels(geometry, name, workers=workers, use_processes=False)
    return volume.transpose(2, 1, 0), _dicom_meta(geometry, name)


def default_decode_workers(transfer_syntaxes: Iterable[str]) -> int:
    """The slice-decoding threads used by default for a series in these transfer syntaxes.

    One thread per CPU when GDCM decodes (JPEG 2000: it releases the GIL), else 1: uncompressed slices are a read
    plus a cast, and pydicom's decoders hold the GIL, so threads measured no faster (benchmarks/bench_ingestion.py).
    """
    return (os.cpu_count() or 1) if any(s in _GDCM_SYNTAXES for s in transfer_syntaxes) else 1


def _read_pixels(geometry: SeriesGeometry, name: Path, *, workers: int | None, use_processes: bool) -> np.ndarray:
    """Decode every slice into one C-ordered (slices, rows, columns) float32 HU buffer."""
    columns, rows, n = geometry.shape
    out = np.empty((n, rows, columns), dtype=np.float32)
    slices = geometry.slices
    gdcm = any(h.transfer_syntax in _GDCM_SYNTAXES for h in slices)
    if workers is None:
        workers = default_decode_workers(h.transfer_syntax for h in slices)
    try:
        with _decoder_stderr_captured() if gdcm else contextlib.nullcontext() as captured:
            try:
                first = 0
                if gdcm and not _gdcm_initialised.is_set():
                    # GDCM builds its global dictionaries on first use: one thread does that before several do
                    with _gdcm_first_use:
                        _slice_into(slices[0], out[0])
                        _gdcm_initialised.set()
                    first = 1
                todo, planes = slices[first:], list(out[first:])
                if workers <= 1 or len(todo) < 2:
                    for header, plane in zip(todo, planes, strict=True):
                        _slice_into(header, plane)
                elif use_processes:
                    executor: Executor = ProcessPoolExecutor(max_workers=workers)
                    with executor:
                        chunks = max(1, len(todo) // (4 * workers))
                        for plane, decoded in zip(planes, executor.map(_slice_hu, todo, chunksize=chunks), strict=True):
                            plane[...] = decoded
                else:
                    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-pixels") as executor:
                        # each task writes its own plane of ``out``: no result copies, no lock needed
                        list(executor.map(_slice_into, todo, planes))
            except _SliceFailed as failed:
                raise failed.with_decoder_output(captured.text() if captured is not None else "") from None
    except _SliceFailed as failed:
        raise ScanRejected(name, failed.reason) from None
    return out


_gdcm_first_use = threading.Lock()
_gdcm_initialised = threading.Event()


class _SliceFailed(Exception):
    """One slice could not be read; ``reason`` names its file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def with_decoder_output(self, text: str) -> _SliceFailed:
        """The same failure with what the decoder printed (each distinct line once) appended."""
        lines = list(dict.fromkeys(" ".join(line.split()) for line in text.splitlines()))
        shown = "; ".join(line for line in lines if line)
        if not shown:
            return self
        return _SliceFailed(f"{self.reason}; decoder: {shown[:240]}{'...' if len(shown) > 240 else ''}")


def _slice_hu(header: SliceHeader) -> np.ndarray:
    plane = np.empty((header.rows, header.columns), dtype=np.float32)  # type: ignore[arg-type]
    _slice_into(header, plane)
    return plane


def _slice_into(header: SliceHeader, plane: np.ndarray) -> None:
    """Decode one slice and write stored * RescaleSlope + RescaleIntercept into ``plane`` (float32)."""
    try:
        if header.transfer_syntax in NATIVE_TRANSFER_SYNTAXES and header.pixel_offset is not None:
            plane[...] = _native_pixels(header)
        elif header.transfer_syntax in _GDCM_SYNTAXES:
            plane[...] = _gdcm_hu(header)
            return  # GDCM applied the rescale
        else:
            plane[...] = _decoded_pixels(header)
    except _SliceFailed:
        raise
    except Exception as err:
        text = " ".join(str(err).split())
        if "ITK ERROR" in text:  # SimpleITK's message: the source location first, the cause last
            text = text.split("):")[-1].strip()
        raise _SliceFailed(
            f"cannot decode the pixel data of {header.path.name} ({type(err).__name__}: {text[:200]})"
        ) from None
    if header.rescale_slope != 1.0:
        plane *= np.float32(header.rescale_slope)
    if header.rescale_intercept != 0.0:
        plane += np.float32(header.rescale_intercept)


def _native_pixels(header: SliceHeader) -> np.ndarray:
    bits = int(header.bits_allocated)  # type: ignore[arg-type]
    signed = header.pixel_representation == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = int(header.rows) * int(header.columns)  # type: ignore[arg-type]
    with open(header.path, "rb") as fp:
        fp.seek(header.pixel_offset)  # type: ignore[arg-type]
        buffer = fp.read(count * dtype.itemsize)
    if len(buffer) < count * dtype.itemsize:
        # the header said complete: the file changed since it was read
        raise _SliceFailed(
            f"truncated pixel data: {len(buffer)} of {count * dtype.itemsize} bytes ({header.rows}x{header.columns}x"
            f"{bits} bits) in {header.path.name}"
        )
    stored = np.frombuffer(buffer, dtype=dtype, count=count).reshape(header.rows, header.columns)
    return _without_unused_bits(stored, header)


def _decoded_pixels(header: SliceHeader) -> np.ndarray:
    from pydicom.pixels import pixel_array

    stored = pixel_array(os.fspath(header.path))
    if stored.shape != (header.rows, header.columns):
        raise _SliceFailed(
            f"the pixel data of {header.path.name} decodes to shape {stored.shape}, expected "
            f"({header.rows}, {header.columns})"
        )
    return stored


def _gdcm_hu(header: SliceHeader) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(os.fspath(header.path))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    hu = sitk.GetArrayViewFromImage(image)
    if hu.size != int(header.rows) * int(header.columns):  # type: ignore[arg-type]
        raise _SliceFailed(
            f"the pixel data of {header.path.name} decodes to shape {hu.shape}, expected ({header.rows}, "
            f"{header.columns})"
        )
    # the view's memory belongs to ``image``: copy it out before the image goes
    return np.array(hu.reshape(header.rows, header.columns), dtype=np.float32)  # type: ignore[arg-type]


def _without_unused_bits(stored: np.ndarray, header: SliceHeader) -> np.ndarray:
    # PS3.5 8.1.1: bits above BitsStored are undefined; shift them out (sign-extending signed data), as pydicom does
    stored_bits = header.bits_stored or header.bits_allocated
    shift = int(header.bits_allocated) - int(stored_bits)  # type: ignore[arg-type]
    if shift <= 0:
        return stored
    corrected = np.left_shift(stored, shift)
    np.right_shift(corrected, shift, out=corrected)
    return corrected


class _CapturedStderr:
    """What the process wrote to its stderr while GDCM decoded (shared by every decode running at the time)."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def text(self) -> str:
        try:
            self._handle.seek(0)
            return self._handle.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""


_stderr_lock = threading.Lock()
_stderr_users = 0
_stderr_saved: int | None = None
_stderr_capture: _CapturedStderr | None = None


@contextlib.contextmanager
def _decoder_stderr_captured() -> Iterator[_CapturedStderr | None]:
    """Point the process's stderr (file descriptor 2) at a temporary file while GDCM decodes.

    GDCM prints OpenJPEG's messages about a damaged codestream with C stdio, below Python, so neither ``warnings``
    nor ``logging`` can keep them off the user's terminal. Decodes running at the same time share one capture
    (reference counted); when the last one ends, stderr is restored and the captured text is logged at DEBUG (and
    put into the reason of a failed slice). Python's own writes to ``sys.stderr`` during the window are captured
    too, so the window is kept to the decode itself. Where file descriptor 2 cannot be redirected, nothing is.
    """
    global _stderr_users, _stderr_saved, _stderr_capture
    with _stderr_lock:
        if _stderr_users == 0:
            try:
                sys.stderr.flush()
                handle = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the last decode ends)
                saved = os.dup(2)
                os.dup2(handle.fileno(), 2)
            except (OSError, ValueError, AttributeError):
                handle = None
            else:
                _stderr_saved, _stderr_capture = saved, _CapturedStderr(handle)
        _stderr_users += 1
        capture = _stderr_capture
    try:
        yield capture
    finally:
        with _stderr_lock:
            _stderr_users -= 1
            if _stderr_users == 0 and _stderr_saved is not None:
                os.dup2(_stderr_saved, 2)
                os.close(_stderr_saved)
                text = _stderr_capture.text() if _stderr_capture is not None else ""
                if _stderr_capture is not None:
                    _stderr_capture._handle.close()
                _stderr_saved, _stderr_capture = None, None
                if text.strip():
                    logger.debug("decoder output: %s", " ".join(text.split()))


def _dicom_meta(geometry: SeriesGeometry, name: Path) -> dict[str, Any]:
    affine = geometry.affine_ras
    spacing = np.asarray(geometry.spacing, dtype=float)
    return {
        MetaKeys.AFFINE: affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(geometry.shape),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        MetaKeys.SPACE: SpaceKeys.RAS,
        "spacing": spacing,
        # NIfTI layout (qfac, then the three spacings) so code written for NibabelReader meta keeps working
        "pixdim": np.array([1.0, *spacing, 1.0, 1.0, 1.0, 1.0]),
        "filename_or_obj": str(name),
        "source": "dicom",
    }


def read_nifti(path: str | os.PathLike, *, min_slices: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 3D NIfTI file (or 4D with one volume) as float32 with its scaling applied, after every NIfTI check.

    The checks are :func:`~pipeline.data.nifti.read_checked_nifti`'s, the ones ``aamct manifest build`` applies
    (one 3D volume, a scalar voxel type, an orientation, a finite invertible affine with sane voxel sizes, enough
    slices, readable and finite voxels), on the voxels read once.

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.
        min_slices: fewest slices along the axis closest to S-I.

    Returns:
        The (X, Y, Z) float32 array (F-ordered, as nibabel stores it) and its meta dict.

    Raises:
        ScanRejected: the file fails a check; the reason is the manifest builder's.
    """
    path = Path(path)
    try:
        header, data = read_checked_nifti(path, min_slices=min_slices)
    except NiftiRejected as err:
        raise ScanRejected(path, str(err)) from None
    nifti_header = header.image.header
    meta = {
        MetaKeys.AFFINE: header.affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: header.affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(header.shape),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        MetaKeys.SPACE: SpaceKeys.RAS,
        "spacing": np.asarray([float(z) for z in nifti_header.get_zooms()[:3]]),
        "pixdim": np.asarray(nifti_header["pixdim"], dtype=float),
        "filename_or_obj": str(path),
        "source": "nifti",
    }
    return data, meta


@dataclass
class _LoadedVolume:
    array: np.ndarray
    meta: dict[str, Any]


class CTImageReader(ImageReader):
    """MONAI image reader for CT: DICOM series folders (uncompressed, JPEG 2000...) and NIfTI files.

    Each name given to :meth:`read` is one volume (a series folder, one DICOM file or a NIfTI file); several names
    are stacked as channels, as MONAI's readers do. To read a series given as a list of its files, call
    :func:`read_volume` with the list. Use it through :class:`pipeline.data.loading.LoadScand`: a plain
    ``LoadImaged(reader=CTImageReader())`` falls back to MONAI's other readers when this one refuses a scan.

    Args:
        workers: slice-decoding threads per volume (default: see :func:`read_volume`). Inside a multi-worker
            ``DataLoader`` set it to 1 so the processes do not oversubscribe the cores.
        use_processes: decode slices in a process pool instead of threads.
        min_slices: fewest slices accepted; 1 (the default) applies the geometry checks only.
    """

    def __init__(self, *, workers: int | None = None, use_processes: bool = False, min_slices: int = 1) -> None:
        super().__init__()
        if int(min_slices) < 1:
            raise ValueError(f"min_slices must be at least 1, got {min_slices}")
        self.workers = workers
        self.use_processes = use_processes
        self.min_slices = int(min_slices)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every name is a folder, a NIfTI file or a DICOM-looking file name."""
        return all(
            Path(name).is_dir() or is_nifti_path(name) or Path(name).suffix.lower() in _DICOM_SUFFIXES
            for name in ensure_tuple(filename)
        )

    def read(
        self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs
    ) -> _LoadedVolume | list[_LoadedVolume]:
        """Read every named volume (see the class docstring); ``kwargs`` are accepted for the MONAI API and ignored.

        Raises:
            ScanRejected: a scan fails a check (the message names it and the reason).
        """
        names = ensure_tuple(data)
        volumes = [
            _LoadedVolume(
                *read_volume(name, workers=self.workers, use_processes=self.use_processes, min_slices=self.min_slices)
            )
            for name in names
        ]
        return volumes[0] if len(volumes) == 1 else volumes

    def get_data(self, img: _LoadedVolume | Sequence[_LoadedVolume]) -> tuple[np.ndarray, dict]:
        """The array and meta of one volume, or several volumes stacked on a new first (channel) axis."""
        volumes = [img] if isinstance(img, _LoadedVolume) else list(img)
        if len(volumes) == 1:
            return volumes[0].array, dict(volumes[0].meta)
        shapes = {v.array.shape for v in volumes}
        if len(shapes) > 1:
            raise UserError(f"cannot stack volumes of different shapes as channels: {sorted(shapes)}")
        meta = dict(volumes[0].meta)
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack([v.array for v in volumes], axis=0), meta
