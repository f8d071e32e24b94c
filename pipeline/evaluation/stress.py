"""The lesion-insertion stress test: how small a lesion does a bundle find, on a site's own negative scans?

``aamct stress-test --bundle B --manifest negatives.csv --out DIR``: every negative scan is opened with the bundle's
own loader (:class:`pipeline.data.loading.LoadScand`, the first transform of its inference chain), scored as it is,
then copies of it with ONE lesion inserted at a random place in its lungs (:func:`pipeline.data.insertion.
insert_lesion`: ground glass or a real LIDC-IDRI nodule, for a ladder of equivalent diameters) are scored by the same
:class:`pipeline.inference.case.CasePredictor` the cohort job uses (:meth:`~pipeline.inference.case.CasePredictor.
predict_loaded`: the copy lives in memory; the score is the product's score), each with the bundle's default map.

Per kind and size (``summary.csv`` / ``summary.json``, ``stress.png``):

* **sensitivity** at the bundle's frozen threshold with its Wilson 95 % CI
  (:func:`pipeline.evaluation.operating_point.proportion_with_ci`), beside its trivial baseline, the share of the
  *originals* called positive (what a copy gets for nothing), and the **flip rate**: of the copies whose original is
  called negative, the share called positive (the lesion's own effect, free of the originals' false positives);
* **AUC** of the copies against their originals (threshold-free; :func:`pipeline.evaluation.roc.roc_auc`, DeLong CI);
* **paired score change** (copy - original): mean with its t 95 % CI, median, share that rose, Wilcoxon signed-rank p
  (scipy);
* **pointing game** of the default map (:func:`pipeline.inference.localisation.pointing_game_hit`, Wilson CI) beside
  the leave-one-out position prior and a random lung point (:func:`pipeline.inference.localisation.position_baselines`,
  as ``benchmarks/bench_localisation.py`` scores them), over the same copies.

Every input appears in ``cases.csv`` with a status: ``ok``, ``error`` (unreadable, rejected by the loader's checks --
or failing to score, with the one-line reason), ``out_of_scope`` (refused by the loader's chest-scope check,
:mod:`pipeline.data.scope`, with its reason, or fewer than 100 ml of lung found) or
``skipped`` (labelled positive in the manifest). Every planned copy appears in ``copies.csv`` (``ok``, or
``no_fit`` / ``error`` with why). Inserted masks go to ``masks/`` as NIfTI on the scan's grid; ``--write-volumes``
adds the copies and ``--write-pngs`` a PNG of each copy with its map. Deterministic for ``--seed``: each copy's random
stream is keyed by the seed, the case id, the kind and the size, so it does not depend on the other cases.

LIDC-IDRI nodules: Armato SG III et al., Medical Physics 38(2):915-931, 2011, doi:10.1118/1.3528204 (CC BY 3.0), crops
as prepared by the ``PabloLION/ct-slicing`` repository.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

__all__ = [
    "DEFAULT_SIZES_MM",
    "StressSettings",
    "StressTest",
    "register",
    "size_at_sensitivity",
    "summarise",
    "write_plot",
]

logger = logging.getLogger(__name__)

from pipeline.data.insertion import DEFAULT_SIZES_MM, KINDS, TEXTURES  # noqa: E402

#: fewer lung voxels than this volume (ml) and the scan has no lungs in view
_MIN_LUNG_ML = 100.0
#: a lung mask whose median is denser than this is not aerated lung (the body mask lung_mask falls back to)
_MAX_LUNG_MEDIAN_HU = -400.0


@dataclass(frozen=True, kw_only=True)
class StressSettings:
    """What a stress test inserts and writes.

    Attributes:
        sizes_mm: equivalent-sphere diameters.
        kinds: ``ggo`` and/or ``nodule``.
        texture: LIDC texture for nodules (``solid``, ``sub-solid``, ``any``).
        seed: the random seed of every copy.
        nodules_dir: the ``lidc_nodules`` folder (needed for ``nodule``).
        margin_mm: the pointing game's tolerance.
        write_volumes: write each copy as NIfTI.
        write_pngs: write a PNG of each copy with its map.
        maps: compute the default map and its pointing game (else scores only).
        repeats: copies per case, kind and size (each at its own random place; one scan can give a curve).
    """

    sizes_mm: tuple[float, ...] = DEFAULT_SIZES_MM
    kinds: tuple[str, ...] = KINDS
    texture: str = "solid"
    seed: int = 0
    nodules_dir: Path | None = None
    margin_mm: float = 10.0
    write_volumes: bool = False
    write_pngs: bool = False
    maps: bool = True
    repeats: int = 1

    def __post_init__(self) -> None:
        if int(self.repeats) < 1:
            raise UserError(f"--repeats must be at least 1, got {self.repeats}")
        if not self.sizes_mm or any(not (math.isfinite(s) and s > 0) for s in self.sizes_mm):
            raise UserError(f"--sizes must be positive numbers of mm, got {list(self.sizes_mm)}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise UserError(f"--kinds must be among {', '.join(KINDS)}, got {list(self.kinds)}")
        if self.texture not in TEXTURES:
            raise UserError(f"--texture must be one of {', '.join(TEXTURES)}, got {self.texture!r}")
        if "nodule" in self.kinds and self.nodules_dir is None:
            raise UserError("--kinds nodule needs --nodules DIR (the lidc_nodules folder)")


@dataclass
class _Stored:
    """What the summary needs of one copy once its arrays are gone: the mask as flat indices."""

    shape: tuple[int, ...]
    indices: np.ndarray = field(repr=False)


class StressTest:
    """Run the stress test of one predictor on a list of negative cases.

    Args:
        predictor: the bundle's :class:`~pipeline.inference.case.CasePredictor`.
        threshold: the frozen operating threshold on the positive-class probability.
        threshold_source: where it came from.
        settings: :class:`StressSettings`.
        out: output folder (created).
        lung_mask: ``lung_mask(hu, affine) -> bool array`` (default: the scope check's,
            :func:`pipeline.data.scope.lung_mask`, the lungs the maps are restricted to).
    """

    def __init__(
        self,
        *,
        predictor: Any,
        threshold: float,
        threshold_source: str = "",
        settings: StressSettings,
        out: str | os.PathLike,
        lung_mask: Any = None,
    ) -> None:
        from pipeline.data.insertion import NoduleLibrary

        if lung_mask is None:
            from pipeline.data.scope import lung_mask as product_lung_mask

            lung_mask = product_lung_mask
        self.predictor = predictor
        self.threshold = float(threshold)
        self.threshold_source = threshold_source
        self.settings = settings
        self.out = Path(out)
        self.lung_mask = lung_mask
        self.nodules = (
            NoduleLibrary(folder=settings.nodules_dir, texture=settings.texture) if "nodule" in settings.kinds else None
        )

    def run(self, cases: Sequence[Any]) -> dict[str, Any]:
        """Score every case and its copies, write the tables, the plot and the masks; return the summary.

        Args:
            cases: :class:`pipeline.inference.cohort.CohortCase` (``case_id``, ``image``, ``label``, ``rejection``).
        """
        import pandas as pd

        from pipeline.io import write_csv_atomic, write_json_atomic

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "masks").mkdir(exist_ok=True)
        started = time.perf_counter()
        case_rows: list[dict[str, Any]] = []
        copy_rows: list[dict[str, Any]] = []
        stored: dict[str, Any] = {"lesions": {}, "lungs": {}, "spacing": {}}
        for case in cases:
            row, copies = self._run_case(case, stored)
            case_rows.append(row)
            copy_rows.extend(copies)
            logger.info("stress-test %s: %s %s", case.case_id, row["status"], row.get("reason", ""))
        seconds = time.perf_counter() - started
        cases_frame = pd.DataFrame(case_rows)
        copies_frame = pd.DataFrame(copy_rows, columns=_COPY_COLUMNS)
        write_csv_atomic(self.out / "cases.csv", cases_frame)
        write_csv_atomic(self.out / "copies.csv", copies_frame)
        summary = summarise(
            cases_frame, copies_frame, threshold=self.threshold, stored=stored, margin_mm=self.settings.margin_mm
        )
        summary.update(
            threshold=self.threshold,
            threshold_source=self.threshold_source,
            settings={
                "sizes_mm": list(self.settings.sizes_mm),
                "kinds": list(self.settings.kinds),
                "texture": self.settings.texture,
                "seed": self.settings.seed,
                "repeats": self.settings.repeats,
                "margin_mm": self.settings.margin_mm,
                "map_kind": getattr(getattr(self.predictor, "map_maker", None), "kind", None)
                if self.settings.maps
                else None,
            },
            seconds=round(seconds, 2),
            load_average=[round(v, 2) for v in os.getloadavg()],
            cpu_count=os.cpu_count(),
            citation=_CITATION if "nodule" in self.settings.kinds else None,
        )
        write_json_atomic(self.out / "summary.json", summary)
        write_csv_atomic(self.out / "summary.csv", pd.DataFrame(summary["rows"]))
        write_plot(summary, self.out / "stress.png")
        return summary

    # -- one case ---------------------------------------------------------------------------------------------------

    def _run_case(self, case: Any, stored: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from pipeline.data.insertion import InsertionError, insert_lesion, lung_depth
        from pipeline.inference.case import CaseFailure

        row: dict[str, Any] = {"case_id": case.case_id, "status": "ok", "reason": "", "probability": None}
        planned = [
            (kind, size, repeat)
            for kind in self.settings.kinds
            for size in self.settings.sizes_mm
            for repeat in range(self.settings.repeats)
        ]
        if str(getattr(case, "label", "") or "").strip().lower() in {"positive", "1"}:
            row.update(status="skipped", reason="labelled positive: the stress test inserts into negative scans")
            return row, []
        if getattr(case, "rejection", ""):
            row.update(status="error", reason=case.rejection)
            return row, []
        key = self.predictor.image_key
        try:
            loaded = self.predictor.load({key: str(case.image)})
            source = loaded[key]
            hu, affine, spacing = _volume_of(source)
            lung = np.asarray(self.lung_mask(hu, affine), dtype=bool)
        except Exception as err:  # one bad case never ends the run: it is listed with its one-line reason
            row.update(status="out_of_scope" if _out_of_scope(err) else "error", reason=_reason(err))
            return row, []
        lung_ml = float(lung.sum()) * float(np.prod(spacing)) / 1000.0
        row["lung_ml"] = round(lung_ml, 1)
        aerated = float(np.median(hu[lung])) if lung.any() else 0.0
        if lung_ml < _MIN_LUNG_ML or aerated > _MAX_LUNG_MEDIAN_HU:  # lung_mask returns the body when it finds none
            row.update(
                status="out_of_scope",
                reason=f"no lungs in view ({lung_ml:.0f} ml of lung mask at a median {aerated:.0f} HU)",
            )
            return row, []
        try:
            original = self.predictor.predict_loaded(loaded, case_id=case.case_id)
        except CaseFailure as err:
            row.update(status="error", reason=str(err))
            return row, []
        p_original = float(original.probabilities[self.predictor.positive_index])
        row["probability"] = p_original
        stored["lungs"][case.case_id] = (lung.shape, np.packbits(lung.ravel()))
        stored["spacing"][case.case_id] = tuple(float(s) for s in spacing)
        depth = lung_depth(lung, spacing)
        copies = []
        for kind, size, repeat in planned:
            copy_id = f"{case.case_id}_{kind}_{size:g}mm" + (f"_r{repeat}" if self.settings.repeats > 1 else "")
            record: dict[str, Any] = {
                "copy_id": copy_id,
                "case_id": case.case_id,
                "kind": kind,
                "size_mm": float(size),
                "original_probability": p_original,
                "status": "ok",
                "reason": "",
            }
            rng = _copy_stream(self.settings.seed, case.case_id, kind, size, repeat)
            try:
                inserted = insert_lesion(
                    hu,
                    spacing_mm=spacing,
                    lung_mask=lung,
                    kind=kind,
                    diameter_mm=size,
                    rng=rng,
                    nodules=self.nodules,
                    lung_depth_mm=depth,
                )
            except InsertionError as err:
                record.update(status="no_fit", reason=str(err))
                copies.append(record)
                continue
            record.update(
                {
                    k: v
                    for k, v in inserted.record().items()
                    if k in ("lesion_volume_ml", "lesion_diameter_mm", "mask_volume_ml", "source", "texture", "scale")
                }
            )
            record["centre_voxel"] = " ".join(str(c) for c in inserted.centre_voxel)
            copy = source.clone()
            copy.copy_(_as_tensor_like(inserted.hu, source))
            try:
                scored = self.predictor.predict_loaded({key: copy}, case_id=copy_id, keep_map=self.settings.maps)
            except CaseFailure as err:
                record.update(status="error", reason=str(err))
                copies.append(record)
                continue
            probability = float(scored.probabilities[self.predictor.positive_index])
            record.update(
                probability=probability,
                called_positive=bool(probability >= self.threshold),
                score_change=probability - p_original,
            )
            if self.settings.maps and scored.map_values is not None:
                from pipeline.inference.localisation import pointing_game_hit

                hit, distance = pointing_game_hit(
                    scored.map_values, inserted.mask, spacing_mm=spacing, margin_mm=self.settings.margin_mm
                )
                record.update(pointing_hit=bool(hit), peak_distance_mm=round(float(distance), 2))
            self._write_copy(copy_id, inserted, affine, scored, probability)
            stored["lesions"][copy_id] = _Stored(inserted.mask.shape, np.flatnonzero(inserted.mask.ravel()))
            copies.append(record)
        return row, copies

    def _write_copy(self, copy_id: str, inserted: Any, affine: np.ndarray, scored: Any, probability: float) -> None:
        import nibabel as nib

        from pipeline.io import atomic_path

        mask_path = self.out / "masks" / f"{copy_id}.nii.gz"
        with atomic_path(mask_path) as tmp:
            nib.save(nib.Nifti1Image(inserted.mask.astype(np.uint8), affine), str(tmp))
        if self.settings.write_volumes:
            (self.out / "volumes").mkdir(exist_ok=True)
            with atomic_path(self.out / "volumes" / f"{copy_id}.nii.gz") as tmp:
                hu = np.clip(np.rint(inserted.hu), -32768, 32767).astype(np.int16)
                nib.save(nib.Nifti1Image(hu, affine), str(tmp))
        if self.settings.write_pngs and scored.map_values is not None:
            from pipeline.inference.heatmap import write_overlay_png

            (self.out / "pngs").mkdir(exist_ok=True)
            write_overlay_png(
                self.out / "pngs" / f"{copy_id}.png",
                image=inserted.hu,
                heatmap=scored.map_values,
                affine=affine,
                title=f"{copy_id}   p = {probability:.3f}   inserted {inserted.kind} {inserted.lesion_diameter_mm:.1f} mm",
            )


_COPY_COLUMNS = (
    "copy_id",
    "case_id",
    "kind",
    "size_mm",
    "status",
    "reason",
    "original_probability",
    "probability",
    "called_positive",
    "score_change",
    "pointing_hit",
    "peak_distance_mm",
    "lesion_volume_ml",
    "lesion_diameter_mm",
    "mask_volume_ml",
    "source",
    "texture",
    "scale",
    "centre_voxel",
)

_CITATION = (
    "LIDC-IDRI: Armato SG III et al., Medical Physics 38(2):915-931, 2011, doi:10.1118/1.3528204 (CC BY 3.0); "
    "nodule crops as prepared by github.com/PabloLION/ct-slicing"
)


def _copy_stream(seed: int, case_id: str, kind: str, size: float, repeat: int = 0) -> np.random.Generator:
    """The random stream of one copy: keyed by seed, case, kind, size and repeat (independent of the other cases)."""
    keys = [int(seed), zlib.crc32(case_id.encode()), KINDS.index(kind), int(round(size * 1000)), int(repeat)]
    return np.random.default_rng(np.random.SeedSequence(keys))


def _volume_of(source: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(HU (X, Y, Z) float32, 4x4 affine, spacing)`` of a loaded MetaTensor."""
    import torch

    array = np.asarray(torch.as_tensor(source).detach().cpu(), dtype=np.float32)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise UserError(f"expected a 3D volume, got shape {tuple(array.shape)}")
    affine = np.asarray(torch.as_tensor(source.affine, dtype=torch.float64).cpu())
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return array, affine, spacing


