"""Pre-flight checks of a training run, called from the bundle's ``initialize`` before any network is built.

User mistakes (a mistyped datalist path, a label outside the class list) end the run with one
``aamct: error: <line>`` (:func:`pipeline.contracts.fail`) instead of a MONAI traceback.

What is checked, in order:

1. the datalist: a datalist JSON, or a manifest CSV whose ``<stem>.datalist.json`` (written by ``aamct manifest
   split``) lies beside it; its layout and integer labels (:func:`pipeline.contracts.load_datalist`);
2. that its class list is the one the bundle was configured with (``class_names`` in ``train.json``);
3. every training and validation case, with the scan loader's header probe (:func:`pipeline.data.loading.check_scan`:
   the manifest builder's checks from the headers alone, every file of a DICOM series). Rejected cases are dropped
   with one ``WARNING`` line each naming the case and the builder's reason; the run fails only if none are left or
   more than ``max_bad_fraction`` are bad. A case the manifest builder measured out of scope (its datalist entry
   says ``scope: out_of_scope``: not a chest CT with lungs in view, :mod:`pipeline.data.scope`) is dropped the same
   way unless ``allow_out_of_scope``; a case without that verdict is measured by the loader when it is loaded, which
   refuses it with the same reason (:class:`pipeline.training.datasets.SkipFailedCases` skips it);
4. that the validation fold has both classes (the validation AUC, which picks the best checkpoint, needs them);
5. the output folder can be created, and with ``resume`` that the last checkpoint exists and has epochs left.

A case whose headers are fine but whose pixels fail (NaN voxels, a codestream that does not decode) is refused by
the same loader at load time, and skipped by :class:`pipeline.training.datasets.SkipFailedCases`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.contracts.datalist import load_datalist, resolve_datalist, select
from pipeline.contracts.failure import fail
from pipeline.data.loading import DEFAULT_MIN_SLICES, check_scan
from pipeline.data.scope import OUT_OF_SCOPE
from pipeline.errors import UserError

__all__ = [
    "PreparedRun",
    "SkippedCase",
    "as_bool",
    "probe_image",
    "check_cases",
    "preflight",
]

logger = logging.getLogger(__name__)


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


def probe_image(image: str | os.PathLike, *, min_slices: int = DEFAULT_MIN_SLICES) -> str | None:
    """Check a case's scan from its headers alone, as the loader and the manifest builder check it.

    Args:
        image: a DICOM series folder or a NIfTI file.
        min_slices: fewest slices a scan may have.

    Returns:
        ``None`` if the headers pass, else ``"<image>: <reason>"`` with the builder's reason.
    """
    reason = check_scan(image, min_slices=min_slices)
    return None if reason is None else f"{image}: {reason}"


def check_cases(
    entries: Sequence[Mapping[str, Any]],
    *,
    split: str,
    max_bad_fraction: float,
    min_slices: int = DEFAULT_MIN_SLICES,
    allow_out_of_scope: bool = False,
) -> tuple[list[dict[str, Any]], list[SkippedCase]]:
    """Probe every entry, drop the unreadable ones with a warning each, fail if too many are bad.

    Args:
        entries: datalist entries with ``image`` (and usually ``case_id``).
        split: name used in messages (``train`` / ``val``).
        max_bad_fraction: largest share of bad cases that is skipped rather than fatal.
        min_slices: fewest slices a scan may have.
        allow_out_of_scope: keep entries the manifest builder measured out of scope (``scope: out_of_scope``).

    Returns:
        ``(kept entries, skipped cases)``.

    Raises:
        SystemExit: (one line) if no case is left or more than ``max_bad_fraction`` are bad.
    """
    kept: list[dict[str, Any]] = []
    skipped: list[SkippedCase] = []
    for entry in entries:
        reason = probe_image(entry["image"], min_slices=min_slices)
        if reason is None and entry.get("scope") == OUT_OF_SCOPE and not allow_out_of_scope:
            reason = (
                f"{entry['image']}: out of scope (the manifest's scope column: not a chest CT with lungs in view); "
                "set allow_out_of_scope to train on it"
            )
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
    min_slices: int = DEFAULT_MIN_SLICES,
    allow_out_of_scope: Any = False,
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
        min_slices: fewest slices a scan may have (the manifest builder's ``--min-slices``).
        allow_out_of_scope: keep cases measured out of scope (bool or a ``"true"``/``"false"`` string).
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

    probe = {
        "max_bad_fraction": max_bad_fraction,
        "min_slices": min_slices,
        "allow_out_of_scope": as_bool(allow_out_of_scope),
    }
    train, skipped_train = check_cases(train_entries, split="train", **probe)
    val, skipped_val = check_cases(val_entries, split="val", **probe)
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
            eval_transforms(**dict(transform_args))
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
