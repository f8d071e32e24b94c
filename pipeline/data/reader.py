"""The project's CT reader: a DICOM series folder (uncompressed or JPEG 2000) or a NIfTI file -> float32 HU volume.

:class:`CTImageReader` is a MONAI :class:`~monai.data.ImageReader`, usable as
``LoadImaged(keys="image", reader=CTImageReader())`` or in a bundle config as
``"reader": "$pipeline.data.reader.CTImageReader()"``. Its conventions match MONAI's ``PydicomReader`` /
``ITKReader`` (``affine_lps_to_ras=True``) and ``NibabelReader``:

* the array is indexed (X, Y, Z) like the affine's columns: i = columns (x), j = rows (y), k = slices; for DICOM it
  is an F-ordered view of a C-ordered (slices, rows, columns) buffer, the layout ``ITKReader`` also returns;
* ``affine`` / ``original_affine`` map voxel indices to RAS millimetres;
* meta holds ``spatial_shape``, ``spacing``, ``pixdim``, ``original_channel_dim`` (NaN: no channel), ``space``,
  ``filename_or_obj``, ``source`` (``dicom`` / ``nifti``) and nothing identifying (no PatientName, PatientID...).

Why our own reader rather than ``PydicomReader`` or ``ITKReader``: ``PydicomReader`` orders slices by InstanceNumber
and estimates the spacing from z only, and ``ITKReader`` needs ``itk`` (1.5 GB) and silently ignores gantry tilt and
gaps. This reader sorts along the slice normal and applies the same :class:`~pipeline.data.dicom.SeriesCheck` as
``aamct manifest build``, so a series that reads here is one that passes ingestion. It is also faster: uncompressed
pixel data is taken with ``np.frombuffer`` at the offset found while reading the header (no pydicom pixel
handler), compressed slices are decoded by pydicom's own decoders (pylibjpeg-openjpeg for JPEG 2000), and slices are
decoded in a thread pool when compressed (the JPEG 2000 decoder releases the GIL). Uncompressed slices are read
sequentially by default: each is a file read plus a numpy cast, and threads measured no faster (slower on a busy
machine). A process pool is slower in every case, because every decoded slice must be pickled back; the figures are
in benchmarks/results/ingestion.json (benchmarks/bench_ingestion.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from pipeline.data.dicom import (
    NATIVE_TRANSFER_SYNTAXES,
    SeriesCheck,
    SeriesGeometry,
    SeriesRejected,
    SliceHeader,
    choose_series,
    group_series,
    scan_headers,
)
from pipeline.errors import UserError

__all__ = ["CTImageReader", "read_volume", "read_dicom_series", "read_nifti", "is_nifti_path"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for ``.nii`` and ``.nii.gz`` names."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def read_volume(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    workers: int | None = None,
    use_processes: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a CT volume as float32 HU.

    Args:
        path: a DICOM series folder, the list of files of one DICOM series, one DICOM file, or a NIfTI file.
        workers: slice-reading workers; 1 reads sequentially. Default: one thread per CPU for compressed series,
            sequential for uncompressed ones (threads do not speed those up; see the module docstring).
        use_processes: read slices in a process pool instead of threads (slower for typical series; kept for the
            benchmark).

    Returns:
        The (X, Y, Z) float32 array and its meta dict (see the module docstring).

    Raises:
        UserError: the path is missing, holds no readable series, or the series fails the geometry checks; the
            message names the file or folder.
    """
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            path = path[0]
        else:
            files = [Path(p) for p in path]
            return read_dicom_series(files, workers=workers, use_processes=use_processes)
    path = Path(path)  # type: ignore[arg-type]
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path, workers=workers, use_processes=use_processes)
    if is_nifti_path(path):
        return read_nifti(path)
    return read_dicom_series([path], workers=workers, use_processes=use_processes)


