"""``aamct evaluate-cohort`` / ``aamct infer`` end to end, including a real kill of the process and its resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.cli import main
from tests.inference.helpers import chest_like_volume, tiny_bundle, tiny_network, write_nifti

REPO_ROOT = Path(__file__).resolve().parents[2]


def _bundle(root: Path) -> Path:
    return tiny_bundle(root)


def _manifest(root: Path, n: int, *, labels: bool = True) -> Path:
    rows = []
    for index in range(n):
        write_nifti(root / f"img{index}.nii.gz", chest_like_volume(seed=index))
        rows.append({"case_id": f"case-{index:02d}", "image": f"img{index}.nii.gz", "split": "test"})
        if labels:
            rows[-1].update(label=["negative", "positive"][index % 2], site=f"site-{'ab'[index % 3 == 0]}")
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_evaluate_cohort_from_a_bundle_then_resume(tmp_path, capsys):
    bundle = _bundle(tmp_path / "bundle")
    # a zip comes from outside: one that is not an export (no checksums) is refused by the bundle gate, nothing
    # extracted (tests/sharing/test_hostile_bundles.py scores an exported zip)
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in bundle.rglob("*"):
            zipped.write(path, Path("bundle") / path.relative_to(bundle))
    manifest = _manifest(tmp_path / "cohort", 4)
    out = tmp_path / "out"
    assert main(["evaluate-cohort", "--bundle", str(archive), "--manifest", str(manifest), "--out", str(out)]) == 2
    assert "refused by the bundle gate" in capsys.readouterr().err and not list(out.glob(".bundle-*"))
    args = [
        "evaluate-cohort",
        "--bundle",
        str(bundle),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--split",
        "test",
    ]
    assert main([*args, "--no-montage"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n}")[0] + "\n}")
    assert (summary["n_cases"], summary["n_ok"], summary["n_ran"]) == (4, 4, 4)
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 4 and set(predictions["status"]) == {"ok"}
    assert (out / "report" / "report.html").is_file()
    assert len(list((out / "heatmaps").glob("*.nii.gz"))) == 4 and not list((out / "heatmaps").glob("*.png"))
    assert main([*args, "--no-montage"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n}")[0] + "\n}")["n_ran"] == 0


def test_run_folder_shards_and_merge(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    torch.save(tiny_network(seed=4).state_dict(), run / "models" / "model.pt")
    manifest = _manifest(tmp_path / "cohort", 5, labels=False)
    out = tmp_path / "out"
    settings = ["--set", "roi_size=[32,32,32]", "--set", "spacing=[6,6,6]", "--set", "network_def#width=0.125"]
    common = ["--bundle", str(run), "--manifest", str(manifest), "--out", str(out), "--no-heatmaps", *settings]
    for shard in ("0/2", "1/2"):
        assert main(["evaluate-cohort", *common, "--shard", shard, "--threshold", "0.3"]) == 0
    assert not (out / "predictions.csv").exists()
    assert main(["evaluate-cohort", *common, "--merge", "--threshold", "0.3"]) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 5 and set(predictions["threshold"]) == {0.3}
    assert "no labelled case" in capsys.readouterr().out  # no labels: predictions only
    assert not (out / "heatmaps").exists()
    # the same folder with another threshold would mix two operating points: refused
    assert main(["evaluate-cohort", *common, "--threshold", "0.6"]) == 2
    assert "another model or setting" in capsys.readouterr().err


def test_infer_scores_images_given_on_the_command_line(tmp_path, capsys):
    bundle = _bundle(tmp_path / "bundle")
    image = write_nifti(tmp_path / "one.nii.gz", chest_like_volume())
    assert main(["infer", str(image), "--bundle", str(bundle), "--out", str(tmp_path / "out"), "--no-montage"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("case-") and str(image) in line and " -> " in line
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.nii.gz"))) == 1


@pytest.mark.parametrize(
    ("setup", "message"),
    [("no_manifest", "manifest not found"), ("no_weights", "no models/model.pt"), ("bad_set", "expected KEY=JSON")],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, setup, message):
    bundle = _bundle(tmp_path / "bundle")
    manifest = _manifest(tmp_path / "cohort", 1)
    args = ["evaluate-cohort", "--bundle", str(bundle), "--manifest", str(manifest), "--out", str(tmp_path / "o")]
    if setup == "no_manifest":
        args[4] = str(tmp_path / "nope.csv")
    elif setup == "no_weights":
        (bundle / "models" / "model.pt").unlink()
    else:
        args += ["--set", "no-equals-sign"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aamct: error: ") and message in err and len(err.splitlines()) == 1


def _rows_in(table: Path) -> int:
    """Rows of a predictions table that may not exist yet (it is only ever replaced whole)."""
    return len(pd.read_csv(table)) if table.exists() else 0


@pytest.mark.slow
def test_killed_process_resumes_with_only_the_missing_cases(tmp_path):
    # stays a subprocess: the run is killed with SIGKILL part-way, which only a separate process can undergo
    bundle = _bundle(tmp_path / "bundle")
    n_cases = 8
    manifest = _manifest(tmp_path / "cohort", n_cases, labels=False)
    out = tmp_path / "out"
    args = ["evaluate-cohort", "--bundle", str(bundle), "--manifest", str(manifest), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env, stderr=subprocess.DEVNULL)
    records, table = out / "records", out / "predictions.csv"
    deadline = time.monotonic() + 120
    # wait for the table (rewritten atomically after each record), so the kill lands after two whole cases
    while time.monotonic() < deadline and process.poll() is None and _rows_in(table) < 2:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_after = {p.stem: json.loads(p.read_text()) for p in records.glob("*.json")}
    assert 2 <= len(killed_after) < n_cases, "the run must have been killed part-way"
    assert all(record["pid"] == process.pid for record in killed_after.values())
    # records are the source of truth; the kill may fall between a case's record and the table rewrite
    table_ids = set(pd.read_csv(table)["case_id"])
    assert table_ids <= set(killed_after) and len(killed_after) - len(table_ids) <= 1

    assert main(args) == 0
    final = {p.stem: json.loads(p.read_text()) for p in records.glob("*.json")}
    assert len(final) == n_cases
    rerun = [case_id for case_id, record in final.items() if record["pid"] == os.getpid()]
    assert sorted(rerun) == sorted(set(final) - set(killed_after))
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == n_cases and set(predictions["status"]) == {"ok"}


# --------------------------------------------------------------------------------- cases the ingestion rejects


def _write_bad_and_good_inputs(root: Path) -> dict[str, Path]:
    """Real DICOM series and NIfTI files: two good of each kind, and one of each way a scan is rejected."""
    import nibabel as nib
    import numpy as np

    from tests.data.dicom_factory import default_positions, write_ct_series

    geometry = dict(rows=40, columns=40, pixel_spacing=(2.0, 2.0), slice_spacing=2.0)
    images = {}
    for index in range(2):
        images[f"good_dicom_{index}"] = write_ct_series(root / "dicom" / f"good{index}", seed=index, **geometry).folder
        images[f"good_nifti_{index}"] = write_nifti(
            root / "nifti" / f"good{index}.nii.gz", chest_like_volume(seed=index)
        )
    # gantry tilt written into the files: the positions shear along the columns and the header says so
    images["tilted"] = write_ct_series(
        root / "dicom" / "tilted",
        tilt_degrees=15.0,
        edit=lambda k, ds: setattr(ds, "GantryDetectorTilt", "15"),
        **geometry,
    ).folder
    truncated = write_ct_series(root / "dicom" / "truncated", **geometry)
    victim = truncated.files[7]
    victim.write_bytes(victim.read_bytes()[:-300])
    images["truncated"] = truncated.folder
    positions = default_positions(20, origin=(-40.0, -40.0, -20.0), orientation=(1, 0, 0, 0, 1, 0), slice_spacing=2.0)
    positions[8] = (positions[8][0], positions[8][1], positions[8][2] + 0.9)  # one slice moved along the normal
    images["moved_slice"] = write_ct_series(root / "dicom" / "moved", positions=positions, **geometry).folder
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nan_volume = chest_like_volume().astype(np.float32)
    nan_volume[3, 4, 5] = np.nan
    for name, data in (
        ("nan", nan_volume),
        ("flat", chest_like_volume()[:, :, 0].astype(np.float32)),  # 2D
        ("series4d", np.stack([chest_like_volume(seed=s) for s in (1, 2)], axis=-1).astype(np.float32)),  # 4D
    ):
        image = nib.Nifti1Image(data, affine)
        image.set_sform(affine, code=1)
        nib.save(image, root / "nifti" / f"{name}.nii.gz")
        images[name] = root / "nifti" / f"{name}.nii.gz"
    images["missing"] = root / "nifti" / "not_there.nii.gz"
    return images


@pytest.fixture(scope="module")
def rejected_cohort(tmp_path_factory):
    """The inputs, the manifest builder's verdict on them, and a cohort manifest listing every input."""
    from pipeline.contracts.manifest import read_rejections, rejections_path_for
    from pipeline.data.manifest import build_manifest

    root = tmp_path_factory.mktemp("rejected")
    images = _write_bad_and_good_inputs(root / "inputs")
    key = root / "key"
    key.write_text("k" * 32)
    built = root / "built.csv"
    build_manifest(
        dicom_root=root / "inputs" / "dicom",
        nifti_glob=str(root / "inputs" / "nifti" / "*.nii.gz"),
        labels_csv=None,
        out=built,
        key_file=key,
        workers=1,
        allow_out_of_scope=True,  # toy volumes, not chests: the bundle scores them anyway too (tests/inference/helpers)
    )
    rejections = read_rejections(rejections_path_for(built))
    accepted = {Path(p).resolve() for p in pd.read_csv(built)["image"].map(lambda p: built.parent / p)}
    rows = [
        {"case_id": name.replace("_", "-"), "image": str(image), "label": ["negative", "positive"][i % 2]}
        for i, (name, image) in enumerate(sorted(images.items()))
    ]
    manifest = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    good = root / "good.csv"
    pd.DataFrame([row for row in rows if row["case_id"].startswith("good")]).to_csv(good, index=False)
    return {
        "root": root,
        "images": images,
        "accepted": accepted,
        "rejections": rejections,
        "built": built,
        "manifest": manifest,
        "good_manifest": good,
        "bundle": tiny_bundle(root / "bundle"),
    }


