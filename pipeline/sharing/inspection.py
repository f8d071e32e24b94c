"""``aamct bundle inspect NAME.zip``: the model card summary of a bundle, read without unpacking or running it.

The card is read from ``configs/metadata.json`` (key ``model_card``, written by ``aamct bundle export``); for a
bundle exported by other tools a card is assembled from its plain metadata. Nothing is loaded or executed, and the
archive's integrity is not checked here -- that is ``aamct bundle verify``.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.sharing.archive import open_bundle_archive
from pipeline.sharing.model_card import MODEL_CARD_KEY, build_model_card, summary_lines

__all__ = ["inspect_bundle", "read_bundle_metadata"]


def read_bundle_metadata(archive: str | Path) -> tuple[str, dict[str, Any]]:
    """The bundle name and its parsed ``configs/metadata.json``, straight from the zip.

    Raises:
        UserError: if the zip is not a bundle or its metadata is missing, corrupt or not a JSON object.
    """
    bundle = open_bundle_archive(archive)
    member = f"{bundle.name}/configs/metadata.json"
    if "configs/metadata.json" not in bundle.members:
        raise UserError(f"{archive}: no {member} in the bundle")
    try:
        with zipfile.ZipFile(bundle.path) as zipped:
            metadata = json.loads(zipped.read(member).decode("utf-8"))
    except (zipfile.BadZipFile, zlib.error) as err:
        raise UserError(f"{archive}: member {member} is corrupt ({err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{archive}: {member} is not valid JSON ({err})") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{archive}: {member} is not a JSON object")
    return bundle.name, metadata


def inspect_bundle(archive: str | Path) -> list[str]:
    """The model card summary and the member list of a bundle zip, as terminal lines.

    Args:
        archive: ``NAME.zip``.

    Returns:
        Lines to print.

    Raises:
        UserError: see :func:`read_bundle_metadata`.
    """
    name, metadata = read_bundle_metadata(archive)
    card = metadata.get(MODEL_CARD_KEY)
    if not isinstance(card, dict):
        card = build_model_card(metadata, name=name)
    lines = summary_lines(card)
    with zipfile.ZipFile(archive) as zipped:
        infos = [info for info in zipped.infolist() if not info.is_dir()]
    lines.append(f"members    {len(infos)} files:")
    lines += [f"  {info.file_size:>12,}  {info.filename}" for info in infos]
    lines.append(f"integrity  not checked here: run  aamct bundle verify {archive}")
    return lines
