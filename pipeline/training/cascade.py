"""Cascade distillation: each stage's trained network teaches the next (teacher -> assistant -> student).

A teacher-assistant cascade (Mirzadeh et al., AAAI 2020) closes a large capacity gap in steps: the trained teacher
(``aam_resnet50`` from the training run) teaches ``aam_assistant``, whose best checkpoint then teaches
``aam_student``. Every stage is a MONAI :class:`~pipeline.training.distillation.DistillationTrainer` with a MONAI
:class:`~monai.engines.SupervisedEvaluator` on the validation fold (``ROCAUC`` key metric), the training
stage's atomic best-checkpoint saver (:class:`~pipeline.training.checkpoints.AtomicCheckpointSaver`) keeping the
best state dict by validation AUC as ``<output_dir>/<stage>/model.pt``, the one-line-per-epoch
:class:`~pipeline.training.handlers.EpochSummary` (history in ``<stage>/train_history.json``) and optional early
stopping.

After the last stage :class:`DistillationCascade` writes ``<output_dir>/distill_summary.json``: for the teacher and
every stage the network name, parameter count and its ratio to MONAI's 3D ResNet-50 (46,163,010 parameters with one
input channel and two classes), FLOPs at the training ROI (``torch.utils.flop_counter.FlopCounterMode``), CPU
latency (median of repeated single-volume forwards after warm-up, on a fixed number of threads), validation AUC with
its DeLong CI (the injected ``auc_summary``: ``distill.json`` passes :func:`pipeline.evaluation.roc.auc_summary`,
so training does not import the evaluation stage), epochs run and the teacher the stage learned from. The
final student's weights are also written as ``<output_dir>/models/model.pt``, the bundle's usual weights path.

MONAI has no cascade runner; what it provides (engines, ``ValidationHandler``, ``ROCAUC``, ``EarlyStopHandler``, the
config system's ``"_mode_": "callable"`` factories for networks and optimisers) is used as is.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.handlers import ProgressBar
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    ROCAUC,
    EarlyStopHandler,
    LrScheduleHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
    from_engine,
    stopping_fn_from_metric,
)
from monai.transforms import Activationsd, AsDiscreted, Compose
from monai.utils import CommonKeys, set_determinism
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.contracts.failure import fail
from pipeline.contracts.run_record import write_run_record
from pipeline.errors import UserError
from pipeline.io import atomic_path, write_json_atomic
from pipeline.training.checkpoints import AtomicCheckpointSaver
from pipeline.training.distillation import LAYER_SOURCES, DistillationLoss, DistillationTrainer, distillation_layers
from pipeline.training.handlers import EpochSummary
from pipeline.training.schedule import LR_SCHEDULES, make_scheduler

__all__ = [
    "MONAI_RESNET50_3D_PARAMS",
    "STUDENT_MAX_PARAMS_RATIO",
    "SUMMARY_NAME",
    "DistillationCascade",
    "StageSpec",
    "count_flops",
    "count_parameters",
    "cpu_latency_ms",
    "load_state_dict",
    "predict_scores",
    "run_or_exit",
]

logger = logging.getLogger(__name__)

#: parameters of ``monai.networks.nets.resnet50(spatial_dims=3, n_input_channels=1, num_classes=2)``
MONAI_RESNET50_3D_PARAMS = 46_163_010
#: the issue's parameter budget for the student: at most 31% of MONAI's 3D ResNet-50 (14,310,533 parameters)
STUDENT_MAX_PARAMS_RATIO = 0.31
#: file name of the cascade summary inside the output folder
SUMMARY_NAME = "distill_summary.json"
VAL_METRIC = "val_auc"


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage of the cascade: the network to train and any per-stage overrides.

    Attributes:
        network: registry name passed to the network factory (e.g. ``"aam_student"``).
        name: folder name of the stage under the output folder (default: the network name).
        network_kwargs: extra keyword arguments for the network factory.
        overrides: per-stage values for ``max_epochs``, ``temperature``, ``task_weight``, ``kd_weight``,
            ``attention_weight``, ``hint_weight``, ``student_layers``, ``teacher_layers``, ``attention_source``.
    """

    network: str
    name: str
    network_kwargs: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    #: keys a stage may override
    OVERRIDABLE = (
        "max_epochs",
        "temperature",
        "task_weight",
        "kd_weight",
        "attention_weight",
        "hint_weight",
        "student_layers",
        "teacher_layers",
        "attention_source",
    )

    @classmethod
    def parse(cls, stage: str | Mapping[str, Any]) -> StageSpec:
        """A stage from a registry name or a mapping ``{"network", "name", "network_kwargs", <overrides>}``.

        Raises:
            UserError: an unknown key or a missing ``network``.
        """
        if isinstance(stage, str):
            return cls(network=stage, name=stage)
        if not isinstance(stage, Mapping) or not isinstance(stage.get("network"), str):
            raise UserError(f"a cascade stage must be a network name or a mapping with 'network', got {stage!r}")
        known = {"network", "name", "network_kwargs", *cls.OVERRIDABLE}
        unknown = sorted(set(stage) - known)
        if unknown:
            raise UserError(f"cascade stage {stage['network']!r}: unknown keys {unknown} (allowed: {sorted(known)})")
        overrides = {k: stage[k] for k in cls.OVERRIDABLE if k in stage}
        return cls(
            network=stage["network"],
            name=str(stage.get("name") or stage["network"]),
            network_kwargs=dict(stage.get("network_kwargs") or {}),
            overrides=overrides,
        )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _probe_input(model: nn.Module, roi_size: Sequence[int], in_channels: int) -> torch.Tensor:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.zeros((1, in_channels, *roi_size), device=device)


