"""The stress test (pipeline.evaluation.stress): every case has a status, copies are scored by the real predictor,
the statistics are the hand-computed ones, the written copies keep the scan's geometry, and a seed fixes the run.

The predictor is a real :class:`~pipeline.inference.case.CasePredictor` on the project's inference chain (the one
loader) with a "network" whose positive evidence is closeness to ground-glass density (``GroundGlassEvidence``): an
inserted GGO raises its score and its map peaks inside the GGO, so a correct run must score every large inserted
lesion above its original and point at it.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage, stats
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from pipeline.contracts.defaults import DEFAULT_HU_WINDOW
from pipeline.evaluation.stress import StressSettings, StressTest, size_at_sensitivity, summarise
from pipeline.inference.cohort import CohortCase
from tests.inference.helpers import make_predictor, write_nifti

SPACING = 2.0
AFFINE = np.array([[2.0, 0, 0, -61.0], [0, 2.0, 0, -40.0], [0, 0, 2.0, 15.0], [0, 0, 0, 1]])


def _chest(seed: int, shape=(64, 56, 40)) -> np.ndarray:
    """Air, an elliptic body of soft tissue and two aerated lungs (about 0.5 l) with noise."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = np.full(shape, -1000.0, dtype=np.float32)
    volume[(x / 0.9) ** 2 + (y / 0.85) ** 2 < 1] = 40.0
    volume[((np.abs(x) - 0.42) / 0.33) ** 2 + (y / 0.6) ** 2 < 1] = -860.0
    volume[:, :, :3] = volume[:, :, -3:] = np.where(volume[:, :, :3] > -900, 40.0, -1000.0)  # lungs end inside
    return volume + rng.normal(0, 8, shape).astype(np.float32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[CohortCase]:
    root = tmp_path_factory.mktemp("stress_cohort")
    cases = [
        CohortCase(case_id=f"neg-{i}", image=write_nifti(root / f"neg-{i}.nii.gz", _chest(i), AFFINE), label="negative")
        for i in range(3)
    ]
    soft = np.full((64, 56, 40), 40.0, dtype=np.float32)  # a volume of soft tissue only: no lungs at all
    cases.append(CohortCase(case_id="no-lungs", image=write_nifti(root / "no-lungs.nii.gz", soft, AFFINE)))
    cases.append(CohortCase(case_id="missing", image=root / "missing.nii.gz"))
    cases.append(CohortCase(case_id="pos", image=cases[0].image, label="positive"))
    return cases


class GroundGlassEvidence(nn.Module):
    """A stride-1 "dense classifier": positive evidence is how close each voxel is to -400 HU (ground glass).

    Aerated lung (-860) and soft tissue (+40) are both far from it, so its map peaks inside an inserted GGO and the
    case score (the map's mean) rises with the lesion's volume.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = DEFAULT_HU_WINDOW
        evidence = 1.0 - 10.0 * torch.abs(x - (-400.0 - low) / (high - low))
        return torch.cat([torch.zeros_like(evidence), evidence], dim=1)


def _run(cases, out, **settings):
    # the scans' own 2 mm grid: no resampling blur, so no lung-wall voxel reads like ground glass
    predictor = make_predictor(GroundGlassEvidence(), spacing=(SPACING,) * 3, heatmap_region="lungs")
    options = {"sizes_mm": (6.0, 16.0), "kinds": ("ggo",), "seed": 0, **settings}
    test = StressTest(predictor=predictor, threshold=0.5, settings=StressSettings(**options), out=out)
    return test.run(cases)


@pytest.fixture(scope="module")
def finished(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("stress_run")
    return out, _run(cohort, out, write_volumes=True)


def test_every_input_case_is_listed_with_its_status(finished):
    out, summary = finished
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False).set_index("case_id")
    assert list(cases.index) == ["neg-0", "neg-1", "neg-2", "no-lungs", "missing", "pos"]
    assert set(cases.loc[["neg-0", "neg-1", "neg-2"], "status"]) == {"ok"}
    assert cases.loc["no-lungs", "status"] in {"out_of_scope", "error"} and cases.loc["no-lungs", "reason"]
    assert cases.loc["missing", "status"] == "error" and "missing.nii.gz" in cases.loc["missing", "reason"]
    assert cases.loc["pos", "status"] == "skipped"
    assert summary["n_cases"] == 6 and sum(summary["statuses"].values()) == 6
    copies = pd.read_csv(out / "copies.csv")
    assert len(copies) == 3 * 2 and set(copies["status"]) == {"ok"}
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(f"{c}.nii.gz" for c in copies["copy_id"])
    for name in ("summary.json", "summary.csv", "stress.png"):
        assert (out / name).stat().st_size > 0


def test_large_lesions_raise_the_score_and_the_map_points_at_them(finished):
    out, summary = finished
    copies = pd.read_csv(out / "copies.csv")
    big = copies[copies["size_mm"] == 16.0]
    assert (big["score_change"] > 0).all(), "a 16 mm ground glass must raise a ground-glass score"
    assert big["pointing_hit"].astype(bool).all(), "the ground-glass map must peak on the lesion"
    row = next(r for r in summary["rows"] if r["size_mm"] == 16.0)
    assert row["auc_vs_originals"] == 1.0
    assert row["pointing_count"] == "3/3"
    assert row["random_lung_point"] is not None and row["random_lung_point"] < 0.6
    # the achieved lesion is the requested one
    assert big["lesion_diameter_mm"].to_numpy() == pytest.approx(16.0, rel=0.03)


def test_written_copies_keep_the_scans_geometry_and_change_only_the_lesion(finished, cohort):
    out, _ = finished
    source = nib.load(cohort[0].image)
    for copy_id in ("neg-0_ggo_6mm", "neg-0_ggo_16mm"):
        copy = nib.load(out / "volumes" / f"{copy_id}.nii.gz")
        mask = nib.load(out / "masks" / f"{copy_id}.nii.gz")
        for image in (copy, mask):
            assert image.shape == source.shape
            np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)
            assert image.header.get_zooms()[:3] == pytest.approx(source.header.get_zooms()[:3])
        lesion = np.asarray(mask.dataobj) > 0
        far = ndimage.distance_transform_edt(~lesion, sampling=(SPACING,) * 3) > 12.0
        original, inserted = np.asarray(source.dataobj), np.asarray(copy.dataobj)
        assert np.array_equal(original[far], inserted[far]), "voxels far from the lesion changed"
        assert (inserted[lesion] > original[lesion]).mean() > 0.8


def test_the_same_seed_gives_the_same_copies_and_another_seed_other_places(cohort, finished, tmp_path):
    out, _ = finished
    again = tmp_path / "again"
    _run(cohort[:2], again, write_volumes=False)
    first = pd.read_csv(out / "copies.csv").set_index("copy_id")
    second = pd.read_csv(again / "copies.csv").set_index("copy_id")
    shared = second.index  # the first two cases: their copies do not depend on the other cases
    pd.testing.assert_frame_equal(first.loc[shared], second)
    other = tmp_path / "other"
    _run(cohort[:1], other, seed=1)
    moved = pd.read_csv(other / "copies.csv").set_index("copy_id")
    assert (moved["centre_voxel"] != first.loc[moved.index, "centre_voxel"]).any()


def test_summary_matches_hand_computed_statistics():
    cases = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "status": ["ok"] * 4, "probability": [0.1, 0.2, 0.6, 0.3]})
    copies = pd.DataFrame(
        {
            "copy_id": [f"{c}_ggo_10mm" for c in "abcd"],
            "case_id": list("abcd"),
            "kind": "ggo",
            "size_mm": 10.0,
            "status": "ok",
            "probability": [0.7, 0.25, 0.65, 0.2],
            "called_positive": [True, False, True, False],
            "score_change": [0.6, 0.05, 0.05, -0.1],
            "original_probability": [0.1, 0.2, 0.6, 0.3],
            "pointing_hit": [True, False, True, True],
            "lesion_diameter_mm": 10.0,
            "mask_volume_ml": 0.5,
        }
    )
    summary = summarise(cases, copies, threshold=0.5)
    row = summary["rows"][0]
    assert row["sensitivity_count"] == "2/4"
    assert row["sensitivity_ci"] == pytest.approx(list(proportion_confint(2, 4, method="wilson")))
    assert summary["originals"]["called_positive"]["numerator"] == 1
    # copies 0.7, 0.25, 0.65, 0.2 against originals 0.1, 0.2, 0.6, 0.3: pairs above 4 + 2 + 4 + 1, one tie (0.2)
    assert row["auc_vs_originals"] == pytest.approx(11.5 / 16)
    changes = np.array([0.6, 0.05, 0.05, -0.1])
    half = stats.t.ppf(0.975, 3) * changes.std(ddof=1) / 2.0
    assert row["change_mean"] == pytest.approx(changes.mean())
    assert row["change_ci"] == pytest.approx([changes.mean() - half, changes.mean() + half])
    assert row["change_wilcoxon_p"] == pytest.approx(stats.wilcoxon(changes).pvalue)
    assert row["pointing_count"] == "3/4"
    # originals a, b, d are called negative; their copies a (0.7) is called positive: one flip of three
    assert row["flip_count"] == "1/3"


def test_size_at_half_sensitivity_is_interpolated_in_log_size():
    assert size_at_sensitivity([5, 10, 20], [0.0, 0.25, 0.75]) == pytest.approx(math.sqrt(10 * 20))
    assert size_at_sensitivity([5, 10, 20], [0.6, 0.8, 1.0]) == 5.0
    assert size_at_sensitivity([5, 10, 20], [0.0, 0.1, 0.4]) is None
    assert size_at_sensitivity([20, 5, 10], [0.75, 0.0, 0.25]) == pytest.approx(math.sqrt(200))


def test_nodules_without_a_library_and_bad_sizes_are_one_line_errors(tmp_path, capsys):
    from pipeline.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,image\na,a.nii.gz\n")
    status = main(["stress-test", "--bundle", str(tmp_path), "--manifest", str(manifest), "--out", str(tmp_path / "o")])
    assert status == 2
    assert (
        capsys.readouterr().err.strip() == "aamct: error: --kinds nodule needs --nodules DIR (the lidc_nodules folder)"
    )
    with pytest.raises(Exception, match="--sizes must be positive"):
        StressSettings(sizes_mm=(5.0, -1.0), kinds=("ggo",))
