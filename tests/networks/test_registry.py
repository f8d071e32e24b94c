"""Registry: every network by name (shape, dense map, TorchScript round trip), parameter budgets, errors."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import resnet50 as monai_resnet50

from pipeline.errors import UserError
from pipeline.networks import DenseClassifier, attention_modules, available, build, network_spec
from tests.conftest import shared_path

REQUIRED = {
    "aam_resnet50",
    "aam_resnet34",
    "aam_resnet18",
    "aam_assistant",
    "aam_student",
    "densenet121",
    "resnet50",
    "resnet18",
    "unet_encoder",
}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _on_meta(name: str, **kwargs) -> torch.nn.Module:
    # parameter bookkeeping without allocating (or initialising) real weights
    with torch.device("meta"):
        return build(name, **kwargs)


@pytest.fixture(scope="module")
def monai_resnet50_params() -> int:
    with torch.device("meta"):
        return _n_params(monai_resnet50(spatial_dims=3, n_input_channels=1, num_classes=2))


def test_registry_lists_the_required_networks():
    assert set(available()) >= REQUIRED
    assert all(network_spec(name).stem for name in available())


def _narrow(name: str) -> dict:
    """A quarter of the width for the large entries: the code paths (blocks, heads, dense map) do not depend on it,
    building, saving and loading 30-60 M parameters cost most of this test's time."""
    if name in ("aam_resnet50", "aam_resnet34", "aam_resnet18", "aam_assistant", "densenet121"):
        return {"width": 0.25}
    if name in ("resnet50", "resnet18"):
        return {"widen_factor": 0.25}
    return {}


@pytest.mark.parametrize("name", available())
def test_network_shape_dense_map_and_torchscript_round_trip(name):
    torch.manual_seed(0)
    model = build(name, in_channels=2, num_classes=3, **_narrow(name)).eval()
    x = torch.randn(1, 2, 32, 33, 32)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(DenseClassifier(model)), buffer)
    buffer.seek(0)
    scripted_dense = torch.jit.load(buffer)
    # the TorchScript interpreter without the profiling executor: the loaded graph runs as saved, and its first call
    # skips the profiling run and optimisation passes (about 1 s per network here; the optimised deployed form is
    # tests/networks/test_deploy.py's)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        logits = model(x)
        dense = model.class_activation(x)
        scripted = scripted_dense(x)
        scripted_logits = scripted_dense.model(x)
    assert logits.shape == (1, 3)
    assert dense.ndim == 5 and dense.shape[:2] == (1, 3)
    torch.testing.assert_close(dense.flatten(2).mean(-1), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scripted, dense)
    torch.testing.assert_close(scripted_logits, logits)


def test_parameter_budgets_relative_to_monai_resnet50(monai_resnet50_params):
    params = {name: _n_params(_on_meta(name)) for name in ("aam_resnet50", "aam_assistant", "aam_student")}
    params["aam_student_small"] = _n_params(_on_meta("aam_student_small"))
    assert params["aam_student"] <= 0.31 * monai_resnet50_params
    assert params["aam_student_small"] <= 0.10 * monai_resnet50_params
    assert params["aam_student"] < params["aam_assistant"] < params["aam_resnet50"]
    assert 0.4 * monai_resnet50_params <= params["aam_assistant"] <= 0.7 * monai_resnet50_params


@pytest.mark.parametrize("depth", [50, 18])
def test_monai_resnet_baselines_keep_monai_parameters_but_use_a_stride_2_stem(depth):
    from monai.networks.nets import resnet

    with torch.device("meta"):
        reference = getattr(resnet, f"resnet{depth}")(spatial_dims=3, n_input_channels=1, num_classes=2)
    ours = _on_meta(f"resnet{depth}")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert reference.conv1.stride == (1, 1, 1)  # MONAI's default, slow on CPU
    assert ours.conv1.stride == (2, 2, 2)


def test_monai_resnet_weights_load_and_give_the_same_logits():
    from monai.networks.nets import resnet10

    from pipeline.networks.baselines import monai_resnet

    reference = resnet10(spatial_dims=3, n_input_channels=1, num_classes=2, conv1_t_stride=2, widen_factor=0.25)
    ours = monai_resnet(10, widen_factor=0.25)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 1, 32, 32, 32)
    reference.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_unet_encoder_reuses_basic_unet_weights():
    from monai.networks.nets import BasicUNet

    from pipeline.networks import UNetEncoderClassifier

    unet = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)).eval()
    encoder = UNetEncoderClassifier(features=(4, 4, 8, 8, 16)).eval()
    result = encoder.load_state_dict(unet.state_dict(), strict=False)
    assert set(result.missing_keys) == {"classifier.weight", "classifier.bias"}
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = unet.down_4(unet.down_3(unet.down_2(unet.down_1(unet.conv_0(x)))))
        torch.testing.assert_close(encoder.extract_features(x), expected)


def test_keyword_arguments_override_entry_defaults():
    model = build("aam_student", attention_fusion="sum", attention="stage")
    assert {m.fusion for m in attention_modules(model)} == {"sum"}
    assert model.attention_placement == "stage"


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("aam_resnet1000", {}, "unknown name"),
        ("aam_student", {"widht": 0.5}, "unknown argument(s) widht"),
        ("aam_student", {"attention_fusion": "max"}, "attention_fusion"),
        ("resnet18", {"width": 0.5}, "unknown argument(s) width"),
    ],
)
def test_user_mistakes_raise_one_line_user_errors(name, kwargs, fragment):
    with pytest.raises(UserError) as caught:
        build(name, **kwargs)
    message = str(caught.value)
    assert fragment in message and name in message and "\n" not in message


def test_dense_classifier_rejects_models_without_class_activation():
    with pytest.raises(TypeError, match="class_activation"):
        DenseClassifier(torch.nn.Linear(2, 2))


@pytest.mark.realdata
def test_sliding_window_dense_inference_on_a_real_ct_volume():
    image = nib.load(shared_path("nifti", "totalseg_example_ct.nii.gz"))
    hu = np.asarray(image.dataobj, dtype=np.float32)
    volume = torch.from_numpy(np.clip((hu + 1000.0) / 1400.0, 0.0, 1.0))[None, None]  # lung-ish HU window
    model = DenseClassifier(build("aam_student_small")).eval()
    with torch.no_grad():
        whole = model(volume)
        single_window = sliding_window_inference(volume, roi_size=volume.shape[2:], sw_batch_size=1, predictor=model)
        tiled = sliding_window_inference(volume, roi_size=(64, 64, 64), sw_batch_size=2, predictor=model, overlap=0.25)
    torch.testing.assert_close(single_window, whole)
    assert tiled.shape[:2] == (1, 2)
    assert tiled.shape[2:] == tuple(int(s * 2 / 64) for s in volume.shape[2:])  # 64^3 window -> 2^3 map
    assert torch.isfinite(tiled).all()
