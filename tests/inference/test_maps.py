"""Map kinds: Grad-CAM finds the evidence of a network whose answer is known, every kind lands on the source grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.inference.maps import MAP_KINDS, MapMaker, body_mask, finish_map, lung_mask, predict_with_map
from pipeline.inference.sliding import DenseClassificationInferer, positive_evidence
from pipeline.networks import build, set_store_attention
from tests.conftest import shared_path
from tests.inference.helpers import chest_like_volume, make_predictor, write_nifti


class BrightSpotDetector(nn.Module):
    """A stride-1 classifier whose only evidence for "positive" is bright input (a 3^3 mean above 1).

    Dark structures give it nothing (the ReLU cuts them off), so a map that also lights up a dark blob (as plain
    input-gradient magnitude would) is wrong; Grad-CAM of its ``features`` layer must peak on the bright blob.
    """

    def __init__(self) -> None:
        super().__init__()
        smooth = nn.Conv3d(1, 1, 3, padding=1)
        with torch.no_grad():
            smooth.weight.fill_(1.0 / 27.0)
            smooth.bias.fill_(-1.0)
        self.features = nn.Sequential(smooth, nn.ReLU())
        self.head = nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1))
            self.head.bias.zero_()
        self.requires_grad_(False)  # loaded weights are often frozen: Grad-CAM must work all the same

    def class_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_activation(x).flatten(2).mean(2)


def _two_blob_volume(shape=(48, 44, 40), bright=(12, 30, 28), dark=(34, 12, 10), seed=0) -> torch.Tensor:
    volume = np.random.default_rng(seed).normal(0.0, 0.3, shape).astype(np.float32)
    for (i, j, k), value in ((bright, 3.0), (dark, -3.0)):
        volume[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4] = value
    return torch.from_numpy(volume)[None, None]


@pytest.mark.parametrize("kind", ["gradcam", "gradcampp", "occlusion"])
def test_grad_cam_and_occlusion_over_a_whole_volume_peak_where_the_evidence_lives(kind):
    bright, dark = (12, 30, 28), (34, 12, 10)
    volume = _two_blob_volume(bright=bright, dark=dark)
    network = BrightSpotDetector().eval()
    # windows smaller than the volume: Grad-CAM per window, stitched by MONAI's sliding window
    inferer = DenseClassificationInferer(roi_size=(32, 32, 32), overlap=0.5)
    # occlusion: 8-voxel blocks side by side (the default 6-voxel blocks in 4-voxel steps take 40x as long here)
    maker = MapMaker(
        network=network, kind=kind, target_layer="features", occlusion_size=(8, 8, 8), occlusion_overlap=0.0
    )
    mapped = predict_with_map(inferer, volume, maker)
    heat = mapped.heat[0, 0].numpy()
    assert heat.shape == volume.shape[2:]
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert np.abs(np.subtract(peak, bright)).max() <= (3 if kind != "occlusion" else 4)
    # the dark blob, which this network ignores, gets nothing; the bright one holds most of the map's mass (an
    # occluding block is wider than the blob, so its map spreads over the blob's neighbourhood)
    near_dark = heat[dark[0] - 2 : dark[0] + 3, dark[1] - 2 : dark[1] + 3, dark[2] - 2 : dark[2] + 3]
    assert np.abs(near_dark).max() < 1e-6
    reach = 4 if kind != "occlusion" else 8
    box = heat[tuple(slice(c - reach, c + reach + 1) for c in bright)]
    assert box.clip(min=0).sum() > 0.9 * heat.clip(min=0).sum()
    # the score is the network's own, whatever the map kind
    reference = inferer.predict(volume, network)
    torch.testing.assert_close(mapped.prediction.logits, reference.logits)
    if kind == "occlusion":
        assert "occlusion" in mapped.description and "log-odds drop" in mapped.description
    else:
        assert "Grad-CAM" in mapped.description and "features" in mapped.description


def test_every_kind_keeps_the_score_and_leaves_the_network_in_eval_mode(network):
    volume = torch.randn(1, 1, 40, 36, 34)
    inferer = DenseClassificationInferer(roi_size=(32, 32, 32), overlap=0.25)
    reference = inferer.predict(volume, network)
    for kind in MAP_KINDS:
        maker = MapMaker(network=network, kind=kind, target_layer="layer3", occlusion_size=(16, 16, 16))
        mapped = predict_with_map(inferer, volume, maker)
        assert not network.training, f"{kind} left the network in training mode"
        torch.testing.assert_close(mapped.prediction.logits, reference.logits, rtol=1e-5, atol=1e-6)
        assert mapped.heat.ndim == 5 and mapped.heat.shape[:2] == (1, 1) and torch.isfinite(mapped.heat).all()
        assert not any(p.grad is not None for p in network.parameters()), f"{kind} left gradients behind"
    # one window: the CAM is the window's positive evidence (a single 1x1x1 cell here) held over the whole window
    window = volume[..., :32, :32, :32]
    cam = predict_with_map(inferer, window, MapMaker(network=network, kind="cam"))
    evidence = positive_evidence(inferer.predict(window, network).class_map)
    torch.testing.assert_close(cam.heat, evidence.expand(1, 1, 32, 32, 32))


def test_grad_cam_leaves_no_hook_behind_and_the_network_still_scripts():
    # MONAI's CAM classes never remove their hooks: left on the network they piled up with every map maker and made the
    # network unscriptable, so the deployed CPU scoring of the same network quietly fell back to eager
    from pipeline.networks.deploy import optimized_for_inference

    network = build("aam_student_small").eval()
    hooks = {name: dict(m._forward_hooks) | dict(m._backward_hooks) for name, m in network.named_modules()}
    inferer = DenseClassificationInferer(roi_size=(32, 32, 32))
    for kind in ("gradcam", "gradcampp", "gradcam"):
        predict_with_map(
            inferer, torch.randn(1, 1, 32, 32, 32), MapMaker(network=network, kind=kind, target_layer="layer3")
        )
    assert {name: dict(m._forward_hooks) | dict(m._backward_hooks) for name, m in network.named_modules()} == hooks
    assert isinstance(optimized_for_inference(network), torch.jit.ScriptModule)


def test_attention_map_is_the_stage_mean_of_the_stored_spatial_attention(network):
    volume = torch.randn(1, 1, 32, 32, 32)  # one window covers it: the stitched map is the window's own
    inferer = DenseClassificationInferer(roi_size=(32, 32, 32))
    modules = set_store_attention(network, True)
    try:
        with torch.no_grad():
            network.class_activation(volume)
        names = {id(m): n for n, m in network.named_modules()}
        stage2 = [m.last_spatial_attention.clone() for m in modules if names[id(m)].startswith("layer2.")]
    finally:
        set_store_attention(network, False)
    assert len(stage2) >= 2
    mapped = predict_with_map(inferer, volume, MapMaker(network=network, kind="attention", attention_stage="layer2"))
    expected = torch.stack(stage2).mean(dim=0)
    assert mapped.heat.shape == expected.shape
    torch.testing.assert_close(mapped.heat, expected, rtol=1e-4, atol=1e-5)
    # storing was switched off again: no map kept on the modules
    assert all(m.last_spatial_attention.numel() == 0 for m in modules)


def test_kinds_that_do_not_fit_the_network_are_one_line_errors(network):
    with pytest.raises(UserError, match="--heatmap must be one of"):
        MapMaker(network=network, kind="saliency")
    with pytest.raises(UserError, match="no layer 'layer9'.*layer4"):
        MapMaker(network=network, kind="gradcam", target_layer="layer9")
    with pytest.raises(UserError, match=r"needs a network with AAM modules \(CAMResNet has none\)"):
        MapMaker(network=build("resnet18").eval(), kind="attention")
    with pytest.raises(UserError, match="--attention-stage"):
        MapMaker(network=network, kind="attention", attention_stage="layer7")


def test_finished_map_ignores_the_air_and_is_scaled_inside_the_body():
    hu = chest_like_volume((40, 36, 24))
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    body = body_mask(hu, affine)
    assert not body[0, 0, 0] and body[20, 18, 12]
    # the helper's lungs (-850 HU ellipses inside the body) are holes of the dense body: filled, so inside it
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in hu.shape], indexing="ij")
    lungs = ((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1
    assert lungs.sum() > 1000 and body[lungs].all()
    heat = np.zeros(hu.shape, dtype=np.float32)
    heat[1, 1, 1] = 10.0  # the strongest value in the air in front of the patient
    heat[20, 18, 12] = 2.0
    heat[25, 18, 12] = -4.0  # evidence against: not shown
    shown = finish_map(heat, kind="cam", hu=hu, affine=affine)
    assert shown.max() == pytest.approx(1.0) and shown.min() == 0.0
    assert np.unravel_index(int(np.argmax(shown)), shown.shape) == (20, 18, 12)
    assert shown[1, 1, 1] == 0.0 and shown[25, 18, 12] == 0.0
    raw = finish_map(heat, kind="cam", restrict_to="none")
    assert raw[1, 1, 1] == pytest.approx(1.0)


def test_body_and_lung_masks_against_the_demo_truth(tmp_path):
    from pipeline.data.demo import write_demo_cohort
    from pipeline.data.reader import read_volume

    cohort = write_demo_cohort(tmp_path / "demo", cases=3, size=64, seed=0, masks=True)
    positive = next(case for case in cohort.cases if case.label == "positive")
    hu, meta = read_volume(positive.series_dir)
    lung = np.asarray(nib.load(cohort.truth_dir / "masks" / f"{positive.path}_lung.nii.gz").dataobj) > 0
    lesion = np.asarray(nib.load(cohort.truth_dir / "masks" / f"{positive.path}_lesion.nii.gz").dataobj) > 0
    estimate = lung_mask(hu, meta["affine"])
    # the HU-based lung mask agrees with the generator's lungs and keeps most of the (denser) lesions
    assert 2 * (estimate & lung).sum() / (estimate.sum() + lung.sum()) > 0.75
    assert (estimate & lesion).sum() > 0.6 * lesion.sum()
    body = body_mask(hu, meta["affine"])
    assert lung.sum() > 0 and (body & lung).sum() == lung.sum()
    assert not body[:, :3].any()  # the rows in front of the patient: air
    table = hu > 50
    table[:, : hu.shape[1] * 3 // 4] = False  # the table lies under the back (largest row indices = posterior)
    assert not (body & table & (hu > 60)).any() or (body & table).sum() < 0.1 * table.sum()


def _assert_source_geometry(heatmap_path, reference: sitk.Image) -> np.ndarray:
    heatmap = sitk.ReadImage(str(heatmap_path))
    assert heatmap.GetSize() == reference.GetSize()
    np.testing.assert_allclose(heatmap.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(heatmap.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(heatmap.GetDirection(), reference.GetDirection(), atol=1e-5)
    return sitk.GetArrayFromImage(heatmap)


def _check_written_kind(prediction, kind: str, *, png: bool = True) -> None:
    header = nib.load(prediction.heatmap).header
    assert header.get_intent()[0] == "estimate" and header.get_intent()[2] == kind
    description = header["descrip"].tobytes().decode().rstrip("\x00")
    expected = {
        "cam": "CAM",
        "gradcam": "Grad-CAM layer4",
        "gradcampp": "Grad-CAM++ layer4",
        "attention": "attention",
        "occlusion": "occlusion",
        "occlusion_c2f": "occlusion 1/4 window, then",
        "layercam": "LayerCAM layer4",
    }
    assert expected[kind] in description and "0-1" in description
    if png:
        assert prediction.montage.is_file() and prediction.montage.stat().st_size > 10_000


@pytest.mark.realdata
def test_every_kind_lands_on_the_real_jpeg2000_series_grid(network, tmp_path):
    series = shared_path("dicom", "totalseg_abdomen_ct")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    reference = reader.Execute()
    for kind in MAP_KINDS:
        # the PNG once (drawing 512 x 512 planes is the slow part), the NIfTI for every kind
        predictor = make_predictor(network, heatmap_kind=kind, gradcam_layer="layer4", write_montage=kind == "cam")
        prediction = predictor(series, case_id=f"case-{kind}", heatmap_dir=tmp_path, label="positive")
        values = _assert_source_geometry(prediction.heatmap, reference)
        assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0 + 1e-6
        _check_written_kind(prediction, kind, png=kind == "cam")


@pytest.mark.realdata
def test_every_kind_lands_on_the_real_nifti_grid(network, tmp_path):
    source = shared_path("nifti", "totalseg_example_ct_sm.nii.gz")
    reference = sitk.ReadImage(str(source))
    for kind in MAP_KINDS:
        predictor = make_predictor(network, heatmap_kind=kind, gradcam_layer="layer4")
        prediction = predictor(source, case_id=f"case-{kind}", heatmap_dir=tmp_path)
        _assert_source_geometry(prediction.heatmap, reference)
        _check_written_kind(prediction, kind)


def test_every_kind_lands_on_a_stored_lps_nifti_grid(network, tmp_path):
    # the same check without the shared data: flipped, permuted, anisotropic storage
    affine = np.array([[0, -2.5, 0, 50.0], [-2.0, 0, 0, 40.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])
    source = write_nifti(tmp_path / "scan.nii.gz", chest_like_volume((40, 36, 24)), affine)
    for kind in MAP_KINDS:
        predictor = make_predictor(network, heatmap_kind=kind, gradcam_layer="layer4", spacing=(4.0, 4.0, 4.0))
        prediction = predictor(source, case_id=f"case-{kind}", heatmap_dir=tmp_path / kind)
        _assert_source_geometry(prediction.heatmap, sitk.ReadImage(str(source)))
        _check_written_kind(prediction, kind)


def test_the_registry_names_a_grad_cam_layer_every_network_has():
    from pipeline.networks import available, network_spec

    for name in available():
        # the smallest width each takes: the layer names do not depend on it
        options = {"width": 0.125} if name.startswith("aam_") else {}
        if name.startswith("resnet"):
            options = {"widen_factor": 0.125}
        model = build(name, **options)
        assert network_spec(name).gradcam_layer in dict(model.named_modules()), name
    # the two entries whose layer is not "layer4": Grad-CAM runs there and gives a map
    for name in ("densenet121", "unet_encoder"):
        model = build(name).eval()
        maker = MapMaker(network=model, kind="gradcam", target_layer=network_spec(name).gradcam_layer)
        class_map, heat = maker(torch.randn(1, 1, 32, 32, 32))
        assert heat.ndim == 5 and torch.isfinite(heat).all() and class_map.shape[1] == 2


def test_cli_offers_every_map_kind():
    import argparse

    from pipeline.inference.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cohort = parser.parse_args(
        ["evaluate-cohort", "--bundle", "b", "--manifest", "m", "--out", "o", "--heatmap", "gradcam"]
    )
    assert cohort.heatmap == "gradcam"
    for kind in MAP_KINDS:
        assert parser.parse_args(["infer", "x", "--bundle", "b", "--out", "o", "--heatmap", kind]).heatmap == kind
    with pytest.raises(SystemExit):
        parser.parse_args(["infer", "x", "--bundle", "b", "--out", "o", "--heatmap", "saliency"])
