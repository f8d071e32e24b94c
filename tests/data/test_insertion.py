"""Lesion insertion (pipeline.data.insertion): size, place, density, what else changes, determinism.

A synthetic chest at a realistic spacing (0.8 x 0.8 x 2.5 mm): aerated lung (-850 HU with noise) in an ellipsoid,
soft tissue (40 HU) around it. The nodule tests use the real LIDC-IDRI crops of ../shared/data/lidc_nodules and skip
with a message where they are absent.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.data.insertion import (
    GGO_HU,
    InsertionError,
    NoduleLibrary,
    equivalent_diameter_mm,
    insert_lesion,
    sphere_volume_ml,
)
from pipeline.errors import UserError
from tests.conftest import shared_path

SPACING = (0.8, 0.8, 2.5)
SHAPE = (120, 110, 44)


@pytest.fixture(scope="module")
def chest() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    index = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    semi = (44.0, 40.0, 50.0)
    radius = np.sqrt(sum(((index[i] - centre[i]) * SPACING[i] / semi[i]) ** 2 for i in range(3)))
    lung = radius < 1.0
    hu = np.where(lung, -850.0 + 25.0 * rng.standard_normal(SHAPE), 40.0).astype(np.float32)
    return hu, lung


@pytest.fixture(scope="module")
def solid_nodules() -> NoduleLibrary:
    return NoduleLibrary(folder=shared_path("lidc_nodules", "nodules.csv").parent, texture="solid")


def _insert(chest, kind, size, seed=0, nodules=None):
    hu, lung = chest
    return insert_lesion(
        hu,
        spacing_mm=SPACING,
        lung_mask=lung,
        kind=kind,
        diameter_mm=size,
        rng=np.random.default_rng(seed),
        nodules=nodules,
    )


def _check_geometry_and_footprint(chest, inserted) -> None:
    hu, lung = chest
    assert inserted.hu.shape == hu.shape and inserted.hu.dtype == np.float32
    assert inserted.mask.any(), "the lesion mask is empty"
    assert not (inserted.mask & ~lung).any(), "the lesion leaves the lung mask"
    near = ndimage.distance_transform_edt(~inserted.mask, sampling=SPACING) <= inserted.margin_mm
    outside = ~(near & lung)
    assert np.array_equal(inserted.hu[outside], hu[outside]), "voxels changed outside the dilated lesion mask"
    assert not np.array_equal(inserted.hu[inserted.mask], hu[inserted.mask]), "the lesion changed nothing"


@pytest.mark.parametrize("size", [5.0, 10.0, 20.0])
def test_ground_glass_has_the_requested_volume_inside_the_lung(chest, size):
    inserted = _insert(chest, "ggo", size)
    target = sphere_volume_ml(size)
    assert inserted.mask_volume_ml == pytest.approx(target, rel=0.10)
    assert inserted.lesion_volume_ml == pytest.approx(target, rel=0.02)
    _check_geometry_and_footprint(chest, inserted)
    median = float(np.median(inserted.hu[inserted.mask]))
    assert -750.0 <= median <= -300.0, f"ground glass at {median:.0f} HU"
    # ground glass, not a solid core: nothing inside reaches the GGO's own target density plus the lung's noise
    assert float(inserted.hu[inserted.mask].max()) < GGO_HU[1] + 150.0


def test_the_input_is_not_modified_and_the_same_seed_gives_the_same_copy(chest):
    hu, _ = chest
    before = hu.copy()
    first, again = _insert(chest, "ggo", 15.0, seed=3), _insert(chest, "ggo", 15.0, seed=3)
    other = _insert(chest, "ggo", 15.0, seed=4)
    assert np.array_equal(hu, before), "insertion modified its input"
    assert np.array_equal(first.hu, again.hu) and np.array_equal(first.mask, again.mask)
    assert first.centre_voxel == again.centre_voxel
    assert first.centre_voxel != other.centre_voxel or not np.array_equal(first.hu, other.hu)


def test_sub_voxel_lesions_are_partial_volume_not_a_full_voxel():
    """On the demo's 5.5 x 5.5 x 11.6 mm grid a 5 mm GGO fills a fifth of a voxel: a faint voxel, not -400 HU."""
    shape, spacing = (40, 40, 20), (5.5, 5.5, 11.6)
    index = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    lung = np.sqrt(sum(((index[i] - centre[i]) * spacing[i] / (90.0, 90.0, 100.0)[i]) ** 2 for i in range(3))) < 1
    hu = np.where(lung, -850.0, 40.0).astype(np.float32)
    small = insert_lesion(
        hu, spacing_mm=spacing, lung_mask=lung, kind="ggo", diameter_mm=5.0, rng=np.random.default_rng(0)
    )
    big = insert_lesion(
        hu, spacing_mm=spacing, lung_mask=lung, kind="ggo", diameter_mm=40.0, rng=np.random.default_rng(0)
    )
    assert small.lesion_volume_ml == pytest.approx(sphere_volume_ml(5.0), rel=0.05)
    assert small.mask.sum() == 1
    assert -850.0 < float(small.hu[small.mask].max()) < -700.0
    assert float(np.median(big.hu[big.mask])) > -700.0