def _builder_reasons(cohort, image: Path) -> list[str]:
    """The rejections CSV's reasons for one input (rows naming the image itself or a file inside its folder)."""
    base = cohort["built"].parent
    reasons = []
    for row in cohort["rejections"].itertuples():
        path = Path(row.path) if Path(row.path).is_absolute() else base / row.path
        if path.resolve() == image.resolve() or image.resolve() in path.resolve().parents:
            reasons.append(row.reason)
    return reasons


def test_the_builder_accepts_the_good_inputs_and_rejects_every_bad_one(rejected_cohort):
    images = rejected_cohort["images"]
    good = {name for name in images if name.startswith("good")}
    assert {images[name].resolve() for name in good} == rejected_cohort["accepted"]
    for name in set(images) - good - {"missing"}:
        assert _builder_reasons(rejected_cohort, images[name]), f"{name}: the builder gave no reason"


def test_evaluate_cohort_reports_every_rejected_case_with_the_builders_reason(rejected_cohort, tmp_path):
    # stays a subprocess: the stock `python -m pipeline evaluate-cohort` as a user runs it, and what reaches its
    # terminal (no traceback, no Python warning: pytest would catch those in-process before they reach stderr)
    out = tmp_path / "out"
    args = ["--bundle", str(rejected_cohort["bundle"]), "--manifest", str(rejected_cohort["manifest"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate-cohort", *args, "--out", str(out), "--no-montage"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Traceback" not in process.stderr and "Traceback" not in process.stdout
    assert "Warning" not in process.stderr  # MONAI's reader and transform notices stay out of the default output
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("case_id")
    images = rejected_cohort["images"]
    assert sorted(predictions.index) == sorted(name.replace("_", "-") for name in images)  # every case, once
    for name, image in images.items():
        row = predictions.loc[name.replace("_", "-")]
        if name.startswith("good"):
            assert row["status"] == "ok" and 0.0 <= float(row["probability"]) <= 1.0, (name, row["reason"])
            continue
        assert row["status"] == "error" and row["probability"] == "", name
        # one line naming the case by its id, never by its path (source folders often name patients)
        case_id = name.replace("_", "-")
        assert "\n" not in row["reason"] and str(image) not in row["reason"], (name, row["reason"])
        assert row["reason"].startswith(f"{case_id}: "), (name, row["reason"])
        if name == "missing":
            assert row["reason"] == f"{case_id}: no such file or folder"  # the loader's words for it
            continue
        # the builder's own words, after the id that stands for the path the loader names
        expected = [reason.replace(str(image), case_id) for reason in _builder_reasons(rejected_cohort, image)]
        assert any(row["reason"].endswith(": " + reason) for reason in expected), (name, row["reason"], expected)
        assert not (out / "heatmaps" / f"{name.replace('_', '-')}.nii.gz").exists()
    # every error is a WARNING line naming the case, never a traceback
    for name in set(images) - {n for n in images if n.startswith("good")}:
        assert f"{name.replace('_', '-')}: " in process.stderr

    # the good cases score exactly as in a run without the bad ones
    alone = tmp_path / "alone"
    good_args = ["--bundle", str(rejected_cohort["bundle"]), "--manifest", str(rejected_cohort["good_manifest"])]
    assert main(["evaluate-cohort", *good_args, "--out", str(alone), "--no-heatmaps"]) == 0
    by_itself = pd.read_csv(alone / "predictions.csv").set_index("case_id")["probability"]
    mixed = predictions.loc[by_itself.index, "probability"].astype(float)
    assert len(by_itself) == 4 and (mixed.to_numpy() == by_itself.to_numpy()).all()


def test_an_input_folder_lists_what_the_builder_rejects_as_error_rows(rejected_cohort, tmp_path, capfd):
    out = tmp_path / "out"
    assert main(["evaluate-cohort", "--bundle", str(rejected_cohort["bundle"]), "--input",
                 str(rejected_cohort["root"] / "inputs"), "--out", str(out), "--no-heatmaps"]) == 0  # fmt: skip
    assert "Traceback" not in capfd.readouterr().err
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert (predictions["status"] == "ok").sum() == 4
    errors = predictions[predictions["status"] == "error"]["reason"]
    for reason in rejected_cohort["rejections"]["reason"]:
        assert errors.str.endswith(f": {reason}").any(), reason
    assert len(errors) == len(rejected_cohort["rejections"])
    assert not any("good" in case_id or "tilted" in case_id for case_id in predictions["case_id"])


@pytest.mark.parametrize("target", ["out", "manifest"])
def test_an_unwritable_output_is_one_line(rejected_cohort, capsys, target):
    read_only = Path("/proc/aamct-test")  # no process may create a file under /proc
    if target == "out":
        args = ["evaluate-cohort", "--bundle", str(rejected_cohort["bundle"]), "--manifest",
                str(rejected_cohort["good_manifest"]), "--out", str(read_only)]  # fmt: skip
    else:
        args = ["manifest", "build", "--dicom-root", str(rejected_cohort["root"] / "inputs" / "dicom"), "--out",
                str(read_only / "m.csv")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aamct: error: ") and "/proc/aamct-test" in err and len(err.splitlines()) == 1


def test_infer_scores_the_good_images_and_names_the_missing_one(tmp_path, capsys):
    bundle = _bundle(tmp_path / "bundle")
    good = write_nifti(tmp_path / "good.nii.gz", chest_like_volume())
    missing = tmp_path / "gone.nii.gz"
    assert main(["infer", str(good), str(missing), "--bundle", str(bundle), "--out", str(tmp_path / "o"),
                 "--no-heatmaps"]) == 1  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    by_image = {line.split()[1]: line for line in lines}
    assert " -> " in by_image[str(good)]
    # the console line names the image the user typed; the reason (as in predictions.csv) names the case id
    assert by_image[str(missing)].endswith(": no such file or folder") and " error: case-" in by_image[str(missing)]
