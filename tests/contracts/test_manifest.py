"""The manifest contract: what the builder writes is what the scoring stages read, and what they refuse."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.contracts.manifest import (
    CASE_ID_PATTERN,
    MANIFEST_COLUMNS,
    REJECTION_COLUMNS,
    path_case_id,
    read_manifest,
    read_rejections,
    rejections_path_for,
)
from pipeline.data.manifest import build_manifest
from pipeline.errors import UserError
from tests.data.dicom_factory import write_ct_series, write_text_file


def test_a_built_manifest_reads_back_with_its_images_resolved(tmp_path):
    root = tmp_path / "export"
    series = write_ct_series(root / "study" / "series", n_slices=18)
    write_text_file(root / "notes.txt")
    key = tmp_path / "key"
    key.write_text("k" * 32)
    out = tmp_path / "cohort" / "manifest.csv"
    build_manifest(
        dicom_root=root, nifti_glob=None, labels_csv=None, out=out, key_file=key, workers=1, allow_out_of_scope=True
    )  # a toy series, not a chest
    # the builder writes the contract columns first, then its extras
    assert tuple(pd.read_csv(out).columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    [case] = read_manifest(out)
    assert case.image.resolve() == series.folder.resolve() and CASE_ID_PATTERN.match(case.case_id)
    rejections = read_rejections(rejections_path_for(out))
    assert tuple(rejections.columns) == REJECTION_COLUMNS
    assert rejections["path"].str.endswith("notes.txt").any()


def test_rejections_file_sits_beside_the_manifest():
    assert rejections_path_for("a/cohort.csv") == Path("a/cohort.rejections.csv")
    assert rejections_path_for("a/cohort") == Path("a/cohort.rejections.csv")


def test_manifest_problems_are_one_line_user_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    for text, message in [
        ("case_id,image\n../escape,a.nii.gz\n", "row 2: case_id '../escape' is not a plain id"),
        ("case_id,image\ncase-1,a.nii.gz\ncase-1,b.nii.gz\n", "case_id 'case-1' appears more than once"),
        ("case_id,path\ncase-1,a.nii.gz\n", "missing column"),
        ("case_id,image\ncase-1,\n", "row 2: empty image path"),
        ("case_id,image\n", "lists no case"),
    ]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message) as caught:
            read_manifest(bad)
        assert str(caught.value).startswith(str(bad)) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_split_selection_and_relative_paths(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,image,label,split,fold\ncase-1,a.nii.gz,1,Test,\ncase-2,/abs/b.nii.gz,0,train,3\n")
    cases = read_manifest(manifest, split="test")
    assert [c.case_id for c in cases] == ["case-1"]
    assert cases[0].image == tmp_path / "a.nii.gz" and cases[0].label == "1"
    assert read_manifest(manifest)[1].image == Path("/abs/b.nii.gz") and read_manifest(manifest)[1].fold == "3"
    with pytest.raises(UserError, match="no case in split 'external'"):
        read_manifest(manifest, split="external")


def test_path_case_ids_hide_the_names_and_separate_series():
    first = path_case_id("SMITH_JOHN/ct.nii.gz")
    assert first.startswith("case-") and len(first) == 15 and "SMITH" not in first
    assert path_case_id(Path("SMITH_JOHN") / "ct.nii.gz") == first
    assert path_case_id("DOE/series", "1.2.3") != path_case_id("DOE/series", "1.2.4") != path_case_id("DOE/series")
