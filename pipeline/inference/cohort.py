"""The batch job for a new cohort: every case scored or marked error, resumable, shardable, then evaluated.

Layout of a run folder::

    run.json                  model fingerprint, threshold and its source, classes (a rerun must match it)
    records/<case_id>.json    one record per finished case (ok or error), written atomically: the source of truth
    predictions.csv           one row per input case (rewritten atomically after every case)
    parts/predictions.rank<i>-of-<n>.csv   per-shard tables when sharded
    heatmaps/<case_id>.nii.gz heatmap in the source image's geometry; heatmaps/<case_id>.png the montage
    report/                   the evaluation report (pipeline.evaluation) when the cohort has labels

Resuming: a rerun skips every case that has a record (``retry_errors=True`` reruns the error ones). A killed run
loses at most the case in flight: records and tables are only ever replaced whole.

Sharding: ``Shard(i, n)`` takes every n-th case of the cases sorted by id; ranks write disjoint records, so ranks of
one ``torchrun`` (or separate machines sharing the folder) never write the same file. Under ``torchrun`` rank 0 waits
for the others at a barrier and merges; with explicit shards, :meth:`CohortRunner.merge` (``aamct evaluate-cohort
--merge``) merges once all have finished.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.inference.case import STAGES, CaseFailure
from pipeline.io import write_csv_atomic, write_json_atomic

__all__ = [
    "PREDICTION_COLUMNS",
    "CohortCase",
    "CohortRunner",
    "CohortSummary",
    "Shard",
    "discover_cases",
    "read_cases",
    "read_manifest_cases",
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
#: manifest columns copied into the predictions table (the evaluation report uses them)
CARRIED_COLUMNS: tuple[str, ...] = ("label", "site", "split", "fold")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
    """

    case_id: str
    image: Path
    label: str = ""
    site: str = ""
    split: str = ""
    fold: str = ""


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

    @property
    def cases_per_minute(self) -> float:
        """Throughput of this call (cases processed per minute of case loop)."""
        return 60.0 * self.n_ran / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------- inputs


def read_manifest_cases(manifest: str | os.PathLike, *, split: str | None = None) -> list[CohortCase]:
    """Cases of a manifest CSV (columns ``case_id, image`` required; ``label, site, split, fold`` optional).

    Args:
        manifest: the manifest; relative ``image`` paths are relative to its folder.
        split: keep only rows of this split (e.g. ``test``).

    Returns:
        The cases in manifest order.

    Raises:
        UserError: missing file or column, a bad or duplicate ``case_id``, or no row left.
    """
    path = Path(manifest)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in ("case_id", "image") if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    if split is not None:
        if "split" not in frame.columns:
            raise UserError(f"{path}: no 'split' column to select split {split!r} from")
        frame = frame[frame["split"].str.strip().str.lower() == split.lower()]
        if frame.empty:
            raise UserError(f"{path}: no case in split {split!r}")
    cases = []
    for row_number, row in enumerate(frame.to_dict("records"), start=2):
        case_id = str(row["case_id"]).strip()
        if not _CASE_ID.match(case_id):
            raise UserError(f"{path}: row {row_number}: case_id {case_id!r} is not a plain id (letters, digits, ._-)")
        image = Path(str(row["image"]).strip())
        if not str(row["image"]).strip():
            raise UserError(f"{path}: row {row_number}: empty image path")
        cases.append(
            CohortCase(
                case_id=case_id,
                image=image if image.is_absolute() else (path.parent / image),
                **{column: str(row.get(column, "")).strip() for column in CARRIED_COLUMNS},
            )
        )
    if not cases:
        raise UserError(f"{path}: the manifest lists no case")
    _check_unique(cases, str(path))
    return cases


def discover_cases(folder: str | os.PathLike) -> list[CohortCase]:
    """Every NIfTI file and every DICOM series folder under a folder, as unlabelled cases.

    A DICOM series folder is a folder directly holding ``.dcm`` files or files with the DICOM preamble. Case ids are
    ``case-`` plus a hash of the path relative to ``folder``: folder names of hospital exports often are patient
    names or numbers, and must not reach the outputs. For labels, sites and keyed pseudonyms build a manifest
    first (``aamct manifest build``).

    Args:
        folder: the folder to search.

    Returns:
        The cases, sorted by path.

    Raises:
        UserError: if the folder is missing or holds no image.
    """
    import hashlib

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: input folder not found")
    images: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        here = Path(directory)
        files = sorted(f for f in files if not f.startswith("."))
        images += [here / f for f in files if f.lower().endswith(_NIFTI_SUFFIXES)]
        if any(f.lower().endswith(".dcm") or _has_dicom_preamble(here / f) for f in files[:3]):
            images.append(here)
    if not images:
        raise UserError(f"{root}: no NIfTI file or DICOM series found")
    cases = [
        CohortCase(
            case_id="case-" + hashlib.sha256(image.relative_to(root).as_posix().encode()).hexdigest()[:10],
            image=image,
        )
        for image in images
    ]
    _check_unique(cases, str(root))
    return cases