def _as_tensor_like(hu: np.ndarray, source: Any):
    import torch

    return torch.as_tensor(hu, dtype=source.dtype).reshape(source.shape)


def _out_of_scope(error: BaseException) -> bool:
    """Whether the loader refused the scan as out of scope (:class:`pipeline.data.scope.ScanOutOfScope`)."""
    from pipeline.data.loading import scan_rejection
    from pipeline.data.scope import ScanOutOfScope

    return isinstance(scan_rejection(error), ScanOutOfScope)


def _reason(error: BaseException) -> str:
    from pipeline.data.loading import scan_rejection

    rejected = scan_rejection(error)
    if rejected is not None:
        return str(rejected)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return str(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    text = str(error).splitlines()[0] if str(error).strip() else ""
    return f"unreadable image: {type(error).__name__}: {text}"


# -- statistics ---------------------------------------------------------------------------------------------------


def _estimate(successes: int, total: int, what: str) -> dict[str, Any]:
    from pipeline.evaluation.operating_point import proportion_with_ci

    estimate = proportion_with_ci(int(successes), int(total), method="wilson", what=what)
    return {
        "value": estimate.value,
        "ci": None if estimate.ci is None else [float(c) for c in estimate.ci],
        "numerator": int(successes),
        "denominator": int(total),
    }


def _paired_change(changes: np.ndarray) -> dict[str, Any]:
    """Mean (t 95 % CI), median, share rising and Wilcoxon signed-rank p of the paired score changes."""
    from scipy import stats

    n = int(changes.size)
    if n == 0:
        return {"n": 0, "mean": None, "ci": None, "median": None, "share_up": None, "wilcoxon_p": None}
    mean = float(changes.mean())
    ci = None
    if n > 1 and float(changes.std(ddof=1)) > 0:
        half = float(stats.t.ppf(0.975, n - 1) * changes.std(ddof=1) / math.sqrt(n))
        ci = [mean - half, mean + half]
    p = None
    if n > 1 and np.any(changes != 0):
        p = float(stats.wilcoxon(changes, zero_method="wilcox").pvalue)
    return {
        "n": n,
        "mean": mean,
        "ci": ci,
        "median": float(np.median(changes)),
        "share_up": float((changes > 0).mean()),
        "wilcoxon_p": p,
    }


def summarise(
    cases: Any, copies: Any, *, threshold: float, stored: Mapping[str, Any] | None = None, margin_mm: float = 10.0
) -> dict[str, Any]:
    """Per kind and size: sensitivity (Wilson), AUC vs originals (DeLong), paired change, pointing game + baselines.

    Args:
        cases: ``cases.csv``'s frame (``case_id, status, probability``).
        copies: ``copies.csv``'s frame.
        threshold: the frozen threshold.
        stored: masks kept by :class:`StressTest` for the position baselines (None: no baselines).
        margin_mm: the pointing game's tolerance.

    Returns:
        ``{"n_cases", "statuses", "originals": {...}, "rows": [per kind and size], "size_at_50": {kind: mm}}``.
    """
    from pipeline.evaluation.roc import UndefinedStatisticError, delong_ci, roc_auc

    ok_cases = cases[cases["status"] == "ok"]
    originals = ok_cases["probability"].astype(float).to_numpy()
    called = int((originals >= threshold).sum())
    result: dict[str, Any] = {
        "n_cases": int(len(cases)),
        "statuses": {str(k): int(v) for k, v in cases["status"].value_counts().items()},
        "originals": {
            "n": int(originals.size),
            "called_positive": _estimate(called, int(originals.size), "originals called positive"),
            "mean_probability": float(originals.mean()) if originals.size else None,
        },
        "rows": [],
    }
    rows = []
    for (kind, size), group in copies.groupby(["kind", "size_mm"], sort=True):
        done = group[group["status"] == "ok"]
        n = int(len(done))
        positives = int(done["called_positive"].astype(bool).sum()) if n else 0
        row: dict[str, Any] = {
            "kind": kind,
            "size_mm": float(size),
            "planned": int(len(group)),
            "scored": n,
            "no_fit": int((group["status"] == "no_fit").sum()),
            "errors": int((group["status"] == "error").sum()),
            "lesion_diameter_mm_mean": float(done["lesion_diameter_mm"].astype(float).mean()) if n else None,
            "mask_volume_ml_mean": float(done["mask_volume_ml"].astype(float).mean()) if n else None,
        }
        sensitivity = _estimate(positives, n, f"sensitivity ({kind}, {size:g} mm)")
        # the lesion's own effect: of the copies whose original is called negative, the share called positive
        negative_originals = done[done["original_probability"].astype(float) < threshold] if n else done
        flipped = int(negative_originals["called_positive"].astype(bool).sum()) if len(negative_originals) else 0
        flip = _estimate(flipped, int(len(negative_originals)), f"flip rate ({kind}, {size:g} mm)")
        row.update(
            sensitivity=sensitivity["value"],
            sensitivity_ci=sensitivity["ci"],
            sensitivity_count=f"{positives}/{n}",
            baseline_originals_called_positive=result["originals"]["called_positive"]["value"],
            flip_rate=flip["value"],
            flip_rate_ci=flip["ci"],
            flip_count=f"{flipped}/{len(negative_originals)}",
        )
        # threshold-free: the copies against their own originals
        copy_scores = done["probability"].astype(float).to_numpy()
        base = ok_cases[ok_cases["case_id"].isin(done["case_id"])]["probability"].astype(float).to_numpy()
        auc = auc_ci = None
        if copy_scores.size and base.size:
            labels = np.r_[np.ones(copy_scores.size), np.zeros(base.size)]
            scores = np.r_[copy_scores, base]
            auc = roc_auc(labels, scores)
            try:
                auc_ci = [float(c) for c in delong_ci(labels, scores)]
            except UndefinedStatisticError:
                auc_ci = None
        row.update(auc_vs_originals=auc, auc_ci=auc_ci)
        change = _paired_change(done["score_change"].astype(float).to_numpy()) if n else _paired_change(np.array([]))
        row.update({f"change_{k}": v for k, v in change.items() if k != "n"})
        # the map's pointing game beside two maps that never look at the image
        pointed = done[done["pointing_hit"].notna()] if "pointing_hit" in done else done.iloc[0:0]
        hits = int(pointed["pointing_hit"].astype(bool).sum()) if len(pointed) else 0
        game = _estimate(hits, int(len(pointed)), f"pointing game ({kind}, {size:g} mm)")
        row.update(pointing_game=game["value"], pointing_game_ci=game["ci"], pointing_count=f"{hits}/{len(pointed)}")
        row.update(_baselines(pointed, stored, margin_mm))
        rows.append(row)
    result["rows"] = rows
    kinds = sorted({r["kind"] for r in rows})
    for name, key in (("size_at_50", "sensitivity"), ("flip_size_at_50", "flip_rate")):
        result[name] = {
            kind: size_at_sensitivity(
                [r["size_mm"] for r in rows if r["kind"] == kind], [r[key] for r in rows if r["kind"] == kind]
            )
            for kind in kinds
        }
    return result


def _baselines(pointed: Any, stored: Mapping[str, Any] | None, margin_mm: float) -> dict[str, Any]:
    """The leave-one-out position prior and the random lung point on these copies (None with fewer than 2)."""
    empty = {"position_prior": None, "position_prior_ci": None, "random_lung_point": None}
    if stored is None or len(pointed) < 2:
        return empty
    from pipeline.inference.localisation import position_baselines

    lesions, lungs, spacings = [], [], []
    for copy_id, case_id in zip(pointed["copy_id"], pointed["case_id"], strict=True):
        kept = stored["lesions"].get(copy_id)
        lung_entry = stored["lungs"].get(case_id)
        if kept is None or lung_entry is None:
            return empty
        lesion = np.zeros(int(np.prod(kept.shape)), dtype=bool)
        lesion[kept.indices] = True
        lesions.append(lesion.reshape(kept.shape))
        shape, packed = lung_entry
        lungs.append(np.unpackbits(packed, count=int(np.prod(shape))).astype(bool).reshape(shape))
        spacings.append(stored["spacing"][case_id])
    baselines = position_baselines(lesions, lungs, spacings, margin_mm=margin_mm).as_dict()
    prior = baselines["position_prior_peak"]
    return {
        "position_prior": prior["rate"],
        "position_prior_ci": prior["ci"],
        "random_lung_point": baselines["random_point_in_lung"]["rate"],
    }


def size_at_sensitivity(
    sizes_mm: Sequence[float], sensitivities: Sequence[float | None], level: float = 0.5
) -> float | None:
    """The smallest size at which the sensitivity curve reaches ``level``, interpolated linearly in log size.

    The curve is read from the smallest size up: the first pair of neighbouring sizes whose sensitivities bracket
    ``level`` gives the crossing. Returns the smallest size when it is already at the level, None when the curve
    never reaches it (or has no value).
    """
    points = sorted((float(s), float(v)) for s, v in zip(sizes_mm, sensitivities, strict=True) if v is not None)
    if not points:
        return None
    if points[0][1] >= level:
        return points[0][0]
    for (s0, v0), (s1, v1) in zip(points, points[1:], strict=False):
        if v0 < level <= v1:
            t = (level - v0) / (v1 - v0)
            return float(math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))))
    return None


