"""The resumable cohort job: every case recorded with its status, resume after a kill, shards and merge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.evaluation.report import evaluate_predictions, write_report
from pipeline.inference.cohort import CohortCase, CohortRunner, Shard, discover_cases, read_cases
from tests.data.dicom_factory import write_ct_series, write_text_file
from tests.inference.helpers import CountingPredictor, chest_like_volume, make_predictor, write_nifti

N_GOOD = 6


def _cohort(root: Path, *, broken: bool = True) -> Path:
    """NIfTI cases with labels and sites, plus (optionally) a corrupt file, a missing file and a broken DICOM folder."""
    rows = []
    for index in range(N_GOOD):
        label = "positive" if index % 2 else "negative"
        volume = chest_like_volume(blob_at=(12, 18, 12) if label == "positive" else None, seed=index)
        write_nifti(root / "images" / f"img{index}.nii.gz", volume)
        rows.append((f"case-{index:02d}", f"images/img{index}.nii.gz", label, f"site-{'ab'[index % 2]}"))
    if broken:
        (root / "images" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
        rows.append(("case-90", "images/corrupt.nii.gz", "positive", "site-a"))
        rows.append(("case-91", "images/missing.nii.gz", "negative", "site-b"))
        dicom = root / "images" / "broken_series"
        dicom.mkdir()
        (dicom / "slice1.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
        rows.append(("case-92", "images/broken_series", "negative", "site-a"))
    manifest = root / "manifest.csv"
    pd.DataFrame(rows, columns=["case_id", "image", "label", "site"]).to_csv(manifest, index=False)
    return manifest


def _runner(out: Path, network, **kwargs) -> CohortRunner:
    predictor = make_predictor(network, write_montage=kwargs.pop("write_montage", False))
    counter = kwargs.pop("counter", None)
    if counter is not None:
        counter.predictor = predictor
    return CohortRunner(
        predictor=counter if counter is not None else predictor,
        output_dir=out,
        progress=False,
        fingerprint="test-model",
        evaluate_predictions=evaluate_predictions,
        write_report=write_report,
        **kwargs,
    )


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def test_cohort_with_unreadable_cases_finishes_and_marks_them(tmp_path, network):
    manifest = _cohort(tmp_path / "cohort")
    summary = _runner(tmp_path / "run", network, write_montage=True).run(manifest)
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False)
    assert len(predictions) == N_GOOD + 3 == summary.n_cases
    assert list(predictions.columns[:7]) == [
        "case_id",
        "probability",
        "predicted_label",
        "threshold",
        "status",
        "reason",
        "seconds",
    ]
    ok = predictions[predictions["status"] == "ok"]
    errors = predictions[predictions["status"] == "error"].set_index("case_id")
    assert sorted(errors.index) == ["case-90", "case-91", "case-92"]
    # the loader's own words, "<image>: <reason>" in one line, with the image named by the case id (source folders
    # name patients); the id-to-path map is the local-only file
    images = tmp_path / "cohort" / "images"
    assert errors.loc["case-91", "reason"] == "case-91: no such file or folder"
    for case_id in ("case-90", "case-92"):
        assert errors.loc[case_id, "reason"].startswith(f"{case_id}: "), errors.loc[case_id, "reason"]
        assert str(images) not in errors.loc[case_id, "reason"]
    local = pd.read_csv(tmp_path / "run" / "local_only" / "series_map.csv", keep_default_na=False).set_index("case_id")
    assert local.loc["case-91", "path"] == str(images / "missing.nii.gz")
    # nor does any shared output (records, tables, gallery, the evaluation report) name the source folder
    shared = [f for f in (tmp_path / "run").rglob("*") if f.is_file() and "local_only" not in f.parts]
    assert any(f.parent.name == "report" for f in shared)
    assert [f for f in shared if str(images).encode() in f.read_bytes()] == []
    assert all(reason.count("\n") == 0 for reason in errors["reason"])
    assert pd.to_numeric(ok["probability"]).between(0, 1).all() and len(ok) == N_GOOD == summary.n_ok
    assert set(ok["predicted_label"]) <= {"negative", "positive"}
    assert (pd.to_numeric(ok["probability"]) >= 0.5).eq(ok["predicted_label"] == "positive").all()
    for case_id in ok["case_id"]:
        assert (tmp_path / "run" / "heatmaps" / f"{case_id}.nii.gz").is_file()
        assert (tmp_path / "run" / "heatmaps" / f"{case_id}.png").is_file()
    assert not any((tmp_path / "run" / "heatmaps").glob("case-9*"))
    # labels exist, so the evaluation report was written, with its per-site table
    assert summary.report is not None and (summary.report / "report.html").is_file()
    assert set(pd.read_csv(summary.report / "per_site.csv")["site"]) >= {"site-a", "site-b"}


def test_rerun_after_a_kill_completes_only_the_missing_cases(tmp_path, network):
    manifest = _cohort(tmp_path / "cohort", broken=False)
    out = tmp_path / "run"
    killer = CountingPredictor(None, interrupt_on="img3.nii.gz")  # cases run in id order: dies on the 4th
    with pytest.raises(KeyboardInterrupt):
        _runner(out, network, counter=killer, evaluate=False).run(manifest)
    before = _records(out)
    assert sorted(before) == ["case-00", "case-01", "case-02"]
    assert len(pd.read_csv(out / "predictions.csv")) == 3  # what finished is already in the table

    counter = CountingPredictor(None)
    summary = _runner(out, network, counter=counter, evaluate=False).run(manifest)
    assert sorted(counter.calls) == ["img3.nii.gz", "img4.nii.gz", "img5.nii.gz"]
    assert (summary.n_ran, summary.n_skipped) == (3, 3)
    after = _records(out)
    assert all(after[case_id] == record for case_id, record in before.items())  # untouched, not redone
    final = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert sorted(final["case_id"]) == [f"case-{i:02d}" for i in range(N_GOOD)]
    assert set(final["status"]) == {"ok"}

    # a third run has nothing left to do
    idle = CountingPredictor(None)
    assert _runner(out, network, counter=idle, evaluate=False).run(manifest).n_ran == 0
    assert idle.calls == []


def test_error_cases_are_kept_unless_retried(tmp_path, network):
    manifest = _cohort(tmp_path / "cohort")
    out = tmp_path / "run"
    _runner(out, network, evaluate=False).run(manifest)
    # the missing image appears; only a retry run picks it up
    write_nifti(tmp_path / "cohort" / "images" / "missing.nii.gz", chest_like_volume(seed=9))
    assert _runner(out, network, evaluate=False).run(manifest).n_ran == 0
    retried = _runner(out, network, evaluate=False, retry_errors=True).run(manifest)
    assert retried.n_ran == 3
    final = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("case_id")
    assert final.loc["case-91", "status"] == "ok"
    assert final.loc["case-90", "status"] == "error"


def test_shards_split_the_cohort_and_merge_covers_every_case(tmp_path, network):
    manifest = _cohort(tmp_path / "cohort")
    cases = read_cases(manifest)
    out = tmp_path / "run"
    seen = []
    for index in range(2):
        summary = _runner(out, network, evaluate=False).run(cases, shard=Shard(index, 2))
        assert summary.predictions is None  # an explicit shard does not merge on its own
        part = pd.read_csv(out / "parts" / f"predictions.rank{index}-of-2.csv")
        seen.append(set(part["case_id"]))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == {case.case_id for case in cases}
    assert not (out / "predictions.csv").exists()
    merged = _runner(out, network, evaluate=False).merge(cases)
    assert len(merged) == len(cases) and (out / "predictions.csv").is_file()
    assert (merged["status"] == "ok").sum() == N_GOOD


def test_merge_marks_cases_no_shard_has_finished(tmp_path, network):
    manifest = _cohort(tmp_path / "cohort", broken=False)
    cases = read_cases(manifest)
    out = tmp_path / "run"
    _runner(out, network, evaluate=False).run(cases, shard=Shard(0, 3))
    merged = _runner(out, network, evaluate=False).merge(cases).set_index("case_id")
    unfinished = merged[merged["reason"].str.startswith("not run", na=False)]
    assert len(unfinished) == len(cases) - len(Shard(0, 3).select(cases))
    assert set(unfinished["status"]) == {"error"}


def test_a_run_folder_of_another_model_is_refused(tmp_path, network):
    _runner(tmp_path, network).claim_output_dir()
    other = CohortRunner(predictor=None, output_dir=tmp_path, fingerprint="another-model", progress=False)
    with pytest.raises(UserError, match="another model"):
        other.claim_output_dir()


def test_a_manifest_or_a_folder_gives_the_cases(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,image,label,split,fold\ncase-1,a.nii.gz,1,test,\ncase-2,/abs/b.nii.gz,0,train,3\n")
    cases = read_cases(manifest, split="test")
    assert [(c.case_id, c.image, c.label, c.rejection) for c in cases] == [("case-1", tmp_path / "a.nii.gz", "1", "")]
    with pytest.raises(UserError, match="--split needs a manifest"):
        read_cases(tmp_path, split="test")
    with pytest.raises(UserError, match="manifest not found"):
        read_cases(tmp_path / "nope.csv")


def test_folder_discovery_hides_folder_names_and_keeps_the_rejected(tmp_path):
    root = tmp_path / "export"
    write_nifti(root / "SMITH_JOHN" / "ct.nii.gz", chest_like_volume())
    write_nifti(root / "SMITH_JOHN" / "tiny.nii.gz", np.zeros((4, 4, 4)))  # too few slices for the builder
    write_ct_series(root / "DOE_JANE_12345" / "series1", n_slices=18)
    write_text_file(root / "DOE_JANE_12345" / "notes.txt")
    cases = {case.image.name: case for case in discover_cases(root)}
    assert sorted(cases) == ["ct.nii.gz", "notes.txt", "series1", "tiny.nii.gz"]
    assert not cases["ct.nii.gz"].rejection and not cases["series1"].rejection
    assert cases["tiny.nii.gz"].rejection.startswith(f"{root / 'SMITH_JOHN' / 'tiny.nii.gz'}: too few slices")
    assert cases["notes.txt"].rejection.startswith(f"{root / 'DOE_JANE_12345' / 'notes.txt'}: ")
    for case in cases.values():
        assert case.case_id.startswith("case-") and "SMITH" not in case.case_id and "DOE" not in case.case_id
    # ids follow the path relative to the folder, so a moved cohort keeps them
    moved = root.rename(tmp_path / "moved")
    assert sorted(c.case_id for c in discover_cases(moved)) == sorted(c.case_id for c in cases.values())
    (moved / "empty").mkdir()
    with pytest.raises(UserError, match="no NIfTI file or DICOM series"):
        discover_cases(moved / "empty")


def test_a_rejected_case_is_an_error_row_and_never_loaded(tmp_path, network):
    good = write_nifti(tmp_path / "good.nii.gz", chest_like_volume())
    cases = [
        CohortCase(case_id="case-good", image=good),
        CohortCase(case_id="case-bad", image=good, rejection=f"{good}: gantry tilt of 15.00 degrees"),
    ]
    counter = CountingPredictor(None)
    summary = _runner(tmp_path / "run", network, counter=counter, evaluate=False).run(cases)
    assert counter.calls == ["good.nii.gz"] and (summary.n_ok, summary.n_error) == (1, 1)
    rows = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False).set_index("case_id")
    assert rows.loc["case-bad", "reason"] == "case-bad: gantry tilt of 15.00 degrees"  # the path named by the id
    assert rows.loc["case-bad", "status"] == "error" and rows.loc["case-bad", "probability"] == ""


def test_shard_parsing_and_torchrun_environment(monkeypatch):
    assert Shard.parse("1/4") == Shard(1, 4)
    for bad in ("4/4", "x", "1-4"):
        with pytest.raises(UserError):
            Shard.parse(bad)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert Shard.from_environment() == Shard(2, 3, from_torchrun=True)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert Shard.from_environment() == Shard(0, 1)
