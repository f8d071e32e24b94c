"""``aamct manifest build``: DICOM tree and/or NIfTI files -> validated manifest CSV plus its rejections CSV.

Outputs (written atomically):

* ``FILE.csv``, one row per accepted case: ``case_id, patient_id, image, label, site, split, fold, n_slices,
  spacing_mm, source, scope, lung_ml, lung_extent_mm, lung_cut, scope_note``. The scope columns come from the
  loader's scope check (:func:`pipeline.data.scope.assess_scope`) on the decoded volume: every accepted series and
  file is read once here, so the builder, the loader and every stage give one scan one verdict. A scan out of scope
  (not a chest CT with lungs in view) is a rejection whose reason names the measured values, unless
  ``allow_out_of_scope`` keeps it in the manifest with ``scope`` ``out_of_scope``. ``split`` and ``fold`` are empty (``aamct manifest split`` fills them). ``image`` is relative
  to the manifest's folder when the data lie inside it, absolute otherwise. Note that folder and file names are
  written as they are: an export whose folder names carry patient names must be renamed before it is shared.
* ``FILE.rejections.csv``, one row per rejected series or file: ``path, series_uid, reason, n_files``. The files of
  the accepted series plus ``n_files`` of the rejections add up to every file scanned: nothing is dropped silently.

Ids are pseudonymous (:mod:`pipeline.data.pseudonym`): ``case_id`` is an HMAC of StudyInstanceUID +
SeriesInstanceUID (of a content fingerprint for series without UIDs and for NIfTI files), ``patient_id`` an HMAC of
PatientID (falling back to the StudyInstanceUID, then to the case itself). No PatientName, PatientID, BirthDate or
AccessionNumber value is written to any output or log, and the manifest holds no UID; only the rejections CSV names
the SeriesInstanceUID of each rejected series, so it can be found again in the source archive.

Labels CSV: a ``label`` column, an optional ``site`` column and at least one key column among ``path`` (series
folder, a file of the series, an ancestor folder, or a NIfTI file; relative to the DICOM root or to the labels CSV,
or absolute), ``series_uid``, ``study_uid``, ``accession`` (AccessionNumber) and ``patient_id`` (raw PatientID, used
only for matching). Each row uses its most specific non-empty key; a case takes the label of its most specific
matching row (series or exact path, then the deepest ancestor folder, study, accession, patient). Cases without a
matching row keep an empty label; matching rows of equal rank that disagree reject the case.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.contracts.manifest import MANIFEST_COLUMNS as CONTRACT_COLUMNS
from pipeline.contracts.manifest import REJECTION_COLUMNS, rejections_path_for
from pipeline.data.dicom import DEFAULT_MIN_SLICES, DicomSeries, Rejection, SeriesCheck, discover_series
from pipeline.data.nifti import NiftiInfo, NiftiRejected, read_checked_nifti
from pipeline.data.pseudonym import Pseudonymizer, load_key
from pipeline.data.reader import ScanRejected, read_series_geometry
from pipeline.data.scope import SCOPE_COLUMNS, ScopeResult, ScopeThresholds, assess_scope
from pipeline.errors import UserError
from pipeline.io import write_csv_atomic

__all__ = [
    "DEFAULT_MIN_SLICES",
    "MANIFEST_COLUMNS",
    "LABEL_KEY_COLUMNS",
    "ManifestBuildResult",
    "LabelRow",
    "build_manifest",
    "read_labels",
]

logger = logging.getLogger(__name__)

#: what the builder writes: the manifest contract's columns (:mod:`pipeline.contracts.manifest`), then its own facts
MANIFEST_COLUMNS: tuple[str, ...] = (*CONTRACT_COLUMNS, "n_slices", "spacing_mm", "source", *SCOPE_COLUMNS)
#: key columns of a labels CSV, most specific first
LABEL_KEY_COLUMNS: tuple[str, ...] = ("path", "series_uid", "study_uid", "accession", "patient_id")

# rank of a match: higher wins; ancestor-folder matches rank by depth between study and exact path
_RANK_EXACT = 1000
_RANK_STUDY = 30
_RANK_ACCESSION = 20
_RANK_PATIENT = 10


@dataclass
class ManifestBuildResult:
    """What :func:`build_manifest` did.

    Attributes:
        manifest_path: the manifest CSV written.
        rejections_path: the rejections CSV written.
        n_cases: rows in the manifest.
        n_rejected: rows in the rejections CSV.
        n_files: DICOM-tree files examined.
        n_series: DICOM series found.
        n_studies: DICOM studies found.
        n_nifti: NIfTI files examined.
        n_labelled: cases with a non-empty label.
        rejection_kinds: rejections counted by kind of reason.
        n_label_rows: data rows in the labels CSV (0 without one).
        unmatched_label_lines: CSV line numbers of label rows that match no accepted case.
        n_patient_fallback: cases without a PatientID (their patient id comes from the study or the case).
    """

    manifest_path: Path
    rejections_path: Path
    n_cases: int
    n_rejected: int
    n_files: int = 0
    n_series: int = 0
    n_studies: int = 0
    n_nifti: int = 0
    n_labelled: int = 0
    rejection_kinds: dict[str, int] = field(default_factory=dict)
    n_label_rows: int = 0
    unmatched_label_lines: list[int] = field(default_factory=list)
    n_patient_fallback: int = 0

    def summary(self) -> str:
        """A few lines for the terminal: files scanned, series found, cases accepted, rejections, label matching."""
        lines = [
            f"scanned {self.n_files} DICOM-tree files ({self.n_series} series in {self.n_studies} studies) and "
            f"{self.n_nifti} NIfTI files",
            f"accepted {self.n_cases} cases ({self.n_labelled} labelled, {self.n_cases - self.n_labelled} without a "
            f"label) -> {self.manifest_path}",
            f"rejected {self.n_rejected} series/files -> {self.rejections_path}",
        ]
        for kind, count in sorted(self.rejection_kinds.items(), key=lambda kv: (-kv[1], kv[0]))[:10]:
            lines.append(f"  {count:5d}  {kind}")
        if len(self.rejection_kinds) > 10:
            lines.append(f"  ...and {len(self.rejection_kinds) - 10} more kinds (see the rejections CSV)")
        if self.n_label_rows:
            unmatched = self.unmatched_label_lines
            shown = ", ".join(map(str, unmatched[:10])) + (", ..." if len(unmatched) > 10 else "")
            lines.append(
                f"labels: {len(unmatched)} of {self.n_label_rows} rows match no accepted case"
                + (f" (CSV lines {shown})" if unmatched else "")
            )
        if self.n_patient_fallback:
            lines.append(
                f"note: {self.n_patient_fallback} cases have no PatientID; their patient_id is derived from the "
                "StudyInstanceUID (or from the case itself when that is blank too)"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class LabelRow:
    """One data row of a labels CSV.

    Attributes:
        line: line number in the CSV (the header is line 1).
        key: the key column used (see :data:`LABEL_KEY_COLUMNS`), or "" when the row has no key value.
        value: the key's value (for ``path``: the resolved absolute path).
        label: the label ("" when blank).
        site: the site ("" when blank or absent).
        patient_id: raw PatientID given in the row ("" when absent); used for matching and hashing only.
    """

    line: int
    key: str
    value: str
    label: str
    site: str
    patient_id: str = field(default="", repr=False)


def read_labels(labels_csv: str | os.PathLike, *, dicom_root: str | os.PathLike | None = None) -> list[LabelRow]:
    """Read a labels CSV (see the module docstring for its columns).

    Args:
        labels_csv: the CSV.
        dicom_root: folder that relative ``path`` values are resolved against first (then the CSV's folder, then
            the working directory).

    Returns:
        One :class:`LabelRow` per data row.

    Raises:
        UserError: the file is missing or unreadable, or lacks the ``label`` column or every key column.
    """
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise UserError(f"{labels_csv}: labels CSV not found")
    try:
        frame = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise UserError(
            f"{labels_csv}: cannot read the labels CSV ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "label" not in frame.columns:
        raise UserError(f"{labels_csv}: no 'label' column (columns: {', '.join(frame.columns) or 'none'})")
    keys = [c for c in LABEL_KEY_COLUMNS if c in frame.columns]
    if not keys:
        raise UserError(f"{labels_csv}: no key column; add one of {', '.join(LABEL_KEY_COLUMNS)}")
    bases = [Path(dicom_root).resolve()] if dicom_root is not None else []
    bases += [labels_csv.resolve().parent, Path.cwd()]
    rows: list[LabelRow] = []
    for index, record in enumerate(frame.to_dict("records")):
        values = {k: str(record.get(k, "")).strip() for k in keys}
        key = next((k for k in keys if values[k]), "")
        value = values.get(key, "")
        if key == "path":
            value = _resolve_label_path(value, bases)
        rows.append(
            LabelRow(
                line=index + 2,
                key=key,
                value=value,
                label=str(record.get("label", "")).strip(),
                site=str(record.get("site", "")).strip(),
                patient_id=values.get("patient_id", ""),
            )
        )
    return rows


def _resolve_label_path(value: str, bases: Sequence[Path]) -> str:
    path = Path(value).expanduser()
    if path.is_absolute():
        return os.path.realpath(path)
    candidates = [base / path for base in bases]
    for candidate in candidates:
        if candidate.exists():
            return os.path.realpath(candidate)
    return os.path.realpath(candidates[0])


@dataclass
class _Case:
    """An accepted series or NIfTI file on its way into the manifest."""

    image: Path
    source: str
    n_slices: int
    spacing_mm: str
    identity: tuple[str, str]  # ("uid", study+series) or ("fingerprint", ...), hashed into the case id
    n_files: int
    match_paths: list[tuple[str, int]]  # (realpath, rank) candidates for path keys
    series_uid: str = ""
    study_uid: str = ""
    accession: str = field(default="", repr=False)
    raw_patient_id: str = field(default="", repr=False)
    label: str = ""
    site: str = ""
    label_patient_id: str = field(default="", repr=False)
    scope: ScopeResult | None = None


def build_manifest(
    *,
    dicom_root: str | os.PathLike | None,
    nifti_glob: str | None,
    labels_csv: str | os.PathLike | None,
    out: str | os.PathLike,
    site: str | None = None,
    min_slices: int | None = None,
    key_file: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = False,
    allow_out_of_scope: bool = False,
    scope_thresholds: ScopeThresholds | None = None,
) -> ManifestBuildResult:
    """Discover, check, label and pseudonymise a cohort; write the manifest and its rejections.

    Args:
        dicom_root: folder searched recursively for DICOM files (headers only), or None.
        nifti_glob: glob of NIfTI files (``**`` allowed), or None.
        labels_csv: labels CSV (see the module docstring), or None for unlabelled cases.
        out: manifest CSV to write; the rejections go to ``<stem>.rejections.csv`` beside it.
        site: site of cases whose site is not given in the labels CSV.
        min_slices: fewest slices a series or volume may have (default :data:`DEFAULT_MIN_SLICES`, 16).
        key_file: pseudonymisation key file (default: env ``AAMCT_PSEUDONYM_KEY`` or the per-user key).
        workers: header-reading threads (default: sequential, the fastest on local disks; threads can help on a
            network share) and NIfTI-checking threads (default: CPU count).
        progress: show a progress bar of the files read on stderr (only when stderr is a terminal).
        allow_out_of_scope: keep scans the scope check finds out of scope (``scope`` column ``out_of_scope``)
            instead of rejecting them.
        scope_thresholds: the scope check's thresholds (default: the loader's).

    Returns:
        A :class:`ManifestBuildResult`.

    Raises:
        UserError: no inputs, a missing DICOM root, a glob matching nothing, an unreadable labels CSV, an output that
            cannot be written, or a bad key file. Rejected series and files are not errors.
    """
    _check_out_name(out)
    out = Path(out)
    rejections_path = rejections_path_for(out)
    if dicom_root is None and not nifti_glob:
        raise UserError("no inputs: give --dicom-root and/or --nifti-glob")
    if dicom_root is not None and not Path(dicom_root).is_dir():
        raise UserError(f"{dicom_root}: DICOM root folder not found")
    if min_slices is not None and min_slices < 1:
        raise UserError(f"--min-slices must be at least 1, got {min_slices}")
    _check_writable(out, rejections_path)
    nifti_files = _expand_glob(nifti_glob) if nifti_glob else []
    _check_not_an_input(out, rejections_path, [*nifti_files, *([Path(labels_csv)] if labels_csv else [])])
    labels = read_labels(labels_csv, dicom_root=dicom_root) if labels_csv is not None else []
    pseudonymizer = Pseudonymizer(load_key(key_file))
    min_slices = DEFAULT_MIN_SLICES if min_slices is None else int(min_slices)

    rejections: list[Rejection] = []
    cases: list[_Case] = []
    n_files = n_series = n_studies = 0
    if dicom_root is not None:
        root = Path(dicom_root)
        exclude = [out, rejections_path, *nifti_files]
        if labels_csv is not None:
            exclude.append(Path(labels_csv))
        with _progress_bar(progress, "reading DICOM headers") as on_file:
            discovery = discover_series(
                root, check=SeriesCheck(min_slices=min_slices), workers=workers, exclude=exclude, progress=on_file
            )
        n_files, n_series, n_studies = discovery.n_files, len(discovery.series), discovery.n_studies
        rejections.extend(discovery.rejections)
        dicom_cases = [_dicom_case(s, root) for s in discovery.accepted]
        with _progress_bar(progress, "checking the scope of each series") as on_case:
            kept, refused = _scope_dicom_cases(
                dicom_cases, discovery.accepted, thresholds=scope_thresholds, allow=allow_out_of_scope, progress=on_case
            )
        cases.extend(kept)
        rejections.extend(refused)
    if nifti_files:
        with _progress_bar(progress, "checking NIfTI files") as on_file:
            nifti_cases, nifti_rejections = _check_nifti_files(
                nifti_files,
                min_slices=min_slices,
                workers=workers,
                progress=on_file,
                thresholds=scope_thresholds,
                allow_out_of_scope=allow_out_of_scope,
            )
        cases.extend(nifti_cases)
        rejections.extend(nifti_rejections)

    unmatched, conflicts = _apply_labels(cases, labels)
    rejections.extend(conflicts.values())
    cases = [c for c in cases if id(c) not in conflicts]

    rows, duplicates, n_fallback = _manifest_rows(cases, pseudonymizer, out.parent, site or "")
    rejections.extend(duplicates)
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    rejection_frame = pd.DataFrame(
        [
            {
                "path": _display_path(r.path, out.parent),
                "series_uid": r.series_uid,
                "reason": r.reason,
                "n_files": r.n_files,
            }
            for r in sorted(rejections, key=lambda r: (str(r.path), r.series_uid, r.reason))
        ],
        columns=list(REJECTION_COLUMNS),
    )
    for path, frame in ((out, manifest), (rejections_path, rejection_frame)):
        try:
            write_csv_atomic(path, frame)
        except OSError as err:
            raise UserError(f"{path}: cannot write: {err.strerror or err}") from None
    result = ManifestBuildResult(
        manifest_path=out,
        rejections_path=rejections_path,
        n_cases=len(manifest),
        n_rejected=len(rejection_frame),
        n_files=n_files,
        n_series=n_series,
        n_studies=n_studies,
        n_nifti=len(nifti_files),
        n_labelled=int((manifest["label"] != "").sum()) if len(manifest) else 0,
        rejection_kinds=dict(Counter(r.kind for r in rejections)),
        n_label_rows=len(labels),
        unmatched_label_lines=unmatched,
        n_patient_fallback=n_fallback,
    )
    logger.info("manifest: %d cases, %d rejections -> %s", result.n_cases, result.n_rejected, out)
    return result


def _check_out_name(out: str | os.PathLike) -> None:
    text = os.fspath(out)
    if not text.strip() or text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        raise UserError(f"--out must name a CSV file, got {text!r}")


def _check_writable(out: Path, rejections_path: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any work is done (one line, no traceback)."""
    if out.is_dir():
        raise UserError(f"{out}: is a folder; --out must name a CSV file")
    for path in (out, rejections_path):
        # the files are replaced by a rename: a device, FIFO or socket under that name would be replaced too
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: exists and is not a regular file; --out must name a CSV file")
        if path.is_file() and not os.access(path, os.W_OK):
            raise UserError(f"{path}: exists and is not writable")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{out}: cannot write here ({parent} is not a folder)")
    # os.access says yes to root on read-only or virtual file systems (/proc, /sys): try a real file instead
    try:
        fd, probe = tempfile.mkstemp(prefix=".aamct-write-test.", dir=parent)
    except OSError as err:
        raise UserError(
            f"{out}: cannot write here: creating a file in {parent} fails ({err.strerror or err})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def _check_not_an_input(out: Path, rejections_path: Path, inputs: Sequence[Path]) -> None:
    given = {os.path.realpath(p): p for p in inputs}
    for path in (out, rejections_path):
        if os.path.realpath(path) in given:
            raise UserError(f"{path}: is one of the inputs (--labels / --nifti-glob); --out must name a new CSV file")


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``(done, total)`` callback drawing a tqdm bar on stderr, or None (disabled, or stderr is no terminal)."""
    if not enabled or not _stderr_is_terminal():
        yield None
        return
    from tqdm import tqdm

    # delay: short runs finish before a bar would appear; leave=False: the summary is the lasting output
    with tqdm(desc=description, unit=" files", file=sys.stderr, delay=0.5, leave=False, dynamic_ncols=True) as bar:

        def update(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(done - bar.n)

        yield update


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _expand_glob(pattern: str) -> list[Path]:
    # every match but folders: a FIFO or device named like a volume becomes a rejection naming it (never opened)
    matches = sorted({Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if not Path(p).is_dir()})
    if not matches:
        raise UserError(f"--nifti-glob {pattern!r} matches no files")
    return matches


def _dicom_case(series: DicomSeries, root: Path) -> _Case:
    geometry = series.geometry
    assert geometry is not None  # accepted series always carry their geometry
    folder = Path(os.path.realpath(series.folder))
    root_real = Path(os.path.realpath(root))
    # exact matches: the series folder and each of its files; ancestors up to the root rank by depth
    match_paths = [(str(folder), _RANK_EXACT)] + [(os.path.realpath(h.path), _RANK_EXACT) for h in series.slices]
    for depth, ancestor in enumerate(folder.parents):
        if ancestor == root_real.parent:
            break
        match_paths.append((str(ancestor), _RANK_EXACT - 1 - depth))
    first = series.slices[0]
    identity = (
        ("uid", f"{series.study_uid}|{series.series_uid}")
        if series.series_uid
        else ("fingerprint", series.fingerprint())
    )
    return _Case(
        image=series.folder,
        source="dicom",
        n_slices=geometry.shape[2],
        spacing_mm=geometry.spacing_mm,
        identity=identity,
        n_files=series.n_files,
        match_paths=match_paths,
        series_uid=series.series_uid,
        study_uid=series.study_uid,
        accession=first.accession,
        raw_patient_id=first.patient_id,
    )


def _scope_dicom_cases(
    cases: list[_Case],
    series: Sequence[DicomSeries],
    *,
    thresholds: ScopeThresholds | None,
    allow: bool,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[_Case], list[Rejection]]:
    """Decode every accepted series once and run the loader's scope check on it (see the module docstring)."""
    kept: list[_Case] = []
    refused: list[Rejection] = []
    for done, (case, found) in enumerate(zip(cases, series, strict=True), start=1):
        first = found.slices[0]
        try:
            hu, meta = read_series_geometry(found.geometry, found.folder)  # type: ignore[arg-type]
            case.scope = assess_scope(
                hu,
                meta["affine"],
                thresholds=thresholds,
                modality=first.modality,
                image_type=first.image_type,
                body_part=first.body_part,
                study_description=first.study_description,
            )
        except ScanRejected as err:  # pixel data that do not decode: what the loader would say
            refused.append(Rejection(case.image, case.series_uid, case.n_files, err.reason, "undecodable pixel data"))
        else:
            if case.scope.in_scope or allow:
                kept.append(case)
            else:
                refused.append(Rejection(case.image, case.series_uid, case.n_files, case.scope.reason, "out of scope"))
        finally:
            if progress is not None:
                progress(done, len(cases))
    return kept, refused


def _check_nifti_files(
    files: Sequence[Path],
    *,
    min_slices: int,
    workers: int | None,
    progress: Callable[[int, int], None] | None = None,
    thresholds: ScopeThresholds | None = None,
    allow_out_of_scope: bool = False,
) -> tuple[list[_Case], list[Rejection]]:
    def check(path: Path) -> tuple[NiftiInfo, ScopeResult] | Rejection:
        try:
            header, data = read_checked_nifti(path, min_slices=min_slices)
        except NiftiRejected as err:
            reason = str(err)
            kind = reason.split(":")[0]
            return Rejection(path, "", 1, reason, kind)
        scope = assess_scope(data, header.affine, thresholds=thresholds)
        del data
        if not scope.in_scope and not allow_out_of_scope:
            return Rejection(path, "", 1, scope.reason, "out of scope")
        return NiftiInfo.of(header), scope

    # threads pay off here: decompressing .nii.gz (zlib) releases the GIL
    workers = workers or os.cpu_count() or 1
    results: list[tuple[NiftiInfo, ScopeResult] | Rejection] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files))), thread_name_prefix="nifti-check") as pool:
        for result in pool.map(check, files):
            results.append(result)
            if progress is not None:
                progress(len(results), len(files))
    cases = [
        _Case(
            image=info.path,
            source="nifti",
            n_slices=info.n_slices,
            spacing_mm=info.spacing_mm,
            identity=("fingerprint", f"nifti:{info.sha256}"),
            n_files=1,
            match_paths=[(os.path.realpath(info.path), _RANK_EXACT)],
            scope=scope,
        )
        for result in results
        if not isinstance(result, Rejection)
        for info, scope in [result]
    ]
    return cases, [r for r in results if isinstance(r, Rejection)]


