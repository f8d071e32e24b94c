"""A dataset wrapper that survives a case failing to load, so one bad scan does not end a long training run.

MONAI's datasets let a transform error propagate, which stops ``SupervisedTrainer`` in the middle of an epoch (and
MONAI has no skip-on-error dataset). :class:`SkipFailedCases` wraps any map-style dataset (``Dataset``,
``PersistentDataset``, ``CacheDataset``):

* at run time, a case that raises is logged once with one ``WARNING`` line naming the case and the root cause, and
  the next good case is returned in its place, so batches keep their size and training goes on;
* with ``check_all=True`` every case is loaded once up front and the failing ones are dropped (the dataset gets
  shorter). Use it for validation, where a stand-in case would be counted twice in the AUC; with a
  ``PersistentDataset`` that pass also fills the cache, so it costs no more than the first validation would.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from pipeline.errors import UserError

__all__ = ["SkipFailedCases", "file_state_hashing", "root_cause"]

logger = logging.getLogger(__name__)


def root_cause(err: BaseException) -> str:
    """One line naming the innermost exception of a chain.

    MONAI wraps a failing transform as ``RuntimeError: applying transform <...>`` around the real error; the user
    needs the real one (``FileNotFoundError``, a decoder error, ...).

    Args:
        err: the caught exception.

    Returns:
        ``"<ExceptionType>: <first line of its message>"`` of the innermost cause; a
        :class:`~pipeline.errors.UserError` (e.g. the loader's ``"<path>: <reason>"`` for a scan the manifest builder
        would reject) is already worded for the user and comes back as its message alone.
    """
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, UserError) and str(err).strip():
            return str(err).strip().splitlines()[0]  # the outermost user-facing message, not what it wraps
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _file_state(path: str | os.PathLike) -> tuple[Any, ...] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISDIR(info.st_mode):
        return (info.st_size, info.st_mtime_ns)
    # a DICOM series folder: its files' names, sizes and times (a file rewritten in place leaves the folder's alone)
    with os.scandir(path) as entries:
        files = [(entry.name, entry.stat()) for entry in entries if entry.is_file(follow_symlinks=True)]
    return tuple(sorted((name, info.st_size, info.st_mtime_ns) for name, info in files))


def file_state_hashing(item: Mapping[str, Any]) -> bytes:
    """``PersistentDataset`` cache key of a datalist entry together with the state of the files it names.

    MONAI's default, :func:`monai.data.utils.pickle_hashing`, keys the entry alone, so a scan rewritten under the same
    path (a re-export, a regenerated cohort) would be served from the stale cache. Here every string value that names
    an existing file adds its size and modification time, and a folder (a DICOM series) adds those of its files; the
    key is then MONAI's hash of the extended entry. MONAI has no file-aware hash, hence this function.

    Args:
        item: a datalist entry (``image`` path, ``label``, ...).

    Returns:
        The cache key, as :func:`monai.data.utils.pickle_hashing` returns it.
    """
    from monai.data.utils import pickle_hashing

    state = {key: _file_state(value) for key, value in item.items() if isinstance(value, (str, os.PathLike))}
    return pickle_hashing({**item, "__file_state__": {k: v for k, v in state.items() if v is not None}})


class SkipFailedCases(Dataset):
    """Wrap a map-style dataset so that a case that fails to load is skipped with a warning.

    Args:
        dataset: the wrapped dataset; if it has a ``data`` list of dicts (MONAI datasets do), their ``case_id``
            names the case in messages.
        check_all: load every case once now and drop the failing ones (see the module docstring).

    Raises:
        RuntimeError: if ``check_all`` finds no loadable case (at construction), or if at run time every case
            has failed.
    """

    def __init__(self, dataset: Dataset, *, check_all: bool = False) -> None:
        self.dataset = dataset
        self._failed: dict[int, str] = {}
        self._indices: list[int] = list(range(len(dataset)))  # type: ignore[arg-type]
        if check_all:
            for index in self._indices:
                self._load(index)
            self._indices = [index for index in self._indices if index not in self._failed]
            if not self._indices:
                raise RuntimeError(f"none of the {len(dataset)} cases could be loaded")  # type: ignore[arg-type]

    @property
    def failed(self) -> dict[str, str]:
        """Cases that failed in this process so far: case name -> reason."""
        return {self._case_name(index): reason for index, reason in self._failed.items()}

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Any:
        count = len(self._indices)
        for step in range(count):
            real = self._indices[(index + step) % count]
            if real in self._failed:
                continue
            item = self._load(real)
            if real not in self._failed:
                return item
        raise RuntimeError(f"every one of the {count} cases failed to load (see the warnings above)")

    def _load(self, real: int) -> Any:
        try:
            return self.dataset[real]
        except Exception as err:  # a bad case, whatever the reader or transform raised; reported, not fatal
            reason = root_cause(err)
            self._failed[real] = reason
            logger.warning("skipping case %s, it failed to load: %s", self._case_name(real), reason)
            return None

    def _case_name(self, real: int) -> str:
        data = getattr(self.dataset, "data", None)
        if isinstance(data, Sequence) and real < len(data) and isinstance(data[real], dict):
            entry = data[real]
            return str(entry.get("case_id") or entry.get("image") or f"#{real}")
        return f"#{real}"
