"""The bundle zip: MONAI's NAME/... layout, reproducible bytes, and refusal of unsafe archives."""

from __future__ import annotations

import zipfile

import pytest

from pipeline.errors import UserError
from pipeline.sharing.archive import extract_bundle, open_bundle_archive, write_bundle_zip
from pipeline.trust.checksums import CHECKSUM_FILENAME, digests_of_tree, format_checksums, sha256_of_file


def _staged(root):
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "metadata.json").write_text('{"version": "0.1.0"}\n')
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(bytes(range(256)) * 64)
    (root / CHECKSUM_FILENAME).write_text(format_checksums(digests_of_tree(root)))
    return root


def test_members_live_under_the_bundle_name_and_comment_records_checksum_file(tmp_path):
    root = _staged(tmp_path / "stage")
    out = write_bundle_zip(root, tmp_path / "b.zip", name="my_bundle")
    bundle = open_bundle_archive(out)
    assert bundle.name == "my_bundle"
    assert sorted(bundle.members) == sorted([CHECKSUM_FILENAME, "configs/metadata.json", "models/model.pt"])
    assert bundle.checksum_file_sha256 == sha256_of_file(root / CHECKSUM_FILENAME)
    assert bundle.member_digests()["models/model.pt"] == sha256_of_file(root / "models" / "model.pt")
    extracted = extract_bundle(bundle, tmp_path / "x")
    assert (extracted / "models" / "model.pt").read_bytes() == (root / "models" / "model.pt").read_bytes()


def test_same_content_gives_the_same_zip_bytes(tmp_path):
    root = _staged(tmp_path / "stage")
    first = write_bundle_zip(root, tmp_path / "one.zip", name="b").read_bytes()
    second = write_bundle_zip(root, tmp_path / "two.zip", name="b").read_bytes()
    assert first == second


def _zip(path, names):
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    return path


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["b/../../evil.txt"], "unsafe path"),
        (["/abs/evil.txt"], "unsafe path"),
        (["a/configs/metadata.json", "b/models/model.pt"], "one top-level"),
        (["metadata.json"], "not inside the bundle folder"),
        (["b/x", "b/x"], "appears twice"),
    ],
)
def test_unsafe_or_foreign_layouts_are_refused(tmp_path, names, message):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        path = _zip(tmp_path / "bad.zip", names)
    with pytest.raises(UserError, match=message):
        open_bundle_archive(path)


def test_not_a_zip_and_missing_file(tmp_path):
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(UserError, match="not a readable zip"):
        open_bundle_archive(tmp_path / "x.zip")
    with pytest.raises(UserError, match="not found"):
        open_bundle_archive(tmp_path / "missing.zip")


def test_bad_bundle_name_is_refused(tmp_path):
    with pytest.raises(UserError, match="bundle name"):
        write_bundle_zip(_staged(tmp_path / "s"), tmp_path / "b.zip", name="../up")
