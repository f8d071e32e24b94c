"""Heatmap kinds: the dense CAM, Grad-CAM, LayerCAM, the AAM's spatial attention and occlusion, over whole volumes.

``--heatmap cam|gradcam|gradcampp|layercam|attention|occlusion|occlusion_c2f`` (``aamct evaluate-cohort``, the
inference bundle's ``heatmap_kind``):

* ``cam``: the network's own dense class-activation map (:mod:`pipeline.inference.sliding`), as positive-class
  log-odds per location; its spatial mean is the case log-odds. At the last stage's resolution (1/32 of the
  preprocessed grid for the default ResNets, 1/8 in-plane for ``aam_student_small_os8``), upsampled to the window
  with each cell centred where the network centres it (:func:`map_origin`, :func:`aligned_upsample`).
* ``gradcam`` / ``gradcampp``: MONAI's :class:`~monai.visualize.GradCAM` / :class:`~monai.visualize.GradCAMpp`
  (``compute_map``: ReLU of the gradient-weighted sum of a layer's activations) for the case log-odds of the positive
  class (``logit[positive] - logsumexp(logit[others])``; for two classes ``logit1 - logit0``), at the layer the
  registry names for the network (:attr:`pipeline.networks.NetworkSpec.gradcam_layer`) or another one.
* ``attention``: the AAM's spatial attention ``a_s`` (a sigmoid map, not class-specific) of one stage, averaged over
  the stage's units, or the mean over all stages (each upsampled to the finest one first), read through
  ``store_attention`` / ``last_spatial_attention`` (:mod:`pipeline.networks.attention`). AAM-ResNets only.
* ``layercam``: LayerCAM (Jiang et al., IEEE TIP 2021): ``ReLU(sum_c ReLU(dS/dA_c) * A_c)`` of each named layer (the
  positive-class log-odds ``S``, a comma-separated ``target_layer``, e.g. ``layer1,layer2,layer3,layer4``), each
  upsampled to the window and scaled to its maximum, averaged over the layers: multi-layer fusion, the shallow layers
  adding resolution. One forward and one backward pass per window; MONAI has no LayerCAM, hence written here.
* ``occlusion``: MONAI's :class:`~monai.visualize.OcclusionSensitivity`: how much the case log-odds of the positive
  class drop when a block of the network input (3/16 of the window per axis by default, 12 x 12 x 6 voxels of the
  64 x 64 x 32 window, moved in steps of half a block: :data:`DEFAULT_OCCLUSION_OVERLAP`) is replaced by the window's lowest value (air: 0 after the
  HU window). A perturbation map: it shows what the network's score depends on, at the block's resolution, for any
  network, at the price of one forward pass per block position (about 1,200 for a 64 x 64 x 32 window).
* ``occlusion_c2f``: the same measurement coarse to fine (:func:`coarse_to_fine_occlusion`): blocks of 1/4 of the
  window side by side (64 passes), then, around the ``occlusion_refine`` coarse block(s) with the largest drop (1 by
  default), the default occlusion's 3/16 blocks in half-block steps; the map is the coarse drop plus the fine drop where refined.
  All occluded copies of a window run in batches through the deployed CPU form (oneDNN at batch > 1); about 130
  passes for a 64 x 64 x 32 window (``MapMaker.passes`` counts them).

Whole volumes: the sliding window runs :class:`MapMaker` on each window. It returns two outputs, the dense class map
(for the case score, exactly as ``cam`` scores) and the window's map of the chosen kind, each at its own resolution,
and MONAI's :func:`~monai.inferers.sliding_window_inference` stitches both with the same Gaussian blending (it supports
tuple outputs with their own zoom scales). Grad-CAM is therefore computed *per window* (each window's own gradients
and channel weights, with gradients switched on inside the window call only) and the raw, un-normalised per-window
maps are blended; no per-window min-max scaling, which would make windows incomparable. The stitched map is then put
on the source grid (:func:`pipeline.inference.heatmap.resample_to_grid`) and, by default, restricted to the patient and
scaled (:func:`finish_map`).

What the values are is written into the NIfTI header (``descrip`` and ``intent_name``, see :func:`map_description`).
The maps are evidence displays, not segmentations: they say where the network's evidence for a positive call lies,
at the resolution of the layer they come from, and are scored against lesion masks in
:mod:`pipeline.inference.localisation` (``benchmarks/bench_localisation.py``).

The body and lung masks a map is restricted to are the scope check's (:func:`pipeline.data.scope.body_mask`,
:func:`pipeline.data.scope.lung_mask`; re-exported here): one definition of "lung" for the loader's verdict and the
map's region (no airway, no bowel gas).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity
from torch import nn

from pipeline.data.scope import body_mask, lung_mask
from pipeline.errors import UserError
from pipeline.inference.heatmap import map_affine, resample_to_grid
from pipeline.inference.sliding import (
    DenseClassificationInferer,
    DensePrediction,
    as_dense_predictor,
    positive_evidence,
)
from pipeline.networks import attention_modules

__all__ = [
    "DEFAULT_MAP_KIND",
    "MAP_KINDS",
    "MAP_RESTRICTIONS",
    "MapMaker",
    "MAP_VALUES",
    "MapPrediction",
    "body_mask",
    "aligned_upsample",
    "coarse_to_fine_occlusion",
    "finish_map",
    "lung_mask",
    "map_description",
    "map_origin",
    "map_on_source_grid",
    "predict_with_map",
    "written_map_description",
]

#: the map kinds, in the order the benchmark reports them
MAP_KINDS: tuple[str, ...] = ("cam", "gradcam", "gradcampp", "layercam", "attention", "occlusion", "occlusion_c2f")
#: the default kind, chosen by benchmarks/results/localisation.md (test positives, the demo's AAM-ResNet-18 at width
#: 0.25): coarse-to-fine occlusion found as many lesions as the dense occlusion on both difficulties (14/18 default;
#: hard 5/18 vs 4/18) with 129 instead of 1,001 forward passes per window; every one-pass map (CAM,
#: Grad-CAM, LayerCAM, attention, also at output stride 8 and with attention-MIL pooling) found at most 2/18
DEFAULT_MAP_KIND = "occlusion_c2f"
#: overlap of neighbouring occlusion blocks: 0.5 (half-block steps) found 17/18 lesions vs 13/18 for 1/3 (ResNet-18:
#: 14/18 vs 10/18), at 2.6x the forward passes (benchmarks/results/localisation.md)
DEFAULT_OCCLUSION_OVERLAP = 0.5
#: coarse-to-fine occlusion: the coarse blocks' share of the window per axis, and how many coarse peaks are refined
C2F_COARSE_FRACTION = 0.25
#: one refined coarse block: on the demo's AAM-ResNet-18 it found 14/18 (default) and 5/18 (hard) lesions at 129 passes
#: per window, against 14/18 and 4/18 for three refined blocks at 254 passes (bench_localisation, occlusion_c2f)
DEFAULT_OCCLUSION_REFINE = 1
#: where a finished map keeps its values: everywhere, inside the body, or inside the body's low-density (lung) region
MAP_RESTRICTIONS: tuple[str, ...] = ("none", "body", "lungs")
#: what a written map holds: ``relative`` (:func:`finish_map`: 0..1 inside the body) or ``raw`` (the kind's own units)
MAP_VALUES: tuple[str, ...] = ("relative", "raw")

_GRADIENT_KINDS = ("gradcam", "gradcampp")
_CAM_CLASSES = {"gradcam": GradCAM, "gradcampp": GradCAMpp}


class _CaseLogOdds(nn.Module):
    """``forward(x)`` = the ``(B, 1)`` case log-odds of the positive class, from one dense pass.

    Keeps that pass's dense class map (detached) so that the sliding window's score needs no second forward.
    """

    def __init__(self, model: nn.Module, positive_index: int) -> None:
        super().__init__()
        self.model = model
        self.positive_index = positive_index
        self.dense = as_dense_predictor(model)
        self.last_class_map = torch.empty(0)
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += int(x.shape[0])
        class_map = self.dense(x)
        self.last_class_map = class_map.detach()
        logits = class_map.flatten(start_dim=2).mean(dim=2)
        return positive_evidence(logits[:, :, None], positive_index=self.positive_index)[:, :, 0]


class MapMaker:
    """One window's dense class map and its map of one kind: the callable the sliding window runs.

    Args:
        network: the classifier (eager module with ``class_activation``, as :func:`pipeline.networks.build` makes).
        kind: one of :data:`MAP_KINDS`.
        target_layer: Grad-CAM layer, a module name of ``network`` (e.g. ``layer4``; the registry's
            ``gradcam_layer`` for the network). Required for ``gradcam`` / ``gradcampp``.
        attention_stage: ``mean`` (all stages) or a stage name (the first component of the AAM modules' names,
            ``layer1`` .. ``layer4`` for the AAM-ResNets).
        positive_index: the positive class.
        occlusion_size: the occluded block in input voxels (``None``: 3/16 of the window per axis).
        occlusion_overlap: overlap of neighbouring block positions (:data:`DEFAULT_OCCLUSION_OVERLAP`, 0.5: steps of
            half a block).
        occlusion_batch: block positions per forward pass (``occlusion``: MONAI's ``n_batch``; ``occlusion_c2f``:
            occluded copies per batch of the scoring form).
        occlusion_refine: coarse blocks refined by ``occlusion_c2f``.
        occlusion_value: what an occluded block is filled with, in network-input units (0.0: air, the HU window's
            low end).
        scoring_network: a module returning the dense class map, used instead of ``network`` wherever no hook or
            gradient is needed (the ``cam`` and ``occlusion`` kinds' forward passes): the CPU inference form of
            :func:`pipeline.inference.sliding.scoring_form`. ``None``: ``network``'s own ``class_activation``.

    Raises:
        UserError: an unknown kind, a missing or unknown layer, or ``attention`` on a network without AAMs.
    """

    def __init__(
        self,
        *,
        network: nn.Module,
        kind: str = DEFAULT_MAP_KIND,
        target_layer: str | None = None,
        attention_stage: str = "mean",
        positive_index: int = 1,
        occlusion_size: Sequence[int] | None = None,
        occlusion_overlap: float = DEFAULT_OCCLUSION_OVERLAP,
        occlusion_batch: int = 16,
        occlusion_refine: int = DEFAULT_OCCLUSION_REFINE,
        occlusion_value: float = 0.0,
        scoring_network: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if kind not in MAP_KINDS:
            raise UserError(f"--heatmap must be one of {', '.join(MAP_KINDS)}, got {kind!r}")
        self.network = network
        self.kind = kind
        self.positive_index = positive_index
        self.target_layer = target_layer
        self.attention_stage = attention_stage
        self.occlusion_size = None if occlusion_size is None else tuple(int(v) for v in occlusion_size)
        self.occlusion_overlap = float(occlusion_overlap)
        self.occlusion_batch = int(occlusion_batch)
        self.occlusion_refine = int(occlusion_refine)
        self.occlusion_value = float(occlusion_value)
        #: windows mapped (counted by every call); see :attr:`passes`
        self.windows = 0
        #: where the network's strided maps are centred (:func:`map_origin`), for the CAM kinds' upsampling
        self.origin = map_origin(network)
        # the attention kind reads what the eager modules store during the pass: a compiled form stores nothing
        eager_only = scoring_network is None or kind == "attention"
        self.dense = as_dense_predictor(network) if eager_only else scoring_network
        self._cam_class: type | None = None
        self._scorer: _CaseLogOdds | None = None
        self._attention: list[nn.Module] = []
        self._layers: list[str] = []
        if kind == "layercam":
            names = {name for name, _ in network.named_modules() if name}
            self._layers = [name.strip() for name in (target_layer or "").split(",") if name.strip()]
            unknown = [name for name in self._layers if name not in names]
            if not self._layers or unknown:
                raise UserError(
                    f"--heatmap layercam: the network has no layer {','.join(unknown) or target_layer!r} "
                    f"(give one or more, comma-separated, e.g. {','.join(sorted(n for n in names if '.' not in n))})"
                )
        elif kind in _GRADIENT_KINDS:
            names = {name for name, _ in network.named_modules() if name}
            if not target_layer or target_layer not in names:
                raise UserError(
                    f"--heatmap {kind}: the network has no layer {target_layer!r} to take Grad-CAM at "
                    f"(e.g. {', '.join(sorted(n for n in names if '.' not in n))})"
                )
            # MONAI's hooks put the wrapper back into *its* train/eval mode after each call (recursively): it must
            # be the network's own mode, or an eval-mode network would come back in training mode
            self._scorer = _CaseLogOdds(network, positive_index).train(network.training)
            self._cam_class = _CAM_CLASSES[kind]
        elif kind == "attention":
            self._attention = _stage_attention_modules(network, attention_stage)
        elif kind in ("occlusion", "occlusion_c2f"):
            scored = network if scoring_network is None else scoring_network
            self._scorer = _CaseLogOdds(scored, positive_index).train(network.training)

    @property
    def passes(self) -> int:
        """Forward passes (images through the network) spent so far: one per window for the score (Grad-CAM's and
        LayerCAM's backward pass not counted), plus every occluded copy."""
        occluded = self._scorer.images if self.kind in ("occlusion", "occlusion_c2f") and self._scorer else 0
        return self.windows + occluded

    @property
    def description(self) -> str:
        """What the raw map's values are, in words (see :func:`map_description`)."""
        return map_description(
            self.kind,
            target_layer=self.target_layer,
            attention_stage=self.attention_stage,
            occlusion_size=self.occlusion_size,
            occlusion_overlap=self.occlusion_overlap,
            occlusion_refine=self.occlusion_refine,
        )

    def __call__(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class_map (B, C, d, h, w), map (B, 1, d', h', w'))`` of one batch of windows, both detached."""
        self.windows += int(window.shape[0])
        if self.kind == "cam":
            class_map = self.dense(window)
            evidence = positive_evidence(class_map, positive_index=self.positive_index)
            return class_map, aligned_upsample(evidence, window.shape[2:], origin=self.origin)
        if self.kind == "attention":
            return self._attention_map(window)
        if self.kind == "occlusion":
            return self._occlusion_map(window)
        if self.kind == "occlusion_c2f":
            return self._coarse_to_fine_map(window)
        if self.kind == "layercam":
            return self._layercam_map(window)
        assert self._cam_class is not None and self._scorer is not None
        # gradients are needed inside the window only; the input itself needs none, but asking for them keeps the
        # graph alive when the loaded weights are frozen (requires_grad False)
        with (
            torch.enable_grad(),
            _monai_cam(
                self._cam_class, self._scorer, f"model.{self.target_layer}", upsampler=_aligned_upsampler(self.origin)
            ) as cam,
        ):
            raw = cam.compute_map(window.detach().clone().requires_grad_(True), class_idx=0)
        self.network.zero_grad(set_to_none=True)
        return self._scorer.last_class_map, raw.detach()

    def _occlusion_map(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._scorer is not None
        # blocks of 3/16 of the window localised better than quarter-window blocks on the demo (16/18 vs 10/18 peaks
        # on a lesion, in half-block steps; measured with bench_localisation on the networks' earlier defaults)
        size = self.occlusion_size or tuple(max(1, round(s * 3 / 16)) for s in window.shape[2:])
        # constant 0.0: the occluded block becomes air (the HU window's low end); the map is the scorer's log-odds with
        # each block occluded, blended over the overlapping positions by MONAI's sliding window
        occlusion = OcclusionSensitivity(
            nn_module=self._scorer,
            mask_size=size,
            n_batch=self.occlusion_batch,
            verbose=False,
            mode=self.occlusion_value,
            overlap=self.occlusion_overlap,
            activate=False,
        )
        with torch.no_grad():
            class_map = self.dense(window)
            logits = class_map.flatten(start_dim=2).mean(dim=2)
            base = positive_evidence(logits[:, :, None], positive_index=self.positive_index)[:, :, 0]  # (B, 1)
            drops = []
            for index in range(window.shape[0]):  # MONAI's occlusion takes one image at a time
                with warnings.catch_warnings():
                    # MONAI 1.x indexes with lists (a torch deprecation warning per call); nothing the user can act on
                    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
                    occluded, _ = occlusion(window[index : index + 1])
                drops.append(base[index].view(1, 1, *[1] * (window.ndim - 2)) - occluded.as_tensor()[:, :1])
        return class_map, torch.cat(drops).float()

    def _coarse_to_fine_map(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._scorer is not None
        fine = self.occlusion_size or tuple(max(1, round(s * 3 / 16)) for s in window.shape[2:])
        with torch.no_grad():
            class_map = self.dense(window)
            logits = class_map.flatten(start_dim=2).mean(dim=2)
            base = positive_evidence(logits[:, :, None], positive_index=self.positive_index)[:, 0, 0]
            maps = []
            for index in range(window.shape[0]):
                heat, passes = coarse_to_fine_occlusion(
                    self._scorer,
                    window[index : index + 1],
                    base=float(base[index]),
                    fine_size=fine,
                    fine_overlap=self.occlusion_overlap,
                    refine=self.occlusion_refine,
                    batch=self.occlusion_batch,
                    value=self.occlusion_value,
                )
                maps.append(heat)
        return class_map, torch.cat(maps).float()

    def _layercam_map(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activations: list[torch.Tensor] = []
        handles = [
            self.network.get_submodule(name).register_forward_hook(lambda _m, _i, out: activations.append(out))
            for name in self._layers
        ]
        try:
            with torch.enable_grad():
                dense = as_dense_predictor(self.network)
                class_map = dense(window.detach().clone().requires_grad_(True))
                logits = class_map.flatten(start_dim=2).mean(dim=2)
                score = positive_evidence(logits[:, :, None], positive_index=self.positive_index).sum()
                gradients = torch.autograd.grad(score, activations)
        finally:
            for handle in handles:
                handle.remove()
        self.network.zero_grad(set_to_none=True)
        size = tuple(window.shape[2:])
        fused = torch.zeros((window.shape[0], 1, *size), dtype=torch.float32, device=window.device)
        for activation, gradient in zip(activations, gradients, strict=True):
            layer_map = F.relu((F.relu(gradient) * activation).sum(dim=1, keepdim=True)).detach().float()
            layer_map = aligned_upsample(layer_map, size, origin=self.origin)
            peak = layer_map.flatten(start_dim=1).amax(dim=1).clamp_min(1e-12).view(-1, 1, *[1] * len(size))
            fused += layer_map / peak
        return class_map.detach(), fused / len(activations)

    def _attention_map(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for module in self._attention:
            module.store_attention = True
        try:
            class_map = self.dense(window)
            maps = [module.last_spatial_attention.detach() for module in self._attention]
        finally:
            for module in self._attention:
                module.store_attention = False
                module.last_channel_attention = torch.empty(0)
                module.last_spatial_attention = torch.empty(0)
        if any(m.numel() == 0 for m in maps):
            raise UserError("--heatmap attention: an attention module of this network has no spatial branch")
        finest = max((tuple(m.shape[2:]) for m in maps), key=lambda shape: int(np.prod(shape)))
        resized = [m if tuple(m.shape[2:]) == finest else F.interpolate(m, size=finest, mode="trilinear") for m in maps]
        return class_map, torch.stack(resized).mean(dim=0)


def map_origin(network: nn.Module) -> float | None:
    """Where cell 0 of ``network``'s strided maps is centred, in input voxels (``None``: ``(f - 1) / 2``).

    A convolution with symmetric padding (``padding = dilation * (kernel - 1) / 2``) and stride ``s`` centres its
    output ``i`` on input ``s * i``, and so does a 3x3x3 max-pool with padding 1: every ResNet here (the AAM-ResNets
    and MONAI's ResNets: 7x7x7 stem, max-pool, strided 3x3x3 or 1x1x1 convolutions) centres cell ``j`` of a map at
    stride ``f`` on input voxel ``f * j``, at every layer. ``F.interpolate(align_corners=False)`` (MONAI's CAM
    upsampler, and MONAI's sliding-window placement of a coarse output) assumes ``f * j + (f - 1) / 2`` instead,
    which moved every map of these networks by half a cell (3.5 voxels at stride 8, 17 mm on the demo's 5 mm grid).
    A network may state its own ``map_origin`` attribute; networks without one (DenseNet's 2x2 average pools, the
    U-Net encoder's 2x2 max-pools, which do centre at ``f * j + (f - 1) / 2`` or close to it) keep the interpolation's
    convention. Written here: MONAI's upsamplers have no origin.
    """
    stated = getattr(network, "map_origin", None)
    if stated is not None:
        return float(stated)
    from monai.networks.nets import ResNet

    from pipeline.networks.aam_resnet import AAMResNet

    return 0.0 if isinstance(network, (AAMResNet, ResNet)) else None


def aligned_upsample(values: torch.Tensor, size: Sequence[int], *, origin: float | None = 0.0) -> torch.Tensor:
    """Linear upsampling of a strided map ``(B, C, *cells)`` to ``size``, cell ``j`` centred on ``f * j + origin``.

    ``origin=None`` is ``F.interpolate(..., align_corners=False)`` (cell centres at ``f * j + (f - 1) / 2``). Beyond
    the first and last cell centres the values are held (the map's borders extended).

    Args:
        values: the map.
        size: the input's spatial size.
        origin: input position of cell 0's centre (:func:`map_origin`).

    Returns:
        ``(B, C, *size)`` float map.
    """
    values = values.float()
    size = tuple(int(n) for n in size)
    if origin is None:
        mode = ("linear", "bilinear", "trilinear")[len(size) - 1]
        return F.interpolate(values, size=size, mode=mode, align_corners=False)
    out = values
    for axis, target in enumerate(size):
        cells = out.shape[2 + axis]
        factor = target / cells
        # input voxel x lies at cell coordinate (x - origin) / factor: linear weights between its two neighbours
        coordinate = ((torch.arange(target, dtype=torch.float32, device=values.device) - origin) / factor).clamp(
            0, cells - 1
        )
        low = coordinate.floor().long()
        high = (low + 1).clamp(max=cells - 1)
        weight = (coordinate - low.float()).view([1] * (2 + axis) + [target] + [1] * (len(size) - axis - 1))
        out = out.index_select(2 + axis, low) * (1 - weight) + out.index_select(2 + axis, high) * weight
    return out


def _aligned_upsampler(origin: float | None) -> Callable[[Sequence[int]], Callable[[torch.Tensor], torch.Tensor]]:
    """MONAI's ``upsampler`` interface (``upsampler(spatial_size)(map)``) over :func:`aligned_upsample`."""

    def make(spatial_size: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda values: aligned_upsample(values, spatial_size, origin=origin)

    return make


def _starts(length: int, block: int, step: int, low: int = 0, high: int | None = None) -> list[int]:
    """Block starts along one axis: from ``low`` in ``step`` until a block covers ``high``, clipped to the axis."""
    high = length if high is None else high
    block = min(block, length)
    last = max(0, length - block)
    starts, start = [], max(0, low)
    while True:
        starts.append(min(start, last))
        if start + block >= high or start >= last:
            break
        start += step
    return sorted(set(starts))


def coarse_to_fine_occlusion(
    scorer: Callable[[torch.Tensor], torch.Tensor],
    window: torch.Tensor,
    *,
    base: float,
    fine_size: Sequence[int],
    fine_overlap: float = DEFAULT_OCCLUSION_OVERLAP,
    coarse_fraction: float = C2F_COARSE_FRACTION,
    refine: int = DEFAULT_OCCLUSION_REFINE,
    batch: int = 16,
    value: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Occlusion sensitivity of one window, coarse blocks first, then fine blocks around the largest coarse drops.

    1. Coarse: the window is tiled by blocks of ``coarse_fraction`` of its size per axis, side by side; each block is
       replaced by ``value`` and the drop of the case log-odds (``base - scorer(occluded)``) is that block's value.
    2. Fine: the ``refine`` coarse blocks with the largest drop, each grown by half a fine block on every side, are
       covered by ``fine_size`` blocks in steps of ``1 - fine_overlap`` of a block (the dense occlusion's blocks);
       each voxel gets the mean drop of the fine blocks covering it.

    The map is the coarse drop plus the fine drop (0 where nothing was refined), so its peak lies where the fine
    blocks found the most evidence inside the coarse blocks that held the most. Written here: MONAI's
    :class:`~monai.visualize.OcclusionSensitivity` has a single, dense grid of blocks.

    Args:
        scorer: occluded copies ``(N, C, *spatial)`` -> case log-odds ``(N, 1)`` (batched).
        window: ``(1, C, *spatial)``.
        base: the window's own log-odds.
        fine_size: fine block in voxels per axis.
        fine_overlap: overlap of neighbouring fine blocks.
        coarse_fraction: coarse block side as a share of the window's.
        refine: coarse blocks refined.
        batch: occluded copies per scorer call.
        value: what an occluded block holds (0: air after the HU window).

    Returns:
        ``(map (1, 1, *spatial), forward passes)``.
    """
    shape = tuple(int(n) for n in window.shape[2:])
    coarse = tuple(max(1, round(n * coarse_fraction)) for n in shape)
    fine = tuple(min(max(1, int(b)), n) for b, n in zip(fine_size, shape, strict=True))
    steps = tuple(max(1, int(round(b * (1 - fine_overlap)))) for b in fine)

    def drops(boxes: list[tuple[slice, ...]]) -> torch.Tensor:
        out = []
        for first in range(0, len(boxes), batch):
            chunk = boxes[first : first + batch]
            copies = window.repeat(len(chunk), *[1] * (window.ndim - 1))
            for number, box in enumerate(chunk):
                copies[(number, slice(None), *box)] = value
            out.append(base - scorer(copies).reshape(-1).float())
        return torch.cat(out) if out else torch.zeros(0)

    coarse_boxes = [
        tuple(slice(start, start + size) for start, size in zip(corner, coarse, strict=True))
        for corner in np.ndindex(*[-(-n // b) for n, b in zip(shape, coarse, strict=True)])
    ]
    coarse_boxes = [
        tuple(slice(sl.start * b, min(sl.start * b + b, n)) for sl, b, n in zip(box, coarse, shape, strict=True))
        for box in coarse_boxes
    ]
    coarse_drops = drops(coarse_boxes)
    heat = torch.zeros(shape, dtype=torch.float32)
    for box, drop in zip(coarse_boxes, coarse_drops, strict=True):
        heat[box] = drop
    top = torch.argsort(coarse_drops, descending=True)[: max(0, refine)].tolist()
    fine_boxes: set[tuple[tuple[int, int], ...]] = set()
    for number in top:
        region = coarse_boxes[number]
        per_axis = [
            _starts(n, b, st, low=sl.start - b // 2, high=min(n, sl.stop + b // 2))
            for sl, b, st, n in zip(region, fine, steps, shape, strict=True)
        ]
        for corner in np.ndindex(*[len(axis) for axis in per_axis]):
            fine_boxes.add(tuple((per_axis[a][i], per_axis[a][i] + fine[a]) for a, i in enumerate(corner)))
    ordered = sorted(fine_boxes)
    fine_drops = drops([tuple(slice(lo, hi) for lo, hi in box) for box in ordered])
    total, count = torch.zeros(shape), torch.zeros(shape)
    for box, drop in zip(ordered, fine_drops, strict=True):
        where = tuple(slice(lo, hi) for lo, hi in box)
        total[where] += drop
        count[where] += 1
    refined = count > 0
    heat[refined] += total[refined] / count[refined]
    return heat[None, None].to(window.device), len(coarse_boxes) + len(ordered)


#: the hook tables of a module (torch.nn.Module's own attributes) a MONAI CAM class adds to
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
)


@contextlib.contextmanager
def _monai_cam(cam_class: type, scorer: nn.Module, layer: str, *, upsampler: Callable | None = None) -> Iterator[Any]:
    """A MONAI Grad-CAM object whose hooks live only inside the ``with`` block.

    MONAI's ``ModelWithHooks`` registers a forward and a full backward hook on the target layer and keeps no handle to
    remove them (and switches an in-place layer to out-of-place for good). Left on the network, the hooks pile up with
    every map maker and make it impossible to script (TorchScript refuses two hooks of one name), so the deployed CPU
    form of the same network would silently fall back to eager. Written here because MONAI offers no removal.
    """
    module = scorer.get_submodule(layer)
    before = {table: set(getattr(module, table, {})) for table in _HOOK_TABLES}
    state = {key: module.__dict__[key] for key in ("inplace", "_is_full_backward_hook") if key in module.__dict__}
    try:
        # the scorer's names are "model.<layer>"
        yield cam_class(
            nn_module=scorer, target_layers=layer, **({} if upsampler is None else {"upsampler": upsampler})
        )
    finally:
        for table in _HOOK_TABLES:
            hooks = getattr(module, table, None)
            for key in set(hooks or {}) - before[table]:
                del hooks[key]
        module.__dict__.update(state)


def _stage_attention_modules(network: nn.Module, stage: str) -> list[nn.Module]:
    """The AAM modules of one stage (or of all), in forward order."""
    chosen = {id(m) for m in attention_modules(network)}
    named = [(name, module) for name, module in network.named_modules() if id(module) in chosen]
    if not named:
        raise UserError(
            f"--heatmap attention needs a network with AAM modules ({type(network).__name__} has none); "
            "use cam, gradcam or gradcampp"
        )
    stages = list(dict.fromkeys(name.split(".")[0] for name, _ in named))
    if stage == "mean":
        return [module for _, module in named]
    if stage not in stages:
        raise UserError(f"--attention-stage must be mean or one of {', '.join(stages)}, got {stage!r}")
    return [module for name, module in named if name.split(".")[0] == stage]


@dataclass(frozen=True)
class MapPrediction:
    """A sliding-window pass with a map.

    Attributes:
        prediction: the case scores and stitched class map (as :meth:`DenseClassificationInferer.predict` gives).
        heat: ``(B, 1, d, h, w)`` stitched map of the maker's kind (raw values, see :attr:`MapMaker.description`).
        kind: the map kind.
        description: what the values are.
    """

    prediction: DensePrediction
    heat: torch.Tensor
    kind: str
    description: str


def predict_with_map(inferer: DenseClassificationInferer, inputs: torch.Tensor, maker: MapMaker) -> MapPrediction:
    """Sliding-window case scores and a stitched map of the maker's kind, in one pass over the windows.

    Args:
        inferer: the cohort's inferer (window size, overlap, blending, devices are its own).
        inputs: ``(B, 1, *spatial)`` preprocessed volumes.
        maker: the map maker (its network is the one scored).

    Returns:
        The :class:`MapPrediction`. For ``cam`` the scores and map equal
        ``inferer.predict`` and :func:`positive_evidence` of its class map.
    """
    if isinstance(inputs, MetaTensor):
        inputs = inputs.as_tensor()

    def window_outputs(window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with inferer._autocast(window.device) if maker.kind not in _GRADIENT_KINDS else contextlib.nullcontext():
            class_map, heat = maker(window)
        if class_map.ndim != window.ndim or heat.ndim != window.ndim:
            raise ValueError(
                f"map maker returned shapes {tuple(class_map.shape)} / {tuple(heat.shape)} for a window "
                f"{tuple(window.shape)}: both must be dense maps"
            )
        # the map first: MONAI 1.x's sliding window fails to stitch a window-sized output that follows a smaller one
        # (its importance map is resized for the first output and reused); the finer output first works
        return heat.float(), class_map.float()

    no_grad = torch.no_grad() if maker.kind not in _GRADIENT_KINDS else contextlib.nullcontext()
    with no_grad:
        heat, class_map = inferer.window_inferer(inputs, window_outputs)
    class_map, heat = class_map.float().detach(), heat.float().detach()
    logits = class_map.flatten(start_dim=2).mean(dim=2)
    prediction = DensePrediction(logits=logits, probabilities=torch.softmax(logits, dim=1), class_map=class_map)
    return MapPrediction(prediction=prediction, heat=heat, kind=maker.kind, description=maker.description)


def map_on_source_grid(
    heat: torch.Tensor | np.ndarray,
    *,
    prepared_affine: np.ndarray,
    prepared_shape: Sequence[int],
    source_affine: np.ndarray,
    source_shape: Sequence[int],
    origin: float | None = None,
) -> np.ndarray:
    """A stitched map (on a grid covering the preprocessed volume) resampled onto the image as loaded.

    Args:
        heat: ``(d, h, w)`` map; its grid spans the preprocessed volume (:func:`~pipeline.inference.heatmap.map_affine`).
        prepared_affine: affine of the preprocessed volume.
        prepared_shape: its spatial shape.
        source_affine: affine of the image as loaded.
        source_shape: its spatial shape.
        origin: where a coarse map's cell 0 is centred on the preprocessed grid (:func:`map_origin` of the network;
            ``None``: ``(f - 1) / 2``); no effect for a map at the preprocessed grid's own size.

    Returns:
        float32 ``source_shape`` array.
    """
    return resample_to_grid(
        heat,
        source_affine=map_affine(prepared_affine, prepared_shape, tuple(heat.shape), origin=origin),
        target_affine=source_affine,
        target_shape=source_shape,
    )


def written_map_description(raw_description: str, *, values: str, region: str = "body") -> tuple[str, str]:
    """The NIfTI ``descrip`` and the colour-bar label of a written map.

    Args:
        raw_description: what the raw map is (:attr:`MapMaker.description`).
        values: ``relative`` or ``raw`` (:data:`MAP_VALUES`).
        region: where a relative map keeps its values (:data:`MAP_RESTRICTIONS`).

    Returns:
        ``(descrip, colorbar_label)``.

    Raises:
        ValueError: for an unknown ``values``.
    """
    if values not in MAP_VALUES:
        raise ValueError(f"heatmap values must be one of {MAP_VALUES}, not {values!r}")
    if region not in MAP_RESTRICTIONS:
        raise ValueError(f"heatmap region must be one of {MAP_RESTRICTIONS}, not {region!r}")
    if values == "relative":
        where = "volume" if region == "none" else region
        return (
            f"aamct {raw_description}; 0-1 of max in {where}, 0 outside",
            f"{raw_description} (0-1 of max in {where})",
        )
    return f"aamct {raw_description}; raw values", raw_description


def map_description(
    kind: str,
    *,
    target_layer: str | None = None,
    attention_stage: str = "mean",
    occlusion_size: Sequence[int] | None = None,
    occlusion_overlap: float = DEFAULT_OCCLUSION_OVERLAP,
    occlusion_refine: int = DEFAULT_OCCLUSION_REFINE,
) -> str:
    """What a raw map of ``kind`` holds, in a few words (the NIfTI ``descrip`` starts with it).

    Args:
        kind: one of :data:`MAP_KINDS`.
        target_layer: the Grad-CAM layer.
        attention_stage: the attention stage.
        occlusion_size: the occluded block (``None``: 3/16 of the window per axis).
        occlusion_overlap: the blocks' overlap (the step is ``1 - overlap`` of a block).
        occlusion_refine: coarse blocks refined (``occlusion_c2f``).

    Returns:
        The description.
    """
    if kind == "cam":
        return "CAM positive log-odds"
    if kind in _GRADIENT_KINDS:
        return f"{'Grad-CAM++' if kind == 'gradcampp' else 'Grad-CAM'} {target_layer} of positive log-odds"
    if kind == "occlusion":
        block = "x".join(str(v) for v in occlusion_size) if occlusion_size else "3/16 window"
        return f"occlusion {block} step {1 - occlusion_overlap:.2g}: log-odds drop"
    if kind == "occlusion_c2f":
        block = "x".join(str(v) for v in occlusion_size) if occlusion_size else "3/16 window"
        return f"occlusion 1/4 window, then {block} step {1 - occlusion_overlap:.2g} at {occlusion_refine} peaks"
    if kind == "layercam":
        return f"LayerCAM {target_layer} of positive log-odds"
    return f"AAM spatial attention {attention_stage}"


def finish_map(
    heat: np.ndarray,
    *,
    kind: str,
    hu: np.ndarray | None = None,
    affine: np.ndarray | torch.Tensor | None = None,
    restrict_to: str = "body",
) -> np.ndarray:
    """The map a person sees: positive evidence only, zero outside the patient, scaled to 0..1 by its maximum there.

    Why: a CAM's strongest values can lie in the air in front of the patient (the class map is coarse and its
    border windows see mostly air); scaling by a maximum that lies outside the body would hide the lungs' contrast,
    and a peak in the air points at nothing. Negative log-odds (evidence *against* a positive call) are set to 0.

    Args:
        heat: the raw map on the source grid.
        kind: the map kind (``attention`` maps are min-max scaled inside the body: they are all positive).
        hu: the CT on the same grid (needed unless ``restrict_to`` is ``none``).
        affine: the grid's affine (for :func:`body_mask`).
        restrict_to: ``body``, ``lungs`` (:func:`lung_mask`) or ``none``.

    Returns:
        float32 array in ``[0, 1]``.

    Raises:
        ValueError: for an unknown ``restrict_to`` or a missing ``hu``.
    """
    if restrict_to not in MAP_RESTRICTIONS:
        raise ValueError(f"restrict_to must be one of {MAP_RESTRICTIONS}, not {restrict_to!r}")
    values = np.asarray(heat, dtype=np.float32)
    inside = np.ones(values.shape, dtype=bool)
    if restrict_to != "none":
        if hu is None:
            raise ValueError(f"restrict_to={restrict_to!r} needs the CT (hu) on the map's grid")
        inside = body_mask(hu, affine) if restrict_to == "body" else lung_mask(hu, affine)
    if kind == "attention":
        low = float(values[inside].min()) if inside.any() else 0.0
        values = values - low
    values = np.where(inside, np.clip(values, 0.0, None), 0.0).astype(np.float32)
    peak = float(values.max())
    return values / peak if peak > 0 else values
