"""The release version follows the weights: the same weights keep their version, new weights bump past every earlier
release (unit level; the end-to-end exports are in ``test_export_version.py``)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.sharing.release import (
    SOURCE_VERSION_KEY,
    WEIGHTS_DIGEST_KEY,
    earlier_releases,
    release_version,
    state_dict_sha256,
)

NAME = "ct_cls"


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 1, 3, 3, 3, generator=generator),
        "bn.num_batches_tracked": torch.tensor(7),
        "fc.bias": torch.randn(2, generator=generator),
    }


def _earlier_zip(folder: Path, version: str, *, digest: str | None, source: str | None = "0.3.0") -> Path:
    metadata = {"version": version, "changelog": {version: f"2025-01-01: release {version}"}}
    if digest is not None:
        metadata[WEIGHTS_DIGEST_KEY] = digest
    if source is not None:
        metadata[SOURCE_VERSION_KEY] = source
    path = folder / f"{NAME}_v{version}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{NAME}/configs/metadata.json", json.dumps(metadata))
    return path


def test_digest_is_of_the_weights_not_the_file(tmp_path):
    state = _state()
    # the same weights saved under another file name, in another key order: other file bytes, the same weights
    torch.save(state, tmp_path / "a.pt")
    torch.save({key: value.clone() for key, value in reversed(list(state.items()))}, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    loaded = [torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab"]
    assert state_dict_sha256(loaded[0]) == state_dict_sha256(loaded[1]) == state_dict_sha256(state)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["fc.bias"].add_(1e-6),  # one value
        lambda s: s.update({"fc.bias": s["fc.bias"].double()}),  # dtype
        lambda s: s.update({"conv.weight": s["conv.weight"].reshape(4, 27)}),  # shape, same bytes
        lambda s: s.update({"fc.bias2": s.pop("fc.bias")}),  # name
    ],
)
def test_digest_changes_with_any_change_of_the_weights(change):
    state = _state()
    before = state_dict_sha256(state)
    change(state)
    assert state_dict_sha256(state) != before


def test_first_export_bumps_the_source_version():
    release = release_version({"version": "0.3.0"}, weights_sha256="a" * 64)
    assert release.version == "0.3.1" and release.kept_from is None


def test_same_weights_as_an_earlier_export_keep_its_version(tmp_path):
    digest = state_dict_sha256(_state())
    _earlier_zip(tmp_path, "0.3.1", digest=digest)
    _earlier_zip(tmp_path, "0.3.2", digest="b" * 64)
    release = release_version(
        {"version": "0.3.0"}, weights_sha256=digest, earlier=earlier_releases(tmp_path, NAME), part="minor"
    )
    assert release.version == "0.3.1"
    assert release.kept_from == f"{NAME}_v0.3.1.zip"
    assert release.changelog_entry == "2025-01-01: release 0.3.1"


def test_new_weights_bump_past_every_earlier_export(tmp_path):
    _earlier_zip(tmp_path, "0.3.1", digest="a" * 64)
    _earlier_zip(tmp_path, "0.3.10", digest=None)  # an export older than the digest record
    (tmp_path / f"{NAME}_v0.3.11.zip").write_bytes(b"not a zip")  # unreadable: its name still counts as taken
    _earlier_zip(tmp_path, "9.9.9", digest="a" * 64).rename(tmp_path / "other_v9.9.9.zip")  # another bundle
    release = release_version({"version": "0.3.0"}, weights_sha256="c" * 64, earlier=earlier_releases(tmp_path, NAME))
    assert release.version == "0.3.12" and release.kept_from is None


def test_same_weights_from_a_newer_source_version_are_a_new_release(tmp_path):
    digest = "a" * 64
    _earlier_zip(tmp_path, "0.3.1", digest=digest, source="0.3.0")
    release = release_version({"version": "0.4.0"}, weights_sha256=digest, earlier=earlier_releases(tmp_path, NAME))
    assert release.version == "0.4.1"


def test_an_unpacked_export_as_source_keeps_its_version_for_its_own_weights():
    source = {"version": "0.3.4", WEIGHTS_DIGEST_KEY: "a" * 64, "changelog": {"0.3.4": "2025-02-02: retrained"}}
    kept = release_version(source, weights_sha256="a" * 64)
    assert (kept.version, kept.kept_from, kept.changelog_entry) == (
        "0.3.4",
        "the source metadata",
        "2025-02-02: retrained",
    )
    assert release_version(source, weights_sha256="b" * 64).version == "0.3.5"
