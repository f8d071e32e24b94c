"""Writing the MONAI datalist JSON of ``aamct manifest split``; reading it is :mod:`pipeline.contracts.datalist`.

The layout (a Medical-Segmentation-Decathlon-style datalist, which MONAI's ``load_decathlon_datalist`` reads) is
described in :mod:`pipeline.contracts.datalist` and ``data_manifests/README.md``; what is written here is checked
with the reader's own :func:`~pipeline.contracts.datalist.check_datalist_layout`, so the writer cannot produce a
file the stages refuse.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.contracts.datalist import check_datalist_layout
from pipeline.io import write_json_atomic

__all__ = ["write_datalist"]


def write_datalist(
    target: str | os.PathLike,
    *,
    classes: Sequence[str],
    manifest: str | os.PathLike,
    seed: int,
    n_folds: int,
    training: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]] = (),
    external: Sequence[Mapping[str, Any]] = (),
    **provenance: Any,
) -> Path:
    """Write a datalist JSON atomically.

    Args:
        target: the JSON file to write.
        classes: class names; ``label`` integers index into this list.
        manifest: the manifest the datalist was made from (stored as an absolute path).
        seed: the seed of the split.
        n_folds: number of cross-validation folds over ``training``.
        training: training entries, each with ``image``, ``label`` (int) and ``fold`` (int).
        test: test entries (``image``, ``label``).
        external: external hold-out entries (``image``, ``label``).
        **provenance: further top-level keys kept for the record (e.g. ``external_site``).

    Returns:
        The path written.

    Raises:
        UserError: if an entry lacks ``image`` / ``label`` or a training entry lacks an integer ``fold``.
    """
    data: dict[str, Any] = {
        "classes": list(classes),
        "manifest": str(Path(manifest).resolve()),
        "seed": int(seed),
        "n_folds": int(n_folds),
        **provenance,
        "training": [dict(item) for item in training],
        "test": [dict(item) for item in test],
        "external": [dict(item) for item in external],
    }
    check_datalist_layout(data, source=str(target))
    return write_json_atomic(target, data)
