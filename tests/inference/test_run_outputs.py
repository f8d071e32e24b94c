"""What a cohort run folder shows and hides: every step's time, no source paths, no source equipment, no formulas.

One ``aamct evaluate-cohort --dicom-out`` run (module scope) on a folder holding a good DICOM series, whose headers
name a manufacturer, station, institution and serial number, beside a series that the ingestion rejects under a
folder named like a patient (``ROE_JANE_MRN12345``). Each test reads that run for one property. The per-case time
limit and the CSV formula guard are checked on a small runner of their own.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest

from pipeline.contracts.manifest import path_case_id
from pipeline.data.pseudonym import Pseudonymizer
from pipeline.inference.cohort import CohortCase, CohortRunner, case_time_limit, path_pseudonym
from pipeline.io import neutralise_csv_cell
from tests.conftest import REAL_CHEST_IDENTIFIERS, real_chest_path
from tests.data.dicom_factory import PHI, write_ct_series
from tests.inference.helpers import chest_like_volume, make_predictor, tiny_bundle, write_nifti

PATIENT_FOLDER = "ROE_JANE_MRN12345"
#: equipment values of the good series' headers: none may reach the outputs
EQUIPMENT = {
    "Manufacturer": "EvilCorp",
    "ManufacturerModelName": "EvilScan 9000",
    "SoftwareVersions": "evil-fw-4.2.1",
    "DeviceSerialNumber": "SN-66613",
    "StationName": "ROE-WS",
    "InstitutionName": "Saint Roe Infirmary",
}


def _set_equipment(index: int, ds: pydicom.Dataset) -> None:
    for keyword, value in EQUIPMENT.items():
        setattr(ds, keyword, value)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The run folder, the cohort folder, and the text the command logged and printed."""
    import contextlib
    import io

    from pipeline.cli import main

    root = tmp_path_factory.mktemp("run_outputs")
    cohort = root / "cohort"
    good = write_ct_series(
        cohort / "site" / "series_a", n_slices=24, rows=40, columns=36, pixel_spacing=(4.0, 4.0), edit=_set_equipment
    ).folder
    # 3 slices: fewer than the ingestion's minimum, so the series is rejected while being found
    write_ct_series(cohort / PATIENT_FOLDER / "CT_CHEST", n_slices=3, rows=12, columns=10)
    out = root / "out"
    handler_stream = io.StringIO()
    handler = logging.StreamHandler(handler_stream)
    logging.getLogger().addHandler(handler)
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(
                [
                    "evaluate-cohort",
                    "--bundle",
                    str(tiny_bundle(root / "bundle")),
                    "--input",
                    str(cohort),
                    "--out",
                    str(out),
                    "--dicom-out",
                    str(out / "dicom"),
                ]
            )
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
    assert code == 0, stderr.getvalue()
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    return SimpleNamespace(
        out=out, good=good, table=table, log=handler_stream.getvalue() + stdout.getvalue() + stderr.getvalue()
    )


def _step_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("seconds_")]


def _check_steps_add_up(row: pd.Series, columns: list[str]) -> None:
    steps = {c: float(row[c]) for c in columns if str(row[c]) != ""}
    total = float(row["seconds"])
    assert sum(steps.values()) == pytest.approx(total, rel=0.05, abs=0.01), (total, steps)


def test_every_step_has_a_column_and_they_add_up_to_the_case_total(run):
    ok = run.table[run.table["status"] == "ok"]
    assert len(ok) == 1
    row = ok.iloc[0]
    columns = _step_columns(run.table)
    for step in ("load", "scope", "preprocess", "inference", "heatmap", "heatmap_nifti", "montage", "record"):
        assert f"seconds_{step}" in columns and float(row[f"seconds_{step}"]) >= 0, step
    for step in ("dicom_read", "dicom_pm", "dicom_sr"):
        assert float(row[f"seconds_{step}"]) > 0, step  # the DICOM outputs were written and timed
    _check_steps_add_up(row, columns)


def test_a_rejected_series_under_a_patient_named_folder_appears_in_no_shared_output(run):
    rejected = run.table[run.table["status"] == "error"]
    assert len(rejected) == 1 and rejected.iloc[0]["reason"].startswith(rejected.iloc[0]["case_id"] + ": ")
    local_map = run.out / "local_only" / "series_map.csv"
    files = [p for p in run.out.rglob("*") if p.is_file()]
    assert {"predictions.csv", "gallery.html"} <= {p.name for p in files}
    assert any(p.parent.name == "records" for p in files)
    leaks = [p for p in files if p != local_map and PATIENT_FOLDER.encode() in p.read_bytes()]
    assert leaks == []
    assert PATIENT_FOLDER not in run.log
    assert str(run.good.parent.parent) not in run.log  # nor the cohort's own folder
    # the local-only map is where the site finds the series again
    mapping = pd.read_csv(local_map, keep_default_na=False).set_index("case_id")
    assert PATIENT_FOLDER in mapping.loc[rejected.iloc[0]["case_id"], "path"]
    assert "do not share" in (run.out / "local_only" / "README.txt").read_text().lower()
    # the ids are keyed: without the site's key a guessed folder name cannot be confirmed by hashing it
    folder = f"{PATIENT_FOLDER}/CT_CHEST"
    ids = {path_pseudonym(folder, pseudonymizer=Pseudonymizer(key * 32)) for key in (b"a", b"b")}
    assert len(ids) == 2 and path_case_id(folder) not in ids


