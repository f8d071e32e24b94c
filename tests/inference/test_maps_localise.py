"""Maps that localise: planted evidence found on the source grid, cells placed where the network centres them,
coarse-to-fine occlusion's cost, and the position baselines computed by hand.

What would be wrong: a CAM shifted by half a cell (``align_corners=False`` assumes a cell of stride ``f`` is centred
at ``f * j + (f - 1) / 2``; the ResNets centre it at ``f * j``: 3.5 voxels = 17 mm at stride 8 on the demo grid), a
default map that peaks beside the lesion once resampled onto a flipped, anisotropic scan, an occlusion that spends as
many passes as the dense one, and a position prior that peeks at its own case.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.inference.localisation import pointing_game_hit, position_baselines
from pipeline.inference.maps import (
    DEFAULT_MAP_KIND,
    MapMaker,
    aligned_upsample,
    coarse_to_fine_occlusion,
    map_origin,
    predict_with_map,
)
from pipeline.inference.sliding import DenseClassificationInferer, as_dense_predictor
from pipeline.networks import build
from tests.inference.helpers import chest_like_volume, make_predictor, write_nifti


class StridedBrightSpot(nn.Module):
    """A stride-8 classifier whose only positive evidence is bright input (above the soft tissue, after the window).

    ``features`` is a 9x9x9 box filter at stride 8 with padding 4, so cell ``j`` is centred on input ``8 j``
    (``map_origin`` 0, as the ResNets); ``head`` maps it to (negative, positive) logits.
    """

    map_origin = 0.0

    def __init__(self) -> None:
        super().__init__()
        box = nn.Conv3d(1, 1, 9, stride=8, padding=4)
        with torch.no_grad():
            box.weight.fill_(1.0 / 9**3)
            box.bias.fill_(-0.005)  # noise in the soft tissue stays below it
        self.features = nn.Sequential(nn.ReLU(), box, nn.ReLU())
        self.head = nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([-50.0, 50.0]).view(2, 1, 1, 1, 1))
            self.head.bias.zero_()

    def class_activation(self, x: torch.Tensor) -> torch.Tensor:
        # only what is brighter than soft tissue (0.74 after the -1000..400 HU window) counts
        return self.head(self.features(x - 0.78))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_activation(x).flatten(2).mean(2)


def test_aligned_upsample_puts_each_cell_on_its_centre():
    cells = torch.zeros(1, 1, 4, 1, 1)
    cells[0, 0, 2] = 1.0  # cell 2 at stride 8
    aligned = aligned_upsample(cells, (32, 1, 1), origin=0.0)[0, 0, :, 0, 0]
    assert int(aligned.argmax()) == 16 and float(aligned[16]) == 1.0
    assert float(aligned[12]) == pytest.approx(0.5) and float(aligned[20]) == pytest.approx(0.5)
    interpolated = aligned_upsample(cells, (32, 1, 1), origin=None)[0, 0, :, 0, 0]
    assert int(interpolated.argmax()) in (19, 20)  # F.interpolate's convention: 8 j + 3.5
    torch.testing.assert_close(aligned_upsample(torch.ones(1, 1, 2, 2, 2), (8, 8, 8)), torch.ones(1, 1, 8, 8, 8))


@pytest.mark.parametrize(
    ("name", "shape", "stride"),
    [("aam_student_small_os8", (65, 65, 33), (8, 8, 4)), ("resnet18", (65, 65, 65), (32, 32, 32))],
)
def test_network_cells_are_centred_where_map_origin_says(name, shape, stride):
    # positive constant weights make every path count alike: the input gradient of one cell is its receptive field,
    # symmetric about the cell's centre (a noisy input breaks the max-pool's ties, which would route to the first).
    # The window's middle voxel (32, 32, 16 or 32) is where map_origin 0 puts the middle cell; zero padding cuts the
    # field symmetrically about it, and pulls a field centred anywhere else towards it, never past it
    network = build(name, **({"widen_factor": 0.25} if name == "resnet18" else {})).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    torch.manual_seed(0)
    x = (1 + torch.rand(1, 1, *shape)).requires_grad_(True)
    class_map = as_dense_predictor(network)(x)
    stride = np.array(stride)
    cell = tuple(int(n) // 2 for n in class_map.shape[2:])
    (gradient,) = torch.autograd.grad(class_map[0, 1][cell], x)
    weight = gradient[0, 0].abs().numpy()
    centre = np.array([np.average(np.indices(weight.shape)[axis], weights=weight) for axis in range(3)])
    origin = map_origin(network)
    assert origin == 0.0
    expected = stride * np.array(cell) + origin
    np.testing.assert_array_equal(expected, (np.array(shape) - 1) // 2)
    assert np.abs(centre - expected).max() <= 0.5, (centre, expected)
    interpolation_convention = stride * np.array(cell) + (stride - 1) / 2
    assert (interpolation_convention - centre).min() >= 1.0  # the old placement is measurably off


@pytest.mark.parametrize("kind", sorted({DEFAULT_MAP_KIND, "occlusion_c2f", "occlusion"}))
def test_planted_evidence_is_found_on_a_flipped_anisotropic_source_grid(kind, tmp_path):
    # a bright 'lesion' in the right lung of a chest-like scan stored flipped and permuted, spacings 2.5 / 2 / 3 mm
    blob = (12, 26, 14)
    volume = chest_like_volume((40, 36, 24), blob_at=blob, blob_radius=3)
    affine = np.array([[0, -2.5, 0, 50.0], [-2.0, 0, 0, 40.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])
    source = write_nifti(tmp_path / "scan.nii.gz", volume, affine)
    predictor = make_predictor(
        StridedBrightSpot(),
        roi_size=(32, 32, 32),
        spacing=(2.0, 2.0, 2.0),
        heatmap_kind=kind,
        gradcam_layer="features",
        heatmap_dtype="float32",
        write_montage=False,
    )
    prediction = predictor(source, case_id="case-0", heatmap_dir=tmp_path / kind)
    assert prediction.probabilities[1] > 0.5  # the planted evidence makes the case positive
    heat = np.asarray(nib.load(prediction.heatmap).dataobj, dtype=np.float32)
    assert heat.shape == volume.shape
    lesion = np.zeros(volume.shape, bool)
    i, j, k = np.indices(volume.shape)
    lesion[(i - blob[0]) ** 2 + (j - blob[1]) ** 2 + (k - blob[2]) ** 2 <= 9] = True
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    # the maps at the window's resolution; the CAM kinds' placement is checked cell by cell above
    hit, distance = pointing_game_hit(heat, lesion, spacing_mm=spacing, margin_mm=4.0)
    assert hit, f"{kind}: peak {distance:.1f} mm from the planted lesion"
    # the mirror-image lung, with no lesion, holds little of the map
    mirror = lesion[::-1]
    assert heat[mirror].clip(min=0).sum() < 0.25 * heat[lesion].clip(min=0).sum()


def test_coarse_to_fine_occlusion_finds_the_blob_in_a_fraction_of_the_dense_passes():
    from tests.inference.test_maps import BrightSpotDetector, _two_blob_volume

    # half the demo's window per axis keeps it quick; the block geometry scales with the window
    window = _two_blob_volume(shape=(32, 32, 16), bright=(20, 10, 6), dark=(8, 24, 11))
    network = BrightSpotDetector().eval()
    maker = MapMaker(network=network, kind="occlusion_c2f", target_layer="features")
    mapped = predict_with_map(DenseClassificationInferer(roi_size=(32, 32, 16)), window, maker)
    heat = mapped.heat[0, 0].numpy()
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert np.abs(np.subtract(peak, (20, 10, 6))).max() <= 3  # within half a fine block (6 x 6 x 3) of the blob
    # the cost, counted: one scoring pass, 4 x 4 x 4 coarse blocks, then the fine blocks around 3 coarse peaks
    with torch.no_grad():
        logits = network(window)
        _, passes = coarse_to_fine_occlusion(
            lambda x: network(x)[:, 1:] - network(x)[:, :1],
            window,
            base=float(logits[0, 1] - logits[0, 0]),
            fine_size=(6, 6, 3),
        )
    assert maker.windows == 1 and maker.passes == 1 + passes
    # each refined region (a coarse block grown by half a fine block) takes at most 4 fine starts per axis
    assert 64 < passes <= 64 + 3 * 4**3
    # MONAI's dense grid of the same fine blocks in half-block steps
    dense = np.prod([len(range(0, n - b + 1, s)) + 1 for n, b, s in ((32, 6, 3), (32, 6, 3), (16, 3, 2))])
    assert passes < dense / 3


def test_position_baselines_agree_with_a_hand_computed_case():
    # three one-voxel lesions on the diagonal of a 10^3 cube, 1 mm voxels, 1 mm margin, the whole cube is lung
    shape, positions = (10, 10, 10), [(2, 2, 2), (4, 4, 4), (6, 6, 6)]
    lesions = []
    for position in positions:
        mask = np.zeros(shape, bool)
        mask[position] = True
        lesions.append(mask)
    lungs = [np.ones(shape, bool)] * 3
    result = position_baselines(lesions, lungs, [(1.0, 1.0, 1.0)] * 3, margin_mm=1.0)
    # leave-one-out mean centroid (normalised (index + 0.5) / 10): case 0 -> (0.45 + 0.65) / 2 = 0.55 -> voxel 5,
    # 5.2 mm from (2, 2, 2): miss; case 1 -> 0.45 -> voxel 4: hit; case 2 -> 0.35 -> voxel 3: miss
    assert result.hits_mean == (False, True, False) and result.prior_mean == pytest.approx(1 / 3)
    # a random point in the lung is within 1 mm of the lesion voxel for the voxel and its 6 face neighbours: 7/1000
    assert result.random_in_lung == pytest.approx(7 / 1000)
    payload = result.as_dict()
    assert payload["position_prior_mean"]["hits"] == 1 and payload["position_prior_mean"]["n"] == 3