def _apply_labels(cases: list[_Case], labels: list[LabelRow]) -> tuple[list[int], dict[int, Rejection]]:
    """Give every case the label and site of its best-matching row.

    Returns:
        The CSV lines matching no case, and the rejection of every case with conflicting labels (keyed by ``id``).
    """
    if not labels:
        return [], {}
    index: dict[tuple[str, str], list[LabelRow]] = {}
    for row in labels:
        if row.key:
            index.setdefault((row.key, row.value), []).append(row)
    used: set[int] = set()
    conflicts: dict[int, Rejection] = {}
    for case in cases:
        matches: list[tuple[int, LabelRow]] = []
        for path, rank in case.match_paths:
            matches += [(rank, row) for row in index.get(("path", path), [])]
        for key, value, rank in (
            ("series_uid", case.series_uid, _RANK_EXACT),
            ("study_uid", case.study_uid, _RANK_STUDY),
            ("accession", case.accession, _RANK_ACCESSION),
            ("patient_id", case.raw_patient_id, _RANK_PATIENT),
        ):
            if value:
                matches += [(rank, row) for row in index.get((key, value), [])]
        if not matches:
            continue
        used.update(row.line for _, row in matches)
        best_rank = max(rank for rank, _ in matches)
        best = [row for rank, row in matches if rank == best_rank]
        labels_seen = sorted({row.label for row in best})
        if len(labels_seen) > 1:
            lines = ", ".join(str(row.line) for row in best[:4])
            conflicts[id(case)] = Rejection(
                case.image,
                case.series_uid,
                case.n_files,
                f"conflicting labels {', '.join(repr(v) for v in labels_seen)} in the labels CSV (lines {lines})",
                "conflicting labels",
            )
            continue
        chosen = best[0]
        case.label = chosen.label
        case.site = next((row.site for row in best if row.site), "")
        case.label_patient_id = next((row.patient_id for row in best if row.patient_id), "")
    unmatched = sorted(row.line for row in labels if row.line not in used)
    return unmatched, conflicts


