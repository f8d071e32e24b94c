"""The distillation loss terms, the feature tap and the one-stage distillation trainer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.losses import FocalLoss
from monai.networks.nets import ResNet
from torch import nn

from pipeline.networks import build
from pipeline.networks.attention import SpatialAttention
from pipeline.training.distillation import (
    DistillationLoss,
    DistillationTrainer,
    FeatureTap,
    attention_map,
    attention_transfer_loss,
    distillation_layers,
    feature_hint_loss,
    freeze,
    soft_target_kl,
)


def _tiny_resnet(width: int = 4, seed: int = 0, norm: str | tuple = "batch") -> nn.Module:
    torch.manual_seed(seed)
    return ResNet(
        norm=norm,
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[width, 2 * width, 4 * width, 8 * width],
        spatial_dims=3,
        n_input_channels=1,
        num_classes=2,
    )


class _IndexFocalLoss(nn.Module):
    """MONAI's focal loss on class-index labels of shape (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma=2.0, alpha=0.25, use_softmax=True, to_onehot_y=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, target.reshape(-1, 1))


def _numpy_kl(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z / temperature
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_s, log_t = log_softmax(student), log_softmax(teacher)
    return float((np.exp(log_t) * (log_t - log_s)).sum(axis=1).mean())


# ---------------------------------------------------------------- the KL term


def test_kl_is_zero_when_student_equals_teacher():
    logits = torch.randn(5, 3)
    assert soft_target_kl(logits.clone(), logits, temperature=4.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_matches_the_definition_times_t_squared(temperature):
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(6, 2, generator=generator), torch.randn(6, 2, generator=generator) * 3
    expected = temperature**2 * _numpy_kl(student.numpy(), teacher.numpy(), temperature)
    assert expected > 0
    assert soft_target_kl(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_t_squared_keeps_the_soft_gradient_scale_at_high_temperature():
    # Hinton et al.: the gradient of T^2 * KL tends to (z_s - z_t) / C (zero-mean logits) as T grows, so it does not
    # shrink like 1/T^2 the way the unscaled KL's gradient does
    student = torch.tensor([[1.0, -1.0, 0.5]], requires_grad=True)
    teacher = torch.tensor([[0.2, 0.4, -0.6]])
    grads = []
    for temperature in (20.0, 40.0):
        (grad,) = torch.autograd.grad(soft_target_kl(student, teacher, temperature), student)
        grads.append(grad)
    expected = ((student - student.mean()) - (teacher - teacher.mean())).detach() / 3
    torch.testing.assert_close(grads[1], expected, rtol=0.02, atol=1e-3)
    assert grads[0].norm().item() == pytest.approx(grads[1].norm().item(), rel=0.02)


def test_kl_does_not_send_gradients_to_the_teacher():
    student = torch.randn(2, 2, requires_grad=True)
    teacher = torch.randn(2, 2, requires_grad=True)
    soft_target_kl(student, teacher, 3.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kl_rejects_bad_temperature_and_shapes():
    with pytest.raises(ValueError, match="temperature"):
        soft_target_kl(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="teacher logits"):
        soft_target_kl(torch.zeros(1, 2), torch.zeros(1, 3), 1.0)


# ---------------------------------------------------------------- attention transfer and hints


def test_attention_map_is_channel_mean_of_squared_activations():
    features = torch.randn(2, 5, 3, 4, 6)
    expected = (features**2).mean(dim=1, keepdim=True)
    torch.testing.assert_close(attention_map(features), expected)


def test_attention_transfer_is_zero_for_equal_and_rescaled_maps():
    features = torch.randn(2, 4, 6, 6, 6)
    assert attention_transfer_loss([features], [features.clone()]).item() == pytest.approx(0.0, abs=1e-8)
    # the maps are L2-normalised per case, so scaling the activations changes nothing
    assert attention_transfer_loss([features * 3.0], [features]).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_transfer_matches_channels_and_spatial_size():
    # a 2x coarser student with other channels whose attention is constant over space, like the teacher's
    student = torch.full((2, 3, 4, 4, 4), 2.0, requires_grad=True)
    teacher = torch.full((2, 16, 8, 8, 8), -0.5)
    assert attention_transfer_loss([student], [teacher]).item() == pytest.approx(0.0, abs=1e-8)
    # a teacher attending to one corner disagrees with the uniform student, and the gradient reaches the student
    focused = torch.zeros(2, 16, 8, 8, 8)
    focused[..., :4, :4, :4] = 1.0
    loss = attention_transfer_loss([student], [focused])
    assert loss.item() > 1e-3
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_attention_transfer_decreases_when_the_student_map_moves_towards_the_teacher():
    teacher = torch.rand(1, 8, 6, 6, 6)
    other = torch.rand(1, 2, 6, 6, 6)
    halfway = torch.sqrt(0.5 * attention_map(teacher) + 0.5 * attention_map(other))
    far = attention_transfer_loss([other], [teacher]).item()
    near = attention_transfer_loss([halfway], [teacher]).item()
    assert 0 < near < far


def test_feature_hints_are_zero_for_affinely_related_maps_and_positive_otherwise():
    teacher = torch.randn(2, 8, 4, 4, 4)
    student = 5.0 * teacher.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1, 1) + 1.0
    assert feature_hint_loss([student], [teacher]).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_hint_loss([torch.randn(2, 3, 4, 4, 4)], [teacher]).item() > 0.1


def test_feature_terms_reject_unpaired_lists():
    with pytest.raises(ValueError, match="as many"):
        attention_transfer_loss([torch.zeros(1, 1, 2, 2, 2)], [])
    with pytest.raises(ValueError, match="as many"):
        feature_hint_loss([], [])


# ---------------------------------------------------------------- the combined loss


def test_distillation_loss_is_the_weighted_sum_of_its_terms():
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(4, 2, generator=generator), torch.randn(4, 2, generator=generator)
    target = torch.tensor([0, 1, 1, 0])
    s_feat, t_feat = [torch.rand(4, 2, 4, 4, 4, generator=generator)], [torch.rand(4, 6, 8, 8, 8, generator=generator)]
    task = _IndexFocalLoss()
    loss = DistillationLoss(
        task_loss=task, temperature=3.0, task_weight=0.5, kd_weight=2.0, attention_weight=10.0, hint_weight=0.25
    )
    terms = loss.terms(student, target, teacher, s_feat, t_feat)
    assert terms["loss_task"].item() == pytest.approx(0.5 * task(student, target).item(), rel=1e-6)
    assert terms["loss_kd"].item() == pytest.approx(2.0 * soft_target_kl(student, teacher, 3.0).item(), rel=1e-6)
    assert terms["loss_attention"].item() == pytest.approx(10.0 * attention_transfer_loss(s_feat, t_feat).item())
    assert terms["loss_hint"].item() == pytest.approx(0.25 * feature_hint_loss(s_feat, t_feat).item())
    total = sum(terms[k].item() for k in ("loss_task", "loss_kd", "loss_attention", "loss_hint"))
    assert loss(student, target, teacher, s_feat, t_feat).item() == pytest.approx(total, rel=1e-6)


def test_distillation_loss_without_soft_terms_is_the_task_loss():
    student, teacher = torch.randn(3, 2), torch.randn(3, 2)
    target = torch.tensor([1, 0, 1])
    task = _IndexFocalLoss()
    loss = DistillationLoss(task_loss=task, kd_weight=0.0)
    assert loss(student, target, teacher).item() == pytest.approx(task(student, target).item(), rel=1e-6)
    assert not loss.needs_features


def test_distillation_loss_validates_its_settings():
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(task_loss=None, temperature=-1.0)
    with pytest.raises(ValueError, match="kd_weight"):
        DistillationLoss(task_loss=None, kd_weight=-0.1)
    with pytest.raises(ValueError, match="labels"):
        DistillationLoss(task_loss=_IndexFocalLoss()).terms(torch.zeros(1, 2), None, torch.zeros(1, 2))


# ---------------------------------------------------------------- feature tap


def test_feature_tap_records_only_between_start_and_stop():
    network = _tiny_resnet()
    tap = FeatureTap(network, ["layer2", "layer4"])
    x = torch.randn(1, 1, 32, 32, 32)
    network(x)
    with pytest.raises(RuntimeError, match="no output"):
        _ = tap.outputs
    tap.start()
    network(x)
    layer2, layer4 = tap.outputs
    assert layer2.shape[1] == 8 and layer4.shape[1] == 32
    assert layer2.shape[2] > layer4.shape[2]
    tap.stop()
    tap.remove()
    network(x)
    with pytest.raises(RuntimeError):
        _ = tap.outputs


def test_feature_tap_rejects_unknown_layers():
    with pytest.raises(ValueError, match="no sub-module"):
        FeatureTap(_tiny_resnet(), ["layer9"])


# ---------------------------------------------------------------- the trainer


def _batches(n_batches: int = 3, batch_size: int = 4, size: int = 32) -> list[dict]:
    generator = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(n_batches):
        label = torch.arange(batch_size) % 2
        image = torch.randn(batch_size, 1, size, size, size, generator=generator) + label.view(-1, 1, 1, 1, 1).float()
        batches.append({"image": image, "label": label})
    return batches


@pytest.mark.parametrize("attention_weight", [0.0, 50.0])
def test_trainer_distils_into_the_student_and_leaves_the_teacher_untouched(attention_weight):
    teacher, student = _tiny_resnet(width=8, seed=1), _tiny_resnet(width=4, seed=2)
    teacher.train()  # the trainer must switch it to eval mode itself
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    layers = ["layer3", "layer4"] if attention_weight else []
    trainer = DistillationTrainer(
        teacher=teacher,
        distillation_loss=DistillationLoss(task_loss=_IndexFocalLoss(), attention_weight=attention_weight),
        student_layers=layers,
        teacher_layers=layers,
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_batches(),
        network=student,
        optimizer=torch.optim.AdamW(student.parameters(), lr=1e-3),
    )
    seen: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: seen.append(engine.state.output[0]))
    trainer.run()

    assert len(seen) == 3
    assert all(item["loss_kd"] > 0 for item in seen)
    assert all((item["loss_attention"] > 0) == bool(attention_weight) for item in seen)
    assert seen[0]["teacher_pred"].shape == (2,)
    # frozen teacher: eval mode (BatchNorm running statistics unchanged), no gradients, same weights
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key], msg=f"teacher changed: {key}")
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_soft_targets_alone_pull_the_student_towards_the_teacher():
    # instance norm: no running statistics, so the student behaves the same in train and eval mode
    teacher, student = (
        _tiny_resnet(width=8, seed=3, norm=("instance", {"affine": True})),
        _tiny_resnet(width=4, seed=4, norm=("instance", {"affine": True})),
    )
    with torch.no_grad():
        teacher.fc.weight.mul_(30.0)  # a confident teacher with case-specific outputs, far from the student's
    batches = _batches(n_batches=1, batch_size=2)
    freeze(teacher)
    with torch.no_grad():
        teacher_logits = teacher(batches[0]["image"])

    def kl_now() -> float:
        student.eval()
        with torch.no_grad():
            return soft_target_kl(student(batches[0]["image"]), teacher_logits, 2.0).item()

    before = kl_now()
    trainer = DistillationTrainer(
        teacher=teacher,
        distillation_loss=DistillationLoss(task_loss=None, task_weight=0.0, temperature=2.0),
        device=torch.device("cpu"),
        max_epochs=6,
        train_data_loader=batches,
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-2),
    )
    trainer.run()
    after = kl_now()
    assert after < 0.5 * before