def read_dicom_series(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    workers: int | None = None,
    use_processes: bool = False,
    check: SeriesCheck | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM series: a folder (its files, not sub-folders) or an explicit list of files.

    A folder holding several series is resolved with :func:`~pipeline.data.dicom.choose_series`, the rule
    ``aamct manifest build`` uses (primary axial CT series, most slices, passing the checks); an explicit list of
    files must be exactly one series. Files in the folder that are not DICOM are ignored (logged at DEBUG).

    Args:
        source: the folder or the files.
        workers: slice-reading workers (default: see :func:`read_volume`).
        use_processes: decode in a process pool instead of threads.
        check: geometry check (default: :class:`SeriesCheck` with no minimum slice count).

    Returns:
        The (X, Y, Z) float32 HU array and its meta dict.

    Raises:
        UserError: no series, several series where one is needed, a failed check, or undecodable pixel data.
    """
    check = check or SeriesCheck(min_slices=1)
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder")
        files = sorted(p for p in folder.iterdir() if p.is_file())
        name = folder
    else:
        files = [Path(p) for p in source]
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: no such file")
        name = files[0].parent if len(files) > 1 else files[0]
    headers, unreadable = scan_headers(files, workers=workers)
    for rejection in unreadable:
        logger.debug("ignoring %s: %s", rejection.path, rejection.reason)
    if not headers:
        detail = f" ({unreadable[0].reason})" if unreadable else ""
        if not files and isinstance(source, (str, os.PathLike)):
            subfolders = sorted(p.name for p in Path(source).iterdir() if p.is_dir())
            if subfolders:
                shown = ", ".join(subfolders[:3]) + (", ..." if len(subfolders) > 3 else "")
                detail = f" directly inside; it holds sub-folders ({shown}): point at one series folder"
        raise UserError(f"{name}: no DICOM files{detail}")
    series = group_series(headers)
    if len(series) == 1:
        try:
            geometry = check(series[0].slices)
        except SeriesRejected as err:
            raise UserError(f"{name}: {err}") from None
    else:
        if not isinstance(source, (str, os.PathLike)):
            raise UserError(f"{name}: the files given belong to {len(series)} series; pass the files of one series")
        chosen, rejections = choose_series(series, check)
        if chosen is None:
            reasons = "; ".join(sorted({r.reason for r in rejections})[:3])
            raise UserError(f"{name}: none of its {len(series)} series is readable ({reasons})")
        geometry = chosen.geometry  # type: ignore[assignment]
    volume = _read_pixels(geometry, workers=workers, use_processes=use_processes)  # type: ignore[arg-type]
    return volume.transpose(2, 1, 0), _dicom_meta(geometry, name)  # type: ignore[arg-type]


def _read_pixels(geometry: SeriesGeometry, *, workers: int | None, use_processes: bool) -> np.ndarray:
    """Decode every slice into one C-ordered (slices, rows, columns) float32 HU buffer."""
    columns, rows, n = geometry.shape
    out = np.empty((n, rows, columns), dtype=np.float32)
    slices = geometry.slices
    if workers is None:
        # measured (benchmarks/bench_ingestion.py): uncompressed slices are a read plus a numpy cast, which threads do
        # not speed up (and slow down on a busy machine); decoding JPEG 2000 releases the GIL and gains from threads
        compressed = any(h.pixel_offset is None for h in slices)
        workers = (os.cpu_count() or 1) if compressed else 1
    if workers <= 1 or n < 2:
        for k, header in enumerate(slices):
            _slice_into(header, out[k])
        return out
    executor: Executor
    if use_processes:
        executor = ProcessPoolExecutor(max_workers=workers)
        with executor:
            for k, plane in enumerate(executor.map(_slice_hu, slices, chunksize=max(1, n // (4 * workers)))):
                out[k] = plane
        return out
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-pixels") as executor:
        # each task writes its own plane of ``out``: no result copies, no lock needed
        list(executor.map(_slice_into, slices, list(out)))
    return out


def _slice_hu(header: SliceHeader) -> np.ndarray:
    plane = np.empty((header.rows, header.columns), dtype=np.float32)  # type: ignore[arg-type]
    _slice_into(header, plane)
    return plane


def _slice_into(header: SliceHeader, plane: np.ndarray) -> None:
    """Decode one slice and write stored * RescaleSlope + RescaleIntercept into ``plane`` (float32)."""
    try:
        if header.transfer_syntax in NATIVE_TRANSFER_SYNTAXES and header.pixel_offset is not None:
            plane[...] = _native_pixels(header)
        else:
            plane[...] = _decoded_pixels(header)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{header.path}: cannot decode the pixel data ({type(err).__name__}: {err})") from None
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
        raise UserError(f"{header.path}: truncated pixel data ({len(buffer)} of {count * dtype.itemsize} bytes)")
    stored = np.frombuffer(buffer, dtype=dtype, count=count).reshape(header.rows, header.columns)
    return _without_unused_bits(stored, header)


def _decoded_pixels(header: SliceHeader) -> np.ndarray:
    from pydicom.pixels import pixel_array

    stored = pixel_array(os.fspath(header.path))
    if stored.shape != (header.rows, header.columns):
        raise UserError(
            f"{header.path}: decoded pixel data has shape {stored.shape}, expected ({header.rows}, {header.columns})"
        )
    return stored


def _without_unused_bits(stored: np.ndarray, header: SliceHeader) -> np.ndarray:
    # PS3.5 8.1.1: bits above BitsStored are undefined; shift them out (sign-extending signed data), as pydicom does
    stored_bits = header.bits_stored or header.bits_allocated
    shift = int(header.bits_allocated) - int(stored_bits)  # type: ignore[arg-type]
    if shift <= 0:
        return stored
    corrected = np.left_shift(stored, shift)
    np.right_shift(corrected, shift, out=corrected)
    return corrected


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


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 3D NIfTI file (or 4D with one volume) as float32 with its scaling applied.

    Args:
        path: the ``.nii`` / ``.nii.gz`` file.

    Returns:
        The (X, Y, Z) float32 array (F-ordered, as nibabel stores it) and its meta dict.

    Raises:
        UserError: unreadable file or not a single 3D volume.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(path)
        shape = tuple(int(v) for v in image.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise UserError(f"{path}: expected a 3D volume, found shape {tuple(image.shape)}")
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape, order="F")
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        pixdim = np.asarray(image.header["pixdim"], dtype=float)
        affine = np.asarray(image.affine, dtype=float)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{path}: cannot read NIfTI ({type(err).__name__}: {' '.join(str(err).split())})") from None
    meta = {
        MetaKeys.AFFINE: affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(shape),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        MetaKeys.SPACE: SpaceKeys.RAS,
        "spacing": np.asarray(zooms),
        "pixdim": pixdim,
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
    :func:`read_volume` with the list.

    Args:
        workers: slice-reading threads per volume (default: see :func:`read_volume`). Inside a multi-worker
            ``DataLoader`` set it to 1 so the processes do not oversubscribe the cores.
        use_processes: decode slices in a process pool instead of threads.
    """

    def __init__(self, *, workers: int | None = None, use_processes: bool = False) -> None:
        super().__init__()
        self.workers = workers
        self.use_processes = use_processes

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every name is a folder, a NIfTI file or a DICOM-looking file name."""
        return all(
            Path(name).is_dir() or is_nifti_path(name) or Path(name).suffix.lower() in _DICOM_SUFFIXES
            for name in ensure_tuple(filename)
        )

    def read(
        self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs
    ) -> _LoadedVolume | list[_LoadedVolume]:
        """Read every named volume (see the class docstring); ``kwargs`` are accepted for the MONAI API and ignored."""
        names = ensure_tuple(data)
        volumes = [
            _LoadedVolume(*read_volume(name, workers=self.workers, use_processes=self.use_processes)) for name in names
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
