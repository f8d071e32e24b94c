"""sha256sum-format checksums: round trip, malformed input, and the three kinds of mismatch."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from pipeline.errors import UserError
from pipeline.trust.checksums import (
    CHECKSUM_FILENAME,
    compare_checksums,
    digests_of_tree,
    format_checksums,
    parse_checksums,
)


def _tree(root):
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "metadata.json").write_text('{"version": "0.1.0"}\n')
    (root / "LICENSE").write_bytes(b"licence text\n")
    return root


def test_digests_match_hashlib_and_skip_the_checksum_file(tmp_path):
    root = _tree(tmp_path / "b")
    (root / CHECKSUM_FILENAME).write_text("stale\n")
    digests = digests_of_tree(root)
    assert set(digests) == {"configs/metadata.json", "LICENSE"}
    assert digests["LICENSE"] == hashlib.sha256(b"licence text\n").hexdigest()


def test_format_parse_round_trip_sorted(tmp_path):
    digests = digests_of_tree(_tree(tmp_path / "b"))
    text = format_checksums(digests)
    assert text.splitlines()[0].endswith("  LICENSE")  # sorted by path
    assert parse_checksums(text, source="x") == digests


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_sha256sum_accepts_the_file(tmp_path):
    root = _tree(tmp_path / "b")
    (root / CHECKSUM_FILENAME).write_text(format_checksums(digests_of_tree(root)))
    done = subprocess.run(["sha256sum", "-c", CHECKSUM_FILENAME], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("line", ["nothex  LICENSE", "a" * 64 + "LICENSE", "a" * 63 + "  LICENSE"])
def test_malformed_line_is_a_user_error_naming_the_line(line):
    with pytest.raises(UserError, match="line 1"):
        parse_checksums(line + "\n", source="checksums.sha256")


def test_path_listed_twice_is_rejected():
    line = "a" * 64 + "  LICENSE\n"
    with pytest.raises(UserError, match="listed twice"):
        parse_checksums(line * 2, source="checksums.sha256")


def test_compare_names_changed_missing_and_unlisted_members():
    expected = {"a": "0" * 64, "b": "1" * 64, "c": "2" * 64}
    actual = {"a": "0" * 64, "b": "f" * 64, "d": "3" * 64}
    mismatches = compare_checksums(expected, actual)
    assert [(m.member, m.kind) for m in mismatches] == [("b", "changed"), ("c", "missing"), ("d", "unlisted")]
    assert "b: sha256" in mismatches[0].describe()
    assert compare_checksums(expected, dict(expected)) == []
