"""Pre-flight checks of a training run, called from the bundle's ``initialize`` before any network is built.

``python -m monai.bundle run`` prints a full traceback for any exception, which buries a user's mistake (a mistyped
datalist path, a label outside the class list) under forty lines of MONAI and ignite internals. The checks here
therefore end the run with ``SystemExit("aamct: error: <one line>")``: Python prints exactly that line on stderr
and exits with status 1, and MONAI's config machinery lets ``SystemExit`` through (it only wraps ``Exception``).

What is checked, in order:

1. the datalist: a datalist JSON, or a manifest CSV whose ``<stem>.datalist.json`` (written by ``aamct manifest
   split``) lies beside it; its layout and integer labels (:func:`pipeline.data.datalist.load_datalist`);
2. that its class list is the one the bundle was configured with (``class_names`` in ``train.json``);
3. every training and validation case: the image exists and its header can be read (first file of a DICOM series
   folder with pydicom, NIfTI with nibabel). Unreadable cases are dropped with one ``WARNING`` line each naming
   the case and the reason; the run fails only if none are left or more than ``max_bad_fraction`` are bad;
4. that the validation fold has both classes (the validation AUC, which picks the best checkpoint, needs them);
5. the output folder can be created, and with ``resume`` that the last checkpoint exists and has epochs left.

A case whose header is fine but whose pixels fail to decode is caught later, at load time, by
:class:`pipeline.training.datasets.SkipFailedCases`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pipeline.errors import UserError

__all__ = [
    "PreparedRun",
    "SkippedCase",
    "fail",
    "as_bool",
    "resolve_datalist",
    "probe_image",
    "check_cases",
    "preflight",
]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class SkippedCase:
    """A case left out of the run.

    Attributes:
        case_id: the pseudonymous case id (or the image path when the entry has none).
        split: ``train`` or ``val``.
        reason: one line saying why.
    """

    case_id: str
    split: str
    reason: str


@dataclass(frozen=True)
class PreparedRun:
    """What :func:`preflight` hands to the rest of ``train.json``.

    Attributes:
        datalist_path: the datalist JSON actually used.
        class_names: class names, index = integer label.
        train: checked training entries (MONAI datalist dicts with ``image`` and ``label``).
        val: checked validation entries.
        skipped: cases left out, with their reasons.
        start_epoch: epochs already trained (from the last checkpoint when resuming, else 0).
    """

    datalist_path: Path
    class_names: list[str]
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    skipped: list[SkippedCase] = field(default_factory=list)
    start_epoch: int = 0


def fail(message: str) -> NoReturn:
    """End the run with one line on stderr and exit status 1 (no traceback).

    Args:
        message: what went wrong and, where possible, which file; newlines are folded into spaces.

    Raises:
        SystemExit: always.
    """
    line = " ".join(str(message).split())
    raise SystemExit(f"aamct: error: {line}")


def as_bool(value: Any) -> bool:
    """Read a command-line flag the way a user means it.

    ``python -m monai.bundle run ... --resume true`` hands the config the *string* ``"true"`` (python-fire only turns
    ``True`` into a bool), and ``bool("false")`` is ``True``; this accepts both spellings.

    Args:
        value: a bool, a number, or a string such as ``"true"``, ``"False"``, ``"1"``, ``"no"``.

    Returns:
        The flag's truth value.

    Raises:
        SystemExit: (one line) for a string that is not a recognisable yes/no.
    """
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", "", "none"):
            return False
        fail(f"expected true or false, got {value!r}")
    return bool(value)


def resolve_datalist(path: str | os.PathLike) -> Path:
    """The datalist JSON for a ``--datalist`` value: the file itself, or the datalist written beside a manifest.

    Args:
        path: a datalist JSON, or a manifest CSV (then ``<stem>.datalist.json`` in the same folder is used).

    Returns:
        The datalist JSON path.

    Raises:
        UserError: if the file (or the datalist beside the manifest) does not exist.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise UserError(f"{path}: manifest not found (build it with `aamct manifest build`)")
        datalist = path.with_name(f"{path.stem}.datalist.json")
        if not datalist.is_file():
            raise UserError(f"{path}: no datalist beside this manifest (write it with `aamct manifest split {path}`)")
        return datalist
    if not path.is_file():
        raise UserError(f"{path}: datalist not found (write it with `aamct manifest split MANIFEST.csv`)")
    return path


