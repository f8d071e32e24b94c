"""Export -> verify -> inspect on a bundle trained from a PHI-bearing DICOM cohort, tampering, and the recipient's run.

One export (session fixture ``exported_bundle`` in this folder's conftest) serves every test here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.sharing.archive import open_bundle_archive, write_bundle_zip
from pipeline.sharing.checksums import CHECKSUM_FILENAME, digests_of_tree, format_checksums
from pipeline.sharing.export import write_synthetic_ct
from pipeline.sharing.metadata import METADATA_SCHEMA_PATH, bump_version
from pipeline.sharing.verify import verify_bundle
from tests.sharing.conftest import phi_values

EXPECTED_MEMBERS = {
    "LICENSE",
    CHECKSUM_FILENAME,
    "configs/metadata.json",
    "configs/inference.json",
    "configs/inference_torchscript.json",
    "models/model.pt",
    "models/model.ts",
    "models/operating_point.json",
    "docs/README.md",
}


@pytest.fixture(scope="module")
def unpacked(exported_bundle, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(exported_bundle.zip_path) as archive:
        archive.extractall(target)
    return target / exported_bundle.name


def _rezip(source_zip: Path, target: Path, *, name: str, edit) -> Path:
    """Unpack, let ``edit(root)`` change files, and zip again (checksums only rewritten if ``edit`` does)."""
    stage = target.parent / f"{target.stem}_stage"
    with zipfile.ZipFile(source_zip) as archive:
        archive.extractall(stage)
    root = stage / name
    edit(root)
    return write_bundle_zip(root, target, name=name)


def test_export_layout_version_and_untouched_source(exported_bundle, unpacked):
    members = set(open_bundle_archive(exported_bundle.zip_path).members)
    assert members >= EXPECTED_MEMBERS
    source_meta = exported_bundle.source_bundle / "configs" / "metadata.json"
    assert hashlib.sha256(source_meta.read_bytes()).hexdigest() == exported_bundle.source_metadata_sha256
    source = json.loads(source_meta.read_text())
    released = json.loads((unpacked / "configs" / "metadata.json").read_text())
    assert released["version"] == bump_version(source["version"]) == exported_bundle.result.version
    newest_version, newest_entry = next(iter(released["changelog"].items()))
    assert newest_version == released["version"] and newest_entry[:4].isdigit()  # "YYYY-MM-DD: ..."
    assert released["model_card"]["training_data"]["splits"]["training"]["cases"] > 0
    state = torch.load(unpacked / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # the nested checkpoint was flattened
    threshold = json.loads((unpacked / "models" / "operating_point.json").read_text())["threshold"]
    assert threshold == released["model_card"]["operating_threshold"]["value"]


def test_verify_passes_and_lists_code(exported_bundle):
    report = verify_bundle(exported_bundle.zip_path)
    assert report.ok, report.lines()
    assert [c.name for c in report.checks if c.ok is not True] == []
    names = {c.name for c in report.checks}
    assert {"checksums", "metadata", "weights", "torchscript", "eager network"} <= names
    listed = {(r.file, r.key_path) for r in report.references}
    assert ("inference_torchscript.json", "inferer::_target_") in listed
    assert ("inference_torchscript.json", "network_def") in listed
    assert any(r.file == "inference.json" for r in report.needs_package)
    assert not any(r.file == "inference_torchscript.json" for r in report.needs_package)


def test_cli_verify_and_inspect(exported_bundle, capsys):
    # the full network checks run in test_verify_passes_and_lists_code; here only the command line
    assert main(["bundle", "verify", str(exported_bundle.zip_path), "--no-network-checks"]) == 0
    out = capsys.readouterr().out
    assert "verified: OK" in out and "inference_torchscript.json  inferer::_target_  target" in out
    assert main(["bundle", "inspect", str(exported_bundle.zip_path)]) == 0
    out = capsys.readouterr().out
    card = json.loads(zipfile.ZipFile(exported_bundle.zip_path).read(f"{exported_bundle.name}/configs/metadata.json"))[
        "model_card"
    ]
    assert f"bundle     {exported_bundle.name} {card['version']}" in out
    primary = card["metrics"]["primary_split"]
    assert f"AUC {card['metrics']['splits'][primary]['auc']:.3f}" in out
    assert f"threshold  {card['operating_threshold']['value']:.6g}" in out


def _data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length


def test_one_flipped_byte_in_any_member_fails_naming_it(exported_bundle, tmp_path):
    raw = exported_bundle.zip_path.read_bytes()
    infos = [i for i in zipfile.ZipFile(io.BytesIO(raw)).infolist() if not i.is_dir()]
    assert len(infos) >= len(EXPECTED_MEMBERS)
    for info in infos:
        tampered = bytearray(raw)
        tampered[_data_offset(raw, info) + info.compress_size // 2] ^= 0x01
        path = tmp_path / "tampered.zip"
        path.write_bytes(bytes(tampered))
        report = verify_bundle(path, check_networks=False)
        assert not report.ok, info.filename
        assert info.filename in report.first_failure.detail, (info.filename, report.first_failure)


@pytest.mark.parametrize("member", ["models/model.pt", "configs/inference_torchscript.json", CHECKSUM_FILENAME])
def test_changed_content_with_a_valid_zip_fails_the_checksum_naming_the_member(exported_bundle, tmp_path, member):
    def flip(root):
        data = bytearray((root / member).read_bytes())
        data[len(data) // 2] ^= 0x01
        (root / member).write_bytes(bytes(data))

    name = exported_bundle.name
    if member == CHECKSUM_FILENAME:
        # rewriting the zip re-records the checksum file's digest; keep the original comment so the edit shows
        original = zipfile.ZipFile(exported_bundle.zip_path).comment
        path = _rezip(exported_bundle.zip_path, tmp_path / "t.zip", name=name, edit=flip)
        with zipfile.ZipFile(path, "a") as archive:
            archive.comment = original
    else:
        path = _rezip(exported_bundle.zip_path, tmp_path / "t.zip", name=name, edit=flip)
    report = verify_bundle(path, check_networks=False)
    assert not report.ok
    assert f"{name}/{member}" in report.first_failure.detail


def test_extra_and_missing_members_are_detected(exported_bundle, tmp_path):
    name = exported_bundle.name
    extra = _rezip(
        exported_bundle.zip_path, tmp_path / "e.zip", name=name, edit=lambda r: (r / "models" / "x.py").write_text("1")
    )
    assert "models/x.py: present in the bundle but not listed" in verify_bundle(extra).first_failure.detail
    missing = _rezip(exported_bundle.zip_path, tmp_path / "m.zip", name=name, edit=lambda r: (r / "LICENSE").unlink())
    assert f"missing required member {name}/LICENSE" in verify_bundle(missing).first_failure.detail


def test_metadata_missing_a_required_key_fails_verify(exported_bundle, tmp_path, capsys):
    def drop_task(root):
        path = root / "configs" / "metadata.json"
        metadata = json.loads(path.read_text())
        del metadata["task"]
        path.write_text(json.dumps(metadata))
        (root / CHECKSUM_FILENAME).write_text(format_checksums(digests_of_tree(root)))  # checksums stay valid

    path = _rezip(exported_bundle.zip_path, tmp_path / "nometa.zip", name=exported_bundle.name, edit=drop_task)
    report = verify_bundle(path)
    assert [c.ok for c in report.checks[:3]] == [True, True, True]  # integrity passes, the schema does not
    assert report.first_failure.name == "metadata"
    assert "missing required key 'task'" in report.first_failure.detail
    assert main(["bundle", "verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aamct: error: ") and "missing required key 'task'" in err and len(err.splitlines()) == 1


def test_exported_metadata_passes_monai_verify_metadata(unpacked):
    from monai.bundle import verify_metadata

    # in-process: the CLI form is exercised on the project metadata in test_metadata.py
    verify_metadata(meta_file=str(unpacked / "configs" / "metadata.json"), filepath=str(METADATA_SCHEMA_PATH))


def _blobs(path: Path):
    data = path.read_bytes()
    yield path.name, data
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as nested:
            for info in nested.infolist():
                yield f"{path.name}!{info.filename}", nested.read(info)


def test_no_patient_identifier_anywhere_in_the_archive(exported_bundle, unpacked):
    values = [v.lower().encode() for v in phi_values(exported_bundle.cohort.n_patients)]
    # positive control: the same search does find them in the cohort's DICOM files
    first_slice = next(exported_bundle.cohort.root.rglob("*.dcm")).read_bytes().lower()
    assert any(value in first_slice for value in values)
    files = [p for p in unpacked.rglob("*") if p.is_file()]
    assert {p.relative_to(unpacked).as_posix() for p in files} >= EXPECTED_MEMBERS
    assert any(p.name == "model.ts" for p in files)
    for path in files:
        for label, blob in _blobs(path):
            haystack = label.lower().encode() + b"\n" + blob.lower()
            found = [value.decode() for value in values if value in haystack]
            assert not found, f"{label} contains {found}"
    assert exported_bundle.result.phi_fields_checked == ("PatientBirthDate", "PatientID", "PatientName")


def _eager_probabilities(bundle_root: Path, images: list[Path]) -> dict[str, np.ndarray]:
    """The package's own path: inference.json's preprocessing + inferer on its network_def with model.pt."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    parser.read_meta(str(bundle_root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_root)
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle_root / "models" / "model.pt", weights_only=True))
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    out = {}
    with torch.no_grad():
        for image in images:
            volume = preprocessing({"image": str(image)})["image"][None]
            out[str(image)] = torch.softmax(inferer(volume, network), dim=1)[0].numpy()
    return out


