"""Knowledge distillation for one cascade stage: the loss and the MONAI trainer that runs a frozen teacher.

MONAI has no distillation loss or distillation engine, so both are written here, on top of MONAI's own pieces:

* :class:`DistillationLoss` = ``task_weight * task_loss(student, y)``
  ``+ kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al., 2015)
  ``+ attention_weight * sum_l AT(student_l, teacher_l)`` (attention transfer, Zagoruyko & Komodakis, ICLR 2017)
  ``+ hint_weight * sum_l ||student_l - teacher_l||^2`` on channel-pooled, standardised feature maps (a
  parameter-free variant of FitNets hints, so no regressor has to be trained alongside the student).
  The task loss is whatever the training config uses (the focal loss).
* :class:`DistillationTrainer` is a :class:`monai.engines.SupervisedTrainer`: MONAI's own iteration (AMP, gradient
  accumulation, events, handlers) is kept; the teacher runs in eval mode under ``torch.no_grad`` when the student's
  forward pass completes (``IterationEvents.FORWARD_COMPLETED``), and the loss sees both outputs.
* :class:`FeatureTap` records intermediate outputs of named sub-modules with forward hooks, for attention transfer or
  hints between networks of different widths and depths (spatial sizes are matched by interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys
from torch import nn

from pipeline.networks.attention import SpatialAttention

__all__ = [
    "DistillationLoss",
    "DistillationTrainer",
    "FeatureTap",
    "LAYER_SOURCES",
    "attention_map",
    "attention_transfer_loss",
    "distillation_layers",
    "feature_hint_loss",
    "freeze",
    "soft_target_kl",
]

#: keys under which the trainer stores the teacher's outputs and the loss terms in ``engine.state.output``
TEACHER_PRED = "teacher_pred"
LOSS_TERMS = ("loss_task", "loss_kd", "loss_attention", "loss_hint")


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The ``T^2`` factor keeps the gradient of the soft term on the same scale as the hard-label term when ``T``
    changes (Hinton et al., 2015, section 2).

    Args:
        student_logits: ``(B, C)`` logits of the student (gradients flow through these).
        teacher_logits: ``(B, C)`` logits of the teacher (treated as constants).
        temperature: softening temperature ``T > 0``.

    Returns:
        A scalar tensor, zero when both logit sets are equal.

    Raises:
        ValueError: when ``temperature <= 0`` or the shapes differ.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}"
        )
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def attention_map(features: torch.Tensor, *, power: float = 2.0) -> torch.Tensor:
    """Spatial attention map of a feature tensor: ``mean_c |F_c|^p`` (Zagoruyko & Komodakis, 2017, eq. 2).

    Args:
        features: ``(B, C, *spatial)`` activations.
        power: the exponent ``p``; 2 is the paper's choice.

    Returns:
        ``(B, 1, *spatial)`` non-negative map (not yet normalised; see :func:`attention_transfer_loss`).
    """
    return features.float().abs().pow(power).mean(dim=1, keepdim=True)


def _match_spatial(source: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(source.shape[2:]) == tuple(size):
        return source
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None:
        raise ValueError(f"cannot interpolate a map with {len(size)} spatial dimensions")
    return F.interpolate(source, size=tuple(size), mode=mode, align_corners=False)


def attention_transfer_loss(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor], *, power: float = 2.0
) -> torch.Tensor:
    """Attention-transfer loss summed over feature pairs.

    For every pair the channel-pooled maps (:func:`attention_map`) are brought to the teacher map's spatial size by
    interpolation (students and teachers differ in depth and stride), flattened, L2-normalised per case, and compared
    by the mean squared difference, as in the authors' reference code (``(at(x) - at(y)).pow(2).mean()``). Channel
    counts may differ because the channels are pooled away.

    Args:
        student_features: ``(B, C_s, *spatial_s)`` tensors, one per tapped layer.
        teacher_features: ``(B, C_t, *spatial_t)`` tensors, as many as ``student_features``.
        power: exponent of the attention map.

    Returns:
        A scalar tensor, zero when the normalised maps are equal.

    Raises:
        ValueError: when the lists are empty or differ in length.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"attention transfer needs as many student as teacher maps (got {len(student_features)} and "
            f"{len(teacher_features)}, at least one each)"
        )
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_features, teacher_features, strict=True):
        teacher_map = attention_map(teacher.detach(), power=power)
        student_map = _match_spatial(attention_map(student, power=power), teacher_map.shape[2:])
        student_vec = F.normalize(student_map.flatten(1), dim=1)
        teacher_vec = F.normalize(teacher_map.flatten(1), dim=1)
        total = total + (student_vec - teacher_vec).pow(2).mean()
    return total


