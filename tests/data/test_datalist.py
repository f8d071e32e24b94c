"""Writing the datalist JSON: what the writer refuses (reading it is tested in tests/contracts/test_datalist.py)."""

from __future__ import annotations

import pytest

from pipeline.contracts.datalist import load_datalist
from pipeline.data.datalist import write_datalist
from pipeline.errors import UserError


def _entry(i: int, fold: int | None = None) -> dict:
    entry = {"image": f"images/case-{i}.nii.gz", "label": i % 2, "case_id": f"case-{i}", "patient_id": f"pt-{i}"}
    if fold is not None:
        entry["fold"] = fold
    return entry


def test_written_file_reads_back_with_provenance(tmp_path):
    path = write_datalist(
        tmp_path / "x.json", classes=["a", "b"], manifest="m.csv", seed=3, n_folds=2, training=[_entry(0, 1)], note="n"
    )
    data = load_datalist(path)
    assert (data["seed"], data["n_folds"], data["note"]) == (3, 2, "n")
    assert data["test"] == [] and data["external"] == []


def test_write_refuses_training_entries_without_fold(tmp_path):
    with pytest.raises(UserError, match="needs a non-negative integer 'fold'"):
        write_datalist(
            tmp_path / "x.json", classes=["a", "b"], manifest="m.csv", seed=0, n_folds=5, training=[_entry(0)]
        )
    assert not (tmp_path / "x.json").exists()