def test_dicom_outputs_name_the_product_never_the_source_equipment(run):
    row = run.table[run.table["status"] == "ok"].iloc[0]
    for name in (row["dicom_map"], row["dicom_sr"]):
        path = run.out / name
        raw = path.read_bytes()
        for value in EQUIPMENT.values():
            assert value.encode() not in raw, (path.name, value)
        ds = pydicom.dcmread(path)
        assert str(ds.Manufacturer) == "aamct"
        equipment = list(ds.get("ContributingEquipmentSequence", []))
        assert [str(item.Manufacturer) for item in equipment] == ["aamct"]
        for keyword in ("InstitutionName", "StationName", "DeviceSerialNumber"):
            assert str(ds.get(keyword, "") or "") in ("", "0"), keyword
        assert not [v for v in PHI.values() if v.encode() in raw]


def test_csv_cells_that_spreadsheets_run_are_neutralised(tmp_path, network):
    image = write_nifti(tmp_path / "images" / "a.nii.gz", chest_like_volume())
    hostile = '=HYPERLINK("http://x")'
    case = CohortCase(case_id="case-a", image=image, site=hostile, label="@SUM(1)")
    runner = CohortRunner(
        predictor=make_predictor(network), output_dir=tmp_path / "run", progress=False, evaluate=False
    )
    runner.run([case])
    table = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False)
    assert table.loc[0, "site"] == "'" + hostile and table.loc[0, "label"] == "'@SUM(1)"
    assert float(table.loc[0, "probability"]) > 0  # numbers are numbers
    assert neutralise_csv_cell(table.loc[0, "site"]) == table.loc[0, "site"]  # rewriting a table adds no quotes
    assert [neutralise_csv_cell(v) for v in ("-0.25", "+3", "-1e-05", "-cmd|x", "\tx", "site A")] == [
        "-0.25",
        "+3",
        "-1e-05",
        "'-cmd|x",
        "'\tx",
        "site A",
    ]


class _Stalling:
    """A predictor that stalls on chosen images (sleeping, or blocked opening a FIFO) and scores the others."""

    def __init__(self, stall: dict[str, str]) -> None:
        self.stall = stall

    def __call__(self, image, **kwargs):
        how = self.stall.get(Path(image).name)
        if how == "sleep":
            time.sleep(30)
        elif how == "fifo":
            with open(image, "rb"):  # blocks in the open() system call: no writer ever comes
                pass
        return SimpleNamespace(
            probabilities=np.array([0.3, 0.7]), stage_seconds={"inference": 0.0}, heatmap=None, montage=None
        )


def test_a_case_past_its_time_limit_becomes_an_error_row_and_the_batch_goes_on(tmp_path):
    fifo = tmp_path / "stalled.nii.gz"
    os.mkfifo(fifo)
    cases = [
        CohortCase(case_id="case-1", image=tmp_path / "sleeper.nii.gz"),
        CohortCase(case_id="case-2", image=fifo),
        CohortCase(case_id="case-3", image=tmp_path / "fine.nii.gz"),
    ]
    runner = CohortRunner(
        predictor=_Stalling({"sleeper.nii.gz": "sleep", "stalled.nii.gz": "fifo"}),
        output_dir=tmp_path / "run",
        progress=False,
        evaluate=False,
        case_timeout=0.5,
    )
    started = time.perf_counter()
    summary = runner.run(cases)
    assert time.perf_counter() - started < 10
    table = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False).set_index("case_id")
    for case_id in ("case-1", "case-2"):
        assert table.loc[case_id, "status"] == "error"
        assert table.loc[case_id, "reason"].startswith("case time limit exceeded"), table.loc[case_id, "reason"]
    assert table.loc["case-3", "status"] == "ok" and summary.n_ok == 1
    with case_time_limit(5.0):  # the alarm is cancelled on leaving: nothing fires later
        pass
    time.sleep(0.05)


@pytest.mark.realdata
def test_the_real_chest_steps_add_up_and_carry_no_source_identity(tmp_path, capsys):
    """The real 512 x 512 x 64 chest (``make test-tools``) with DICOM outputs: the step columns add up to the
    case's total, and neither its identifiers nor its scanner's (Philips) reach the output files."""
    from pipeline.cli import main

    chest = real_chest_path()
    series = tmp_path / "input" / "chest"
    series.mkdir(parents=True)
    for path in chest.glob("*.dcm"):
        (series / path.name).symlink_to(path)
    out = tmp_path / "out"
    argv = ["evaluate-cohort", "--bundle", str(tiny_bundle(tmp_path / "bundle")), "--input", str(series.parent)]
    assert main([*argv, "--out", str(out), "--no-report", "--dicom-out", str(out / "dicom")]) == 0
    capsys.readouterr()
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(table["status"]) == ["ok"] and table.loc[0, "dicom_map"]
    _check_steps_add_up(table.iloc[0], _step_columns(table))
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    equipment = [str(source.get(k) or "") for k in ("Manufacturer", "ManufacturerModelName", "InstitutionName")]
    equipment = [v for v in equipment if len(v) >= 4]
    assert equipment  # the real series names its scanner
    for name in (table.loc[0, "dicom_map"], table.loc[0, "dicom_sr"]):
        raw = (out / name).read_bytes()
        assert not [v for v in (*equipment, *REAL_CHEST_IDENTIFIERS) if v.encode() in raw], name
