"""The bundle's training run, driven exactly as the README says: the stock ``python -m monai.bundle run training``
CLI from the repository root, on a tiny generated DICOM cohort (demo generator -> manifest -> split).

The first training and the two-process (torchrun) one run the stock command in a subprocess; the resume and the
missing-manifest error give the same command line to the same entry point in the test process
(:func:`tests.bundle_process.monai_bundle`), which saves the interpreter start-up of each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.bundle_process import monai_bundle
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

NETWORK = "aam_student_small"
# small enough for a CPU test: 32^3 input, no DataLoader workers; one of the 4 training cases is damaged and left out
# by the pre-flight check, so the batch holds the other 3 (a lone last case would fail the networks' batch norm)
SMALL = [
    *("--roi_size", "[32,32,32]", "--network_name", NETWORK, "--num_workers", "0", "--batch_size", "3"),
    *("--max_bad_fraction", "0.5"),
]
PHI = re.compile(r"Demopatient\^Case|DEMO-\d{4}")  # the demo cohort's fake PatientName / PatientID


def _bundle(*args: str, config: str = "bundle/configs/train.json", nproc: int | None = None):
    """Run the stock bundle CLI from the repository root; returns the completed process."""
    launcher = [sys.executable, "-m", "monai.bundle"]
    if nproc:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "monai.bundle",
        ]
    command = [*launcher, "run", "training", "--config_file", config, "--bundle_root", "bundle", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if nproc else os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)


def _bundle_in_process(*args: str, config: str = "bundle/configs/train.json"):
    """The command line of :func:`_bundle` (one process) given to ``python -m monai.bundle``'s entry point in this
    process, from the repository root (:func:`tests.bundle_process.monai_bundle`)."""
    return monai_bundle("run", "training", "--config_file", config, "--bundle_root", "bundle", *args, cwd=REPO_ROOT)


def _output(process) -> str:
    return process.stdout + process.stderr


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 generated chest-CT DICOM series at 32x32, a manifest, a 2-fold split, and one training case whose
    pixel data was cut short after the manifest was built (its headers still read)."""
    from pipeline.contracts.datalist import load_datalist, select
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.manifest import build_manifest
    from pipeline.data.splits import split_manifest

    root = tmp_path_factory.mktemp("cohort")
    demo = write_demo_cohort(root / "dicom", cases=12, size=32, seed=0)
    key = root / "pseudonym.key"
    key.write_text("k" * 32, encoding="utf-8")
    manifest = root / "manifest.csv"
    build_manifest(
        dicom_root=root / "dicom", nifti_glob=None, labels_csv=demo.labels_csv, out=manifest, key_file=key, workers=1
    )
    split_manifest(manifest, test_fraction=0.2, n_folds=2, seed=0)
    datalist = root / "manifest.datalist.json"
    victim = select(load_datalist(datalist), "train", 0)[0]
    slices = sorted(Path(victim["image"]).iterdir())
    middle = slices[len(slices) // 2]
    middle.write_bytes(middle.read_bytes()[:-200])
    return {
        "root": root,
        "datalist": datalist,
        "manifest": manifest,
        "bad_case": victim["case_id"],
        "bad_image": Path(victim["image"]),
    }


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """One epoch through the README command (a subprocess: the stock command itself, as a user types it)."""
    output = tmp_path_factory.mktemp("run")
    process = _bundle("--datalist", str(cohort["datalist"]), "--output_dir", str(output), "--epochs", "1", *SMALL)
    return {"process": process, "output": output}


def test_readme_command_trains_and_writes_best_and_last_checkpoints(trained):
    process, models = trained["process"], trained["output"] / "models"
    assert process.returncode == 0, _output(process)[-3000:]
    from pipeline.networks import build

    network = build(NETWORK, in_channels=1, num_classes=2)
    network.load_state_dict(torch.load(models / "model.pt", weights_only=True))  # strict: a plain state dict
    last = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert set(last) == {"network", "optimizer", "lr_scheduler", "trainer", "best_checkpoint", "early_stop"}
    assert last["best_checkpoint"]["best_epoch"] == 1
    # the run records what its weights are, so evaluation / evaluate-cohort / export need not be told again
    record = json.loads((models / "run.json").read_text())
    assert record["network_name"] == NETWORK and record["written_by"] == "training"
    assert record["class_names"] == ["negative", "positive"] and len(record["roi_size"]) == 3
    # and what decides its numerics: the training process's threads, torch / oneDNN build and CPU ISA
    numerics = record["numerics"]
    assert (
        numerics["torch"] == torch.__version__ and numerics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    )
    assert isinstance(numerics["num_threads"], int) and numerics["num_threads"] >= 1
    assert numerics["onednn"] and re.fullmatch(r"\d+\.\d+(\.\d+)?", numerics["onednn"])
    assert record["seed"] == 0
    assert re.search(r"epoch 1/1: loss \d\.\d{4}, val_auc \d\.\d{4} \(best", process.stdout)
    assert list((trained["output"] / "tensorboard").glob("events.out.tfevents.*"))
    history = json.loads((trained["output"] / "train_history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1]


def test_bad_case_is_skipped_with_the_builders_reason_and_the_run_goes_on(trained, cohort):
    from pipeline.contracts.manifest import read_rejections, rejections_path_for
    from pipeline.data.manifest import build_manifest

    process = trained["process"]
    assert process.returncode == 0
    # what `aamct manifest build` says about the damaged series now
    rebuilt = cohort["root"] / "rebuilt" / "manifest.csv"
    key = cohort["root"] / "pseudonym.key"
    build_manifest(dicom_root=cohort["root"] / "dicom", nifti_glob=None, labels_csv=None, out=rebuilt, key_file=key)
    rejections = read_rejections(rejections_path_for(rebuilt))
    [reason] = [r.reason for r in rejections.itertuples() if Path(r.path).resolve() == cohort["bad_image"].resolve()]
    skipped = [line for line in _output(process).splitlines() if f"skipping train case {cohort['bad_case']}" in line]
    # caught by the pre-flight probe (the loader's checks on the headers), before any case is loaded
    assert len(skipped) == 1 and "WARNING" in skipped[0]
    assert skipped[0].endswith(f"{cohort['bad_image']}: {reason}"), (skipped[0], reason)
    assert "epoch 1/1:" in process.stdout  # after which training carried on


def test_no_phi_in_logs_or_outputs(trained):
    assert not PHI.search(_output(trained["process"]))
    assert not PHI.search((trained["output"] / "train_history.json").read_text())


def test_resume_continues_at_the_next_epoch_with_the_optimizer_state(trained, cohort, tmp_path):
    assert trained["process"].returncode == 0
    first = torch.load(trained["output"] / "models" / "checkpoint_last.pt", weights_only=True)
    steps_per_epoch = int(first["trainer"]["epoch_length"])
    assert int(first["optimizer"]["state"][0]["step"]) == steps_per_epoch
    output = tmp_path / "run"
    shutil.copytree(trained["output"], output)
    cached = sorted(p.name for p in (output / "cache").iterdir())
    # the resumed run also tracks itself with MONAI's MLFlowHandler (--tracking mlflow), offline, to a local store
    process = _bundle_in_process(
        "--datalist",
        str(cohort["datalist"]),
        "--output_dir",
        str(output),
        "--epochs",
        "2",
        "--resume",
        "true",
        "--tracking",
        "mlflow",
        *SMALL,
    )
    assert process.returncode == 0, _output(process)[-3000:]
    assert "continuing at epoch 2" in process.stdout
    _assert_mlflow_run(output / "mlruns.db", epoch=2)
    # the preprocessed cases came from the PersistentDataset cache of the first run, none recomputed
    assert "Corrupt cache" not in _output(process)
    assert sorted(p.name for p in (output / "cache").iterdir()) == cached
    assert "epoch 1/2:" not in process.stdout and "epoch 2/2:" in process.stdout  # epoch 1 was not run again
    last = torch.load(output / "models" / "checkpoint_last.pt", weights_only=True)
    assert int(last["trainer"]["iteration"]) == 2 * steps_per_epoch
    assert int(last["optimizer"]["state"][0]["step"]) == 2 * steps_per_epoch  # AdamW continued, not restarted
    history = json.loads((output / "train_history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2] and history["resumed_at"] == [2]


def _assert_mlflow_run(store: Path, *, epoch: int) -> None:
    """The run folder's MLflow store holds one run of experiment ``aamct`` with the loss and the validation AUC."""
    pytest.importorskip("mlflow", reason="no MLflow client installed (pip install 'aamct[tracking]')")
    from mlflow.tracking import MlflowClient
    from monai.utils import path_to_sqlite_uri

    assert store.is_file()
    client = MlflowClient(tracking_uri=path_to_sqlite_uri(str(store)))
    experiment = client.get_experiment_by_name("aamct")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    history = {key: client.get_metric_history(run.info.run_id, key) for key in ("train_loss", "val_auc")}
    assert history["train_loss"] and all(m.value == m.value for m in history["train_loss"])  # finite losses
    assert [m.step for m in history["val_auc"]] == [epoch] and 0.0 <= history["val_auc"][0].value <= 1.0


def test_torchrun_two_cpu_processes_with_gloo(cohort, trained, tmp_path):
    # stays a subprocess: torchrun starts two worker processes that talk over gloo, which no in-process call can be
    output = tmp_path / "ddp"
    process = _bundle(
        "--datalist",
        str(cohort["datalist"]),
        "--output_dir",
        str(output),
        "--epochs",
        "1",
        *SMALL,
        config="['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']",
        nproc=2,
    )
    assert process.returncode == 0, _output(process)[-3000:]
    from pipeline.networks import build

    build(NETWORK).load_state_dict(torch.load(output / "models" / "model.pt", weights_only=True))
    last = torch.load(output / "models" / "checkpoint_last.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in last["network"])  # DDP unwrapped
    assert len(re.findall(r"epoch 1/1: loss", _output(process))) == 1  # only rank 0 reports
    # the DDP config keeps train.json's initialize list, so rank 0 records the run as a single process does
    from pipeline.contracts.run_record import settings_for

    ddp, single = settings_for(output / "models"), settings_for(trained["output"] / "models")
    assert ddp.recorded and ddp.record == output / "models" / "run.json"
    assert ddp.network_name == NETWORK and ddp.roi_size == (32, 32, 32)
    assert replace(ddp, record=None) == replace(single, record=None)
    assert [p.name for p in (output / "models").glob("*.json")] == ["run.json"]  # one record, written once


def test_missing_manifest_is_one_line_for_the_user(tmp_path):
    # in this process: the configs' own one-line hook (sys.excepthook) prints what the interpreter would at exit
    process = _bundle_in_process("--datalist", str(tmp_path / "nope.csv"), "--output_dir", str(tmp_path / "run"))
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1] == (
        f"aamct: error: {tmp_path / 'nope.csv'}: manifest not found (build it with `aamct manifest build`)"
    )
