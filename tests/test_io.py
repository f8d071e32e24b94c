"""Atomic writes: the final file appears whole, with the mode an ordinary ``open()`` would give it."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from pipeline.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask_not_mkstemps_private_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        written = [
            write_text_atomic(tmp_path / "a.txt", "x"),
            write_json_atomic(tmp_path / "b.json", {"a": 1}),
            write_csv_atomic(tmp_path / "c.csv", pd.DataFrame({"a": [1]})),
        ]
        with open(tmp_path / "reference", "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE(os.stat(tmp_path / "reference").st_mode)
    assert expected == 0o666 & ~mask
    assert [stat.S_IMODE(os.stat(p).st_mode) for p in written] == [expected] * 3


def test_a_failed_write_leaves_neither_the_target_nor_a_temporary_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
