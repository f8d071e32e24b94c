"""``aamct bundle export`` releases a new version for new weights only: exporting the same checkpoint again keeps the
version of the earlier export (in the output folder, or recorded in the source metadata); changed weights bump it.

Starts from the session's ``exported_bundle`` (this folder's conftest); the re-exports skip the parity check, which
``test_export_verify.py`` covers.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.sharing.export import export_bundle, zip_name
from pipeline.sharing.metadata import bump_version
from pipeline.sharing.release import SOURCE_VERSION_KEY, WEIGHTS_DIGEST_KEY

pytestmark = pytest.mark.slow  # each test exports the tiny bundle again (a TorchScript trace per export)


def _metadata(zip_path: Path, name: str) -> dict:
    with zipfile.ZipFile(zip_path) as archive:
        return json.loads(archive.read(f"{name}/configs/metadata.json"))


def _export(exported_bundle, out: Path, *, checkpoint: Path, source: Path | None = None):
    return export_bundle(
        source or exported_bundle.source_bundle,
        out / f"{exported_bundle.name}.zip",
        checkpoint=checkpoint,
        report=exported_bundle.report,
        check_parity=False,
        check_phi=False,
    )


def _changed_weights(checkpoint: Path, target: Path) -> Path:
    """The checkpoint with one bias moved, beside a copy of its run record (same network)."""
    target.mkdir(parents=True)
    state = torch.load(checkpoint, weights_only=True)
    weights = state["network"]
    key = next(k for k in weights if k.endswith("bias"))
    weights[key] = weights[key] + 0.01
    torch.save(state, target / "model.pt")
    shutil.copyfile(checkpoint.parent / "run.json", target / "run.json")
    return target / "model.pt"


@pytest.fixture(scope="module")
def release_folder(exported_bundle, tmp_path_factory) -> Path:
    """An output folder holding the session's first export, as a user's would after ``aamct bundle export``."""
    folder = tmp_path_factory.mktemp("releases")
    shutil.copyfile(exported_bundle.zip_path, folder / exported_bundle.zip_path.name)
    return folder


def test_the_first_export_records_weights_and_source_version(exported_bundle):
    metadata = _metadata(exported_bundle.zip_path, exported_bundle.name)
    source = json.loads((exported_bundle.source_bundle / "configs" / "metadata.json").read_text())
    assert metadata["version"] == bump_version(source["version"])
    assert metadata[WEIGHTS_DIGEST_KEY] == exported_bundle.result.weights_sha256
    assert len(metadata[WEIGHTS_DIGEST_KEY]) == 64
    assert metadata[SOURCE_VERSION_KEY] == source["version"]
    assert exported_bundle.result.version_kept_from is None


def test_same_weights_keep_the_version_changed_weights_bump_it(exported_bundle, release_folder, tmp_path):
    first = exported_bundle.result
    first_meta = _metadata(exported_bundle.zip_path, exported_bundle.name)

    again = _export(exported_bundle, release_folder, checkpoint=exported_bundle.checkpoint)
    assert again.version == first.version
    assert again.zip_path == release_folder / zip_name(exported_bundle.name, first.version)
    assert again.version_kept_from == exported_bundle.zip_path.name
    assert any("version" in note and "kept" in note for note in again.notes)
    again_meta = _metadata(again.zip_path, exported_bundle.name)
    assert again_meta[WEIGHTS_DIGEST_KEY] == first.weights_sha256
    assert again_meta["changelog"] == first_meta["changelog"]  # the same release, no second entry

    changed = _export(
        exported_bundle, release_folder, checkpoint=_changed_weights(exported_bundle.checkpoint, tmp_path / "b")
    )
    assert changed.version == bump_version(first.version)
    assert changed.weights_sha256 != first.weights_sha256 and changed.version_kept_from is None
    assert sorted(p.name for p in release_folder.glob("*.zip")) == sorted(
        zip_name(exported_bundle.name, v) for v in (first.version, changed.version)
    )

    # the first weights once more: their own version, not a third one
    back = _export(exported_bundle, release_folder, checkpoint=exported_bundle.checkpoint)
    assert back.version == first.version


def test_an_unpacked_export_exported_again_keeps_its_version(exported_bundle, tmp_path):
    with zipfile.ZipFile(exported_bundle.zip_path) as archive:
        archive.extractall(tmp_path / "unpacked")
    source = tmp_path / "unpacked" / exported_bundle.name
    result = _export(exported_bundle, tmp_path / "out", checkpoint=source / "models" / "model.pt", source=source)
    assert result.version == exported_bundle.result.version
    assert result.version_kept_from == "the source metadata"