def feature_hint_loss(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Parameter-free feature hints: MSE between channel-averaged, per-case standardised feature maps.

    FitNets (Romero et al., 2015) regress student features onto teacher features through a learned adapter; with
    the channel counts of a cascade changing at every stage that adapter would have to be trained and stored too, so
    this variant compares the channel means (spatial sizes matched by interpolation), each standardised to zero mean
    and unit variance per case so that the scale of the two networks' activations does not matter.

    Args:
        student_features: ``(B, C_s, *spatial_s)`` tensors, one per tapped layer.
        teacher_features: ``(B, C_t, *spatial_t)`` tensors, as many as ``student_features``.

    Returns:
        A scalar tensor, zero when the standardised maps are equal.

    Raises:
        ValueError: when the lists are empty or differ in length.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"feature hints need as many student as teacher maps (got {len(student_features)} and "
            f"{len(teacher_features)}, at least one each)"
        )

    def standardise(x: torch.Tensor) -> torch.Tensor:
        # the population std: a one-voxel map (the last stage of a 32^3 input) is all zeros, not 0 / 0
        flat = x.flatten(1)
        return (flat - flat.mean(dim=1, keepdim=True)) / (flat.std(dim=1, keepdim=True, correction=0) + 1e-6)

    total = student_features[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_features, teacher_features, strict=True):
        teacher_mean = teacher.detach().float().mean(dim=1, keepdim=True)
        student_mean = _match_spatial(student.float().mean(dim=1, keepdim=True), teacher_mean.shape[2:])
        total = total + F.mse_loss(standardise(student_mean), standardise(teacher_mean))
    return total


