"""Input checks shared by every evaluation function: binary ground truth, finite scores, matching lengths.

Statistics on bad input must fail loudly or say that they are undefined; they never return a silent number. A
problem with the user's data raises :class:`~pipeline.errors.UserError`; a statistic that the data cannot support (a
class absent, a zero variance) raises :class:`UndefinedStatisticError`, which the summary functions catch and record
as ``None`` together with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import UserError

__all__ = [
    "UndefinedStatisticError",
    "binary_truth",
    "finite_scores",
    "require_both_classes",
]

#: label spellings understood without ``--positive`` / ``--classes`` (compared case-insensitively)
_CONVENTIONAL_LABELS = {"0": 0, "1": 1, "negative": 0, "positive": 1, "false": 0, "true": 1}


class UndefinedStatisticError(UserError):
    """The data do not define this statistic (e.g. one class absent, zero variance); the message says why."""


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def binary_truth(
    values: Sequence | np.ndarray | pd.Series,
    *,
    positive: str | int | None = None,
    classes: Sequence[str] | None = None,
    source: str = "labels",
) -> np.ndarray:
    """Turn ground-truth labels into a 0/1 integer array.

    Accepted spellings: integers/floats/booleans 0 and 1; the names ``negative``/``positive`` (any case); class names
    listed in ``classes`` (index = integer label, exactly two classes); or any two values when ``positive`` names the
    positive one.

    Args:
        values: one label per case.
        positive: the value that marks the positive class (everything else is negative).
        classes: the two class names, negative first (as in the datalist's ``classes``).
        source: what the values are, for error messages (e.g. ``"predictions.csv column 'label'"``).

    Returns:
        ``int64`` array of 0 (negative) and 1 (positive).

    Raises:
        UserError: a missing label, a label outside the two classes, or class names that need ``positive``/``classes``.
    """
    raw = list(values.tolist() if isinstance(values, (np.ndarray, pd.Series)) else values)
    missing = [i for i, v in enumerate(raw) if _is_missing(v)]
    if missing:
        raise UserError(f"{source}: {len(missing)} missing label(s), first at row {missing[0] + 1}")
    if classes is not None and len(classes) != 2:
        raise UserError(f"{source}: binary evaluation needs exactly two classes, got {list(classes)}")
    texts = [_label_text(v) for v in raw]
    if classes is not None:
        lookup = {str(name): index for index, name in enumerate(classes)}
        lookup.update({"0": 0, "1": 1})
    elif positive is not None:
        positive_text = _label_text(positive)
        return np.asarray([int(t == positive_text) for t in texts], dtype=np.int64)
    else:
        lookup = _CONVENTIONAL_LABELS
    out = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        key = text if classes is not None else text.lower()
        if key not in lookup:
            hint = f"not one of {list(classes)}" if classes is not None else "not 0/1 or negative/positive"
            raise UserError(f"{source}: label {text!r} at row {i + 1} is {hint}; name the positive class explicitly")
        out[i] = lookup[key]
    return out


def _label_text(value: object) -> str:
    """A canonical text for a label, so that 1, 1.0, '1' and True compare equal."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        # "1.0" in a CSV whose label column pandas once wrote as floats
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def finite_scores(
    values: Sequence | np.ndarray | pd.Series,
    *,
    source: str = "scores",
    expected_length: int | None = None,
) -> np.ndarray:
    """Check that scores are numbers, finite, and as many as the labels.

    Args:
        values: one score (probability, logit, rating) per case; a 2D array holds one row per model.
        source: what the values are, for error messages.
        expected_length: number of cases the scores must match (the labels' length).

    Returns:
        ``float64`` array of the same shape.

    Raises:
        UserError: non-numeric values, NaN or infinite values, or a length that differs from ``expected_length``.
    """
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: not numeric ({err})") from None
    if scores.ndim not in (1, 2):
        raise UserError(f"{source}: expected one score per case, got an array of shape {scores.shape}")
    if expected_length is not None and scores.shape[-1] != expected_length:
        raise UserError(f"{source}: {scores.shape[-1]} scores for {expected_length} labels (lengths must match)")
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(-1, scores.shape[-1]).any(axis=0))
        kind = "NaN" if np.isnan(scores).any() else "infinite"
        raise UserError(f"{source}: {int(bad.sum())} {kind} score(s), first at row {rows[0] + 1}")
    return scores


def require_both_classes(labels: np.ndarray, *, minimum: int = 1, what: str = "this statistic") -> tuple[int, int]:
    """Return ``(n_positive, n_negative)``, raising when either class has fewer than ``minimum`` cases.

    Raises:
        UndefinedStatisticError: a class is absent (or too small for ``what``).
    """
    n_positive = int(np.count_nonzero(labels == 1))
    n_negative = int(labels.size - n_positive)
    for count, name in ((n_positive, "positive"), (n_negative, "negative")):
        if count < minimum:
            need = "no" if count == 0 else f"only {count}"
            raise UndefinedStatisticError(
                f"{need} {name} case(s): {what} needs at least {minimum} of each class "
                f"({n_positive} positive, {n_negative} negative)"
            )
    return n_positive, n_negative