def write_plot(summary: Mapping[str, Any], target: str | os.PathLike) -> Path:
    """``stress.png``: sensitivity (Wilson CIs), AUC vs originals and the pointing game against size, per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path

    rows = summary.get("rows", [])
    kinds = sorted({r["kind"] for r in rows})
    with_maps = any(r.get("pointing_game") is not None for r in rows)
    figure, axes = plt.subplots(1, 3 if with_maps else 2, figsize=(14 if with_maps else 9.5, 4.2))
    colours = {"ggo": "tab:blue", "nodule": "tab:red"}
    for kind in kinds:
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["size_mm"])
        sizes = [r["size_mm"] for r in mine]
        colour = colours.get(kind)
        panels = [(axes[0], "sensitivity", "sensitivity_ci"), (axes[1], "auc_vs_originals", "auc_ci")]
        if with_maps:
            panels.append((axes[2], "pointing_game", "pointing_game_ci"))
        for axis, key, ci_key in panels:
            values = [np.nan if r[key] is None else r[key] for r in mine]
            low = [np.nan if not r[ci_key] else max(0.0, v - r[ci_key][0]) for r, v in zip(mine, values, strict=True)]
            high = [np.nan if not r[ci_key] else max(0.0, r[ci_key][1] - v) for r, v in zip(mine, values, strict=True)]
            axis.errorbar(sizes, values, yerr=[low, high], marker="o", capsize=3, color=colour, label=kind)
        flips = [np.nan if r.get("flip_rate") is None else r["flip_rate"] for r in mine]
        axes[0].plot(
            sizes, flips, ls="--", marker="x", color=colour, alpha=0.7, label=f"{kind}: negative originals flipped"
        )
        if with_maps:
            prior = [np.nan if r["position_prior"] is None else r["position_prior"] for r in mine]
            rand = [np.nan if r["random_lung_point"] is None else r["random_lung_point"] for r in mine]
            axes[2].plot(sizes, prior, ls="--", color=colour, alpha=0.6, label=f"{kind}: position prior")
            axes[2].plot(sizes, rand, ls=":", color=colour, alpha=0.6, label=f"{kind}: random lung point")
    baseline = summary.get("originals", {}).get("called_positive", {}).get("value")
    if baseline is not None:
        axes[0].axhline(baseline, color="grey", ls="--", label="originals called positive")
    axes[1].axhline(0.5, color="grey", ls="--", label="chance")
    titles = (
        f"sensitivity at threshold {summary.get('threshold', float('nan')):.3f}",
        "AUC: copies vs their originals",
        "pointing game of the map",
    )
    ticks = sorted({r["size_mm"] for r in rows})
    for axis, title in zip(axes, titles, strict=False):
        axis.set_xscale("log")
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel("inserted lesion, equivalent diameter (mm)")
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    target = Path(target)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return target


# -- command line -------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``stress-test`` to the ``aamct`` subcommands."""
    parser = sub.add_parser(
        "stress-test",
        help="insert lesions of known size into negative scans and measure what a bundle finds (sensitivity by size)",
        description=(
            "For each negative scan of a manifest, copies with one lesion (ground glass or a real LIDC nodule) "
            "inserted at a random place in its lungs, for a ladder of sizes, scored by the bundle: sensitivity at its "
            "frozen threshold with Wilson CIs, AUC of copies vs originals, paired score change and the map's pointing "
            "game beside the position prior and a random lung point. Every input scan gets a status in cases.csv."
        ),
    )
    parser.add_argument("--bundle", required=True, help="bundle folder, training run folder (models/model.pt) or zip")
    parser.add_argument("--manifest", required=True, help="manifest CSV of negative scans (case_id, image[, label])")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", help="only the manifest rows of this split (e.g. test)")
    parser.add_argument("--limit", type=int, help="only the first N cases (sorted by case id)")
    parser.add_argument(
        "--sizes", type=float, nargs="+", default=list(DEFAULT_SIZES_MM), help="equivalent diameters, mm"
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="lesion kinds")
    parser.add_argument("--texture", default="solid", choices=TEXTURES, help="LIDC nodule texture (default solid)")
    parser.add_argument("--nodules", type=Path, help="the lidc_nodules folder (image/, nodule_mask/, nodules.csv)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--repeats", type=int, default=1, help="copies per case, kind and size (default 1)")
    parser.add_argument("--margin-mm", type=float, default=10.0, help="pointing-game tolerance (default 10 mm)")
    parser.add_argument("--no-maps", action="store_true", help="scores only: no map, no pointing game")
    parser.add_argument("--heatmap", help="map kind (default: the bundle's heatmap_kind)")
    parser.add_argument("--write-volumes", action="store_true", help="also write each copy as NIfTI")
    parser.add_argument("--write-pngs", action="store_true", help="also write a PNG of each copy with its map")
    parser.add_argument("--threshold", type=float, help="operating threshold (default: the bundle's frozen one)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    parser.set_defaults(func=_cmd_stress_test)


def build_from_bundle(
    bundle: str | os.PathLike, out: str | os.PathLike, *, heatmap: str | None = None, device: str | None = None
) -> tuple[Any, Any, Any]:
    """``(predictor, frozen threshold, min_slices)`` from a bundle's inference config (as ``evaluate-cohort``)."""
    from pipeline.inference.bundle import load_inference_config, parsed_content, resolve_bundle

    overrides: dict[str, Any] = {"output_dir": str(out), "progress_bar": False}
    if heatmap:
        overrides["heatmap_kind"] = heatmap
    if device:
        overrides["device"] = f"$torch.device({device!r})"
        overrides["amp"] = f"$torch.device({device!r}).type == 'cuda'"
    root = resolve_bundle(bundle, extract_to=out)
    parser = load_inference_config(root, overrides)
    what = str(bundle)
    predictor = parsed_content(parser, "predictor", what=what)
    threshold = parsed_content(parser, "frozen_threshold", what=what)
    min_slices = parsed_content(parser, "min_slices", what=what) if "min_slices" in parser.get() else None
    return predictor, threshold, min_slices


def _cmd_stress_test(args: argparse.Namespace) -> int:
    from pipeline.inference.cohort import read_cases

    out = Path(args.out)
    settings = StressSettings(
        sizes_mm=tuple(args.sizes),
        kinds=tuple(dict.fromkeys(args.kinds)),
        texture=args.texture,
        seed=args.seed,
        nodules_dir=args.nodules,
        margin_mm=args.margin_mm,
        write_volumes=args.write_volumes,
        write_pngs=args.write_pngs,
        maps=not args.no_maps,
        repeats=args.repeats,
    )
    cases = sorted(read_cases(args.manifest, split=args.split), key=lambda c: c.case_id)
    if args.limit is not None:
        cases = cases[: max(0, args.limit)]
    if not cases:
        raise UserError(f"{args.manifest}: no cases to stress-test")
    predictor, frozen, _ = build_from_bundle(args.bundle, out, heatmap=args.heatmap, device=args.device)
    threshold = args.threshold if args.threshold is not None else frozen.threshold
    source = "command line" if args.threshold is not None else frozen.source
    summary = StressTest(
        predictor=predictor, threshold=threshold, threshold_source=source, settings=settings, out=out
    ).run(cases)
    print(render_text(summary))
    print(f"wrote {out / 'summary.csv'}, {out / 'summary.json'}, {out / 'stress.png'}, {out / 'cases.csv'}")
    return 0


def render_text(summary: Mapping[str, Any]) -> str:
    """A short table for the terminal."""
    originals = summary["originals"]["called_positive"]
    lines = [
        f"cases: {summary['statuses']}; originals called positive {originals['numerator']}/{originals['denominator']} "
        f"at threshold {summary.get('threshold', float('nan')):.3f}; {summary.get('seconds', 0):.0f} s",
        f"{'kind':7s} {'mm':>4s}  {'sensitivity (95% CI)':24s} {'AUC vs orig':11s} {'mean change':11s} "
        f"{'pointing':9s} {'prior':5s} {'random':6s}",
    ]
    for r in summary["rows"]:
        ci = r["sensitivity_ci"]
        sens = (
            "—"
            if r["sensitivity"] is None
            else f"{r['sensitivity']:.2f} ({ci[0]:.2f}-{ci[1]:.2f}) {r['sensitivity_count']}"
        )
        auc = "—" if r["auc_vs_originals"] is None else f"{r['auc_vs_originals']:.3f}"
        change = "—" if r["change_mean"] is None else f"{r['change_mean']:+.3f}"
        game = "—" if r["pointing_game"] is None else f"{r['pointing_game']:.2f}"
        prior = "—" if r["position_prior"] is None else f"{r['position_prior']:.2f}"
        rand = "—" if r["random_lung_point"] is None else f"{r['random_lung_point']:.2f}"
        lines.append(
            f"{r['kind']:7s} {r['size_mm']:4g}  {sens:24s} {auc:11s} {change:11s} {game:9s} {prior:5s} {rand:6s}"
        )
    for kind, size in summary.get("size_at_50", {}).items():
        flip = summary.get("flip_size_at_50", {}).get(kind)
        lines.append(
            f"50 % sensitivity ({kind}): {'not reached' if size is None else f'{size:.1f} mm'}; 50 % of the negative "
            f"originals flipped to positive: {'not reached' if flip is None else f'{flip:.1f} mm'}"
        )
    return "\n".join(lines)