def read_cases(source: str | os.PathLike, *, split: str | None = None) -> list[CohortCase]:
    """Cases from a manifest CSV (a file) or by :func:`discover_cases` (a folder)."""
    if Path(source).is_dir():
        if split is not None:
            raise UserError(f"{source}: --split needs a manifest, not a folder")
        return discover_cases(source)
    return read_manifest_cases(source, split=split)


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _check_unique(cases: Sequence[CohortCase], source: str) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise UserError(f"{source}: case_id {case.case_id!r} appears more than once")
        seen.add(case.case_id)


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
    """

    def __init__(
        self,
        *,
        predictor: Callable[..., Any],
        output_dir: str | os.PathLike,
        threshold: float = 0.5,
        threshold_source: str = "default",
        class_names: Sequence[str] = ("negative", "positive"),
        positive_index: int = 1,
        write_heatmaps: bool = True,
        retry_errors: bool = False,
        progress: bool = True,
        fingerprint: str = "",
        evaluate: bool = True,
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
        ran, skipped, seconds = self.run_shard(cases, shard)
        if shard.count > 1 and not shard.from_torchrun:
            mine = shard.select(cases)
            rows = self._rows(mine, {c.case_id: r for c in mine if (r := self._read_record(c.case_id)) is not None})
            logger.info("shard %s done; merge with `aamct evaluate-cohort --merge` once every shard has run", shard)
            return CohortSummary(
                n_cases=len(cases),
                n_ok=int((rows["status"] == "ok").sum()),
                n_error=int((rows["status"] != "ok").sum()),
                n_ran=ran,
                n_skipped=skipped,
                seconds=seconds,
            )
        if shard.from_torchrun:
            _torchrun_barrier()
            if shard.index != 0:
                return CohortSummary(len(cases), 0, 0, ran, skipped, seconds)
        merged = self.merge(cases)
        report, note = self.write_report(merged) if self.evaluate else (None, "evaluation not requested")
        return CohortSummary(
            n_cases=len(cases),
            n_ok=int((merged["status"] == "ok").sum()),
            n_error=int((merged["status"] != "ok").sum()),
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
        started = time.perf_counter()
        record: dict[str, Any] = {"case_id": case.case_id}
        heatmap_dir = self.output_dir / "heatmaps" if self.write_heatmaps else None
        try:
            prediction = self.predictor(case.image, case_id=case.case_id, heatmap_dir=heatmap_dir)
        except Exception as failure:  # one bad case must not stop the cohort; KeyboardInterrupt still does
            reason = (
                str(failure) if isinstance(failure, CaseFailure) else f"failed: {type(failure).__name__}: {failure}"
            )
            record.update(status="error", reason=" ".join(reason.split())[:500], probability=None, predicted_label="")
            logger.warning("%s: %s", case.case_id, record["reason"])
        else:
            probability = float(np.asarray(prediction.probabilities)[self.positive_index])
            record.update(
                status="ok",
                reason="",
                probability=probability,
                predicted_label=self._call(probability, prediction.probabilities),
                heatmap=_relative(prediction.heatmap, self.output_dir),
                montage=_relative(prediction.montage, self.output_dir),
            )
            record.update({f"seconds_{k}": round(v, 4) for k, v in prediction.stage_seconds.items()})
        record["threshold"] = self.threshold
        record["seconds"] = round(time.perf_counter() - started, 4)
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        record["pid"] = os.getpid()
        write_json_atomic(self.records_dir / f"{case.case_id}.json", record)
        return record

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
            row.update({key: value for key, value in record.items() if key.startswith("seconds_")})
            row["heatmap"] = record.get("heatmap") or ""
            row["montage"] = record.get("montage") or ""
            rows.append(row)
        columns = [*PREDICTION_COLUMNS, *CARRIED_COLUMNS, "heatmap", "montage", *(f"seconds_{s}" for s in STAGES)]
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
        return merged

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
        from pipeline.evaluation.report import evaluate_predictions, write_report

        try:
            report = evaluate_predictions(
                self.predictions_path,
                threshold=None if self.threshold_source == "default" else self.threshold,
                classes=self.class_names[:2] if len(self.class_names) == 2 else None,
            )
            write_report(report, self.output_dir / "report", title=f"aamct cohort evaluation: {self.output_dir.name}")
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
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
