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
from pipeline.inference.bundle import PROJECT_BUNDLE
from tests.inference.helpers import TEST_ROI, TEST_SPACING, chest_like_volume, tiny_network, write_nifti

REPO_ROOT = Path(__file__).resolve().parents[2]


def _bundle(root: Path) -> Path:
    """A bundle folder with its own configs/inference.json (tiny network and input) and models/model.pt."""
    config = json.loads((PROJECT_BUNDLE / "configs" / "inference.json").read_text())
    config.update(roi_size=list(TEST_ROI), spacing=list(TEST_SPACING))
    config["network_def"]["width"] = 0.125
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (root / "models").mkdir()
    torch.save(tiny_network(seed=4).state_dict(), root / "models" / "model.pt")
    return root


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


def test_evaluate_cohort_from_a_zipped_bundle_then_resume(tmp_path, capsys):
    bundle = _bundle(tmp_path / "bundle")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in bundle.rglob("*"):
            zipped.write(path, Path("bundle") / path.relative_to(bundle))
    manifest = _manifest(tmp_path / "cohort", 4)
    out = tmp_path / "out"
    args = [
        "evaluate-cohort",
        "--bundle",
        str(archive),
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
