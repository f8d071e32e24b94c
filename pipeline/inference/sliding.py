"""Whole-volume sliding-window inference for a classifier: one stitched map is both the case score and the heatmap.

MONAI's :class:`~monai.inferers.SlidingWindowInferer` stitches *spatial* outputs only; a classifier's ``(B, C)``
logits cannot be blended across windows. AAM-ResNets (and any model wrapped in
:class:`pipeline.networks.DenseClassifier`) also expose a dense class-activation map ``(B, C, d, h, w)`` whose spatial
mean is the logits, so the sliding window is run on that map instead: MONAI stitches it (with its zoom-scale support,
the map may be coarser than the window) into one full-volume logit map, and

* the case logits are the spatial mean of the stitched map (with one window covering the volume this is exactly the
  network's own logits), the case probabilities their softmax;
* the heatmap is the positive-class evidence of the same map, ``logit[positive] - logsumexp(logit[others])`` (for two
  classes simply ``logit[1] - logit[0]``, a log-odds map whose spatial mean is the case log-odds).

Only the aggregation is written here; windowing, Gaussian blending and the ``sw_device`` / ``device`` split are
MONAI's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer

from pipeline.networks import DenseClassifier, optimized_for_inference

__all__ = [
    "DenseClassificationInferer",
    "DensePrediction",
    "CPU_FORMS",
    "DEFAULT_CPU_FORM",
    "as_dense_predictor",
    "positive_evidence",
    "scoring_form",
]

#: how the scoring forward passes run on the CPU: ``deployed`` (TorchScript, frozen, oneDNN convolutions) or ``eager``
CPU_FORMS: tuple[str, ...] = ("deployed", "eager")
#: the default of ``scoring_form``, :class:`pipeline.inference.CasePredictor` and ``cpu_form`` of inference.json
DEFAULT_CPU_FORM = "deployed"


@dataclass(frozen=True)
class DensePrediction:
    """What one sliding-window pass over a batch of whole volumes yields.

    Attributes:
        logits: ``(B, C)`` case logits, the spatial mean of ``class_map``.
        probabilities: ``(B, C)`` softmax of ``logits``.
        class_map: ``(B, C, d, h, w)`` stitched class-logit map over the whole (preprocessed) volume; its grid is
            the input grid scaled by the network's output stride (see :func:`pipeline.inference.heatmap.map_affine`).
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    class_map: torch.Tensor


