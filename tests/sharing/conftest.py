"""Shared fixtures: a tiny trained bundle built from a DICOM cohort whose headers carry PHI, exported once.

The chain is the real one, shrunk: ``write_demo_cohort`` (DICOM series) -> PatientName / PatientID / BirthDate
overwritten with distinctive values -> ``build_manifest`` + ``split_manifest`` (datalist) -> one epoch of training of
``aam_student_small`` at 32^3 on the training cases, read through the project's transforms, with its run record
(``models/run.json``) -> the run summary ``metrics.json`` written by the evaluation's own writer
(:func:`pipeline.evaluation.handlers.update_run_summary`) -> ``export_bundle`` with the repository's own bundle
configs (network sizes shrunk; the network name comes from the run record), signed with a fresh Ed25519 key.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from pipeline.contracts.run_record import write_run_record

REPO_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
CLASSES = ["negative", "positive"]
ROI = [32, 32, 32]
SPACING = [10.0, 10.0, 10.0]
NETWORK = "aam_student_small"
#: distinctive identifiers written into every DICOM header of the cohort (index filled per patient)
PHI_NAME = "Quixmoor^Vendelina{i}"
PHI_ID = "PHI-ID-{i}-7Q3Z"
PHI_BIRTH_DATE = "19410923"


def phi_values(n_patients: int) -> list[str]:
    """Every identifying value written into the cohort (and the name components), for searching."""
    values = {PHI_BIRTH_DATE, "1941-09-23"}
    for i in range(n_patients):
        name = PHI_NAME.format(i=i)
        values |= {name, *name.split("^"), PHI_ID.format(i=i)}
    return sorted(values)


@dataclass(frozen=True)
class PhiCohort:
    root: Path
    datalist: Path
    n_patients: int


@dataclass(frozen=True)
class ExportedBundle:
    zip_path: Path
    name: str
    report: Path
    checkpoint: Path
    source_bundle: Path
    source_metadata_sha256: str
    result: object
    cohort: PhiCohort
    public_key: Path | None = None


def _shrink_bundle(target: Path) -> Path:
    """The repository's bundle configs with a small network and input, plus a LICENSE."""
    if not (REPO_BUNDLE / "configs" / "inference.json").is_file():
        pytest.skip("bundle/configs/inference.json not present yet")
    shutil.copytree(REPO_BUNDLE / "configs", target / "configs")
    for name in ("inference.json", "train.json"):
        path = target / "configs" / name
        if path.is_file():
            config = json.loads(path.read_text())
            config.update(roi_size=ROI, spacing=SPACING)
            path.write_text(json.dumps(config, indent=2))
    meta_path = target / "configs" / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] = ROI
    meta_path.write_text(json.dumps(metadata, indent=2))
    license_source = REPO_BUNDLE / "LICENSE"
    if license_source.is_file():
        shutil.copyfile(license_source, target / "LICENSE")
    else:
        (target / "LICENSE").write_text("Apache License 2.0 (test bundle)\n")
    return target


@pytest.fixture(scope="session")
def phi_cohort(tmp_path_factory) -> PhiCohort:
    """Eight demo DICOM series whose patient fields hold distinctive values, manifest-built and split."""
    return _write_phi_cohort(tmp_path_factory.mktemp("phi_cohort"))