def test_torchscript_only_inference_without_the_package(unpacked, tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    images = [
        write_synthetic_ct(cohort / "case_a.nii.gz", shape=(48, 40, 24), seed=1),
        write_synthetic_ct(cohort / "case_b.nii.gz", shape=(60, 52, 30), seed=2),
    ]
    output = tmp_path / "predictions"
    # -I: no PYTHONPATH, no user site, no cwd on sys.path; -S: no site-packages .pth files, so the editable
    # install's finder is never installed; only the venv's site-packages directory itself is put on the path
    launcher = (
        "import sys, runpy\n"
        f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
        "try:\n"
        "    import pipeline\n"
        "except ImportError:\n"
        "    print('IMPORT-PIPELINE-FAILED', flush=True)\n"
        "else:\n"
        "    sys.exit('pipeline is importable from ' + str(pipeline.__file__))\n"
        "sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
        "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)\n"
    )
    command = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        launcher,
        "run",
        "inference",
        "--config_file",
        str(unpacked / "configs" / "inference_torchscript.json"),
        "--bundle_root",
        str(unpacked),
        "--dataset_dir",
        str(cohort),
        "--image_glob",
        "*.nii.gz",
        "--output_dir",
        str(output),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORT-PIPELINE-FAILED" in done.stdout
    with open(output / "predictions.csv", newline="") as handle:
        rows = {row[0]: np.array([float(v) for v in row[1:]]) for row in csv.reader(handle)}
    assert set(rows) == {str(p) for p in images}
    eager = _eager_probabilities(unpacked, images)
    for path, probabilities in rows.items():
        assert probabilities.shape == (2,) and abs(probabilities.sum() - 1) < 1e-5
        np.testing.assert_allclose(probabilities, eager[path], rtol=0, atol=1e-5)


def test_copying_the_zip_keeps_it_verifiable(exported_bundle, tmp_path):
    # the comment (digest of the checksum file) travels with the bytes of the zip
    copy = shutil.copyfile(exported_bundle.zip_path, tmp_path / f"{exported_bundle.name}.zip")
    assert verify_bundle(copy, check_networks=False).ok
