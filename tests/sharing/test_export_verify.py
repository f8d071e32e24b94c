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
from pipeline.networks import build
from pipeline.sharing.archive import open_bundle_archive, write_bundle_zip
from pipeline.sharing.export import write_synthetic_ct
from pipeline.sharing.metadata import METADATA_SCHEMA_PATH, bump_version
from pipeline.sharing.model_card import MODEL_CARD_KEY
from pipeline.sharing.verify import verify_bundle
from pipeline.trust.checksums import CHECKSUM_FILENAME, digests_of_tree, format_checksums
from tests.bundle_process import monai_bundle
from tests.sharing.conftest import phi_values

EXPECTED_MEMBERS = {
    "LICENSE",
    CHECKSUM_FILENAME,
    "configs/metadata.json",
    "configs/inference.json",
    "configs/inference_torchscript.json",
    "models/model.pt",
    "models/model.ts",
    "models/model_dense.ts",
    "models/operating_point.json",
    "large_files.yml",
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


def test_the_card_names_the_run_records_network_and_the_exporters_reason(exported_bundle, unpacked):
    from tests.sharing.conftest import MODEL_NOTE

    record = json.loads((exported_bundle.checkpoint.parent / "run.json").read_text())
    state = torch.load(unpacked / "models" / "model.pt", weights_only=True)
    network = build(record["network_name"], **record.get("network_kwargs", {}))
    parameters = sum(p.numel() for p in network.parameters())
    card = json.loads((unpacked / "configs" / "metadata.json").read_text())[MODEL_CARD_KEY]["network"]
    assert card["name"] == record["network_name"] and card["made_by"] == record["written_by"]
    assert card["parameters"] == parameters
    assert set(state) == set(network.state_dict())  # the record's network is the one the weights belong to
    text = (unpacked / "docs" / "README.md").read_text()
    assert f"`{record['network_name']}`" in text and f"{parameters:,} parameters" in text
    assert f"Why this model: {MODEL_NOTE}" in text


def test_verify_passes_and_lists_code(exported_bundle):
    report = verify_bundle(exported_bundle.zip_path)
    assert report.ok, report.lines()
    # only the origin is unchecked (no --trust / --expect-sha256), and the report says so
    assert [c.name for c in report.checks if c.ok is not True] == ["origin"]
    assert "origin NOT checked" in report.lines()[-1]
    names = {c.name for c in report.checks}
    assert {"checksums", "configs", "metadata", "weights", "network", "torchscript"} <= names
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
    primary = card["metrics"]["split"]
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
    if "allow_out_of_scope" in parser.get():
        parser["allow_out_of_scope"] = True  # small phantoms: the comparison is of numbers, not of anatomy
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


@pytest.mark.slow
def test_torchscript_only_inference_without_the_package(unpacked, tmp_path):
    # stays a subprocess: the point is an interpreter in which ``pipeline`` cannot be imported at all
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


# ------------------------------------------------------------------ the bundle tells the truth (issue 16, item 1)


def test_zip_is_named_name_v_version(exported_bundle, unpacked):
    version = json.loads((unpacked / "configs" / "metadata.json").read_text())["version"]
    assert exported_bundle.zip_path.name == f"{exported_bundle.name}_v{version}.zip"
    assert open_bundle_archive(exported_bundle.zip_path).name == exported_bundle.name


def test_eval_metrics_equal_the_runs_metrics_json(exported_bundle, unpacked):
    summary = json.loads(exported_bundle.report.read_text())
    metadata = json.loads((unpacked / "configs" / "metadata.json").read_text())
    eval_metrics = metadata["eval_metrics"]
    headline = summary["splits"][summary["split"]]
    assert eval_metrics["split"] == summary["split"] == "test"
    for key in ("auc", "auc_ci", "auc_bootstrap_ci", "threshold", "sensitivity", "specificity"):
        assert eval_metrics[key] == summary[key] == headline[key], key
    for key in ("n", "n_positive", "n_negative", "sensitivity_ci", "specificity_ci", "confidence", "delong_scale"):
        assert eval_metrics[key] == headline[key], key
    assert all(eval_metrics[key] is not None for key in ("auc", "auc_ci", "sensitivity", "specificity", "n"))
    assert metadata["operating_point"]["threshold"] == summary["operating_point"]["threshold"]
    # the run summary's provenance holds local paths: none of it is copied
    assert str(exported_bundle.checkpoint) not in json.dumps(metadata)


def test_model_card_has_the_runs_numbers_and_no_na(exported_bundle, unpacked):
    summary = json.loads(exported_bundle.report.read_text())
    card = (unpacked / "docs" / "README.md").read_text()
    assert "n/a" not in card and "None" not in card
    for split, entry in summary["splits"].items():
        low, high = entry["auc_ci"]
        assert f"| {split} | {entry['n']} | {entry['n_positive']}/{entry['n_negative']} |" in card
        assert f"{entry['auc']:.3f} (95% CI {low:.3f}-{high:.3f})" in card
        for metric in ("sensitivity", "specificity"):
            numerator, denominator = entry[f"{metric}_count"]
            lower, upper = entry[f"{metric}_ci"]
            assert (
                f"{100 * entry[metric]:.1f}% (95% CI {100 * lower:.1f}-{100 * upper:.1f}; {numerator}/{denominator})"
                in card
            ), (split, metric)
    assert f"**{summary['operating_point']['threshold']:.6g}**" in card
    assert f"chosen on {summary['operating_point']['n_validation']} validation cases" in card
    training = json.loads((unpacked / "configs" / "metadata.json").read_text())["model_card"]["training_data"]
    assert f"- training: {training['splits']['training']['cases']} cases" in card


def test_model_ts_returns_the_shape_the_metadata_describes(unpacked):
    metadata = json.loads((unpacked / "configs" / "metadata.json").read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    x = torch.rand(2, image["num_channels"], *image["spatial_shape"], generator=torch.Generator().manual_seed(1))
    classifier = torch.jit.load(str(unpacked / "models" / "model.ts")).eval()
    dense = torch.jit.load(str(unpacked / "models" / "model_dense.ts")).eval()
    with torch.no_grad():
        logits, dense_map = classifier(x), dense(x)
    assert tuple(logits.shape) == (2, pred["num_channels"], *pred["spatial_shape"]) == (2, 2)
    assert list(dense_map.shape[1:]) == metadata["dense_output"]["output_shape"]
    # the dense map is the same classifier evaluated per location: its spatial mean is the case logits
    torch.testing.assert_close(dense_map.flatten(2).mean(2), logits, rtol=1e-4, atol=1e-4)


def _strings(value, where=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}#{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}#{index}")
    elif isinstance(value, str):
        yield where, value


def test_no_absolute_or_repository_path_in_any_exported_config(exported_bundle, unpacked):
    import re

    local = [str(exported_bundle.source_bundle), str(exported_bundle.checkpoint.parent), str(Path.cwd())]
    configs = sorted((unpacked / "configs").glob("*.json"))
    assert {"inference.json", "train.json", "inference_torchscript.json"} <= {p.name for p in configs}
    for path in configs:
        text = path.read_text()
        assert not any(folder in text for folder in local), path.name
        for where, value in _strings(json.loads(text)):
            literals = re.findall(r"['\"]([^'\"]*)['\"]", value) if value.startswith("$") else [value]
            for literal in literals:
                assert not literal.startswith(("/", "runs/", "bundle/")), (path.name, where, value)
                assert literal not in ("bundle", "runs"), (path.name, where, value)
                assert "/tmp/" not in literal and "/work/" not in literal, (path.name, where, value)
    inference = json.loads((unpacked / "configs" / "inference.json").read_text())
    assert inference["bundle_root"] == "."


def test_large_files_yml_lists_the_weights_with_sha256_and_stock_monai_checks_them(unpacked, tmp_path):
    import yaml
    from monai.bundle import download_large_files

    entries = yaml.safe_load((unpacked / "large_files.yml").read_text())["large_files"]
    assert {e["path"] for e in entries} == {"models/model.pt", "models/model.ts", "models/model_dense.ts"}
    for entry in entries:
        assert entry["hash_type"] == "sha256"
        assert entry["hash_val"] == hashlib.sha256((unpacked / entry["path"]).read_bytes()).hexdigest()
    download_large_files(bundle_path=str(unpacked))  # offline: every file is present, only the digests are checked
    copy = shutil.copytree(unpacked, tmp_path / "copy")
    weights = copy / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="hash check"):
        download_large_files(bundle_path=str(copy))


@pytest.mark.slow
def test_stock_ckpt_export_on_the_repository_bundle_reads_the_runs_record(exported_bundle, tmp_path):
    """``python -m monai.bundle ckpt_export`` on ``bundle/`` with a run's weights: the network and its input come from
    the run's ``models/run.json`` (no network name or width repeated on the command line)."""
    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "run" / "models"
    run.mkdir(parents=True)
    shutil.copyfile(exported_bundle.checkpoint.parent / "run.json", run / "run.json")
    nested = torch.load(exported_bundle.checkpoint, weights_only=True)
    torch.save(nested["network"], run / "model.pt")  # a training run's model.pt is the plain state dict
    record = json.loads((run / "run.json").read_text())
    assert record["network_name"] != json.loads((repo / "bundle" / "configs" / "inference.json").read_text()).get(
        "default_network_name", "aam_student"
    )
    target = tmp_path / "model.ts"
    command = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--config_file", "bundle/configs/inference.json", "--meta_file", "bundle/configs/metadata.json",
        "--bundle_root", "bundle", "--checkpoint", str(run / "model.pt"), "--ckpt_file", str(run / "model.pt"),
        "--filepath", str(target), "--use_trace", "True", "--input_shape", json.dumps([1, 1, *record["roi_size"]]),
    ]  # fmt: skip
    # the command line given to ``python -m monai.bundle``'s entry point in this process, from the repository root
    done = monai_bundle(*command[3:], cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    scripted = torch.jit.load(str(target)).eval()
    from pipeline.networks import build

    network = build(record["network_name"], **record["network_kwargs"]).eval()
    network.load_state_dict(nested["network"])
    x = torch.rand(1, 1, *record["roi_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), rtol=1e-4, atol=1e-5)
