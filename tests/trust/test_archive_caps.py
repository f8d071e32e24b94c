"""The zip reader of the gate: caps from the central directory, capped inflation, nothing left on failure."""

from __future__ import annotations

import struct
import zipfile

import pytest

from pipeline.errors import UserError
from pipeline.trust.archive import ArchiveLimits, extract_bundle, open_bundle_archive, read_member


def _zip(path, members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_member_count_size_and_ratio_caps_are_read_before_inflating(tmp_path):
    many = _zip(tmp_path / "many.zip", {f"b/f{i}": b"x" for i in range(5)})
    with pytest.raises(UserError, match="5 members, more than the 4"):
        open_bundle_archive(many, limits=ArchiveLimits(max_members=4))
    text = _zip(tmp_path / "text.zip", {"b/configs/x.json": b"y" * 2000}, compression=zipfile.ZIP_STORED)
    with pytest.raises(UserError, match="inflates to 2,000 bytes, more than the 1,000 allowed"):
        open_bundle_archive(text, limits=ArchiveLimits(max_text_bytes=1000))
    bomb = _zip(tmp_path / "bomb.zip", {"b/models/model.pt": bytes(4 * 1024**2)})
    with pytest.raises(UserError, match="zip bomb"):
        open_bundle_archive(bomb)
    total = _zip(tmp_path / "total.zip", {"b/a": b"1" * 600, "b/c": b"2" * 600}, compression=zipfile.ZIP_STORED)
    with pytest.raises(UserError, match="1,200 bytes in all"):
        open_bundle_archive(total, limits=ArchiveLimits(max_total_bytes=1000))


def test_a_member_larger_than_it_declares_is_refused_and_extraction_leaves_nothing(tmp_path):
    path = _zip(tmp_path / "lie.zip", {"b/configs/a.json": b"a" * 100, "b/models/model.pt": b"z" * 5000})
    data = bytearray(path.read_bytes())
    # the central directory record of the second member says 50 bytes (the data inflates to 5000)
    first = data.find(b"PK\x01\x02")
    second = data.find(b"PK\x01\x02", first + 4)
    struct.pack_into("<I", data, second + 24, 50)
    path.write_bytes(bytes(data))
    bundle = open_bundle_archive(path)
    assert bundle.sizes["models/model.pt"] == 50
    with pytest.raises(UserError, match="corrupt|inflates past"):
        read_member(bundle, "models/model.pt")
    with pytest.raises(UserError, match="corrupt|inflates past"):
        extract_bundle(bundle, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [("b/\x1b[2Kx", "unsafe path"), ("b/../x", "unsafe path"), ("C:/x", "unsafe path")],
)
def test_unsafe_names_are_refused_and_shown_escaped(tmp_path, name, message):
    path = _zip(tmp_path / "bad.zip", {name: b"x"})
    with pytest.raises(UserError, match=message) as caught:
        open_bundle_archive(path)
    assert "\x1b" not in str(caught.value)
