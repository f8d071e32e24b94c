"""The one scan loader: every stage opens a scan through this module, so a scan is read only if it passes ingestion.

Contract (read by every stage; keep it stable):

* **Accepts** a DICOM series folder (its files, not sub-folders), one DICOM file, or a ``.nii`` / ``.nii.gz`` file:
  the ``image`` values of a manifest / datalist. In a folder, files that are not DICOM and DICOMDIRs are ignored,
  a damaged DICOM file rejects the series beside it, and of several series the manifest builder's primary one
  (axial CT, most slices, passing the checks) is read.
* **Checks** exactly what ``aamct manifest build`` checks, with the same functions
  (:func:`~pipeline.data.dicom.discover_series` on the folder: series choice, :class:`~pipeline.data.dicom.
  SeriesCheck` geometry incl. gantry tilt, damaged files; :func:`~pipeline.data.nifti.read_checked_nifti`), plus
  what only decoding can show (pixel data that does not decode). Gantry-tilted stacks are rejected, not resampled.
* **Minimum slice count**: ``min_slices``, default :data:`DEFAULT_MIN_SLICES` (16), the manifest builder's default,
  so a case ``aamct manifest build`` would reject is refused with the same reason. A cohort built with another
  ``--min-slices`` passes that value; tests and toy volumes pass ``min_slices=1`` (geometry checks only).
* **Raises** :class:`ScanRejected` (a :class:`~pipeline.errors.UserError`), message ``"<path>: <reason>"``;
  ``.path`` is the scan as given, ``.reason`` the one-line reason, word for word the ``reason`` column that the
  manifest builder writes to its rejections CSV for the same files. Nothing else is tried: the loader holds one
  reader, :class:`~pipeline.data.reader.CTImageReader`, so MONAI's fall-through to its other readers (which assemble
  damaged or tilted series anyway) cannot happen, and no MONAI reader warning or traceback is produced. Inside a
  MONAI ``Compose`` the error arrives wrapped in ``RuntimeError("applying transform ...")``: :func:`scan_rejection`
  finds it in the chain.
* **Returns** a ``MetaTensor`` (X, Y, Z) float32 in HU (``ensure_channel_first=True``: (1, X, Y, Z)) whose meta
  holds ``affine`` and ``original_affine`` (voxel -> RAS mm), ``spatial_shape``, ``spacing`` (mm along X, Y, Z),
  ``pixdim``, ``original_channel_dim`` (NaN), ``space`` (``RAS``), ``filename_or_obj`` (the path as given) and
  ``source`` (``dicom`` / ``nifti``); never PatientName, PatientID, BirthDate or any other header value.
* **Scope**: every loaded scan is measured by :func:`pipeline.data.scope.assess_scope` (is it a chest CT with lungs
  in view: lung volume, craniocaudal extent, lungs cut by an end slice, HU plausibility; a coarse grid, a few per
  cent of a case's score time). An out-of-scope scan is refused with :class:`~pipeline.data.scope.ScanOutOfScope`
  (a :class:`ScanRejected` whose reason names the measured values) unless ``allow_out_of_scope``; the measurement
  is in the meta either way (``scope``, ``scope_reason``, ``scope_lung_ml``, ``scope_lung_extent_mm``,
  ``scope_lung_cut``, ``scope_note``, ``scope_seconds``). ``aamct manifest build`` runs the same function
  on the same loaded volume (:func:`scope_of_scan`).
* :func:`check_scan` applies the same checks from the headers alone (no pixel decoded, no NIfTI voxel read) and
  returns the same reason, or None: the cheap pre-flight probe. What only the pixels show (NaN voxels, a codestream
  that does not decode) is found by the loader.

Usage::

    LoadScand(keys="image")                               # a bundle config: "_target_": "pipeline.data.loading.LoadScand"
    LoadScand(keys="image", min_slices=1, workers=1)      # toy volumes; one decoding thread per DataLoader worker
    LoadScan()("/data/case_001")                          # the array form
    LoadScand(keys="image", allow_out_of_scope=True)      # score anyway; the meta says out_of_scope
    reason = check_scan("/data/case_001")                 # None, or the manifest builder's reason
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged, MapTransform
from monai.utils import ensure_tuple_rep

from pipeline.data.dicom import (
    DEFAULT_MIN_SLICES,
    SeriesCheck,
    SeriesRejected,
    discover_series,
    group_series,
    scan_headers,
)
from pipeline.data.nifti import NiftiRejected, check_nifti_header
from pipeline.data.reader import CTImageReader, ScanRejected, is_nifti_path, read_volume, series_folder_reason
from pipeline.data.scope import ScanOutOfScope, ScopeResult, ScopeThresholds, assess_scope

__all__ = [
    "DEFAULT_MIN_SLICES",
    "LoadScan",
    "LoadScand",
    "ScanOutOfScope",
    "ScanRejected",
    "check_scan",
    "scan_rejection",
    "scope_of_scan",
]


class LoadScan(LoadImage):
    """Load one scan with :class:`~pipeline.data.reader.CTImageReader` and nothing else (see the module docstring).

    A ``LoadImage`` (so code that recognises MONAI's loader keeps working) whose reader list is this one reader:
    MONAI's ``LoadImage`` instantiates every reader it knows and, when the given reader raises, tries the others in
    turn; here the reader is always passed to ``LoadImage.__call__`` as the runtime reader, which MONAI calls
    directly, so its error is the result.

    Args:
        min_slices: fewest slices accepted (default :data:`DEFAULT_MIN_SLICES`, the manifest builder's).
        workers: slice-decoding threads per scan (default: one per CPU for JPEG 2000, else 1); use 1 inside a
            multi-worker ``DataLoader``.
        image_only: return only the ``MetaTensor`` (else ``(image, meta)``).
        dtype: array dtype (float32 HU by default).
        ensure_channel_first: add the channel axis: (1, X, Y, Z).
        allow_out_of_scope: load a scan the scope check finds out of scope (the meta says so) instead of refusing
            it with :class:`~pipeline.data.scope.ScanOutOfScope`.
        scope_thresholds: the scope check's thresholds (a bundle config's ``scope_thresholds``; default
            :data:`~pipeline.contracts.defaults.DEFAULT_SCOPE_THRESHOLDS`).

    Raises:
        ValueError: ``min_slices`` below 1, or an unknown scope threshold.
    """

    def __init__(
        self,
        *,
        min_slices: int = DEFAULT_MIN_SLICES,
        workers: int | None = None,
        image_only: bool = True,
        dtype: DtypeLike | None = np.float32,
        ensure_channel_first: bool = False,
        allow_out_of_scope: bool = False,
        scope_thresholds: Mapping[str, Any] | ScopeThresholds | None = None,
    ) -> None:
        # LoadImage.__init__ is not called: it would instantiate every MONAI reader (one warns when its plugin is
        # missing), all of them candidates for the fall-through this class exists to prevent
        self.reader = CTImageReader(workers=workers, min_slices=min_slices)
        # "false" from a bundle command line is a string: read it as the user means it
        if isinstance(allow_out_of_scope, str):
            allow_out_of_scope = allow_out_of_scope.strip().lower() in ("1", "true", "yes", "on")
        self.allow_out_of_scope = bool(allow_out_of_scope)
        self.scope_thresholds = ScopeThresholds.from_mapping(scope_thresholds)
        self.readers: list[ImageReader] = [self.reader]
        self.auto_select = False
        self.image_only = image_only
        self.dtype = dtype
        self.ensure_channel_first = ensure_channel_first
        self.simple_keys = False
        self.pattern = None
        self.sep = "."
        self.expanduser = True

    @property
    def min_slices(self) -> int:
        """Fewest slices accepted."""
        return self.reader.min_slices

    def register(self, reader: ImageReader) -> None:
        """Refused: this loader reads with :class:`~pipeline.data.reader.CTImageReader` only.

        Raises:
            TypeError: always.
        """
        raise TypeError(f"{type(self).__name__} reads with CTImageReader only; it does not take other readers")

    def __call__(self, filename: Sequence[str | os.PathLike] | str | os.PathLike, reader: ImageReader | None = None):
        """Load ``filename`` (see the module docstring).

        Raises:
            ScanRejected: the scan fails a check (:class:`~pipeline.data.scope.ScanOutOfScope`: out of scope).
            TypeError: another reader is passed.
        """
        if reader is not None and reader is not self.reader:
            raise TypeError(f"{type(self).__name__} reads with CTImageReader only; it does not take other readers")
        loaded = super().__call__(filename, reader=self.reader)
        image, meta = (loaded, loaded.meta) if self.image_only else loaded
        scope = assess_scope(image, meta.get("affine"), thresholds=self.scope_thresholds)
        meta.update(scope.as_meta())
        if not self.image_only and hasattr(image, "meta") and image.meta is not meta:
            image.meta.update(scope.as_meta())
        if not scope.in_scope and not self.allow_out_of_scope:
            raise ScanOutOfScope(meta.get("filename_or_obj", filename), scope.reason, scope)
        return loaded


class LoadScand(LoadImaged):
    """Dictionary form of :class:`LoadScan`: loads ``data[key]`` for every key (see the module docstring).

    Args:
        keys: keys of the scans to load (e.g. ``"image"``).
        min_slices: fewest slices accepted (default :data:`DEFAULT_MIN_SLICES`, the manifest builder's).
        workers: slice-decoding threads per scan (see :class:`LoadScan`).
        image_only: store only the ``MetaTensor`` under the key (else also ``<key>_meta_dict``).
        dtype: array dtype (float32 HU by default).
        ensure_channel_first: add the channel axis: (1, X, Y, Z).
        allow_out_of_scope: load out-of-scope scans too (see :class:`LoadScan`).
        scope_thresholds: the scope check's thresholds (see :class:`LoadScan`).
        allow_missing_keys: do not raise for a missing key.
    """

    def __init__(
        self,
        *,
        keys: KeysCollection,
        min_slices: int = DEFAULT_MIN_SLICES,
        workers: int | None = None,
        image_only: bool = True,
        dtype: DtypeLike | None = np.float32,
        ensure_channel_first: bool = False,
        allow_out_of_scope: bool = False,
        scope_thresholds: Mapping[str, Any] | ScopeThresholds | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        # LoadImaged.__init__ is not called, for LoadScan's reason: it would build a LoadImage with every reader
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._loader = LoadScan(
            min_slices=min_slices,
            workers=workers,
            image_only=image_only,
            dtype=dtype,
            ensure_channel_first=ensure_channel_first,
            allow_out_of_scope=allow_out_of_scope,
            scope_thresholds=scope_thresholds,
        )
        self.meta_keys = ensure_tuple_rep(None, len(self.keys))
        self.meta_key_postfix = ensure_tuple_rep("meta_dict", len(self.keys))
        self.overwriting = False

    @property
    def min_slices(self) -> int:
        """Fewest slices accepted."""
        return self._loader.min_slices

    @property
    def allow_out_of_scope(self) -> bool:
        """Out-of-scope scans are loaded (and marked) rather than refused."""
        return self._loader.allow_out_of_scope

    def register(self, reader: ImageReader) -> None:
        """Refused, as :meth:`LoadScan.register`."""
        self._loader.register(reader)


def check_scan(path: str | os.PathLike, *, min_slices: int = DEFAULT_MIN_SLICES) -> str | None:
    """The loader's checks from the headers alone: the reason a scan would be refused, or None.

    Args:
        path: a DICOM series folder, one DICOM file, or a NIfTI file.
        min_slices: fewest slices accepted (as for :class:`LoadScand`).

    Returns:
        None if the headers pass, else the one-line reason (the manifest builder's for the same files, without the
        path). Problems only the pixels show (NaN voxels, undecodable pixel data) are not seen here.
    """
    path = Path(path)
    if not path.exists():
        return "no such file or folder"
    check = SeriesCheck(min_slices=min_slices)
    if path.is_dir():
        discovery = discover_series(path, check=check, recursive=False)
        return None if discovery.accepted else series_folder_reason(path, discovery)
    if is_nifti_path(path):
        try:
            check_nifti_header(path, min_slices=min_slices)
        except NiftiRejected as err:
            return str(err)
        return None
    headers, unreadable = scan_headers([path])
    if unreadable:
        return unreadable[0].reason
    (series,) = group_series(headers)
    try:
        check(series.slices)
    except SeriesRejected as err:
        return str(err)
    return None


def scope_of_scan(
    path: str | os.PathLike,
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
    thresholds: Mapping[str, Any] | ScopeThresholds | None = None,
    modality: str = "",
    image_type: tuple[str, ...] = (),
) -> ScopeResult:
    """Load a scan as the loader does and return its scope verdict (the manifest builder's scope columns).

    Args:
        path: a DICOM series folder, one DICOM file, or a NIfTI file.
        min_slices: fewest slices accepted.
        thresholds: the scope thresholds (default :data:`~pipeline.contracts.defaults.DEFAULT_SCOPE_THRESHOLDS`).
        modality: the series' DICOM Modality (a note only).
        image_type: its ImageType values (a note only).

    Returns:
        The :class:`~pipeline.data.scope.ScopeResult` the loader would find.

    Raises:
        ScanRejected: the scan cannot be read.
    """
    hu, meta = read_volume(path, min_slices=min_slices)
    return assess_scope(hu, meta["affine"], thresholds=thresholds, modality=modality, image_type=image_type)


def scan_rejection(error: BaseException) -> ScanRejected | None:
    """The :class:`ScanRejected` behind ``error`` (itself, or in its ``__cause__`` / ``__context__`` chain).

    MONAI's ``Compose`` re-raises a transform's error as ``RuntimeError("applying transform ...")`` from the
    original; this finds the original so the caller can report its one-line reason.

    Args:
        error: the exception caught.

    Returns:
        The scan rejection, or None if the chain holds none.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ScanRejected):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