class DistillationLoss(nn.Module):
    """Task loss plus softened-logit KL, with optional attention transfer and feature hints.

    ``loss = task_weight * task + kd_weight * T^2 * KL + attention_weight * AT + hint_weight * hints``.

    Args:
        task_loss: the supervised loss on the hard labels, called as ``task_loss(student_logits, target)`` (the
            training config's focal loss); ``None`` drops the task term.
        temperature: softening temperature ``T`` of the KL term.
        task_weight: weight of the task term.
        kd_weight: weight of the ``T^2``-scaled KL term.
        attention_weight: weight of the attention-transfer term (0 switches it off). The authors use
            ``beta = 1000 / 2`` with the per-element mean used here; values of 10-1000 are typical.
        hint_weight: weight of the feature-hint term (0 switches it off).
        attention_power: exponent ``p`` of the attention maps.

    Raises:
        ValueError: for a non-positive temperature or a negative weight.
    """

    def __init__(
        self,
        *,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
        temperature: float = 4.0,
        task_weight: float = 1.0,
        kd_weight: float = 1.0,
        attention_weight: float = 0.0,
        hint_weight: float = 0.0,
        attention_power: float = 2.0,
    ) -> None:
        super().__init__()
        if temperature <= 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        weights = {
            "task_weight": task_weight,
            "kd_weight": kd_weight,
            "attention_weight": attention_weight,
            "hint_weight": hint_weight,
        }
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.task_loss = task_loss
        self.temperature = float(temperature)
        self.task_weight = float(task_weight)
        self.kd_weight = float(kd_weight)
        self.attention_weight = float(attention_weight)
        self.hint_weight = float(hint_weight)
        self.attention_power = float(attention_power)

    @property
    def needs_features(self) -> bool:
        """Whether intermediate features must be recorded (attention transfer or hints are switched on)."""
        return self.attention_weight > 0 or self.hint_weight > 0

    def terms(
        self,
        student_logits: torch.Tensor,
        target: torch.Tensor | None,
        teacher_logits: torch.Tensor,
        student_features: Sequence[torch.Tensor] = (),
        teacher_features: Sequence[torch.Tensor] = (),
    ) -> dict[str, torch.Tensor]:
        """Every term of the loss, weighted, and their sum.

        Args:
            student_logits: ``(B, C)`` student logits.
            target: labels in whatever form ``task_loss`` takes (may be ``None`` when ``task_weight`` is 0).
            teacher_logits: ``(B, C)`` teacher logits.
            student_features: tapped student activations (needed when attention transfer or hints are on).
            teacher_features: tapped teacher activations, one per student activation.

        Returns:
            ``{"loss_task", "loss_kd", "loss_attention", "loss_hint", "loss"}``: weighted scalar tensors; ``loss`` is
            their sum.

        Raises:
            ValueError: when a switched-on term lacks its inputs.
        """
        zero = student_logits.new_zeros((), dtype=torch.float32)
        out = dict.fromkeys(LOSS_TERMS, zero)
        if self.task_weight > 0 and self.task_loss is not None:
            if target is None:
                raise ValueError("the task term needs labels, got none")
            out["loss_task"] = self.task_weight * self.task_loss(student_logits, target).mean()
        if self.kd_weight > 0:
            out["loss_kd"] = self.kd_weight * soft_target_kl(student_logits, teacher_logits, self.temperature)
        if self.attention_weight > 0:
            out["loss_attention"] = self.attention_weight * attention_transfer_loss(
                student_features, teacher_features, power=self.attention_power
            )
        if self.hint_weight > 0:
            out["loss_hint"] = self.hint_weight * feature_hint_loss(student_features, teacher_features)
        out["loss"] = sum(out[k] for k in LOSS_TERMS)
        return out

    def forward(
        self,
        student_logits: torch.Tensor,
        target: torch.Tensor | None,
        teacher_logits: torch.Tensor,
        student_features: Sequence[torch.Tensor] = (),
        teacher_features: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """The total loss (see :meth:`terms` for the arguments)."""
        return self.terms(student_logits, target, teacher_logits, student_features, teacher_features)["loss"]


class FeatureTap:
    """Records the outputs of named sub-modules of a network with forward hooks.

    Recording is off until :meth:`start` and off again after :meth:`stop`, so forwards of the same network elsewhere
    (the validation engine) do not keep activations alive.

    Args:
        network: the network to tap.
        layer_names: dotted names from ``network.named_modules()`` (e.g. ``"layer3"``), in pairing order.

    Raises:
        ValueError: when a name is not a sub-module of ``network``.
    """

    def __init__(self, network: nn.Module, layer_names: Sequence[str]) -> None:
        modules = dict(network.named_modules())
        missing = [name for name in layer_names if name not in modules]
        if missing:
            known = ", ".join(n for n in modules if n and "." not in n)
            raise ValueError(f"no sub-module named {missing} in {type(network).__name__} (top-level: {known})")
        self.layer_names = tuple(layer_names)
        self._outputs: dict[str, torch.Tensor] = {}
        self._recording = False
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layer_names]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._recording:
                # some blocks return (features, attention); the first tensor is the feature map
                self._outputs[name] = output[0] if isinstance(output, (tuple, list)) else output

        return record

    def start(self) -> None:
        """Clear previous outputs and record the next forward passes."""
        self._outputs = {}
        self._recording = True

    def stop(self) -> None:
        """Stop recording and drop the stored outputs."""
        self._recording = False
        self._outputs = {}

    @property
    def outputs(self) -> list[torch.Tensor]:
        """The recorded outputs, in ``layer_names`` order.

        Raises:
            RuntimeError: when a tapped layer did not run since :meth:`start`.
        """
        missing = [name for name in self.layer_names if name not in self._outputs]
        if missing:
            raise RuntimeError(f"tapped layers {missing} produced no output since start()")
        return [self._outputs[name] for name in self.layer_names]

    def remove(self) -> None:
        """Detach the hooks from the network."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.stop()


#: what :func:`distillation_layers` can tap: residual-stage outputs or the AAM spatial attention maps
LAYER_SOURCES: tuple[str, ...] = ("features", "aam")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def distillation_layers(network: nn.Module, *, source: str = "features") -> list[str]:
    """Default sub-modules to tap for attention transfer / hints, pairable across ResNet-style networks.

    * ``"features"``: the outputs of the residual stages ``layer1`` ... ``layer4`` (the group outputs Zagoruyko &
      Komodakis transfer attention between); works for the AAM-ResNets and MONAI's ResNets.
    * ``"aam"``: the spatial attention map ``(B, 1, *spatial)`` of the last Adaptive Attention Module in each stage
      (``layerK.<last unit>.attention.spatial``, at the stage's full resolution whatever the branch's
      ``spatial_stride``), so the student learns where the teacher's AAMs look; works for every attention
      placement (``"stage"``: the one AAM of each stage) and fusion.

    Both give one entry per stage, so a deep teacher and a shallow student pair stage by stage.

    Args:
        network: the network.
        source: one of :data:`LAYER_SOURCES`.

    Returns:
        Dotted sub-module names in stage order.

    Raises:
        ValueError: for an unknown ``source`` or a network without the stages / attention modules.
    """
    if source not in LAYER_SOURCES:
        raise ValueError(f"layer source must be one of {LAYER_SOURCES}, got {source!r}")
    names = [name for name, _ in network.named_children()]
    stages = [stage for stage in _STAGES if stage in names]
    if not stages:
        raise ValueError(f"{type(network).__name__} has no residual stages layer1..layer4 to tap")
    if source == "features":
        return stages
    layers = []
    for stage in stages:
        maps = [
            f"{stage}.{name}"
            for name, module in getattr(network, stage).named_modules()
            if isinstance(module, SpatialAttention)
        ]
        if maps:
            layers.append(maps[-1])
    if not layers:
        raise ValueError(f"{type(network).__name__} has no Adaptive Attention Modules to take attention maps from")
    return layers


def freeze(network: nn.Module) -> nn.Module:
    """Put ``network`` in eval mode with gradients off (the teacher of a distillation stage) and return it."""
    network.eval()
    network.requires_grad_(False)
    return network


class DistillationTrainer(SupervisedTrainer):
    """A :class:`~monai.engines.SupervisedTrainer` that distils a frozen teacher into ``network``.

    MONAI's own iteration runs unchanged (so handlers, AMP and gradient accumulation behave as in training); two
    hooks add the teacher:

    * on ``IterationEvents.FORWARD_COMPLETED`` (student forward done, loss not yet computed) the teacher runs on the
      same inputs, in eval mode under ``torch.no_grad``, through the same inferer; its logits go to
      ``engine.state.output["teacher_pred"]``;
    * the ``loss_function`` the engine calls is bound to :class:`DistillationLoss` with those teacher outputs; the
      weighted terms are stored in ``engine.state.output`` (``loss_task``, ``loss_kd``, ``loss_attention``,
      ``loss_hint``) for logging.

    Args:
        teacher: the teacher network (frozen here with :func:`freeze` and moved to ``device``).
        distillation_loss: the combined loss.
        student_layers: sub-module names of ``network`` tapped for attention transfer / hints.
        teacher_layers: sub-module names of ``teacher``, paired in order with ``student_layers``.
        kwargs: every other :class:`~monai.engines.SupervisedTrainer` argument (``device``, ``max_epochs``,
            ``train_data_loader``, ``network``, ``optimizer``, ``train_handlers`` ...), except ``loss_function``.

    Raises:
        ValueError: when ``loss_function`` is passed, or the tapped layer lists do not pair up while attention
            transfer or hints are switched on.
    """

    def __init__(
        self,
        *,
        teacher: nn.Module,
        distillation_loss: DistillationLoss,
        student_layers: Sequence[str] = (),
        teacher_layers: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        if "loss_function" in kwargs:
            raise ValueError("DistillationTrainer builds its own loss_function from distillation_loss")
        if len(student_layers) != len(teacher_layers):
            raise ValueError(
                f"student_layers {list(student_layers)} and teacher_layers {list(teacher_layers)} differ in length"
            )
        if distillation_loss.needs_features and not student_layers:
            raise ValueError("attention transfer / feature hints are on but no layers to tap were given")
        super().__init__(loss_function=self._bound_loss, **kwargs)
        self.teacher = freeze(teacher.to(self.state.device))
        self.distillation_loss = distillation_loss
        use_taps = distillation_loss.needs_features
        self.student_tap = FeatureTap(self.network, student_layers) if use_taps else None
        self.teacher_tap = FeatureTap(self.teacher, teacher_layers) if use_taps else None
        if use_taps:
            self.add_event_handler(Events.ITERATION_STARTED, self._start_student_tap)
            # registered before _run_teacher, so it runs first: the student's activations are collected before the
            # teacher's forward could overwrite anything
            self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._stop_student_tap)
            self.add_event_handler(IterationEvents.LOSS_COMPLETED, self._release_features)
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._run_teacher)
        self._student_features: list[torch.Tensor] = []
        self._teacher_features: list[torch.Tensor] = []

    def _start_student_tap(self, engine: DistillationTrainer) -> None:
        self.student_tap.start()

    def _stop_student_tap(self, engine: DistillationTrainer) -> None:
        self._student_features = self.student_tap.outputs
        self.student_tap.stop()

    def _run_teacher(self, engine: DistillationTrainer) -> None:
        inputs = engine.state.output[CommonKeys.IMAGE]
        self.teacher.eval()  # a handler elsewhere may have called .train() on every module it knows
        if self.teacher_tap is not None:
            self.teacher_tap.start()
        with torch.no_grad():
            engine.state.output[TEACHER_PRED] = engine.inferer(inputs, self.teacher)
        if self.teacher_tap is not None:
            self._teacher_features = self.teacher_tap.outputs
            self.teacher_tap.stop()

    def _release_features(self, engine: DistillationTrainer) -> None:
        self._student_features = []
        self._teacher_features = []

    def _bound_loss(self, student_logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        terms = self.distillation_loss.terms(
            student_logits,
            target,
            self.state.output[TEACHER_PRED],
            self._student_features,
            self._teacher_features,
        )
        for key in LOSS_TERMS:
            self.state.output[key] = terms[key].detach()
        return terms["loss"]