def as_dense_predictor(model: Callable[..., torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable that maps a ``(B, 1, D, H, W)`` window to a dense ``(B, C, d, h, w)`` class map.

    Args:
        model: a network exposing ``class_activation(x)`` (AAM-ResNets), or a module already returning a dense map
            (e.g. :class:`pipeline.networks.DenseClassifier`, or any fully convolutional classifier head).

    Returns:
        ``model.class_activation`` when the model has it, else ``model`` itself. Its output is checked on the first
        call by :class:`DenseClassificationInferer`.
    """
    class_activation = getattr(model, "class_activation", None)
    if callable(class_activation):
        return class_activation
    return model


def scoring_form(model: torch.nn.Module, *, form: str = DEFAULT_CPU_FORM) -> Callable[[torch.Tensor], torch.Tensor]:
    """The dense predictor the scoring passes run: on the CPU, by default, the network's deployed form.

    At batch size 1 PyTorch's eager CPU dispatcher sends small 3D convolutions to its slow native kernels; the
    deployed form (:func:`pipeline.networks.optimized_for_inference` of :class:`pipeline.networks.DenseClassifier`)
    runs every convolution on oneDNN, 1.7-5.6x faster for the registry networks (``benchmarks/results/networks.json``,
    ``deployed`` vs ``eager``), with the eager logits to float32 rounding (``tests/networks/test_deploy.py``).

    Args:
        model: the eval-mode classifier (with ``class_activation``, or a dense module).
        form: ``deployed`` or ``eager`` (:data:`CPU_FORMS`).

    Returns:
        A callable from a window batch to its dense class map: the deployed form for a network whose weights are on
        the CPU, else (CUDA, where the eager network with AMP is already on cuDNN) the eager one.

    Raises:
        ValueError: an unknown ``form``.
    """
    if form not in CPU_FORMS:
        raise ValueError(f"cpu form must be one of {', '.join(CPU_FORMS)}, got {form!r}")
    dense = as_dense_predictor(model)
    on_cpu = all(parameter.device.type == "cpu" for parameter in model.parameters())
    if form == "eager" or not on_cpu:
        return dense
    return _DeployedOnFirstCall(model, dense)


class _DeployedOnFirstCall:
    """The deployed form of a network, compiled on the first window (a run whose every case is rejected pays nothing).

    A network TorchScript cannot compile keeps its eager form (logged at debug level): the scores are the same.
    """

    def __init__(self, model: torch.nn.Module, dense: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model = model
        self.eager = dense
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            try:
                wrapped = DenseClassifier(self.model) if self.eager is not self.model else self.model
                self.compiled = optimized_for_inference(wrapped.eval())
            except Exception as error:
                logging.getLogger(__name__).debug("eager scoring for %s: %s", type(self.model).__name__, error)
                self.compiled = self.eager
        return self.compiled(x)


def positive_evidence(class_map: torch.Tensor, *, positive_index: int = 1) -> torch.Tensor:
    """Per-voxel evidence for the positive class, as a log-odds map.

    Args:
        class_map: ``(B, C, *spatial)`` class logits, ``C >= 2``.
        positive_index: channel of the positive class.

    Returns:
        ``(B, 1, *spatial)``: ``logit[positive] - logsumexp(logit[others])``; for two classes ``logit[1] - logit[0]``,
        whose spatial mean equals the case log-odds because the case logits are the map's spatial mean.

    Raises:
        ValueError: if the map has fewer than two channels or ``positive_index`` is out of range.
    """
    n_classes = class_map.shape[1]
    if n_classes < 2 or not 0 <= positive_index < n_classes:
        raise ValueError(f"class map with {n_classes} channels has no positive class index {positive_index}")
    positive = class_map[:, positive_index : positive_index + 1]
    others = torch.cat([class_map[:, :positive_index], class_map[:, positive_index + 1 :]], dim=1)
    return positive - torch.logsumexp(others, dim=1, keepdim=True)


class DenseClassificationInferer(Inferer):
    """Sliding-window classification of whole volumes through the network's dense class-activation map.

    Calling the inferer returns the ``(B, C)`` case logits, so it drops into MONAI engines
    (``SupervisedEvaluator(inferer=...)``) and bundle configs; :meth:`predict` also returns the stitched map used for
    the heatmap.

    Args:
        roi_size: window size in voxels of the preprocessed volume (the training patch size).
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction (per axis or one value).
        mode: ``"gaussian"`` (down-weights window borders, where the receptive field is truncated) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window (``mode="gaussian"`` only).
        padding_mode: how volumes smaller than a window are padded (MONAI / ``torch.nn.functional.pad`` names).
        sw_device: device the windows are run on (``"cuda"`` on a GPU machine); defaults to the input's device.
        device: device the full-volume map is stitched on (``"cpu"`` keeps big volumes out of GPU memory).
        amp: run the network under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU). Off by default: on CPU
            bfloat16 rarely pays and changes the scores slightly.
        progress: show MONAI's per-window progress bar.
    """

    def __init__(
        self,
        *,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.25,
        mode: str = "gaussian",
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: str = "constant",
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        amp: bool = False,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.window_inferer = SlidingWindowInferer(
            roi_size=roi_size,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            mode=mode,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            sw_device=sw_device,
            device=device,
            progress=progress,
        )
        self.amp = amp

    @property
    def roi_size(self) -> tuple[int, ...]:
        """The window size."""
        return tuple(self.window_inferer.roi_size)

    def predict(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """Run the sliding window over whole volumes and aggregate to case scores.

        Args:
            inputs: ``(B, in_channels, *spatial)`` preprocessed volumes (any size; smaller ones are padded).
            network: a model with ``class_activation`` or a dense module (see :func:`as_dense_predictor`).
            args: passed through to the network.
            kwargs: passed through to the network.

        Returns:
            :class:`DensePrediction` with logits, probabilities and the stitched class map (float32).

        Raises:
            ValueError: if the network returns ``(B, C)`` logits instead of a dense map.
        """
        predictor = as_dense_predictor(network)

        def checked_predictor(window: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
            with self._autocast(window.device):
                dense = predictor(window, *a, **kw)
            if dense.ndim != window.ndim:
                raise ValueError(
                    f"network returned shape {tuple(dense.shape)} for a window {tuple(window.shape)}: sliding-window "
                    "classification needs a dense class map; pass a model with class_activation() or a "
                    "pipeline.networks.DenseClassifier"
                )
            # blend in float32 even under autocast: float16 sums over many windows lose precision
            return dense.float()

        if isinstance(inputs, MetaTensor):
            # the stitched map lives on a coarser grid than the input: do not let MONAI copy the input's affine onto it
            inputs = inputs.as_tensor()
        with torch.no_grad():
            class_map = self.window_inferer(inputs, checked_predictor, *args, **kwargs).float()
        logits = class_map.flatten(start_dim=2).mean(dim=2)
        return DensePrediction(logits=logits, probabilities=torch.softmax(logits, dim=1), class_map=class_map)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """The ``(B, C)`` case logits of :meth:`predict` (the MONAI :class:`~monai.inferers.Inferer` interface)."""
        return self.predict(inputs, network, *args, **kwargs).logits

    def _autocast(self, device: torch.device):
        if not self.amp:
            return contextlib.nullcontext()
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast(device.type, dtype=torch.bfloat16)