def test_trainer_rejects_inconsistent_arguments():
    common = {
        "device": torch.device("cpu"),
        "max_epochs": 1,
        "train_data_loader": _batches(1),
        "network": _tiny_resnet(),
        "optimizer": None,
    }
    loss = DistillationLoss(task_loss=None, attention_weight=1.0)
    with pytest.raises(ValueError, match="no layers"):
        DistillationTrainer(teacher=_tiny_resnet(), distillation_loss=loss, **common)
    with pytest.raises(ValueError, match="differ in length"):
        DistillationTrainer(
            teacher=_tiny_resnet(), distillation_loss=loss, student_layers=["layer4"], teacher_layers=[], **common
        )
    with pytest.raises(ValueError, match="loss_function"):
        DistillationTrainer(teacher=_tiny_resnet(), distillation_loss=loss, loss_function=F.mse_loss, **common)


def test_attention_maps_of_real_networks_pair_across_widths():
    teacher, student = _tiny_resnet(width=8), _tiny_resnet(width=4)
    x = torch.randn(2, 1, 32, 32, 32)
    t_tap, s_tap = FeatureTap(teacher, ["layer3"]), FeatureTap(student, ["layer3"])
    t_tap.start(), s_tap.start()
    teacher(x), student(x)
    loss = attention_transfer_loss(s_tap.outputs, t_tap.outputs)
    assert torch.isfinite(loss) and loss.item() >= 0
    assert attention_transfer_loss(t_tap.outputs, t_tap.outputs).item() == pytest.approx(0.0, abs=1e-8)


