"""One case, end to end: load -> preprocess -> sliding-window inference -> heatmap NIfTI -> PNG montage.

:class:`CasePredictor` holds the pieces a bundle config defines (network, preprocessing chain, inferer) and runs them
on one image, timing every stage. The preprocessing chain is the training one (``pipeline.transforms``); its first
transform (``LoadImaged``) is run on its own, so that the image *as loaded* (HU, acquired grid and RAS affine, from
:class:`pipeline.data.reader.CTImageReader`) is available as the target geometry of the heatmap and as the
background of the montage, and so that loading and preprocessing are timed separately.

Failures are raised as :class:`CaseFailure`, so that the cohort job can record a one-line reason and go on with the
next case. A user-facing problem (a :class:`~pipeline.errors.UserError`, e.g. the loader's ``<path>: <reason>`` for a
scan the ingestion rejects) is recorded as it is worded; anything else names the stage it broke
(``preprocessing failed: ...``, ``inference failed: ...``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, LoadImage, LoadImaged

from pipeline.data.scope import OUT_OF_SCOPE, ScanOutOfScope
from pipeline.errors import UserError
from pipeline.inference.heatmap import LUNG_WINDOW_HU, write_heatmap_nifti, write_overlay_png
from pipeline.inference.maps import (
    DEFAULT_MAP_KIND,
    DEFAULT_OCCLUSION_OVERLAP,
    DEFAULT_OCCLUSION_REFINE,
    MapMaker,
    finish_map,
    map_on_source_grid,
    predict_with_map,
    written_map_description,
)
from pipeline.inference.sliding import DEFAULT_CPU_FORM, DenseClassificationInferer, positive_evidence, scoring_form

__all__ = ["STAGES", "CaseFailure", "CasePrediction", "CasePredictor", "split_loading"]

#: the timed stages, in order: ``scope`` is the loader's scope check (timed by the loader, taken out of ``load``),
#: ``heatmap`` the map on the source grid, ``heatmap_nifti`` writing it, ``montage`` the PNG
STAGES: tuple[str, ...] = ("load", "scope", "preprocess", "inference", "heatmap", "heatmap_nifti", "montage")

#: reason prefix per failing stage (the evaluation report groups rejections by this leading phrase)
_STAGE_REASON = {
    "load": "unreadable image",
    "preprocess": "preprocessing failed",
    "inference": "inference failed",
    "heatmap": "heatmap failed",
    "heatmap_nifti": "heatmap failed",
    "montage": "montage failed",
}


class CaseFailure(Exception):
    """A case could not be scored; ``stage`` says where, the message says why, in one line.

    Args:
        stage: one of :data:`STAGES`.
        detail: what went wrong.
        stage_prefix: start the message with the stage's phrase (``unreadable image: ...``); ``False`` keeps
            ``detail`` as the whole message (a reason already worded for the user).
        status: the row status: ``error``, or ``out_of_scope`` for a scan the loader's scope check refused.
        scope: the scope columns (:meth:`pipeline.data.scope.ScopeResult.columns`) of a refused scan.
    """

    def __init__(
        self,
        stage: str,
        detail: str,
        *,
        stage_prefix: bool = True,
        status: str = "error",
        scope: Mapping[str, Any] | None = None,
    ) -> None:
        self.stage = stage
        self.status = status
        #: seconds per stage up to and including the failing one (set by the stage timer)
        self.stage_seconds: dict[str, float] = {}
        self.scope = dict(scope or {})
        self.detail = " ".join(str(detail).split())
        super().__init__(f"{_STAGE_REASON.get(stage, stage)}: {self.detail}" if stage_prefix else self.detail)


@dataclass(frozen=True)
class CasePrediction:
    """The result of one case.

    Attributes:
        probabilities: ``(C,)`` class probabilities (softmax of the case logits).
        logits: ``(C,)`` case logits.
        stage_seconds: wall-clock seconds per stage that ran (keys from :data:`STAGES`).
        heatmap: path of the heatmap NIfTI, if written.
        montage: path of the PNG montage, if written.
        map_shape: spatial shape of the stitched class map.
        source_shape: spatial shape of the image as loaded (the heatmap's shape).
        scope: the scope columns of the scan as loaded (``scope``, ``lung_ml``, ``lung_extent_mm``, ``lung_cut``,
            ``scope_note``; :data:`pipeline.data.scope.SCOPE_COLUMNS`), empty when the loader measured none.
        map_values: the finished map on the source grid (what the heatmap NIfTI stores, as float32), when
            :meth:`CasePredictor.predict_loaded` was asked to keep it (``keep_map=True``).
    """

    probabilities: np.ndarray
    logits: np.ndarray
    stage_seconds: dict[str, float] = field(default_factory=dict)
    heatmap: Path | None = None
    montage: Path | None = None
    map_shape: tuple[int, ...] = ()
    source_shape: tuple[int, ...] = ()
    map_values: np.ndarray | None = field(default=None, repr=False, compare=False)
    scope: dict[str, Any] = field(default_factory=dict)


def split_loading(preprocessing: Callable) -> tuple[Callable, Callable]:
    """Split a preprocessing chain into its loading transform and the rest.

    Args:
        preprocessing: a MONAI ``Compose`` (nested ones are flattened) whose first transform is ``LoadImaged`` or
            ``LoadImage``, e.g. :func:`pipeline.transforms.infer_transforms`.

    Returns:
        ``(load, rest)``, both callables on the data dictionary.

    Raises:
        ValueError: if the chain does not start with a loading transform.
    """
    transforms = list(preprocessing.flatten().transforms) if isinstance(preprocessing, Compose) else []
    if not transforms or not isinstance(transforms[0], (LoadImaged, LoadImage)):
        raise ValueError(
            "the inference preprocessing must be a monai Compose starting with LoadImaged "
            "(e.g. pipeline.transforms.infer_transforms): the heatmap is mapped back onto the image as loaded"
        )
    return transforms[0], Compose(transforms[1:])


class CasePredictor:
    """Score one image and write its heatmap and montage.

    Args:
        network: the classifier (``class_activation`` or dense output, see
            :func:`pipeline.inference.sliding.as_dense_predictor`), already on its device and holding its weights.
        inferer: the :class:`~pipeline.inference.sliding.DenseClassificationInferer`.
        preprocessing: the training preprocessing chain without labels, starting with ``LoadImaged`` (see
            :func:`split_loading`).
        image_key: key of the image in the data dictionary.
        positive_index: class index whose probability is reported and whose evidence is the heatmap.
        input_device: device the preprocessed volume is put on before the sliding window (keep ``"cpu"`` and let
            the inferer's ``sw_device`` move windows to the GPU, so the whole volume need not fit in GPU memory).
        write_heatmap: write ``<case_id>.nii.gz`` in the source geometry.
        write_montage: write ``<case_id>.png``.
        heatmap_dtype: ``"uint8"`` (scaled, compact) or ``"float32"``; see
            :func:`pipeline.inference.heatmap.write_heatmap_nifti`.
        montage_slices: unused (the PNG is the three-plane overlay of
            :func:`pipeline.inference.heatmap.write_overlay_png`); kept for configs that set it.
        window_hu: display window of the PNG.
        heatmap_kind: ``cam``, ``gradcam``, ``gradcampp`` or ``attention`` (:mod:`pipeline.inference.maps`); the
            case score is the same for every kind.
        gradcam_layer: the Grad-CAM layer (the registry's ``gradcam_layer`` of the network).
        attention_stage: the attention map's stage, or ``mean``.
        heatmap_values: ``relative`` (0..1 inside ``heatmap_region``, see :func:`pipeline.inference.maps.finish_map`)
            or ``raw`` (the kind's own units, e.g. CAM log-odds).
        heatmap_region: where a relative map keeps its values: ``lungs``, ``body`` or ``none``.
        occlusion_overlap: overlap of the occlusion blocks (``occlusion`` kind; see
            :data:`pipeline.inference.maps.DEFAULT_OCCLUSION_OVERLAP`).
        occlusion_size: the (fine) occluded block in network-input voxels (``None``: 3/16 of the window per axis).
        occlusion_refine: coarse blocks ``occlusion_c2f`` refines.
        occlusion_value: what an occluded block holds, in network-input units (0.0: air).
        cpu_form: how the scoring passes (the score, ``cam``, ``occlusion``) run when the network is on the CPU:
            ``deployed`` (default: TorchScript, frozen, oneDNN; see :func:`pipeline.inference.sliding.scoring_form`)
            or ``eager``. Grad-CAM and attention maps always run the eager network (they need hooks).
    """

    def __init__(
        self,
        *,
        network: torch.nn.Module,
        inferer: DenseClassificationInferer,
        preprocessing: Callable,
        image_key: str = "image",
        positive_index: int = 1,
        input_device: torch.device | str = "cpu",
        write_heatmap: bool = True,
        write_montage: bool = True,
        heatmap_dtype: str = "uint8",
        montage_slices: int = 12,
        window_hu: tuple[float, float] = LUNG_WINDOW_HU,
        heatmap_kind: str = DEFAULT_MAP_KIND,
        gradcam_layer: str | None = None,
        attention_stage: str = "mean",
        heatmap_values: str = "relative",
        heatmap_region: str = "body",
        occlusion_overlap: float = DEFAULT_OCCLUSION_OVERLAP,
        occlusion_size: Sequence[int] | None = None,
        occlusion_refine: int = DEFAULT_OCCLUSION_REFINE,
        occlusion_value: float = 0.0,
        cpu_form: str = DEFAULT_CPU_FORM,
    ) -> None:
        self.network = network.eval()
        self.input_device = torch.device(input_device)
        self.scoring_network = scoring_form(self.network, form=cpu_form)
        self.map_maker = MapMaker(
            network=self.network,
            scoring_network=self.scoring_network,
            occlusion_overlap=occlusion_overlap,
            occlusion_size=occlusion_size,
            occlusion_refine=occlusion_refine,
            occlusion_value=occlusion_value,
            kind=heatmap_kind,
            target_layer=gradcam_layer,
            attention_stage=attention_stage,
            positive_index=positive_index,
        )
        self.heatmap_values = heatmap_values
        self.heatmap_region = heatmap_region
        self.map_text = written_map_description(
            self.map_maker.description, values=heatmap_values, region=heatmap_region
        )
        self.inferer = inferer
        self.load, self.preprocess = split_loading(preprocessing)
        self.image_key = image_key
        self.positive_index = positive_index
        self.write_heatmap = write_heatmap
        self.write_montage = write_montage
        self.heatmap_dtype = heatmap_dtype
        self.montage_slices = montage_slices
        self.window_hu = tuple(window_hu)

    def __call__(
        self,
        image: str | os.PathLike,
        *,
        case_id: str,
        heatmap_dir: str | os.PathLike | None = None,
        label: str | None = None,
    ) -> CasePrediction:
        """Run every stage on one image.

        Args:
            image: DICOM series folder or NIfTI file.
            case_id: pseudonymous case id, used for file names and the montage title.
            heatmap_dir: folder of ``<case_id>.nii.gz`` / ``<case_id>.png``; ``None`` writes neither.
            label: the case's reference label, shown in the PNG's caption (``None``: unlabelled).

        Returns:
            The :class:`CasePrediction`.

        Raises:
            CaseFailure: naming the failing stage. ``KeyboardInterrupt`` / ``SystemExit`` pass through untouched.
        """
        seconds: dict[str, float] = {}
        path = Path(image)  # a missing path is the loader's to report, in the same words as any rejected scan

        with _StageTimer("load", seconds):
            loaded = self.load({self.image_key: str(path)})
            meta: Mapping = getattr(loaded.get(self.image_key), "meta", {}) or {}
        _split_scope_seconds(seconds, meta.get("scope_seconds"))
        return self.predict_loaded(loaded, case_id=case_id, heatmap_dir=heatmap_dir, label=label, seconds=seconds)

    def predict_loaded(
        self,
        loaded: Mapping,
        *,
        case_id: str,
        heatmap_dir: str | os.PathLike | None = None,
        label: str | None = None,
        keep_map: bool = False,
        seconds: dict[str, float] | None = None,
    ) -> CasePrediction:
        """The stages after loading, on a data dictionary :attr:`load` returned (possibly edited in memory).

        Why: the lesion-insertion stress test scores copies of a loaded scan with a lesion pasted into its HU
        volume; going through this method, a copy is scored exactly as the cohort job scores a file.

        Args:
            loaded: ``{image_key: MetaTensor}`` as :attr:`load` returns it (HU, acquired grid, RAS affine).
            case_id: pseudonymous case id (file names, montage title).
            heatmap_dir: folder of ``<case_id>.nii.gz`` / ``<case_id>.png``; ``None`` writes neither.
            label: the case's reference label for the PNG caption.
            keep_map: compute the finished map even when nothing is written, and return it as ``map_values``.
            seconds: stage timings to add to (``load`` already timed by :meth:`__call__`).

        Returns:
            The :class:`CasePrediction`.

        Raises:
            CaseFailure: naming the failing stage.
        """
        seconds = {} if seconds is None else seconds
        with _StageTimer("preprocess", seconds):
            source = loaded[self.image_key]
            source_affine, source_shape = _geometry(source)
            prepared = self.preprocess(dict(loaded))[self.image_key]
        writes = heatmap_dir is not None and (self.write_heatmap or self.write_montage)
        wants_heatmap = keep_map or writes
        with _StageTimer("inference", seconds):
            batch = torch.as_tensor(prepared)[None].to(self.input_device)
            heat = None
            if wants_heatmap and self.map_maker.kind != "cam":
                # one sliding-window pass yields the score and the map (Grad-CAM per window: pipeline.inference.maps)
                mapped = predict_with_map(self.inferer, batch, self.map_maker)
                prediction, heat = mapped.prediction, mapped.heat
            else:
                prediction = self.inferer.predict(batch, self.scoring_network)
            probabilities = prediction.probabilities[0].cpu().numpy()
            logits = prediction.logits[0].cpu().numpy()

        heatmap_path = montage_path = heatmap = None
        if wants_heatmap:
            description, colorbar_label = self.map_text
            with _StageTimer("heatmap", seconds):
                if heat is None:
                    heat = positive_evidence(prediction.class_map, positive_index=self.positive_index)
                prepared_affine, prepared_shape = _geometry(prepared)
                heatmap = map_on_source_grid(
                    heat[0, 0],
                    prepared_affine=prepared_affine,
                    prepared_shape=prepared_shape,
                    source_affine=source_affine,
                    source_shape=source_shape,
                    origin=self.map_maker.origin,
                )
                if self.heatmap_values == "relative":
                    heatmap = finish_map(
                        heatmap,
                        kind=self.map_maker.kind,
                        hu=_spatial(source),
                        affine=source_affine,
                        restrict_to=self.heatmap_region,
                    )
            if writes and self.write_heatmap:
                with _StageTimer("heatmap_nifti", seconds):
                    heatmap_path = write_heatmap_nifti(
                        Path(heatmap_dir) / f"{case_id}.nii.gz",
                        heatmap,
                        source_affine,
                        dtype=self.heatmap_dtype,
                        description=description,
                        intent_name=self.map_maker.kind,
                    )
            if writes and self.write_montage:
                with _StageTimer("montage", seconds):
                    caption = [case_id, f"p(class {self.positive_index}) = {probabilities[self.positive_index]:.3f}"]
                    if label:
                        caption.append(f"label {label}")
                    montage_path = write_overlay_png(
                        Path(heatmap_dir) / f"{case_id}.png",
                        image=_spatial(source),
                        heatmap=heatmap,
                        affine=source_affine,
                        window_hu=self.window_hu,
                        title="   ".join([*caption, _status_caption(source)]),
                        colorbar_label=colorbar_label,
                    )
        return CasePrediction(
            probabilities=probabilities,
            logits=logits,
            stage_seconds=seconds,
            heatmap=heatmap_path,
            montage=montage_path,
            map_shape=tuple(prediction.class_map.shape[2:]),
            source_shape=tuple(source_shape),
            map_values=np.asarray(heatmap, dtype=np.float32) if keep_map and heatmap is not None else None,
            scope=_scope_columns(source),
        )


class _StageTimer:
    """Time a stage into ``seconds[name]`` and turn any ``Exception`` raised in it into a :class:`CaseFailure`."""

    def __init__(self, name: str, seconds: dict[str, float]) -> None:
        self.name = name
        self.seconds = seconds

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, kind, error, traceback) -> bool:
        self.seconds[self.name] = time.perf_counter() - self.start
        if isinstance(error, CaseFailure):
            error.stage_seconds = {**self.seconds, **error.stage_seconds}
        if error is None or not isinstance(error, Exception) or isinstance(error, CaseFailure):
            return False  # success, or KeyboardInterrupt / SystemExit: let it through
        user_error = _user_error(error)
        if isinstance(user_error, ScanOutOfScope):  # not a chest CT with lungs in view: a row, never a score
            scope = user_error.scope.columns() if user_error.scope is not None else {}
            if user_error.scope is not None:
                _split_scope_seconds(self.seconds, user_error.scope.seconds)
            failure = CaseFailure(self.name, str(user_error), stage_prefix=False, status=OUT_OF_SCOPE, scope=scope)
        elif user_error is not None:  # already one line naming the file and the problem
            failure = CaseFailure(self.name, str(user_error), stage_prefix=False)
        else:
            detail = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
            failure = CaseFailure(self.name, f"{type(error).__name__}: {detail}")
        failure.stage_seconds = dict(self.seconds)
        raise failure from error


def _split_scope_seconds(seconds: dict[str, float], scope_seconds: Any) -> None:
    """Move the loader's scope-check time (``scope_seconds`` in the loaded meta) out of ``load`` into ``scope``."""
    try:
        scope = float(scope_seconds)
    except (TypeError, ValueError):
        return
    if "load" in seconds and 0.0 <= scope <= seconds["load"]:
        seconds["scope"] = scope
        seconds["load"] -= scope


def _user_error(error: BaseException) -> UserError | None:
    """The :class:`UserError` in an exception chain (MONAI wraps a failing transform in a ``RuntimeError``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _status_caption(image) -> str:
    """The montage's status word: ``status ok``, or a mark on a scan scored although out of scope."""
    meta: Mapping = getattr(image, "meta", {}) or {}
    return "OUT OF SCOPE (scored anyway)" if meta.get("scope") == OUT_OF_SCOPE else "status ok"


def _scope_columns(image) -> dict[str, Any]:
    """The scope columns the loader put into a loaded image's meta (empty when it measured none)."""
    meta: Mapping = getattr(image, "meta", {}) or {}
    if "scope" not in meta:
        return {}
    return {
        "scope": str(meta["scope"]),
        "lung_ml": meta.get("scope_lung_ml"),
        "lung_extent_mm": meta.get("scope_lung_extent_mm"),
        "lung_cut": meta.get("scope_lung_cut", ""),
        "scope_note": (
            "; ".join(
                part
                for part in (
                    f"scored although out of scope (--allow-out-of-scope): {meta.get('scope_reason', '')}"
                    if meta["scope"] == OUT_OF_SCOPE
                    else "",
                    str(meta.get("scope_note", "")),
                )
                if part
            )
        ),
    }


def _spatial(image) -> np.ndarray:
    """The ``(X, Y, Z)`` array of a loaded image (a leading channel of one is dropped)."""
    array = np.asarray(torch.as_tensor(image).detach().cpu(), dtype=np.float32)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise CaseFailure("load", f"expected a 3D volume, got shape {tuple(array.shape)}")
    return array


def _geometry(image) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(4x4 RAS affine, spatial shape)`` of a MONAI MetaTensor, channel-first or not."""
    affine = getattr(image, "affine", None)
    if affine is None:
        meta: Mapping = getattr(image, "meta", {}) or {}
        affine = meta.get("affine")
    if affine is None:
        raise CaseFailure("load", "the loaded image carries no affine (use a MONAI reader that sets it)")
    shape = tuple(int(s) for s in image.shape[-3:])
    return np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu()), shape  # type: ignore[return-value]
