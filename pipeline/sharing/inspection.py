"""``aamct bundle inspect NAME.zip``: the model card summary of a bundle, read without unpacking or running it.

The card is read from ``configs/metadata.json`` (key ``model_card``, written by ``aamct bundle export``); for a
bundle exported by other tools a card is assembled from its plain metadata. The zip is opened through the
received-bundle gate's reader (:mod:`pipeline.trust.archive`: layout and size caps from the central directory,
capped inflation); only the small config members are read, in memory, and compared with what the exporter writes
(:mod:`pipeline.trust.configs`), nothing is evaluated. Every line is escaped (:func:`pipeline.trust.text.printable`),
so a bundle cannot draw its own "integrity verified" on the terminal. Checksums, weights and TorchScript are
``aamct bundle verify``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.sharing.model_card import MODEL_CARD_KEY, build_model_card, summary_lines
from pipeline.trust.archive import BundleArchive, open_bundle_archive, read_member
from pipeline.trust.configs import check_config_texts
from pipeline.trust.text import printable

__all__ = ["inspect_bundle", "read_bundle_metadata"]


def _metadata(bundle: BundleArchive, archive: str | Path) -> dict[str, Any]:
    member = f"{bundle.name}/configs/metadata.json"
    if "configs/metadata.json" not in bundle.members:
        raise UserError(f"{archive}: no {member} in the bundle")
    try:
        metadata = json.loads(read_member(bundle, "configs/metadata.json").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{archive}: {member} is not valid JSON ({printable(err)})") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{archive}: {member} is not a JSON object")
    return metadata


def read_bundle_metadata(archive: str | Path) -> tuple[str, dict[str, Any]]:
    """The bundle name and its parsed ``configs/metadata.json``, straight from the zip (caps applied).

    Raises:
        UserError: if the zip is not a bundle, breaks a cap, or its metadata is missing, corrupt or not a JSON object.
    """
    bundle = open_bundle_archive(archive)
    return bundle.name, _metadata(bundle, archive)


def inspect_bundle(archive: str | Path) -> list[str]:
    """The model card summary, the config check and the member list of a bundle zip, as escaped terminal lines.

    Args:
        archive: ``NAME.zip``.

    Returns:
        Lines to print.

    Raises:
        UserError: see :func:`read_bundle_metadata`.
    """
    bundle = open_bundle_archive(archive)
    metadata = _metadata(bundle, archive)
    card = metadata.get(MODEL_CARD_KEY)
    if not isinstance(card, dict):
        card = build_model_card(metadata, name=bundle.name)
    lines = [printable(line) for line in summary_lines(card)]
    texts = {
        member[len("configs/") :]: read_member(bundle, member)
        for member in bundle.members
        if member.startswith("configs/")
    }
    try:
        _, deviations = check_config_texts(texts, source=archive)
    except UserError as err:
        deviations, problem = [], str(err)
    else:
        problem = None
    if problem or deviations:
        first = problem or deviations[0].line()
        lines.append(
            f"configs    NOT what aamct bundle export writes ({max(len(deviations), 1)} finding(s)), first: "
            f"{printable(first)}; aamct bundle verify refuses this bundle"
        )
    else:
        lines.append("configs    every expression and _target_ is the exporter's (read as data, nothing run)")
    lines.append(f"members    {len(bundle.members)} files:")
    lines += [
        f"  {bundle.sizes[member]:>12,}  {printable(bundle.name)}/{printable(member)}" for member in bundle.members
    ]
    lines.append(f"integrity  not checked here: run  aamct bundle verify {archive}")
    return lines