def probe_image(image: str | os.PathLike) -> str | None:
    """Check that a case's image exists and its header can be read, without decoding any pixels.

    Args:
        image: a DICOM series folder or a NIfTI file.

    Returns:
        ``None`` if the header reads, else a one-line reason.
    """
    path = Path(image)
    if not path.exists():
        return f"image not found: {path}"
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                return f"empty series folder: {path}"
            import pydicom

            # one header is enough here: the manifest builder checked the whole series, and a slice that fails to
            # decode later is caught by SkipFailedCases
            pydicom.dcmread(files[0], stop_before_pixels=True)
            return None
        if path.name.lower().endswith(_NIFTI_SUFFIXES):
            import nibabel

            header = nibabel.load(path).header
            if len(header.get_data_shape()) < 3:
                return f"not a 3D volume (shape {tuple(header.get_data_shape())}): {path}"
            return None
    except Exception as err:  # any reader failure is a property of the file, reported as the reason
        return f"unreadable ({type(err).__name__}: {_first_line(err)}): {path}"
    return f"neither a DICOM series folder nor a NIfTI file: {path}"


def check_cases(
    entries: Sequence[Mapping[str, Any]], *, split: str, max_bad_fraction: float
) -> tuple[list[dict[str, Any]], list[SkippedCase]]:
    """Probe every entry, drop the unreadable ones with a warning each, fail if too many are bad.

    Args:
        entries: datalist entries with ``image`` (and usually ``case_id``).
        split: name used in messages (``train`` / ``val``).
        max_bad_fraction: largest share of bad cases that is skipped rather than fatal.

    Returns:
        ``(kept entries, skipped cases)``.

    Raises:
        SystemExit: (one line) if no case is left or more than ``max_bad_fraction`` are bad.
    """
    kept: list[dict[str, Any]] = []
    skipped: list[SkippedCase] = []
    for entry in entries:
        reason = probe_image(entry["image"])
        if reason is None:
            kept.append(dict(entry))
            continue
        case = SkippedCase(case_id=str(entry.get("case_id") or entry["image"]), split=split, reason=reason)
        skipped.append(case)
        logger.warning("skipping %s case %s: %s", split, case.case_id, reason)
    if entries and (not kept or len(skipped) > max_bad_fraction * len(entries)):
        first = skipped[0]
        fail(
            f"{len(skipped)} of {len(entries)} {split} cases cannot be read (first: {first.case_id}: {first.reason}); "
            f"fix the manifest, or raise max_bad_fraction (now {max_bad_fraction}) to skip them"
        )
    return kept, skipped