def test_no_room_and_bad_arguments_are_one_line_errors(chest):
    hu, lung = chest
    with pytest.raises(InsertionError, match="no room for a 90 mm ggo"):
        insert_lesion(
            hu, spacing_mm=SPACING, lung_mask=lung, kind="ggo", diameter_mm=90.0, rng=np.random.default_rng(0)
        )
    with pytest.raises(UserError, match="lesion kind"):
        insert_lesion(hu, spacing_mm=SPACING, lung_mask=lung, kind="tumour", diameter_mm=9, rng=np.random.default_rng())
    with pytest.raises(UserError, match="LIDC nodule library"):
        insert_lesion(hu, spacing_mm=SPACING, lung_mask=lung, kind="nodule", diameter_mm=9, rng=np.random.default_rng())
    assert equivalent_diameter_mm(sphere_volume_ml(12.5)) == pytest.approx(12.5)


@pytest.mark.parametrize("size", [5.0, 10.0, 20.0, 30.0])
def test_a_real_solid_nodule_has_the_requested_volume_and_its_own_density(chest, solid_nodules, size):
    inserted = _insert(chest, "nodule", size, nodules=solid_nodules)
    assert inserted.mask_volume_ml == pytest.approx(sphere_volume_ml(size), rel=0.10)
    _check_geometry_and_footprint(chest, inserted)
    crop = solid_nodules.crop(inserted.source)
    assert crop.texture == "" or crop.texture == "Solid"
    pasted = inserted.hu[inserted.mask]
    own = crop.hu[crop.mask]
    # the nodule keeps its own HU: its densest voxels are the crop's (resampling to thicker slices and the blend at
    # the rim only dilute towards the lung, never above the crop's own densities)
    assert float(pasted.max()) <= float(own.max()) + 1.0
    assert abs(float(np.percentile(pasted, 95)) - float(np.percentile(own, 95))) < 150.0
    if size >= 10.0:  # a solid core, far denser than ground glass: soft tissue at the top of the range
        assert -150.0 < float(np.percentile(pasted, 95)) < 300.0
        assert float(np.median(pasted)) > -500.0


def test_sub_solid_nodules_are_chosen_by_texture(chest):
    library = NoduleLibrary(folder=shared_path("lidc_nodules", "nodules.csv").parent, texture="sub-solid")
    assert set(library.table["Texture_value"]) <= {1, 2, 3}
    inserted = _insert(chest, "nodule", 10.0, nodules=library)
    assert inserted.texture in {"Non-Solid/GGO", "Non-Solid/Mixed", "Part Solid/Mixed"}
    assert float(np.median(inserted.hu[inserted.mask])) < -250.0
    with pytest.raises(UserError, match="nodule texture"):
        NoduleLibrary(folder=library.folder, texture="calcified")
