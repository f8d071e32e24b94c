"""One case end to end on real files: the heatmap lands in the source image's own geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import Compose, EnsureChannelFirstd

from pipeline.inference.case import STAGES, CaseFailure, split_loading
from tests.conftest import shared_path
from tests.inference.helpers import PerVoxelEvidence, chest_like_volume, make_predictor, write_nifti


def _assert_same_geometry(heatmap_path, reference: sitk.Image) -> sitk.Image:
    heatmap = sitk.ReadImage(str(heatmap_path))
    assert heatmap.GetSize() == reference.GetSize()
    np.testing.assert_allclose(heatmap.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(heatmap.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(heatmap.GetDirection(), reference.GetDirection(), atol=1e-5)
    return heatmap


@pytest.mark.realdata
def test_heatmap_of_the_real_jpeg2000_series_has_the_series_geometry(network, tmp_path):
    series = shared_path("dicom", "totalseg_abdomen_ct")
    prediction = make_predictor(network)(series, case_id="case-real", heatmap_dir=tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    reader.MetaDataDictionaryArrayUpdateOn()
    reference = reader.Execute()
    heatmap = _assert_same_geometry(prediction.heatmap, reference)
    assert reference.GetSize() == (512, 512, 20)
    assert np.isfinite(sitk.GetArrayViewFromImage(heatmap)).all()
    assert prediction.montage.is_file()
    assert set(prediction.stage_seconds) == set(STAGES)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.realdata
def test_heatmap_of_a_real_nifti_has_its_geometry(network, tmp_path):
    source = shared_path("nifti", "totalseg_example_ct_sm.nii.gz")
    prediction = make_predictor(network)(source, case_id="case-nifti", heatmap_dir=tmp_path)
    _assert_same_geometry(prediction.heatmap, sitk.ReadImage(str(source)))
    assert prediction.source_shape == (122, 101, 30)


def test_heatmap_of_a_generated_dicom_series_has_its_geometry(network, tmp_path):
    from pipeline.data.demo import write_demo_cohort

    cohort = write_demo_cohort(tmp_path / "dicom", cases=1, size=32, seed=3)
    series = cohort.cases[0].series_dir
    prediction = make_predictor(network)(series, case_id="case-demo", heatmap_dir=tmp_path / "out")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    _assert_same_geometry(prediction.heatmap, reader.Execute())


def test_heatmap_follows_the_evidence_back_through_reorientation_crop_and_resize(tmp_path):
    # stored LPS-like (x and y flipped), axes permuted and anisotropic: Orientationd, Spacingd, the foreground crop and
    # Resized all change the grid, and the heatmap must still land on the blob in the stored grid
    blob = (28, 10, 8)
    volume = chest_like_volume((40, 36, 24), blob_at=blob, blob_radius=4)
    affine = np.array([[0, -2.5, 0, 50.0], [-2.0, 0, 0, 40.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])
    source = write_nifti(tmp_path / "blob.nii.gz", volume, affine)
    predictor = make_predictor(
        PerVoxelEvidence(), spacing=(3.0, 3.0, 3.0), heatmap_dtype="float32", write_montage=False
    )
    prediction = predictor(source, case_id="case-blob", heatmap_dir=tmp_path)
    heatmap = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction.heatmap))).transpose(2, 1, 0)
    assert heatmap.shape == volume.shape
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert np.linalg.norm(np.subtract(peak, blob)) <= 3.0
    # the evidence of this model is the windowed image: it should track the stored HU values voxel for voxel
    inside = volume > -990
    assert np.corrcoef(heatmap[inside], volume[inside])[0, 1] > 0.8


def test_score_only_writes_nothing(network, tmp_path):
    source = write_nifti(tmp_path / "in" / "a.nii.gz", chest_like_volume())
    prediction = make_predictor(network)(source, case_id="case-a", heatmap_dir=None)
    assert prediction.heatmap is None and prediction.montage is None
    assert set(prediction.stage_seconds) == {"load", "scope", "preprocess", "inference"}
    assert not (tmp_path / "case-a.nii.gz").exists()


def test_rejected_and_missing_images_fail_at_loading_with_the_loaders_reason(network, tmp_path):
    from pipeline.data.loading import check_scan

    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"this is not a NIfTI file" * 10)
    flat = write_nifti(tmp_path / "flat.nii.gz", chest_like_volume()[:, :, :1])  # a single slice
    predictor = make_predictor(network)
    for image in (corrupt, flat, tmp_path / "missing.nii.gz"):
        with pytest.raises(CaseFailure) as failure:
            predictor(image, case_id="case-bad", heatmap_dir=tmp_path)
        # the header probe and the loader word it the same, and nothing past loading ran
        assert failure.value.stage == "load" and str(failure.value) == f"{image}: {check_scan(image)}"
    assert not list(tmp_path.glob("case-bad*"))


def test_preprocessing_must_start_with_loading():
    with pytest.raises(ValueError, match="LoadImaged"):
        split_loading(Compose([EnsureChannelFirstd(keys="image")]))


def test_cpu_scoring_runs_the_deployed_form_and_gives_the_eager_scores_and_map(network, tmp_path):
    # the default CPU path scores through TorchScript + oneDNN (pipeline.inference.sliding.scoring_form); it must be
    # the same model: same probabilities and the same map as the eager network on a real written NIfTI
    import torch

    source = write_nifti(tmp_path / "case.nii.gz", chest_like_volume(blob_at=(12, 14, 10)))
    # occlusion: its many forward passes are the deployed form's too, and its map has spatial detail at this size
    options = {"heatmap_values": "raw", "heatmap_kind": "occlusion"}
    deployed = make_predictor(network, **options)
    eager = make_predictor(network, cpu_form="eager", **options)
    fast = deployed(source, case_id="fast", heatmap_dir=tmp_path / "fast")
    slow = eager(source, case_id="slow", heatmap_dir=tmp_path / "slow")
    assert isinstance(deployed.scoring_network.compiled, torch.jit.ScriptModule)
    assert eager.scoring_network == network.class_activation
    np.testing.assert_allclose(fast.probabilities, slow.probabilities, atol=1e-5)
    fast_map = sitk.GetArrayFromImage(sitk.ReadImage(str(fast.heatmap)))
    slow_map = sitk.GetArrayFromImage(sitk.ReadImage(str(slow.heatmap)))
    assert np.ptp(slow_map) > 0
    # float32 rounding in other summation orders, on a random network's near-zero occlusion drops
    np.testing.assert_allclose(fast_map, slow_map, atol=1e-2 * float(np.abs(slow_map).max()))
    assert np.corrcoef(fast_map.ravel(), slow_map.ravel())[0, 1] > 0.999