def preflight(
    *,
    datalist: str | os.PathLike,
    class_names: Sequence[str],
    fold: int = 0,
    output_dir: str | os.PathLike,
    resume: Any = False,
    last_checkpoint: str | os.PathLike | None = None,
    epochs: int = 100,
    max_bad_fraction: float = 0.2,
    network_name: str | None = None,
    transform_args: Mapping[str, Any] | None = None,
) -> PreparedRun:
    """Check a training run before it starts; see the module docstring for the list.

    Args:
        datalist: datalist JSON or manifest CSV (``--datalist``).
        class_names: the bundle's class names; must equal the datalist's ``classes``.
        fold: validation fold; training uses the other folds.
        output_dir: run folder (checkpoints under ``models/``, cache, logs).
        resume: continue from ``last_checkpoint`` (bool or a ``"true"``/``"false"`` string).
        last_checkpoint: the last-epoch checkpoint file.
        epochs: the maximum number of epochs of the run.
        max_bad_fraction: largest share of unreadable cases per split that is skipped rather than fatal.
        network_name: checked against the network registry when given.
        transform_args: keyword arguments of :func:`pipeline.transforms.eval_transforms` (``roi_size``, ``spacing``,
            ``hu_window``) checked by building the chain once when given.

    Returns:
        The checked training and validation entries.

    Raises:
        SystemExit: (one line) for any problem the user has to fix.
    """
    _check_settings(network_name=network_name, transform_args=transform_args, epochs=epochs, fold=fold)
    try:
        from pipeline.data.datalist import load_datalist, select

        datalist_path = resolve_datalist(datalist)
        data = load_datalist(datalist_path)
        classes = [str(name) for name in data["classes"]]
        if list(class_names) != classes:
            fail(
                f"{datalist_path}: datalist classes {classes} differ from the bundle's class_names "
                f"{list(class_names)} (override --class_names or re-split the manifest with --classes)"
            )
        train_entries = select(data, "train", fold)
        val_entries = select(data, "val", fold)
    except UserError as err:
        fail(str(err))
    if not train_entries:
        fail(f"{datalist_path}: no training cases outside fold {fold}")
    if not val_entries:
        fail(f"{datalist_path}: fold {fold} has no validation cases")

    train, skipped_train = check_cases(train_entries, split="train", max_bad_fraction=max_bad_fraction)
    val, skipped_val = check_cases(val_entries, split="val", max_bad_fraction=max_bad_fraction)
    val_labels = {int(entry["label"]) for entry in val}
    if len(val_labels) < 2:
        only = ", ".join(classes[label] for label in sorted(val_labels))
        fail(f"{datalist_path}: validation fold {fold} has only class {only}; the validation AUC needs both classes")

    output = Path(output_dir)
    try:
        (output / "models").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"{output}: cannot create the output folder ({err.strerror or err})")

    start_epoch = 0
    if as_bool(resume):
        start_epoch = _check_resume(last_checkpoint, epochs=int(epochs))

    logger.info(
        "datalist %s: %d training and %d validation cases (fold %d), %d skipped; classes %s",
        datalist_path,
        len(train),
        len(val),
        fold,
        len(skipped_train) + len(skipped_val),
        classes,
    )
    return PreparedRun(
        datalist_path=datalist_path,
        class_names=classes,
        train=train,
        val=val,
        skipped=skipped_train + skipped_val,
        start_epoch=start_epoch,
    )


def _check_settings(
    *, network_name: str | None, transform_args: Mapping[str, Any] | None, epochs: Any, fold: Any
) -> None:
    """Settings a user types on the command line, checked before anything is built from them."""
    for name, value in (("epochs", epochs), ("fold", fold)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "epochs" else 0):
            fail(f"--{name} must be a {'positive' if name == 'epochs' else 'non-negative'} integer, got {value!r}")
    if network_name is not None:
        from pipeline.networks import network_spec

        try:
            network_spec(network_name)
        except UserError as err:
            fail(str(err))
    if transform_args is not None:
        from pipeline.transforms import eval_transforms

        try:
            eval_transforms(**dict(transform_args), reader="NibabelReader")
        except (TypeError, ValueError) as err:
            fail(f"transform settings: {_first_line(err)}")


def _check_resume(last_checkpoint: str | os.PathLike | None, *, epochs: int) -> int:
    """Epochs already trained in the last checkpoint; fails if it is missing or has no epochs left."""
    if last_checkpoint is None or not Path(last_checkpoint).is_file():
        fail(f"{last_checkpoint}: no last checkpoint to resume from (start the run without --resume first)")
    from pipeline.training.checkpoints import checkpoint_epoch

    try:
        done = checkpoint_epoch(last_checkpoint)
    except Exception as err:  # unreadable, truncated, foreign or unsafe file: all the user's to fix
        fail(f"{last_checkpoint}: cannot read the last checkpoint ({type(err).__name__}: {_first_line(err)})")
    if done >= epochs:
        fail(f"{last_checkpoint}: already trained {done} epochs; set --epochs above {done} to continue")
    logger.info(
        "resuming from %s: %d epochs done, continuing at epoch %d of %d", last_checkpoint, done, done + 1, epochs
    )
    return done


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
