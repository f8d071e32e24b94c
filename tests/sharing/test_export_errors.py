"""Export refuses bad inputs with one line naming the file, before any heavy work."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.sharing.export import export_bundle


@pytest.fixture
def with_weights(shrunk_bundle):
    (shrunk_bundle / "models").mkdir(exist_ok=True)
    torch.save({"w": torch.zeros(1)}, shrunk_bundle / "models" / "model.pt")
    return shrunk_bundle


def test_missing_checkpoint(shrunk_bundle, tmp_path):
    with pytest.raises(UserError, match=r"model\.pt: trained weights not found"):
        export_bundle(shrunk_bundle, tmp_path / "b.zip")


def test_missing_license(with_weights, tmp_path):
    (with_weights / "LICENSE").unlink()
    with pytest.raises(UserError, match="no LICENSE"):
        export_bundle(with_weights, tmp_path / "b.zip")


@pytest.mark.parametrize(
    ("out", "message"), [("b.tar", r"must be a folder or a \.zip"), ("bad name!.zip", "bundle name")]
)
def test_bad_output_name(with_weights, tmp_path, out, message):
    with pytest.raises(UserError, match=message):
        export_bundle(with_weights, tmp_path / out)


def test_torchscript_config_importing_the_package_is_refused(with_weights, tmp_path):
    path = with_weights / "configs" / "inference_torchscript.json"
    config = json.loads(path.read_text())
    config["imports"].append("$import pipeline.transforms")
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="imports::4 uses the pipeline package"):
        export_bundle(with_weights, tmp_path / "b.zip")


def test_invalid_source_metadata_is_refused_before_writing(with_weights, tmp_path):
    path = with_weights / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    del metadata["network_data_format"]
    path.write_text(json.dumps(metadata))
    with pytest.raises(UserError, match="missing required key 'network_data_format'"):
        export_bundle(with_weights, tmp_path / "b.zip")
    assert not (tmp_path / "b.zip").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # staging removed


def test_cli_reports_one_line_and_exit_2(shrunk_bundle, tmp_path, capsys):
    assert main(["bundle", "export", "--bundle", str(shrunk_bundle), "--out", str(tmp_path / "b.zip")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aamct: error: ") and "trained weights not found" in err and len(err.splitlines()) == 1


def test_an_output_folder_needs_a_bundle_name(with_weights, tmp_path):
    with pytest.raises(UserError, match="give --name when --out is a folder"):
        export_bundle(with_weights, tmp_path / "exports")


def test_a_local_path_in_a_config_is_refused_naming_the_key(with_weights, tmp_path, report_json):
    path = with_weights / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["lookup_table"] = "/srv/hospital/tables/lut.csv"  # a key the exporter does not know how to make portable
    path.write_text(json.dumps(config))
    with pytest.raises(
        UserError, match=r"configs/inference.json lookup_table: /srv/hospital/tables/lut.csv is a local"
    ):
        export_bundle(with_weights, tmp_path / "b.zip", report=report_json, check_parity=False)
    assert not list(tmp_path.glob("*.zip"))