def test_default_layers_pair_registry_networks_stage_by_stage():
    deep, shallow = build("aam_resnet50"), build("aam_student_small")
    assert distillation_layers(deep) == distillation_layers(shallow) == ["layer1", "layer2", "layer3", "layer4"]
    deep_maps, shallow_maps = distillation_layers(deep, source="aam"), distillation_layers(shallow, source="aam")
    assert len(deep_maps) == len(shallow_maps) == 4
    # the last unit of each stage: 3, 4, 6, 3 units in ResNet-50, 2 per stage in ResNet-18
    assert deep_maps[2] == "layer3.5.attention.spatial" and shallow_maps[2] == "layer3.1.attention.spatial"
    modules = dict(shallow.named_modules())
    assert all(isinstance(modules[name], SpatialAttention) for name in shallow_maps)
    with pytest.raises(ValueError, match="no Adaptive Attention"):
        distillation_layers(build("resnet18"), source="aam")
    with pytest.raises(ValueError, match="layer source"):
        distillation_layers(shallow, source="gradients")


@pytest.mark.parametrize(
    "student_kwargs",
    [
        {
            "attention": "stage",
            "attention_fusion": "gated",
            "attention_spatial": "separable",
            "attention_spatial_stride": 2,
        },
        {"gamma_placement": "attention", "gamma_init": 0.0, "attention_spatial": "separable"},
    ],
)
def test_attention_transfer_from_aam_maps_works_for_the_attention_variants(student_kwargs):
    torch.manual_seed(0)
    teacher = build("aam_student_small", width=0.125)
    student = build("aam_student_small", width=0.125, **student_kwargs)
    student_maps, teacher_maps = distillation_layers(student, source="aam"), distillation_layers(teacher, source="aam")
    assert len(student_maps) == len(teacher_maps) == 4
    s_tap, t_tap = FeatureTap(student, student_maps), FeatureTap(teacher, teacher_maps)
    x = torch.randn(2, 1, 64, 64, 64)
    s_tap.start(), t_tap.start()
    student(x)
    with torch.no_grad():
        teacher(x)
    # the half-resolution spatial branch still hands over full-resolution maps: 16^3 after the stem at 64^3 input
    assert [tuple(m.shape[2:]) for m in s_tap.outputs] == [(16, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2)]
    loss = attention_transfer_loss(s_tap.outputs, t_tap.outputs)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    fuse = dict(student.named_modules())[student_maps[0]].fuse.weight
    assert fuse.grad is not None and fuse.grad.abs().sum() > 0  # the student's attention learns from the teacher's


def test_feature_hints_stay_finite_on_one_voxel_maps():
    # the last stage of a 32^3 input is 1x1x1: a sample std over one value is 0/0, which made the whole loss NaN
    student = [torch.randn(4, 8, 1, 1, 1, requires_grad=True), torch.randn(4, 8, 2, 2, 2, requires_grad=True)]
    teacher = [torch.randn(4, 16, 1, 1, 1), torch.randn(4, 16, 2, 2, 2)]
    loss = feature_hint_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(s.grad).all() for s in student)
    one_voxel = feature_hint_loss(student[:1], teacher[:1])
    assert one_voxel.item() == 0.0  # no spatial pattern to match