def _write_phi_cohort(base: Path) -> PhiCohort:
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.manifest import build_manifest
    from pipeline.data.splits import split_manifest

    base.mkdir(parents=True, exist_ok=True)
    cohort = write_demo_cohort(base / "dicom", cases=8, size=32, seed=3)
    patients: dict[str, int] = {}
    for path in sorted((base / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        index = patients.setdefault(str(ds.PatientID), len(patients))
        ds.PatientName = PHI_NAME.format(i=index)
        ds.PatientID = PHI_ID.format(i=index)
        ds.PatientBirthDate = PHI_BIRTH_DATE
        ds.save_as(path)
    key = base / "pseudonym.key"
    key.write_text("a-test-key-of-at-least-16-bytes")
    manifest = base / "manifest.csv"
    build_manifest(
        dicom_root=base / "dicom", nifti_glob=None, labels_csv=cohort.labels_csv, out=manifest, key_file=key, workers=2
    )
    result = split_manifest(manifest, test_fraction=0.25, n_folds=2, seed=0)
    datalist = Path(result.datalist_path)
    return PhiCohort(root=base / "dicom", datalist=datalist, n_patients=len(patients))


def _train_one_epoch(datalist: Path, checkpoint: Path) -> None:
    """One epoch of AdamW on the training cases, through the project's deterministic preprocessing."""
    from pipeline.contracts.datalist import select
    from pipeline.networks import build
    from pipeline.transforms import train_transforms

    torch.manual_seed(0)
    network = build(NETWORK)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    preprocessing = train_transforms(roi_size=ROI, spacing=SPACING, augment=False)
    network.train()
    items = [preprocessing({"image": row["image"], "label": row["label"]}) for row in select(datalist, "train_all")]
    # batches of two: the attention modules' batch norm sees a 1x1x1 map at 32^3 and needs more than one value
    for start in range(0, len(items) - 1, 2):
        batch = items[start : start + 2]
        images = torch.stack([item["image"] for item in batch])
        labels = torch.cat([item["label"].view(1) for item in batch])
        loss = torch.nn.functional.cross_entropy(network(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    # the training stage's layout: the network state dict, nested as MONAI CheckpointSaver may write it
    torch.save({"network": network.state_dict()}, checkpoint)
    write_run_record(checkpoint.parent, network_name=NETWORK, roi_size=ROI, spacing=SPACING, class_names=CLASSES)


def synthetic_report(path: Path, *, n: int = 60, seed: int = 0) -> Path:
    """A run summary (``RUN/metrics.json``) of a separable synthetic predictions table: the threshold chosen on the
    validation cases, then the test cases evaluated at it, each merged in by the evaluation's own writer."""
    from pipeline.evaluation import evaluate_predictions
    from pipeline.evaluation.handlers import update_run_summary

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    frame = pd.DataFrame(
        {
            "case_id": [f"case-{i:04x}" for i in range(n)],
            "label": labels,
            "probability": np.clip(0.3 * labels + rng.uniform(0.0, 0.7, size=n), 0, 1),
            "site": np.where(np.arange(n) % 2 == 0, "site-a", "site-b"),
            "split": np.where(np.arange(n) < n // 3, "val", "test"),
        }
    )
    validation = frame[frame["split"] == "val"]
    val_report = evaluate_predictions(validation, validation=validation, n_resamples=200)
    update_run_summary(path, val_report, split="val", report_dir=path.parent / "eval_val")
    test_report = evaluate_predictions(
        frame[frame["split"] == "test"], threshold=val_report.operating_point, n_resamples=200
    )
    return update_run_summary(path, test_report, split="test", report_dir=path.parent / "eval_test")


def _once_per_run(tmp_path_factory, name: str, build):
    """``build(folder)`` once for the whole test run, shared by every xdist worker.

    With xdist, each worker has its own session, so a session fixture is built again in every worker that runs a
    module using it (here: test_export_verify.py and test_export_version.py, often on two workers). The first worker
    builds it under the run's common temp folder (``pytest-N``, new for every run) while holding a file lock; the
    others wait for it and read back what it returned. Without xdist it is just built.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock  # torch's own dependency

    shared = tmp_path_factory.getbasetemp().parent
    done = shared / f"{name}.pickle"
    with FileLock(str(shared / f"{name}.lock")):
        if done.is_file():
            return pickle.loads(done.read_bytes())
        folder = shared / name
        folder.mkdir(exist_ok=True)
        value = build(folder)
        done.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory) -> ExportedBundle:
    """The tiny bundle trained on the PHI cohort, exported once for the whole test run (all workers)."""
    return _once_per_run(tmp_path_factory, "exported_bundle", _export_tiny_bundle)


#: the exporter's reason for this model, which the card must repeat
MODEL_NOTE = "the trained network: its distilled student scored lower on the validation split"


def _export_tiny_bundle(base: Path) -> ExportedBundle:
    from pipeline.sharing.export import export_bundle

    phi_cohort = _write_phi_cohort(base / "phi_cohort")
    source = _shrink_bundle(base / "bundle")
    checkpoint = base / "run" / "models" / "model.pt"
    _train_one_epoch(phi_cohort.datalist, checkpoint)
    report = synthetic_report(base / "run" / "metrics.json")
    source_hash = hashlib.sha256((source / "configs" / "metadata.json").read_bytes()).hexdigest()
    from pipeline.trust.signing import write_key_pair

    private_key, public_key = write_key_pair(base / "keys" / "sender.key")  # export --sign, checked with --trust
    result = export_bundle(
        source,
        base / "out" / "covid_ct_tiny.zip",
        checkpoint=checkpoint,
        report=report,
        datalist=phi_cohort.datalist,
        sign_key=private_key,
        model_note=MODEL_NOTE,
    )
    return ExportedBundle(
        zip_path=result.zip_path,
        name="covid_ct_tiny",
        report=report,
        checkpoint=checkpoint,
        source_bundle=source,
        source_metadata_sha256=source_hash,
        result=result,
        cohort=phi_cohort,
        public_key=public_key,
    )


@pytest.fixture
def shrunk_bundle(tmp_path) -> Path:
    """A fresh shrunk source bundle (configs + LICENSE, no weights) for tests that break it."""
    return _shrink_bundle(tmp_path / "bundle")


@pytest.fixture(scope="session")
def report_json(tmp_path_factory) -> Path:
    """The run summary ``metrics.json`` of the synthetic predictions table (real evaluator and writer)."""
    return synthetic_report(tmp_path_factory.mktemp("report") / "metrics.json")
