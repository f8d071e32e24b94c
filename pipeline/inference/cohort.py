"""The batch job for a new cohort: every case scored or marked error, resumable, shardable, then evaluated.

Layout of a run folder::

    run.json                  model fingerprint, threshold and its source, classes (a rerun must match it)
    records/<case_id>.json    one record per finished case (ok or error), written atomically: the source of truth
    predictions.csv           one row per input case (rewritten atomically after every case)
    parts/predictions.rank<i>-of-<n>.csv   per-shard tables when sharded
    heatmaps/<case_id>.nii.gz heatmap in the source image's geometry; heatmaps/<case_id>.png the montage
    dicom/<case_id>_*.dcm      with --dicom-out: Parametric Map of the heatmap + score SR per DICOM case (any folder)
    report/                   the evaluation report (pipeline.evaluation) when the cohort has labels
    local_only/series_map.csv case id -> source path: LOCAL ONLY, the one part of a run folder never to share

Every other file names a case by its pseudonymous id only: a reason that would name the source path (the loader's
``<path>: <reason>``, an ingestion rejection, a DICOM note) names the case id instead, because hospital folders are
often named after patients.

Time: ``seconds`` is a case's wall-clock total, and every step has its own ``seconds_<step>`` column (load, scope,
preprocess, inference, heatmap, heatmap_nifti, montage, dicom_read, dicom_pm, dicom_sr, record) that add up to it
(tests/inference/test_run_outputs.py; benchmarks/bench_case_time.py on the real chest). A case running past
``case_timeout`` seconds becomes an error row saying so and the batch goes on (:func:`case_time_limit`).

Inputs: a manifest (:func:`pipeline.contracts.read_manifest`) or a folder searched as ``aamct manifest build`` searches
a DICOM root (:func:`discover_cases`); every series or file the ingestion rejects becomes an ``error`` row with the
ingestion's own reason, and a manifest case whose scan fails the loader's checks does too, so no case is dropped and
none is scored that the manifest builder would reject.

Resuming: a rerun skips every case that has a record (``retry_errors=True`` reruns the error ones). A killed run
loses at most the case in flight: records and tables are only ever replaced whole.

Sharding: ``Shard(i, n)`` takes every n-th case of the cases sorted by id; ranks write disjoint records, so ranks of
one ``torchrun`` (or separate machines sharing the folder) never write the same file. Under ``torchrun`` rank 0 waits
for the others at a barrier and merges; with explicit shards, :meth:`CohortRunner.merge` (``aamct evaluate-cohort
--merge``) merges once all have finished.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts.defaults import DEFAULT_CASE_TIMEOUT_S, DEFAULT_CLASS_NAMES, DEFAULT_THRESHOLD
from pipeline.contracts.manifest import CARRIED_COLUMNS, ManifestCase, read_manifest
from pipeline.data.dicom import DEFAULT_MIN_SLICES, SeriesCheck, discover_series
from pipeline.data.loading import check_scan
from pipeline.data.pseudonym import Pseudonymizer, load_key
from pipeline.data.reader import is_nifti_path
from pipeline.data.scope import IN_SCOPE, OUT_OF_SCOPE, SCOPE_COLUMNS
from pipeline.errors import UserError
from pipeline.inference.case import STAGES, CaseFailure
from pipeline.io import write_csv_atomic, write_json_atomic, write_text_atomic

#: predictions-table columns of the DICOM outputs (when requested): Parametric Map, SR, and why one is missing
_DICOM_COLUMNS = ("dicom_map", "dicom_sr", "dicom_note")
#: the DICOM steps' time columns (:data:`pipeline.inference.dicom_outputs.DICOM_STAGES`), when DICOM outputs are on
_DICOM_SECONDS = ("seconds_dicom_read", "seconds_dicom_pm", "seconds_dicom_sr")
#: the local-only folder of a run: what links the pseudonymous ids to the site's paths, never to be shared
LOCAL_ONLY_DIR = "local_only"

__all__ = [
    "LOCAL_ONLY_DIR",
    "PREDICTION_COLUMNS",
    "CaseTimeout",
    "CohortCase",
    "CohortRunner",
    "CohortSummary",
    "Shard",
    "case_time_limit",
    "discover_cases",
    "path_pseudonym",
    "read_cases",
    "summary_dict",
]

logger = logging.getLogger(__name__)

#: the columns every predictions table starts with
PREDICTION_COLUMNS: tuple[str, ...] = (
    "case_id",
    "probability",
    "predicted_label",
    "threshold",
    "status",
    "reason",
    "seconds",
)


@dataclass(frozen=True, kw_only=True)
class CohortCase:
    """One input case.

    Attributes:
        case_id: pseudonymous id (also the file stem of its outputs).
        image: DICOM series folder or NIfTI file.
        label: class name or index as in the manifest, empty when unknown.
        site: acquiring site, may be empty.
        split: manifest split, may be empty.
        fold: manifest fold, may be empty.
        rejection: the ingestion's one-line reason (``<path>: <reason>``) when the case was rejected while being
            found; such a case is recorded as an error without being loaded.
    """

    case_id: str
    image: Path
    label: str = ""
    site: str = ""
    split: str = ""
    fold: str = ""
    rejection: str = ""

    @classmethod
    def from_manifest(cls, case: ManifestCase) -> CohortCase:
        """The cohort case of a manifest row (:class:`pipeline.contracts.ManifestCase`)."""
        return cls(
            case_id=case.case_id, image=case.image, label=case.label, site=case.site, split=case.split, fold=case.fold
        )


@dataclass(frozen=True)
class Shard:
    """Which part of a cohort this process scores: every ``count``-th case starting at ``index``.

    Attributes:
        index: 0-based shard (rank).
        count: number of shards (world size).
        from_torchrun: set from ``torchrun``'s environment (then rank 0 merges after a barrier).
    """

    index: int = 0
    count: int = 1
    from_torchrun: bool = False

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (0-based ``i``) -> :class:`Shard`.

        Raises:
            UserError: for anything else.
        """
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match:
            raise UserError(f"--shard must look like i/n (e.g. 0/4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_environment(cls) -> Shard:
        """The shard of this ``torchrun`` rank (``RANK`` / ``WORLD_SIZE``), or the whole cohort outside torchrun."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
        return cls(rank, world, from_torchrun=world > 1)

    def select(self, cases: Sequence[CohortCase]) -> list[CohortCase]:
        """This shard's cases: round robin over the cases sorted by id, so shards get similar mixes."""
        ordered = sorted(cases, key=lambda c: c.case_id)
        return ordered[self.index :: self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class CohortSummary:
    """What a run did.

    Attributes:
        n_cases: input cases (whole cohort).
        n_ok: cases scored, in the merged table (or this shard's, when not merged).
        n_error: cases marked error, likewise.
        n_ran: cases processed by this call.
        n_skipped: cases of this shard already finished by an earlier run.
        seconds: wall-clock seconds of this call's case loop.
        predictions: the merged ``predictions.csv`` (``None`` when this shard did not merge).
        report: the evaluation report folder, when written.
        report_note: why no report was written, when none was.
        n_out_of_scope: cases refused by the scope check (status ``out_of_scope``: not a chest CT with lungs in
            view), likewise.
        n_in_scope: cases the scope check found in scope (scored or not), likewise.
        n_scored_out_of_scope: cases scored although out of scope (``--allow-out-of-scope``), likewise.
    """

    n_cases: int
    n_ok: int
    n_error: int
    n_ran: int
    n_skipped: int
    seconds: float
    predictions: Path | None = None
    report: Path | None = None
    report_note: str = ""
    n_out_of_scope: int = 0
    n_in_scope: int = 0
    n_scored_out_of_scope: int = 0

    @property
    def line(self) -> str:
        """The one summary line: in-scope, out-of-scope and error cases, and how many were scored."""
        allowed = f", {self.n_scored_out_of_scope} of them scored anyway" if self.n_scored_out_of_scope else ""
        return (
            f"{self.n_cases} cases: {self.n_in_scope} in scope, "
            f"{self.n_out_of_scope + self.n_scored_out_of_scope} out of scope{allowed}, {self.n_error} errors; "
            f"{self.n_ok} scored"
        )

    @property
    def cases_per_minute(self) -> float:
        """Throughput of this call (cases processed per minute of case loop)."""
        return 60.0 * self.n_ran / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------- inputs


def read_cases(
    source: str | os.PathLike, *, split: str | None = None, min_slices: int = DEFAULT_MIN_SLICES
) -> list[CohortCase]:
    """Cases from a manifest CSV (a file, :func:`pipeline.contracts.read_manifest`) or a folder (:func:`discover_cases`).

    Args:
        source: the manifest or the folder.
        split: with a manifest, only the rows of this split.
        min_slices: for a folder, the fewest slices a scan may have (the loader's and the manifest builder's).

    Raises:
        UserError: a missing source, a bad manifest, or ``split`` given with a folder.
    """
    if Path(source).is_dir():
        if split is not None:
            raise UserError(f"{source}: --split needs a manifest, not a folder")
        return discover_cases(source, min_slices=min_slices)
    return [CohortCase.from_manifest(case) for case in read_manifest(source, split=split)]


def path_pseudonym(path: str | os.PathLike, *extra: str, pseudonymizer: Pseudonymizer | None = None) -> str:
    """The keyed case id of an image found by path: ``case-`` and an HMAC of the path (and ``extra``, e.g. a
    SeriesInstanceUID) under the site's key (:class:`pipeline.data.pseudonym.Pseudonymizer`).

    Keyed, not a plain hash: a plain hash of ``ROE_JANE_MRN12345/CT`` confirms a guessed folder name to anyone
    holding the outputs. Default key: :func:`pipeline.data.pseudonym.load_key` (``AAMCT_PSEUDONYM_KEY`` or the
    per-user key file).
    """
    pseudonymizer = pseudonymizer or Pseudonymizer(load_key())
    return pseudonymizer.case_id_from_fingerprint("\x1f".join(["path", Path(path).as_posix(), *extra]))


def discover_cases(
    folder: str | os.PathLike, *, min_slices: int = DEFAULT_MIN_SLICES, pseudonymizer: Pseudonymizer | None = None
) -> list[CohortCase]:
    """Every NIfTI file and DICOM series under a folder, found and checked as ``aamct manifest build`` does.

    DICOM files are discovered and checked by :func:`pipeline.data.dicom.discover_series` (headers only, one primary
    axial CT series per study), as the manifest builder does, and NIfTI headers by the loader's probe
    (:func:`pipeline.data.loading.check_scan`), with the builder's minimum slice count; what they reject is listed
    too, as a case carrying the builder's one-line reason (``<path>: <reason>``), so the cohort's predictions account
    for every series and file, as the rejections CSV does. What only the voxels show (NaN values, pixel data that do
    not decode) is found when the case is loaded, with the same reason.

    Case ids are the project's keyed pseudonym (:class:`pipeline.data.pseudonym.Pseudonymizer`: ``case-`` and an
    HMAC under the site's key) of the path relative to ``folder`` (and of the SeriesInstanceUID for a rejected
    series): folder names of hospital exports often are patient names or numbers, and must not reach the outputs,
    nor be confirmable by hashing a guessed name. The same key and folder give the same ids (a rerun resumes); the
    id-to-path map is written to the run's local-only folder (:meth:`CohortRunner.write_series_map`). For labels and
    sites build a manifest first (``aamct manifest build``).

    Args:
        folder: the folder to search.
        min_slices: the fewest slices a scan may have (default: the manifest builder's).
        pseudonymizer: the keyed pseudonym; default the site's key (:func:`pipeline.data.pseudonym.load_key`:
            ``AAMCT_PSEUDONYM_KEY`` or the per-user key file).

    Returns:
        The cases, sorted by path; rejected ones have a ``rejection``.

    Raises:
        UserError: if the folder is missing or holds nothing.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: input folder not found")
    nifti_files = sorted(
        path
        for path in root.rglob("*")
        if is_nifti_path(path)
        and not path.is_dir()  # a FIFO or device named like a volume: an error row naming it, never opened
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    found: list[tuple[Path, str, str]] = []  # (image, identity beyond the path, rejection)
    discovery = discover_series(root, check=SeriesCheck(min_slices=min_slices), exclude=nifti_files)
    found += [(series.folder, "", "") for series in discovery.accepted]
    found += [(r.path, r.series_uid, f"{r.path}: {r.reason}") for r in discovery.rejections]
    for path in nifti_files:
        reason = check_scan(path, min_slices=min_slices)
        found.append((path, "", f"{path}: {reason}" if reason else ""))
    if not found:
        raise UserError(f"{root}: no NIfTI file or DICOM series found")
    pseudonymizer = pseudonymizer or Pseudonymizer(load_key())
    cases: list[CohortCase] = []
    seen: set[str] = set()
    for image, extra, rejection in sorted(found, key=lambda item: (str(item[0]), item[1], item[2])):
        relative = image.relative_to(root) if image.is_relative_to(root) else image
        case_id = path_pseudonym(relative, *([extra] if extra else []), pseudonymizer=pseudonymizer)
        # several rejections of one folder (e.g. its other series) are numbered in path order, so ids stay stable
        base, number = case_id, 1
        while case_id in seen:
            number += 1
            case_id = f"{base}-{number}"
        seen.add(case_id)
        cases.append(CohortCase(case_id=case_id, image=image, rejection=rejection))
    return cases


# -------------------------------------------------------------------------------------------------- time limit


class CaseTimeout(BaseException):
    """A case ran past its time limit (:func:`case_time_limit`).

    A ``BaseException``, like ``KeyboardInterrupt``: the stage wrappers of the predictor and MONAI's transform
    wrapper (which turn an ``Exception`` into another one) let it through unchanged, so the runner sees it as what it
    is and records the case as an error row.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(
            f"case time limit exceeded: not finished after {seconds:g} s (--case-timeout); the batch went on"
        )


@contextlib.contextmanager
def case_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the block when it runs longer than ``seconds`` (``None`` or ``<= 0``: no limit).

    Uses ``SIGALRM`` (``signal.setitimer``), so it only acts in the main thread of a POSIX process; elsewhere the
    block runs without a limit (logged once). Limitation: Python delivers the signal between bytecodes, so a single
    call blocked in C code (one huge convolution, a read from a stalled network share, a C library waiting on a
    lock) is interrupted only when it returns to Python; a system call interrupted by the alarm (``open`` of a FIFO,
    ``read``, ``sleep``) is retried after the handler, and the handler's exception ends it. The data layer therefore
    opens only regular files (FIFOs and devices are error rows before they are opened), and the limit catches the
    rest: a pathological volume, a runaway map, a slow disk.
    """
    if not seconds or seconds <= 0:
        yield
        return
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not usable or signal.getitimer(signal.ITIMER_REAL)[0] > 0:  # no SIGALRM, or the caller's own alarm is set
        global _WARNED_NO_ALARM
        if not _WARNED_NO_ALARM:
            logger.warning("per-case time limit not applied: it needs SIGALRM in the main thread, not in use")
            _WARNED_NO_ALARM = True
        yield
        return

    def expire(signum, frame):
        raise CaseTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


_WARNED_NO_ALARM = False


def _without_source_path(text: str, case: CohortCase) -> str:
    """``text`` with the case's source path (as given, absolute, resolved) replaced by the case's pseudonymous id.

    Hospital folders are often named after patients (``ROE_JANE_MRN12345/``); reasons and notes go into the shared
    outputs (predictions, records, gallery, report, log), so they name the case by its id; the id-to-path map is in
    the run's local-only folder (:meth:`CohortRunner.write_series_map`).
    """
    if not text:
        return text
    image = Path(case.image)
    forms = {str(image), image.as_posix()}
    with contextlib.suppress(OSError, RuntimeError):
        forms |= {str(image.absolute()), str(image.resolve())}
    for form in sorted((f for f in forms if f and f not in (".", "/")), key=len, reverse=True):
        text = text.replace(form, case.case_id)
    return text


# ------------------------------------------------------------------------------------------------------------ runner


class CohortRunner:
    """Score a cohort case by case, resumably, and merge and evaluate the results.

    Args:
        predictor: a :class:`pipeline.inference.case.CasePredictor` (or any callable with its signature:
            ``predictor(image, case_id=..., heatmap_dir=...)`` returning an object with ``probabilities`` and
            ``stage_seconds`` and raising :class:`~pipeline.inference.case.CaseFailure`).
        output_dir: the run folder.
        threshold: frozen operating threshold on the positive-class probability.
        threshold_source: where the threshold came from (``"default"`` when it is the unchosen 0.5).
        class_names: class names in label order.
        positive_index: the positive class.
        write_heatmaps: pass a heatmap folder to the predictor (``False`` scores only).
        retry_errors: rerun cases whose record says error (default: a rerun only fills in missing cases).
        progress: show a tqdm progress bar (cases/s).
        fingerprint: identifies the model and settings; a run folder holding results of another fingerprint is
            refused, so results of two models never mix.
        evaluate: write the evaluation report after merging when the cohort has labels.
        evaluate_predictions: ``evaluate_predictions(predictions_csv, threshold=..., classes=...)`` returning a
            report object (:func:`pipeline.evaluation.report.evaluate_predictions`); injected by ``inference.json``
            or the CLI, because the evaluation stage lies above inference. ``None``: no report.
        write_report: ``write_report(report, folder, title=..., gallery=...)``
            (:func:`pipeline.evaluation.report.write_report`).
        write_gallery: ``write_gallery(output_dir)`` writing ``gallery.html`` from ``predictions.csv``
            (:func:`pipeline.inference.gallery.write_gallery`), called after every merge when heatmaps are
            written; the report links it. Injected like the report. ``None``: no gallery.
        dicom_outputs: ``dicom_outputs(image=..., heatmap=..., case_id=..., probability=..., threshold=...)`` writing
            a scored DICOM case's Parametric Map and SR (:class:`pipeline.inference.dicom_outputs.DicomOutputWriter`,
            ``aamct evaluate-cohort --dicom-out``); ``None``: no DICOM outputs. A case whose DICOM outputs fail stays
            scored (``ok``); the table's ``dicom_note`` says why.
        case_timeout: seconds one case may take (scoring and DICOM outputs) before it becomes an error row saying
            so and the batch goes on (:func:`case_time_limit`, with its limitation for calls blocked in C code);
            ``None`` or 0: no limit. Default :data:`pipeline.contracts.defaults.DEFAULT_CASE_TIMEOUT_S`.
    """

    def __init__(
        self,
        *,
        predictor: Callable[..., Any],
        output_dir: str | os.PathLike,
        threshold: float = DEFAULT_THRESHOLD,
        threshold_source: str = "default",
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        positive_index: int = 1,
        write_heatmaps: bool = True,
        retry_errors: bool = False,
        progress: bool = True,
        fingerprint: str = "",
        evaluate: bool = True,
        evaluate_predictions: Callable[..., Any] | None = None,
        write_report: Callable[..., Any] | None = None,
        write_gallery: Callable[..., Any] | None = None,
        dicom_outputs: Callable[..., Any] | None = None,
        case_timeout: float | None = DEFAULT_CASE_TIMEOUT_S,
    ) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {threshold}")
        self.predictor = predictor
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.threshold_source = threshold_source
        self.class_names = [str(c) for c in class_names]
        self.positive_index = positive_index
        self.write_heatmaps = write_heatmaps
        self.retry_errors = retry_errors
        self.progress = progress
        self.fingerprint = fingerprint
        self.evaluate = evaluate
        self.evaluate_predictions = evaluate_predictions
        self.report_writer = write_report
        self.gallery_writer = write_gallery
        self.dicom_outputs = dicom_outputs
        self.case_timeout = case_timeout

    @property
    def records_dir(self) -> Path:
        """Folder of the per-case records."""
        return self.output_dir / "records"

    @property
    def predictions_path(self) -> Path:
        """The merged predictions table."""
        return self.output_dir / "predictions.csv"

    # -- the whole job ------------------------------------------------------------------------------------------

    def run(
        self, cases: Sequence[CohortCase] | str | os.PathLike, *, shard: Shard | None = None, split: str | None = None
    ) -> CohortSummary:
        """Score this shard's cases; merge and evaluate when this process sees the whole cohort.

        Args:
            cases: the cases, or a manifest CSV / folder to read them from (:func:`read_cases`).
            shard: which part to score; default :meth:`Shard.from_environment` (all of it outside torchrun).
            split: with a manifest, only this split.

        Returns:
            The :class:`CohortSummary`.

        Raises:
            UserError: bad inputs, or a run folder holding another model's results.
        """
        if not isinstance(cases, Sequence) or isinstance(cases, str):
            cases = read_cases(cases, split=split)
        shard = shard or Shard.from_environment()
        self.claim_output_dir()
        self.write_series_map(cases)
        ran, skipped, seconds = self.run_shard(cases, shard)
        if shard.count > 1 and not shard.from_torchrun:
            mine = shard.select(cases)
            rows = self._rows(mine, {c.case_id: r for c in mine if (r := self._read_record(c.case_id)) is not None})
            logger.info("shard %s done; merge with `aamct evaluate-cohort --merge` once every shard has run", shard)
            return CohortSummary(
                n_cases=len(cases), n_ran=ran, n_skipped=skipped, seconds=seconds, **_status_counts(rows)
            )
        if shard.from_torchrun:
            _torchrun_barrier()
            if shard.index != 0:
                return CohortSummary(len(cases), 0, 0, ran, skipped, seconds)
        merged = self.merge(cases)
        report, note = self.write_report(merged) if self.evaluate else (None, "evaluation not requested")
        return CohortSummary(
            n_cases=len(cases),
            **_status_counts(merged),
            n_ran=ran,
            n_skipped=skipped,
            seconds=seconds,
            predictions=self.predictions_path,
            report=report,
            report_note=note,
        )

    # -- scoring ------------------------------------------------------------------------------------------------

    def run_shard(self, cases: Sequence[CohortCase], shard: Shard = Shard()) -> tuple[int, int, float]:
        """Score the cases of one shard that have no record yet.

        Args:
            cases: the whole cohort.
            shard: the part to score.

        Returns:
            ``(cases processed, cases skipped as already finished, seconds)``.
        """
        from tqdm.auto import tqdm

        mine = shard.select(cases)
        # records are read once; afterwards the in-memory copy is updated as cases finish
        records = {case.case_id: r for case in mine if (r := self._read_record(case.case_id)) is not None}
        done = {cid for cid, r in records.items() if r.get("status") == "ok" or not self.retry_errors}
        todo = [case for case in mine if case.case_id not in done]
        if done:
            logger.info("resuming: %d of %d cases of shard %s already finished", len(done), len(mine), shard)
        part_path = (
            None
            if shard.count == 1
            else self.output_dir / "parts" / f"predictions.rank{shard.index}-of-{shard.count}.csv"
        )
        start = time.perf_counter()
        n_error = 0
        bar = tqdm(total=len(todo), unit="cases", desc=f"shard {shard}", disable=not self.progress, dynamic_ncols=True)
        try:
            for case in todo:
                record = records[case.case_id] = self._score(case)
                n_error += record["status"] != "ok"
                bar.update(1)
                bar.set_postfix(errors=n_error)
                # the table is rewritten whole after every case, so a kill never leaves a stale or partial one
                write_csv_atomic(part_path or self.predictions_path, self._rows(mine, records))
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if not todo:
            write_csv_atomic(part_path or self.predictions_path, self._rows(mine, records))
        return len(todo), len(done), seconds

    def _score(self, case: CohortCase) -> dict[str, Any]:
        """Score one case into its record, timing every step (``seconds_<step>``; they add up to ``seconds``)."""
        started = time.perf_counter()
        record: dict[str, Any] = {"case_id": case.case_id}
        steps: dict[str, float] = {}
        heatmap_dir = self.output_dir / "heatmaps" if self.write_heatmaps else None
        try:
            with case_time_limit(self.case_timeout):
                if case.rejection:
                    raise CaseFailure("load", case.rejection, stage_prefix=False)
                prediction = self.predictor(
                    case.image, case_id=case.case_id, heatmap_dir=heatmap_dir, label=case.label or None
                )
                steps.update(prediction.stage_seconds)
                probability = float(np.asarray(prediction.probabilities)[self.positive_index])
                record.update(
                    status="ok",
                    reason="",
                    probability=probability,
                    predicted_label=self._call(probability, prediction.probabilities),
                    heatmap=_relative(prediction.heatmap, self.output_dir),
                    montage=_relative(prediction.montage, self.output_dir),
                )
                record.update(getattr(prediction, "scope", None) or {})
                if self.dicom_outputs is not None:
                    dicom, dicom_seconds = self._dicom(case, prediction, probability)
                    record.update(dicom)
                    steps.update(dicom_seconds)
        except (Exception, CaseTimeout) as failure:  # one bad case must not stop the cohort; KeyboardInterrupt does
            reason = (
                str(failure)
                if isinstance(failure, (CaseFailure, CaseTimeout))
                else f"failed: {type(failure).__name__}: {failure}"
            )
            status = getattr(failure, "status", "error")  # out_of_scope: the loader's scope check refused the scan
            reason = " ".join(_without_source_path(reason, case).split())[:500]
            for key in ("heatmap", "montage", *_DICOM_COLUMNS):
                record.pop(key, None)
            record.update(status=status, reason=reason, probability=None, predicted_label="")
            record.update(getattr(failure, "scope", None) or {})
            steps = {**getattr(failure, "stage_seconds", {}), **steps} if not isinstance(failure, CaseTimeout) else {}
            logger.warning("%s: %s", case.case_id, reason)
        record.update({f"seconds_{k}": round(v, 4) for k, v in steps.items()})
        record["threshold"] = self.threshold
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        record["pid"] = os.getpid()
        # the record's own writing is a step too: timed on a first write, then the record is written again whole
        # with that time in it (the second write costs the same ~1 ms and is the only one not counted)
        path = self.records_dir / f"{case.case_id}.json"
        record["seconds"] = round(time.perf_counter() - started, 4)
        writing = time.perf_counter()
        write_json_atomic(path, record)
        record["seconds_record"] = round(time.perf_counter() - writing, 4)
        record["seconds"] = round(time.perf_counter() - started, 4)
        write_json_atomic(path, record)
        return record

    def _dicom(self, case: CohortCase, prediction: Any, probability: float) -> tuple[dict[str, str], dict[str, float]]:
        """The case's DICOM outputs (paths, or a note on why there are none) and their step times; never fails the
        case. ``dicom_read`` is the whole step less the Parametric Map and the SR (reading the heatmap and the
        source headers, mapping the map onto the series grid)."""
        started = time.perf_counter()
        try:
            written = self.dicom_outputs(
                image=case.image,
                heatmap=prediction.heatmap,
                case_id=case.case_id,
                probability=probability,
                threshold=self.threshold,
            )
        except Exception as err:  # the score stands; only its DICOM copy is missing, and the table says why
            note = " ".join(_without_source_path(str(err), case).split())[:300]
            logger.warning("%s: no DICOM outputs: %s", case.case_id, note)
            return {"dicom_note": f"no DICOM outputs: {note}"}, {"dicom_read": time.perf_counter() - started}
        total = time.perf_counter() - started
        if written is None:
            return {"dicom_note": "not a DICOM input"}, {"dicom_read": total}
        parts = {f"dicom_{k}": float(v) for k, v in (getattr(written, "stage_seconds", None) or {}).items()}
        parts["dicom_read"] = max(0.0, total - sum(v for k, v in parts.items() if k != "dicom_read"))
        return {
            "dicom_map": _relative(written.parametric_map, self.output_dir),
            "dicom_sr": _relative(written.structured_report, self.output_dir),
            "dicom_note": _without_source_path("; ".join(written.notes), case),
        }, parts

    def _call(self, probability: float, probabilities) -> str:
        if len(self.class_names) == 2:
            index = self.positive_index if probability >= self.threshold else 1 - self.positive_index
        else:  # more than two classes: the threshold has no single meaning, report the most probable class
            index = int(np.argmax(np.asarray(probabilities)))
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def _read_record(self, case_id: str) -> dict[str, Any] | None:
        path = self.records_dir / f"{case_id}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # records are written atomically, so this is foreign damage: score the case again

    # -- tables -------------------------------------------------------------------------------------------------

    def _rows(
        self, cases: Sequence[CohortCase], records: dict[str, dict[str, Any]], *, include_missing: bool = False
    ) -> pd.DataFrame:
        rows = []
        for case in cases:
            record = records.get(case.case_id)
            if record is None:
                if not include_missing:
                    continue
                record = {
                    "case_id": case.case_id,
                    "status": "error",
                    "reason": "not run: no result recorded (a shard has not finished; rerun to complete)",
                    "threshold": self.threshold,
                }
            row = {column: record.get(column) for column in PREDICTION_COLUMNS}
            row.update({column: getattr(case, column) for column in CARRIED_COLUMNS})
            row.update({column: record.get(column) for column in SCOPE_COLUMNS})
            row.update({key: value for key, value in record.items() if key.startswith("seconds_")})
            row["heatmap"] = record.get("heatmap") or ""
            row["montage"] = record.get("montage") or ""
            if self.dicom_outputs is not None:
                row.update({key: record.get(key) or "" for key in _DICOM_COLUMNS})
            rows.append(row)
        dicom = list(_DICOM_COLUMNS) if self.dicom_outputs is not None else []
        columns = [
            *PREDICTION_COLUMNS,
            *CARRIED_COLUMNS,
            *SCOPE_COLUMNS,
            "heatmap",
            "montage",
            *dicom,
            *(f"seconds_{s}" for s in STAGES),
            *(_DICOM_SECONDS if self.dicom_outputs is not None else ()),
            "seconds_record",
        ]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.drop(columns=[c for c in CARRIED_COLUMNS if (frame[c].fillna("") == "").all()])

    def merge(self, cases: Sequence[CohortCase] | str | os.PathLike, *, split: str | None = None) -> pd.DataFrame:
        """Write ``predictions.csv`` with one row per input case from the records of every shard.

        Cases without a record (a shard that did not finish) appear with status ``error`` and say so.

        Args:
            cases: the whole cohort (or a manifest / folder to read it from).
            split: with a manifest, only this split.

        Returns:
            The merged table.
        """
        if not isinstance(cases, Sequence) or isinstance(cases, str):
            cases = read_cases(cases, split=split)
        records = {case.case_id: r for case in cases if (r := self._read_record(case.case_id)) is not None}
        merged = self._rows(cases, records, include_missing=True)
        missing = int(merged["reason"].fillna("").str.startswith("not run").sum())
        if missing:
            logger.warning("%d of %d cases have no result yet (unfinished shard?): marked error", missing, len(cases))
        write_csv_atomic(self.predictions_path, merged)
        if self.gallery_writer is not None and self.write_heatmaps:
            # the whole description: the heatmap NIfTI's descrip holds only its first 80 bytes
            map_text = getattr(self.predictor, "map_text", None)
            if map_text:
                self.gallery_writer(self.output_dir, map_description=f"Maps: {map_text[0]}")
            else:
                self.gallery_writer(self.output_dir)
        return merged

    @property
    def series_map_path(self) -> Path:
        """The local-only map of case ids to source paths (:meth:`write_series_map`)."""
        return self.output_dir / LOCAL_ONLY_DIR / "series_map.csv"

    def write_series_map(self, cases: Sequence[CohortCase]) -> Path:
        """Write ``local_only/series_map.csv``: every case id with its source path (and ingestion reason).

        The shared outputs (predictions, records, gallery, report, log) name a case only by its pseudonymous id,
        because source folders are often named after patients; this file is how the site finds the series again.
        It stays at the site: ``local_only/README.txt`` says so, and it is the one file of a run folder not to send.
        """
        folder = self.output_dir / LOCAL_ONLY_DIR
        rows = [
            {"case_id": c.case_id, "path": str(c.image), "rejected_by_ingestion": c.rejection.replace(str(c.image), "")}
            for c in cases
        ]
        write_text_atomic(
            folder / "README.txt",
            "LOCAL ONLY - do not share this folder.\n"
            "series_map.csv links the pseudonymous case ids of this run's outputs to the source paths at this site;\n"
            "folder names often name patients. Everything else in the run folder names cases by id only.\n",
        )
        return write_csv_atomic(
            self.series_map_path, pd.DataFrame(rows, columns=["case_id", "path", "rejected_by_ingestion"])
        )

    @property
    def gallery_path(self) -> Path:
        """The heatmap gallery (written by ``write_gallery`` after a merge)."""
        return self.output_dir / "gallery.html"

    def write_report(self, predictions: pd.DataFrame) -> tuple[Path | None, str]:
        """Write the evaluation report (``report/``) when the cohort has labelled, scored cases.

        Returns:
            ``(report folder or None, note saying why not)``.
        """
        if (
            "label" not in predictions.columns
            or not ((predictions["status"] == "ok") & (predictions["label"].fillna("") != "")).any()
        ):
            return None, "no labelled case scored: predictions only, no evaluation report"
        if self.evaluate_predictions is None or self.report_writer is None:
            return None, "no report writer configured (evaluate_predictions / write_report): predictions only"
        try:
            report = self.evaluate_predictions(
                self.predictions_path,
                threshold=None if self.threshold_source == "default" else self.threshold,
                classes=self.class_names[:2] if len(self.class_names) == 2 else None,
            )
            title = f"aamct cohort evaluation: {self.output_dir.name}"
            if self.gallery_path.is_file():
                self.report_writer(report, self.output_dir / "report", title=title, gallery=self.gallery_path)
            else:
                self.report_writer(report, self.output_dir / "report", title=title)
        except UserError as err:
            logger.warning("evaluation report not written: %s", err)
            return None, f"evaluation report not written: {err}"
        return self.output_dir / "report", ""

    # -- run folder identity ------------------------------------------------------------------------------------

    def claim_output_dir(self) -> None:
        """Record this run's identity in ``run.json``, or refuse a folder that holds another model's results.

        Raises:
            UserError: if ``run.json`` names another fingerprint, threshold or class list.
        """
        identity = {
            "fingerprint": self.fingerprint,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "class_names": self.class_names,
            "positive_index": self.positive_index,
        }
        path = self.output_dir / "run.json"
        if path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                previous = {}
            changed = [key for key, value in identity.items() if previous.get(key) != value]
            if changed:
                raise UserError(
                    f"{path}: this run folder holds results of another model or setting ({', '.join(changed)} "
                    "differ); use a new --out folder"
                )
            return
        write_json_atomic(path, {**identity, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


def _status_counts(rows: pd.DataFrame) -> dict[str, int]:
    """The summary's case counts of a predictions table (status ok / out_of_scope / error, and the scope verdicts)."""
    status = rows["status"].fillna("error")
    scope = rows["scope"].fillna("") if "scope" in rows.columns else pd.Series("", index=rows.index)
    return {
        "n_ok": int((status == "ok").sum()),
        "n_error": int(((status != "ok") & (status != OUT_OF_SCOPE)).sum()),
        "n_out_of_scope": int((status == OUT_OF_SCOPE).sum()),
        "n_in_scope": int((scope == IN_SCOPE).sum()),
        "n_scored_out_of_scope": int(((status == "ok") & (scope == OUT_OF_SCOPE)).sum()),
    }


def _relative(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _torchrun_barrier() -> None:
    """Wait for every torchrun rank (gloo, no GPU needed); the timeout is long because ranks finish unevenly."""
    import torch.distributed as dist

    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group(backend="gloo", timeout=dt.timedelta(days=2))
    try:
        dist.barrier()
    finally:
        if initialised_here:
            dist.destroy_process_group()


def summary_dict(summary: CohortSummary) -> dict[str, Any]:
    """A JSON-friendly view of a :class:`CohortSummary`."""
    data = asdict(summary)
    data["cases_per_minute"] = summary.cases_per_minute
    data["summary"] = summary.line
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