def count_flops(model: nn.Module, roi_size: Sequence[int], *, in_channels: int = 1) -> int:
    """Forward FLOPs of one volume at ``roi_size``, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    PyTorch counts a multiply-add as two FLOPs and covers matrix products and convolutions (the bulk of the work);
    element-wise operations are not counted.

    Args:
        model: the network.
        roi_size: spatial size ``(D, H, W)`` of the input.
        in_channels: input channels.

    Returns:
        Total FLOPs of one forward pass at batch size 1.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(_probe_input(model, roi_size, in_channels))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def cpu_latency_ms(
    model: nn.Module,
    roi_size: Sequence[int],
    *,
    in_channels: int = 1,
    threads: int = 2,
    warmup: int = 2,
    repeats: int = 7,
) -> list[float]:
    """Wall-clock times of single-volume forward passes on the CPU, in milliseconds.

    The model is moved to the CPU in eval mode (and back afterwards); ``warmup`` passes run first (allocator and
    kernel selection), then ``repeats`` timed passes under ``torch.inference_mode`` with
    ``torch.set_num_threads(threads)`` (restored after).

    Args:
        model: the network (left unchanged).
        roi_size: spatial size of the input.
        in_channels: input channels.
        threads: intra-op CPU threads during the measurement.
        warmup: untimed passes first.
        repeats: timed passes (>= 5 for a meaningful median).

    Returns:
        The ``repeats`` timings in milliseconds, in the order measured.

    Raises:
        ValueError: when ``repeats < 1`` or ``threads < 1``.
    """
    if repeats < 1 or threads < 1:
        raise ValueError(f"repeats and threads must be >= 1, got {repeats} and {threads}")
    previous_threads = torch.get_num_threads()
    was_training = model.training
    device = next(model.parameters()).device
    model.cpu().eval()
    x = torch.zeros((1, in_channels, *roi_size))
    timings: list[float] = []
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                timings.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous_threads)
        model.to(device).train(was_training)
    return timings


def load_state_dict(model: nn.Module, checkpoint: str | os.PathLike, *, what: str = "checkpoint") -> nn.Module:
    """Load a state-dict checkpoint (a bare state dict, as MONAI's and
    :class:`~pipeline.training.checkpoints.AtomicCheckpointSaver` write one object) into ``model``.

    A dict holding the state dict under ``"model"``, ``"network"`` or ``"state_dict"`` is unwrapped too.

    Args:
        model: the network to fill.
        checkpoint: path of the ``.pt`` file.
        what: what the file is, for the error message.

    Returns:
        ``model``.

    Raises:
        UserError: the file is missing, unreadable, or does not fit the network.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure is a bad file, not a bug here
        raise UserError(f"{path}: cannot read the {what} ({type(err).__name__}: {err})") from err
    if isinstance(state, Mapping):
        for key in ("model", "network", "state_dict"):
            if isinstance(state.get(key), Mapping) and len(state) <= 3:
                state = state[key]
                break
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: the {what} does not fit {type(model).__name__} ({first_line})") from err
    return model


