"""The recipient's config reproduces the package's preprocessing with stock MONAI readers and transforms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from pipeline.sharing.export import write_synthetic_ct
from pipeline.transforms import infer_transforms
from tests.conftest import shared_path

TS_CONFIG = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "inference_torchscript.json"
PARAMETERS = {"roi_size": [32, 32, 32], "spacing": [6.0, 6.0, 8.0], "hu_window": [-1000.0, 400.0]}


def _pair():
    parser = ConfigParser()
    parser.read_config(str(TS_CONFIG))
    for key, value in PARAMETERS.items():
        parser[key] = value
    scripted = parser.get_parsed_content("preprocessing")
    body = json.loads(TS_CONFIG.read_text())["body_threshold_hu"]
    # phantoms and an abdomen: the comparison is of the two preprocessings, not of the scope check
    eager = infer_transforms(**PARAMETERS, body_threshold_hu=body, allow_out_of_scope=True)
    return eager, scripted


def _assert_same(sample):
    eager, scripted = _pair()
    expected = eager({"image": str(sample)})["image"]
    actual = scripted({"image": str(sample)})["image"]
    assert tuple(actual.shape) == (1, *PARAMETERS["roi_size"])
    assert torch.allclose(torch.as_tensor(actual), torch.as_tensor(expected), atol=1e-6), float(
        (torch.as_tensor(actual) - torch.as_tensor(expected)).abs().max()
    )


def test_same_preprocessed_volume_for_nifti(tmp_path):
    _assert_same(write_synthetic_ct(tmp_path / "ct.nii.gz", shape=(50, 44, 26)))


def test_same_preprocessed_volume_for_a_dicom_series(tmp_path):
    from pipeline.data.demo import write_demo_cohort

    cohort = write_demo_cohort(tmp_path / "dicom", cases=1, size=32, seed=1)
    _assert_same(cohort.root / cohort.cases[0].path)


@pytest.mark.realdata
def test_same_preprocessed_volume_for_real_jpeg2000_dicom():
    _assert_same(shared_path("dicom", "totalseg_abdomen_ct"))
