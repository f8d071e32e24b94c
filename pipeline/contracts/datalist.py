"""Reading the MONAI datalist JSON written by ``aamct manifest split``, and picking a run's entries out of it.

The file is a Medical-Segmentation-Decathlon-style datalist, so MONAI reads it directly::

    monai.data.load_decathlon_datalist(path, data_list_key="training")

Layout (see ``data_manifests/README.md``)::

    {"classes": ["negative", "positive"], "manifest": "/abs/cohort.csv", "seed": 0, "n_folds": 5,
     "training": [{"image": "/abs/...", "label": 1, "case_id": ..., "patient_id": ..., "site": ..., "fold": 3}],
     "test": [...], "external": [...]}

MONAI's ``load_decathlon_datalist`` returns one list and knows nothing about folds or class names; :func:`select`
adds the fold logic the configs need (``train`` / ``val`` of one fold, ``train_all``, ``test``, ``external``) so a
bundle config can say ``"$pipeline.contracts.select(@datalist, 'val', @fold)"``. The writer,
:func:`pipeline.data.datalist.write_datalist`, checks what it writes with the same :func:`check_datalist_layout`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

__all__ = [
    "SELECTIONS",
    "SPLIT_KEYS",
    "check_datalist_layout",
    "class_names",
    "datalist_beside",
    "load_datalist",
    "resolve_datalist",
    "select",
]

#: the top-level lists of a datalist, one per manifest ``split`` value (``train`` rows live under ``training``)
SPLIT_KEYS: dict[str, str] = {"train": "training", "test": "test", "external": "external"}

#: what :func:`select` accepts as ``split``
SELECTIONS: tuple[str, ...] = ("train", "val", "train_all", "test", "external")


def datalist_beside(manifest: str | os.PathLike) -> Path:
    """``cohort.csv`` -> ``cohort.datalist.json`` beside it (where ``aamct manifest split`` writes it)."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.datalist.json")


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
        datalist = datalist_beside(path)
        if not datalist.is_file():
            raise UserError(f"{path}: no datalist beside this manifest (write it with `aamct manifest split {path}`)")
        return datalist
    if not path.is_file():
        raise UserError(f"{path}: datalist not found (write it with `aamct manifest split MANIFEST.csv`)")
    return path


def load_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON and resolve relative ``image`` paths against the file's folder (as MONAI does).

    Args:
        path: the datalist JSON file.

    Returns:
        The parsed datalist; every ``image`` is an absolute path string.

    Raises:
        UserError: if the file is missing, is not valid JSON, or is not the layout the pipeline writes.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: datalist file not found (write it with `aamct manifest split MANIFEST.csv`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the datalist ({err})") from None
    check_datalist_layout(data, source=str(path))
    base = path.resolve().parent
    for key in SPLIT_KEYS.values():
        for item in data.get(key, []):
            image = item.get("image")
            if isinstance(image, str) and not os.path.isabs(image):
                item["image"] = os.path.normpath(base / image)
    return data


def class_names(datalist: str | os.PathLike | Mapping[str, Any]) -> list[str]:
    """The class names of a datalist; integer labels index into this list.

    Args:
        datalist: a datalist JSON path or an already loaded datalist.

    Returns:
        The ``classes`` list.

    Raises:
        UserError: if the datalist cannot be read or has no ``classes``.
    """
    data = _as_datalist(datalist)
    return [str(name) for name in data["classes"]]


def select(datalist: str | os.PathLike | Mapping[str, Any], split: str, fold: int | None = 0) -> list[dict[str, Any]]:
    """Pick the entries a training or evaluation run needs.

    Args:
        datalist: a datalist JSON path or an already loaded datalist.
        split: ``train`` (training entries outside ``fold``; all of them when ``fold`` is None), ``val`` (training
            entries of ``fold``), ``train_all`` (every training entry), ``test`` or ``external``.
        fold: the validation fold, ``0 .. n_folds - 1``; ignored for ``train_all`` / ``test`` / ``external``.

    Returns:
        Copies of the selected entries (changing them leaves the datalist untouched), in file order.

    Raises:
        UserError: for an unknown ``split``, a ``fold`` outside the datalist's folds, or ``val`` without a fold.
    """
    data = _as_datalist(datalist)
    if split not in SELECTIONS:
        raise UserError(f"unknown datalist selection {split!r}; choose one of {', '.join(SELECTIONS)}")
    if split in ("test", "external"):
        return copy.deepcopy(list(data.get(SPLIT_KEYS[split], [])))
    training = data.get("training", [])
    if split == "train_all" or (split == "train" and fold is None):
        return copy.deepcopy(list(training))
    if fold is None:
        raise UserError("selection 'val' needs a fold number")
    n_folds = int(data.get("n_folds") or 1 + max((int(item["fold"]) for item in training), default=-1))
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise UserError(f"fold {fold!r} is outside the datalist's folds 0..{n_folds - 1}")
    if split == "val":
        chosen = [item for item in training if int(item["fold"]) == fold]
    else:
        chosen = [item for item in training if int(item["fold"]) != fold]
    return copy.deepcopy(chosen)


def _as_datalist(datalist: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(datalist, Mapping):
        check_datalist_layout(datalist, source="datalist")
        return datalist
    return load_datalist(datalist)


def check_datalist_layout(data: Any, *, source: str) -> None:
    """Check that ``data`` is a datalist as the pipeline writes it.

    Args:
        data: the parsed JSON.
        source: what to name in the message (usually the file).

    Raises:
        UserError: (one line) for a layout the pipeline does not write: not an object, no ``classes`` /
            ``training``, an entry without ``image`` / ``label``, a label outside the classes, a training entry
            without a fold.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: a datalist must be a JSON object, found {type(data).__name__}")
    for key in ("classes", "training"):
        if key not in data:
            raise UserError(f"{source}: datalist has no {key!r} key (is it a file written by `aamct manifest split`?)")
    if not isinstance(data["classes"], list) or not data["classes"]:
        raise UserError(f"{source}: 'classes' must be a non-empty list of class names")
    for key in SPLIT_KEYS.values():
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise UserError(f"{source}: {key!r} must be a list of entries")
        for position, item in enumerate(entries):
            if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
                raise UserError(f"{source}: {key}[{position}] must be an object with 'image' and 'label'")
            label = item["label"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(data["classes"]):
                raise UserError(
                    f"{source}: {key}[{position}] has label {label!r}; expected an integer 0..{len(data['classes']) - 1}"
                )
            if key == "training":
                fold = item.get("fold")
                if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
                    raise UserError(
                        f"{source}: training[{position}] needs a non-negative integer 'fold', found {fold!r}"
                    )
