"""The generated demo cohort: chest-CT-like volumes with and without COVID-like lesions, written as DICOM series.

``aamct demo-data --out DIR --cases N [--size S] [--seed S]`` writes ``DIR/scan-0001/ ... DIR/scan-N/`` (one DICOM
file per axial slice) and ``DIR/labels.csv`` (``path,label,site``), the labels CSV that
``aamct manifest build --dicom-root DIR --labels DIR/labels.csv`` accepts.

Why not MONAI's own synthetic data: :func:`monai.data.synthetic.create_test_image_3d` draws random spheres on a
0..1 background, with no anatomy, no Hounsfield units and no DICOM; the pipeline's ingestion, HU windowing and
classifier need all three, so this package renders its own phantom and writes it with pydicom (MONAI has no DICOM
writer; itk is deliberately not installed).

A volume is a thorax phantom in Hounsfield units (body, table, lungs with vessel trees, heart, mediastinum, airways,
spine, ribs, sternum) with its site's scanner noise; positive cases carry COVID-like ground-glass opacities and
consolidation anywhere in either lung, and both classes may carry small solid nodules. All sizes are in millimetres,
so ``--size 64`` and ``--size 512`` show the same patients. The hard demo (``--difficulty hard``) and the truth on
disk (``--masks``): see :func:`write_demo_cohort`.

One concept per module, each importing only the ones listed before it:

- :mod:`~pipeline.data.demo.scanner`: the sites' scanner protocols, matrix and slice geometry, stored HU range, noise.
- :mod:`~pipeline.data.demo.plan`: the records planning fills and rendering reads (patient anatomy, lesions, scan
  plan), the random streams they are drawn from, and a scan's voxel grid.
- :mod:`~pipeline.data.demo.anatomy`: the thorax phantom: body shape, lungs, heart, mediastinum, vessel trees.
- :mod:`~pipeline.data.demo.lesions`: severities, lesion drawing and sized placement, one lesion's rendering, and why
  the lesion signal is what it is.
- :mod:`~pipeline.data.demo.render`: one scan's HU volume and masks from its plan.
- :mod:`~pipeline.data.demo.dicom_writer`: one DICOM file per slice, deterministic UIDs, the fake PHI.
- :mod:`~pipeline.data.demo.truth`: lesion and lung masks as NIfTI, ``truth.csv`` and ``lesions.csv``.
- :mod:`~pipeline.data.demo.cohort`: the cohort's design and planning, and :func:`write_demo_cohort`.

Everything is deterministic for a seed: anatomy comes from a per-patient random stream, acquisition and lesions
from a per-scan stream (``numpy.random.SeedSequence``), UIDs are hashes of seed, size, patient, study and slice
(:func:`pydicom.uid.generate_uid` with ``entropy_srcs``), dates are drawn from the same streams, so a rerun writes
byte-identical files (``tests/data/test_demo.py`` pins one rendered volume's bytes).
"""

from __future__ import annotations

from pipeline.data.demo.cohort import DemoCase, DemoCohort, write_demo_cohort
from pipeline.data.demo.lesions import DIFFICULTIES, HARD_LESION_DIAMETER_MM, LESION_SIZE_UNITS, lesion_volume_range_ml
from pipeline.data.demo.plan import CLASS_NAMES
from pipeline.data.demo.render import SyntheticCT, series_affine_ras
from pipeline.data.demo.scanner import SITES, DemoGeometry, demo_geometry

__all__ = [
    "CLASS_NAMES",
    "DIFFICULTIES",
    "HARD_LESION_DIAMETER_MM",
    "LESION_SIZE_UNITS",
    "SITES",
    "DemoGeometry",
    "DemoCase",
    "DemoCohort",
    "SyntheticCT",
    "demo_geometry",
    "lesion_volume_range_ml",
    "series_affine_ras",
    "write_demo_cohort",
]