def _manifest_rows(
    cases: list[_Case], pseudonymizer: Pseudonymizer, manifest_dir: Path, default_site: str
) -> tuple[list[dict], list[Rejection], int]:
    rows: list[dict] = []
    seen: dict[str, _Case] = {}
    duplicates: list[Rejection] = []
    n_fallback = 0
    for case in sorted(cases, key=lambda c: str(c.image)):
        kind, identity = case.identity
        if kind == "uid":
            study, series = identity.split("|", 1)
            case_id = pseudonymizer.case_id(study, series)
        else:
            case_id = pseudonymizer.case_id_from_fingerprint(identity)
        if case_id in seen:
            duplicates.append(
                Rejection(
                    case.image,
                    case.series_uid,
                    case.n_files,
                    f"duplicate case: same identity (UIDs or content) as {_display_path(seen[case_id].image, manifest_dir)}",
                    "duplicate case",
                )
            )
            continue
        seen[case_id] = case
        raw_patient = case.raw_patient_id or case.label_patient_id
        if not raw_patient:
            n_fallback += 1
        patient_id = pseudonymizer.patient_id(raw_patient, fallback=case.study_uid or identity)
        rows.append(
            {
                "case_id": case_id,
                "patient_id": patient_id,
                "image": _display_path(case.image, manifest_dir),
                "label": case.label,
                "site": case.site or default_site,
                "split": "",
                "fold": "",
                "n_slices": case.n_slices,
                "spacing_mm": case.spacing_mm,
                "source": case.source,
                **(case.scope.columns(allowed=True) if case.scope is not None else {}),
            }
        )
    return rows, duplicates, n_fallback


def _display_path(path: Path, manifest_dir: Path) -> str:
    """Relative to the manifest's folder when inside it, absolute otherwise (POSIX separators)."""
    absolute = Path(os.path.abspath(path))
    base = Path(os.path.abspath(manifest_dir))
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return absolute.as_posix()
