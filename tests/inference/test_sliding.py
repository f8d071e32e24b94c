"""Sliding-window classification through the dense class-activation map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.inference.sliding import DenseClassificationInferer, as_dense_predictor, positive_evidence
from tests.inference.helpers import tiny_network


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_one_window_covering_the_volume_gives_the_network_s_own_score(network, mode):
    torch.manual_seed(1)
    volume = torch.rand(2, 1, 40, 36, 33)
    inferer = DenseClassificationInferer(roi_size=volume.shape[2:], mode=mode)
    prediction = inferer.predict(volume, network)
    with torch.no_grad():
        expected = network(volume)
    torch.testing.assert_close(prediction.logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prediction.probabilities, torch.softmax(expected, dim=1))
    # the MONAI Inferer interface returns the same case logits
    torch.testing.assert_close(inferer(volume, network), prediction.logits)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_many_windows_stitch_a_pointwise_map_exactly(mode):
    torch.manual_seed(2)
    pointwise = nn.Conv3d(1, 2, kernel_size=1).eval()  # no receptive field: every window agrees everywhere
    volume = torch.randn(1, 1, 50, 45, 40)
    inferer = DenseClassificationInferer(roi_size=(16, 16, 16), overlap=0.25, mode=mode)
    prediction = inferer.predict(volume, pointwise)
    with torch.no_grad():
        full = pointwise(volume)
    torch.testing.assert_close(prediction.class_map, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prediction.logits, full.mean(dim=(2, 3, 4)), rtol=1e-4, atol=1e-5)


def test_strided_dense_output_is_stitched_at_the_network_stride():
    strided = nn.Sequential(nn.AvgPool3d(4), nn.Conv3d(1, 2, kernel_size=1)).eval()
    prediction = DenseClassificationInferer(roi_size=(32, 32, 32)).predict(torch.rand(1, 1, 64, 48, 32), strided)
    assert tuple(prediction.class_map.shape) == (1, 2, 16, 12, 8)


def test_aam_resnet_sliding_windows_cover_a_volume_larger_than_the_window(network):
    volume = torch.rand(1, 1, 70, 64, 40)
    prediction = DenseClassificationInferer(roi_size=(32, 32, 32), overlap=0.5).predict(volume, network)
    assert prediction.class_map.shape[:2] == (1, 2)
    assert torch.isfinite(prediction.class_map).all()
    torch.testing.assert_close(prediction.probabilities.sum(dim=1), torch.ones(1))


def test_evidence_map_mean_is_the_case_log_odds(network):
    torch.manual_seed(3)
    prediction = DenseClassificationInferer(roi_size=(32, 32, 32)).predict(torch.rand(1, 1, 64, 64, 32), network)
    evidence = positive_evidence(prediction.class_map)
    assert evidence.shape[1] == 1
    log_odds = prediction.logits[:, 1] - prediction.logits[:, 0]
    torch.testing.assert_close(evidence.mean(dim=(1, 2, 3, 4)), log_odds, rtol=1e-5, atol=1e-6)


def test_evidence_of_one_class_among_three_is_one_versus_rest():
    class_map = torch.randn(1, 3, 4, 4, 4)
    evidence = positive_evidence(class_map, positive_index=2)
    expected = class_map[:, 2] - torch.logsumexp(class_map[:, :2], dim=1)
    torch.testing.assert_close(evidence[:, 0], expected)
    with pytest.raises(ValueError, match="no positive class index 3"):
        positive_evidence(class_map, positive_index=3)


def test_a_network_with_pooled_output_only_is_refused():
    pooled = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(1, 2)).eval()
    with pytest.raises(ValueError, match="class_activation"):
        DenseClassificationInferer(roi_size=(32, 32, 32)).predict(torch.rand(1, 1, 32, 32, 32), pooled)


def test_models_with_class_activation_are_run_densely():
    model = tiny_network()
    assert as_dense_predictor(model) == model.class_activation
    plain = nn.Conv3d(1, 2, 1)
    assert as_dense_predictor(plain) is plain
