"""Localisation figures on synthetic map/mask pairs whose answers are known by construction."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from pipeline.errors import UserError
from pipeline.inference.localisation import (
    lesion_energy_fraction,
    load_on_same_grid,
    pointing_game_hit,
    score_case,
    summarise_localisation,
    voxel_auroc,
)

SHAPE = (40, 40, 20)
SPACING = (2.0, 2.0, 4.0)


def _ball(centre, radius_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True)))
    return distance <= radius_mm


def _lung() -> np.ndarray:
    lung = np.zeros(SHAPE, dtype=bool)
    lung[4:36, 4:36, 2:18] = True
    return lung


def _map_peaking_at(point, rng) -> np.ndarray:
    heat = rng.uniform(0.0, 0.5, SHAPE)
    heat[tuple(point)] = 1.0
    return heat


def test_pointing_game_scores_a_known_hit_rate_with_its_wilson_interval():
    rng = np.random.default_rng(0)
    lesion = _ball((20, 20, 10), radius_mm=6.0)
    scores = []
    # 12 peaks inside the lesion, 3 just outside it (6 mm from its edge along x: within a 10 mm margin), 5 far away
    inside = [tuple(p) for p in np.argwhere(lesion)[rng.choice(int(lesion.sum()), 12, replace=False)]]
    near = [(20 + 6, 20, 10)] * 3  # 12 mm from the centre, 6 mm outside the 6 mm radius
    far = [(2, 2, 1), (38, 38, 18), (2, 38, 10), (38, 2, 1), (5, 5, 18)]
    for number, point in enumerate(inside + near + far):
        scores.append(
            score_case(f"case-{number}", _map_peaking_at(point, rng), lesion, _lung(), spacing_mm=SPACING, margin_mm=10)
        )
    summary = summarise_localisation(scores, margin_mm=10)
    game = summary["pointing_game"]
    assert (game["hits"], game["n"]) == (15, 20) and game["rate"] == pytest.approx(0.75)
    np.testing.assert_allclose(game["ci"], proportion_confint(15, 20, alpha=0.05, method="wilson"))
    near_scores = scores[12:15]
    assert all(s.hit and s.peak_distance_mm == pytest.approx(6.0) for s in near_scores)
    # without a margin only the peaks inside the lesion count
    strict = [
        pointing_game_hit(_map_peaking_at(p, rng), lesion, spacing_mm=SPACING, margin_mm=0)[0] for p in inside + near
    ]
    assert sum(strict) == 12


def test_distance_follows_the_voxel_spacing_of_each_axis():
    lesion = np.zeros(SHAPE, dtype=bool)
    lesion[20, 20, 10] = True
    heat = np.zeros(SHAPE)
    heat[20, 20, 12] = 1.0  # two slices away: 2 x 4 mm
    assert pointing_game_hit(heat, lesion, spacing_mm=SPACING, margin_mm=8.0) == (True, 8.0)
    assert pointing_game_hit(heat, lesion, spacing_mm=SPACING, margin_mm=7.9)[0] is False


def test_a_map_that_highlights_nothing_misses_and_scores_chance():
    lesion, lung = _ball((20, 20, 10), 6.0), _lung()
    flat = np.zeros(SHAPE)
    hit, distance = pointing_game_hit(flat, lesion, spacing_mm=SPACING)
    assert hit is False and distance == float("inf")
    assert lesion_energy_fraction(flat, lesion, lung) is None
    constant = np.ones(SHAPE)
    assert lesion_energy_fraction(constant, lesion, lung) == pytest.approx(lesion.sum() / (lung | lesion).sum())
    assert voxel_auroc(constant, lesion, lung) == pytest.approx(0.5)


def test_energy_and_auroc_of_perfect_inverted_and_random_maps():
    lesion, lung = _ball((20, 20, 10), 6.0), _lung()
    perfect = lesion.astype(float)
    assert lesion_energy_fraction(perfect, lesion, lung) == pytest.approx(1.0)
    assert voxel_auroc(perfect, lesion, lung) == pytest.approx(1.0)
    assert voxel_auroc(1.0 - perfect, lesion, lung) == pytest.approx(0.0)
    random = np.random.default_rng(1).uniform(size=SHAPE)
    assert abs(voxel_auroc(random, lesion, lung) - 0.5) < 0.05
    # negative values (evidence against) carry no energy: half the lesion hot, the rest of the lung negative
    mixed = np.where(lesion, 1.0, -5.0)
    assert lesion_energy_fraction(mixed, lesion, lung) == pytest.approx(1.0)
    # energy outside the lung does not count against the map
    outside = perfect.copy()
    outside[0, 0, 0] = 100.0
    assert lesion_energy_fraction(outside, lesion, lung) == pytest.approx(1.0)


def test_bad_inputs_are_refused():
    lesion = _ball((20, 20, 10), 6.0)
    with pytest.raises(ValueError, match="shape"):
        pointing_game_hit(np.zeros((4, 4, 4)), lesion, spacing_mm=SPACING)
    with pytest.raises(ValueError, match="empty"):
        score_case("neg", np.zeros(SHAPE), np.zeros(SHAPE, dtype=bool), _lung(), spacing_mm=SPACING)


def test_files_on_different_grids_are_named_in_one_line(tmp_path):
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, dtype=np.float32), affine), tmp_path / "map.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, dtype=np.uint8), affine), tmp_path / "lesion.nii.gz")
    shifted = affine.copy()
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, dtype=np.uint8), shifted), tmp_path / "lung.nii.gz")
    arrays, read_affine = load_on_same_grid(tmp_path / "map.nii.gz", tmp_path / "lesion.nii.gz")
    assert [a.shape for a in arrays] == [SHAPE, SHAPE] and np.allclose(read_affine, affine)
    with pytest.raises(UserError, match="lung.nii.gz: not on the grid of .*map.nii.gz"):
        load_on_same_grid(tmp_path / "map.nii.gz", tmp_path / "lung.nii.gz")
    with pytest.raises(UserError, match="cannot read NIfTI"):
        load_on_same_grid(tmp_path / "missing.nii.gz")