def _flat_labels(label: Any) -> np.ndarray:
    array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    array = array.reshape(array.shape[0], -1)
    # one-hot labels (B, C) become class indices; (B, 1) / (B,) stay as they are
    return array.argmax(axis=1) if array.shape[1] > 1 else array[:, 0]


def predict_scores(
    model: nn.Module,
    data_loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    positive_index: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth labels and softmax scores of the positive class for every case of ``data_loader``.

    Args:
        model: a classifier returning ``(B, C)`` logits.
        data_loader: yields dicts with ``image`` and ``label`` (or ``(image, label)`` pairs).
        device: where to run the model.
        positive_index: column of the positive class.

    Returns:
        ``(labels, scores)`` as 1-D arrays, in loader order.
    """
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in data_loader:
                image, label = (
                    (batch[CommonKeys.IMAGE], batch[CommonKeys.LABEL]) if isinstance(batch, Mapping) else batch
                )
                logits = model(torch.as_tensor(image).to(device))
                scores.append(torch.softmax(logits.float(), dim=1)[:, positive_index].cpu().numpy())
                labels.append(_flat_labels(label))
    finally:
        model.train(was_training)
    return np.concatenate(labels).astype(np.int64), np.concatenate(scores).astype(np.float64)


class DistillationCascade:
    """Runs the cascade teacher -> stage 1 -> stage 2 ... and writes one checkpoint per stage plus the summary.

    Designed to be built by a bundle config: ``network_factory`` and ``optimizer_factory`` are
    ``"_mode_": "callable"`` components (``pipeline.networks.build`` and ``torch.optim.AdamW`` with their fixed
    arguments), the data loaders and the task loss are the training config's own.

    Args:
        teacher_network: registry name of the trained teacher (e.g. ``"aam_resnet50"``).
        teacher_ckpt: its best checkpoint (``<training output_dir>/models/model.pt``).
        stages: networks trained in turn, each taught by the previous one; names or mappings (see
            :meth:`StageSpec.parse`). Default ``["aam_assistant", "aam_student"]``.
        network_factory: ``network_factory(name, **network_kwargs) -> nn.Module`` (``(B, C)`` logits).
        optimizer_factory: ``optimizer_factory(parameters) -> torch.optim.Optimizer``.
        task_loss: the supervised loss on hard labels (the training config's focal loss).
        train_data_loader: training batches (dicts with ``image`` and ``label``).
        val_data_loader: validation batches; the best checkpoint of every stage is chosen on them.
        auc_summary: ``auc_summary(labels, scores, n_resamples=..., seed=...)`` returning an object with ``auc``,
            ``delong_ci``, ``format()`` and ``to_dict()``: :func:`pipeline.evaluation.roc.auc_summary`, injected by
            ``distill.json`` (the evaluation stage lies above training, so it is composed, not imported).
        output_dir: where stage folders, ``models/model.pt`` and ``distill_summary.json`` go.
        roi_size: spatial input size used for FLOPs and latency (the training ROI).
        num_classes: classes of the classifier (the AUC is computed for class index ``positive_index``).
        max_epochs: epochs per stage (a stage may override it).
        val_interval: validate every this many epochs.
        early_stop_patience: validations without improvement before a stage stops (``None``: never).
        temperature: KL softening temperature.
        task_weight: weight of the task loss.
        kd_weight: weight of the ``T^2``-scaled KL term; 0 with no attention/hint term trains from scratch (plain
            :class:`~monai.engines.SupervisedTrainer`), the baseline distillation is compared with.
        attention_weight: weight of attention transfer (0 = off).
        hint_weight: weight of feature hints (0 = off).
        student_layers: sub-module names tapped in each student for attention transfer / hints; ``None`` takes
            :func:`~pipeline.training.distillation.distillation_layers` of ``attention_source``.
        teacher_layers: likewise for each stage's teacher.
        attention_source: ``"features"`` (stage outputs) or ``"aam"`` (AAM spatial attention maps), for the default
            layers.
        device: training device.
        positive_index: class index whose softmax score is ranked for the AUC.
        in_channels: input channels (for the FLOPs and latency probes).
        latency_threads: CPU threads for the latency measurement.
        latency_repeats: timed passes (median reported).
        auc_bootstrap_resamples: stratified bootstrap resamples for the AUC's bootstrap CI (0 = DeLong only).
        seed: seed set with :func:`monai.utils.set_determinism` before every stage.
        keep_later_ties: each stage keeps the latest of equally scored epochs (see
            :class:`~pipeline.training.checkpoints.AtomicCheckpointSaver`), as ``train.json``'s ``keep_later_ties``.
        checkpoint_selection: ``"best"`` (each stage keeps its best validation epoch) or ``"last"`` (its last
            epoch), as ``train.json``'s ``checkpoint_selection``.
        run_record: preprocessing settings (``spacing``, ``hu_window``, ``class_names``) recorded with the final
            student in ``<output_dir>/models/run.json`` (see :mod:`pipeline.contracts.run_record`).
        lr_schedule: ``"constant"`` or ``"cosine"`` (cosine annealing over the stage's ``max_epochs`` down to 1 % of
            the initial rate, stepped per epoch by MONAI's ``LrScheduleHandler``), as in ``train.json``.
        tensorboard_dir: TensorBoard folder; each stage logs into ``<tensorboard_dir>/<stage name>`` through MONAI's
            ``TensorBoardStatsHandler`` (training loss per iteration, validation AUC per epoch), as training does.
            ``None`` writes none.
        progress: show a tqdm progress bar over each epoch's iterations (ignite's ``ProgressBar``), named after the
            stage, with the running loss.

    Raises:
        UserError: an empty stage list or a duplicate stage name.
    """

    def __init__(
        self,
        *,
        teacher_network: str,
        teacher_ckpt: str | os.PathLike,
        stages: Sequence[str | Mapping[str, Any]] = ("aam_assistant", "aam_student"),
        network_factory: Callable[..., nn.Module],
        optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        train_data_loader: Iterable,
        val_data_loader: Iterable,
        auc_summary: Callable[..., Any],
        output_dir: str | os.PathLike,
        roi_size: Sequence[int],
        num_classes: int = 2,
        max_epochs: int = 50,
        val_interval: int = 1,
        early_stop_patience: int | None = None,
        temperature: float = 4.0,
        task_weight: float = 1.0,
        kd_weight: float = 1.0,
        attention_weight: float = 0.0,
        hint_weight: float = 0.0,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        attention_source: str = "features",
        device: str | torch.device = "cpu",
        positive_index: int = 1,
        in_channels: int = 1,
        latency_threads: int = 2,
        latency_repeats: int = 7,
        auc_bootstrap_resamples: int = 0,
        seed: int = 0,
        lr_schedule: str = "constant",
        run_record: Mapping[str, Any] | None = None,
        keep_later_ties: bool = False,
        checkpoint_selection: str = "best",
        tensorboard_dir: str | os.PathLike | None = None,
        progress: bool = False,
    ) -> None:
        if lr_schedule not in LR_SCHEDULES:
            raise UserError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.progress = bool(progress)
        self.run_record = dict(run_record or {})
        self.keep_later_ties = bool(keep_later_ties)
        self.checkpoint_selection = checkpoint_selection
        self.stages = [StageSpec.parse(stage) for stage in stages]
        if not self.stages:
            raise UserError("the cascade needs at least one stage after the teacher")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names) or "models" in names:
            raise UserError(f"cascade stage names must be unique and not 'models', got {names}; give stages a 'name'")
        if max_epochs < 1 or val_interval < 1:
            raise UserError(f"max_epochs and val_interval must be >= 1, got {max_epochs} and {val_interval}")
        self.teacher_network = teacher_network
        self.teacher_ckpt = Path(teacher_ckpt)
        self.network_factory = network_factory
        self.optimizer_factory = optimizer_factory
        self.task_loss = task_loss
        self.train_data_loader = train_data_loader
        self.val_data_loader = val_data_loader
        self.auc_summary = auc_summary
        self.output_dir = Path(output_dir)
        self.roi_size = tuple(int(s) for s in roi_size)
        self.num_classes = int(num_classes)
        self.defaults: dict[str, Any] = {
            "max_epochs": int(max_epochs),
            "temperature": float(temperature),
            "task_weight": float(task_weight),
            "kd_weight": float(kd_weight),
            "attention_weight": float(attention_weight),
            "hint_weight": float(hint_weight),
            "student_layers": None if student_layers is None else list(student_layers),
            "teacher_layers": None if teacher_layers is None else list(teacher_layers),
        }
        if attention_source not in LAYER_SOURCES:
            raise UserError(f"attention_source must be one of {LAYER_SOURCES}, got {attention_source!r}")
        self.defaults["attention_source"] = attention_source
        self.val_interval = int(val_interval)
        self.early_stop_patience = early_stop_patience
        self.device = torch.device(device)
        self.positive_index = int(positive_index)
        self.in_channels = int(in_channels)
        self.latency_threads = int(latency_threads)
        self.latency_repeats = int(latency_repeats)
        self.auc_bootstrap_resamples = int(auc_bootstrap_resamples)
        self.seed = int(seed)

    # ------------------------------------------------------------------ measurements
    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Parameters, FLOPs, CPU latency and validation AUC (DeLong CI) of a network, as in the summary.

        Args:
            model: a classifier on ``self.device``.

        Returns:
            A JSON-ready dict (``params``, ``params_ratio_to_resnet50``, ``flops``, ``cpu_latency_ms`` (median),
            ``cpu_latency_ms_all``, ``val_auc``, ``val_auc_delong_ci``, ``val_auc_text``, ``val_auc_detail``).
        """
        labels, scores = predict_scores(
            model, self.val_data_loader, device=self.device, positive_index=self.positive_index
        )
        auc = self.auc_summary(labels, scores, n_resamples=self.auc_bootstrap_resamples, seed=self.seed)
        params = count_parameters(model)
        timings = cpu_latency_ms(
            model,
            self.roi_size,
            in_channels=self.in_channels,
            threads=self.latency_threads,
            repeats=self.latency_repeats,
        )
        return {
            "params": params,
            "params_ratio_to_resnet50": params / MONAI_RESNET50_3D_PARAMS,
            "flops": count_flops(model, self.roi_size, in_channels=self.in_channels),
            "cpu_latency_ms": statistics.median(timings),
            "cpu_latency_ms_all": timings,
            "val_auc": auc.auc,
            "val_auc_delong_ci": list(auc.delong_ci) if auc.delong_ci is not None else None,
            "val_auc_text": auc.format(),
            "val_auc_detail": auc.to_dict(),
        }

    # ------------------------------------------------------------------ one stage
    def _stage_settings(self, stage: StageSpec) -> dict[str, Any]:
        return {**self.defaults, **stage.overrides}

    @staticmethod
    def _layers(network: nn.Module, given: Sequence[str] | None, *, source: str, role: str, name: str) -> list[str]:
        if given is not None:
            return list(given)
        if source not in LAYER_SOURCES:
            raise UserError(f"stage {name}: attention_source must be one of {LAYER_SOURCES}, got {source!r}")
        try:
            return distillation_layers(network, source=source)
        except ValueError as err:
            raise UserError(f"stage {name}: no {role}_layers given and none found by default ({err})") from None

    def train_stage(
        self,
        stage: StageSpec | str | Mapping[str, Any],
        teacher: nn.Module | None,
        teacher_name: str | None = None,
        *,
        teacher_network: str | None = None,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Train one network, distilled from ``teacher`` or from scratch, and keep its best checkpoint.

        The stage's best state dict by validation AUC is written as ``<output_dir>/<stage name>/model.pt`` and loaded
        back into the returned network.

        Args:
            stage: the stage (see :meth:`StageSpec.parse`).
            teacher: the teacher network, or ``None`` to train on the task loss alone (as when ``kd_weight`` is 0 and
                no feature term is on).
            teacher_name: how the summary names the teacher (its stage name).
            teacher_network: the teacher's registry name, for the summary.

        Returns:
            ``(network, entry)``: the trained network (best checkpoint loaded) and its summary entry (stage, network,
            teacher, checkpoint, mode, loss settings, epochs, timings and everything :meth:`describe` reports).

        Raises:
            UserError: feature terms are on but the layers to tap are unknown.
        """
        stage = stage if isinstance(stage, StageSpec) else StageSpec.parse(stage)
        settings = self._stage_settings(stage)
        stage_dir = self.output_dir / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        set_determinism(seed=self.seed)
        student = self.network_factory(stage.network, **stage.network_kwargs).to(self.device)
        optimizer = self.optimizer_factory(student.parameters())

        post = Compose(
            [
                Activationsd(keys=CommonKeys.PRED, softmax=True),
                AsDiscreted(keys=CommonKeys.LABEL, to_onehot=self.num_classes),
            ]
        )
        best_saver = AtomicCheckpointSaver(
            save_path=stage_dir / "model.pt",
            save_dict={"model": student},
            metric_name=VAL_METRIC,
            keep_later_ties=self.keep_later_ties,
            selection=self.checkpoint_selection,
        )
        val_handlers: list[Any] = [best_saver]
        evaluator = SupervisedEvaluator(
            device=self.device,
            val_data_loader=self.val_data_loader,
            network=student,
            postprocessing=post,
            key_val_metric={VAL_METRIC: ROCAUC(output_transform=from_engine([CommonKeys.PRED, CommonKeys.LABEL]))},
            val_handlers=val_handlers,
        )

        feature_terms = settings["attention_weight"] > 0 or settings["hint_weight"] > 0
        distilling = teacher is not None and (settings["kd_weight"] > 0 or feature_terms)
        train_handlers: list[Any] = [
            ValidationHandler(validator=evaluator, interval=self.val_interval, epoch_level=True),
            # after the ValidationHandler, so each line has the epoch's validation AUC
            EpochSummary(evaluator=evaluator, metric_name=VAL_METRIC, history_path=stage_dir / "train_history.json"),
        ]
        if self.lr_schedule != "constant":
            scheduler = make_scheduler(self.lr_schedule, optimizer, int(settings["max_epochs"]))
            train_handlers.append(LrScheduleHandler(lr_scheduler=scheduler, print_lr=False))
        common = {
            "device": self.device,
            "max_epochs": int(settings["max_epochs"]),
            "train_data_loader": self.train_data_loader,
            "network": student,
            "optimizer": optimizer,
            "train_handlers": train_handlers,
        }
        if distilling:
            loss = DistillationLoss(
                task_loss=self.task_loss,
                temperature=settings["temperature"],
                task_weight=settings["task_weight"],
                kd_weight=settings["kd_weight"],
                attention_weight=settings["attention_weight"],
                hint_weight=settings["hint_weight"],
            )
            layers = {}
            if feature_terms:
                layers = {
                    "student_layers": self._layers(
                        student,
                        settings["student_layers"],
                        source=settings["attention_source"],
                        role="student",
                        name=stage.name,
                    ),
                    "teacher_layers": self._layers(
                        teacher,
                        settings["teacher_layers"],
                        source=settings["attention_source"],
                        role="teacher",
                        name=stage.name,
                    ),
                }
            trainer: SupervisedTrainer = DistillationTrainer(
                teacher=teacher, distillation_loss=loss, **layers, **common
            )
        else:
            trainer = SupervisedTrainer(loss_function=self.task_loss, **common)
        self._attach_monitoring(trainer, evaluator, stage.name)
        if self.early_stop_patience:
            EarlyStopHandler(
                patience=int(self.early_stop_patience),
                score_function=stopping_fn_from_metric(VAL_METRIC),
                trainer=trainer,
            ).attach(evaluator)

        logger.info(
            "cascade stage %s: %s learns from %s",
            stage.name,
            stage.network,
            teacher_name if distilling else "labels only",
        )
        started = time.perf_counter()
        trainer.run()
        train_seconds = time.perf_counter() - started

        checkpoint = stage_dir / "model.pt"
        if not checkpoint.is_file():
            raise RuntimeError(f"stage {stage.name}: no checkpoint was saved (did validation run?)")
        load_state_dict(student, checkpoint, what=f"best checkpoint of stage {stage.name}")
        entry = {
            "stage": stage.name,
            "network": stage.network,
            "teacher": teacher_name if distilling else None,
            "teacher_network": teacher_network if distilling else None,
            "checkpoint": str(checkpoint),
            "mode": "distillation" if distilling else "from_scratch",
            "loss": {
                k: settings[k]
                for k in (
                    "temperature",
                    "task_weight",
                    "kd_weight",
                    "attention_weight",
                    "hint_weight",
                    "attention_source",
                )
            },
            "epochs_run": int(trainer.state.epoch),
            "max_epochs": int(settings["max_epochs"]),
            "best_epoch": best_saver.best_epoch,
            "best_val_auc_during_training": best_saver.best_metric,
            "train_seconds": train_seconds,
            **self.describe(student),
        }
        return student, entry

    def _attach_monitoring(self, trainer: SupervisedTrainer, evaluator: SupervisedEvaluator, name: str) -> None:
        """TensorBoard per stage (MONAI's handler, as ``train.json`` uses it) and an optional progress bar."""
        if self.tensorboard_dir is not None:
            log_dir = str(self.tensorboard_dir / name)
            TensorBoardStatsHandler(
                log_dir=log_dir, tag_name="train_loss", output_transform=from_engine(["loss"], first=True)
            ).attach(trainer)
            # validation metrics are logged against the trainer's epoch, so both curves share the x axis
            TensorBoardStatsHandler(
                log_dir=log_dir, iteration_log=False, global_epoch_transform=lambda _: trainer.state.epoch
            ).attach(evaluator)
        if self.progress:
            ProgressBar(persist=False, desc=f"{name}").attach(
                trainer, output_transform=from_engine(["loss"], first=True)
            )

    # ------------------------------------------------------------------ the cascade
    def run(self) -> dict[str, Any]:
        """Train every stage in turn and write the checkpoints and ``distill_summary.json``.

        Returns:
            The summary (as written).

        Raises:
            UserError: the teacher checkpoint is missing or does not fit the teacher network.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        teacher = self.network_factory(self.teacher_network)
        load_state_dict(teacher, self.teacher_ckpt, what=f"teacher checkpoint ({self.teacher_network})")
        teacher = teacher.to(self.device)
        teacher_entry = {
            "stage": "teacher",
            "network": self.teacher_network,
            "teacher": None,
            "checkpoint": str(self.teacher_ckpt.resolve()),
            "mode": "given",
            **self.describe(teacher),
        }
        results: list[dict[str, Any]] = []
        current, current_name, current_network = teacher, "teacher", self.teacher_network
        for stage in self.stages:
            current, result = self.train_stage(stage, current, current_name, teacher_network=current_network)
            current_name, current_network = stage.name, stage.network
            results.append(result)

        final = results[-1]
        weights = self.output_dir / "models" / "model.pt"
        with atomic_path(weights) as tmp:
            shutil.copyfile(final["checkpoint"], tmp)
        write_run_record(
            weights.parent,
            network_name=final["network"],
            network_kwargs=self.stages[-1].network_kwargs,
            roi_size=self.roi_size,
            written_by="distilling",
            teacher=self.teacher_network,
            **{k: self.run_record.get(k) for k in ("spacing", "hu_window", "class_names")},
        )
        summary = {
            "reference": {
                "network": "monai.networks.nets.resnet50(spatial_dims=3, n_input_channels=1, num_classes=2)",
                "params": MONAI_RESNET50_3D_PARAMS,
            },
            "roi_size": list(self.roi_size),
            "measurement": {
                "flops": "torch.utils.flop_counter.FlopCounterMode, one volume at roi_size, multiply-add = 2 FLOPs",
                "cpu_latency": f"median of {self.latency_repeats} single-volume forwards after 2 warm-up passes, "
                f"torch.set_num_threads({self.latency_threads}), inference_mode",
                "val_auc": "softmax score of class index "
                f"{self.positive_index} on the validation loader; DeLong CI (logit transform), 95%",
            },
            "teacher": teacher_entry,
            "stages": results,
            "student": {
                "stage": final["stage"],
                "network": final["network"],
                "weights": str(weights),
                "params": final["params"],
                "params_ratio_to_resnet50": final["params_ratio_to_resnet50"],
                "params_budget": {
                    "max_ratio_to_resnet50": STUDENT_MAX_PARAMS_RATIO,
                    "max_params": int(STUDENT_MAX_PARAMS_RATIO * MONAI_RESNET50_3D_PARAMS),
                    "within": final["params"] <= int(STUDENT_MAX_PARAMS_RATIO * MONAI_RESNET50_3D_PARAMS),
                },
                "params_ratio_to_teacher": final["params"] / teacher_entry["params"],
                "flops_ratio_to_teacher": final["flops"] / max(teacher_entry["flops"], 1),
                "cpu_latency_ratio_to_teacher": final["cpu_latency_ms"] / teacher_entry["cpu_latency_ms"],
                "val_auc_difference_to_teacher": None
                if final["val_auc"] is None or teacher_entry["val_auc"] is None
                else final["val_auc"] - teacher_entry["val_auc"],
            },
        }
        write_json_atomic(self.output_dir / SUMMARY_NAME, summary)
        logger.info(
            "cascade done: student %s has %d parameters (%.1f%% of ResNet-50 3D), val AUC %s",
            final["network"],
            final["params"],
            100 * final["params_ratio_to_resnet50"],
            final["val_auc_text"],
        )
        return summary


def run_or_exit(cascade: DistillationCascade | Callable[[], DistillationCascade]) -> dict[str, Any]:
    """Build (if given a factory) and run a cascade; a user mistake ends the process with one line.

    ``python -m monai.bundle run`` prints a full traceback for any exception; like the training pre-flight
    (:func:`pipeline.contracts.fail`), this turns :class:`~pipeline.errors.UserError` (a missing teacher
    checkpoint, one that does not fit the teacher network, a bad stage list) into ``SystemExit("aamct: error: ...")``.
    ``distill.json`` declares the cascade with ``"_mode_": "callable"`` so that its construction happens here too.

    Args:
        cascade: a :class:`DistillationCascade`, or a callable returning one (a config component with
            ``"_mode_": "callable"``).

    Returns:
        The summary written by :meth:`DistillationCascade.run`.

    Raises:
        SystemExit: for a user mistake.
    """
    try:
        runner = cascade if isinstance(cascade, DistillationCascade) else cascade()
        return runner.run()
    except UserError as err:
        fail(str(err))
