"""Discovery and series checks on real DICOM files written with pydicom (one corrupted aspect per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGLSLossless, generate_uid

from pipeline.data.dicom import (
    DICOMDIR_REASON,
    TIE_BREAK_RULE,
    SeriesCheck,
    SeriesRejected,
    choose_series,
    discover_series,
    group_series,
    read_header,
    scan_headers,
    series_skip_reason,
    transfer_syntax_problem,
)
from tests.data.dicom_factory import PHI, default_positions, write_ct_series, write_enhanced_ct, write_text_file

PYDICOM_TEST_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent


def _only_rejection(result, folder: Path):
    """The one rejection of the series in ``folder``: named by the folder, or by its file for a one-file series."""
    matches = [r for r in result.rejections if r.path == folder] or [
        r for r in result.rejections if r.series_uid and r.n_files == 1 and r.path.parent == folder
    ]
    assert len(matches) == 1, [(str(r.path), r.reason) for r in result.rejections]
    return matches[0]


def _headers(series) -> list:
    headers, rejected = scan_headers(series.files, workers=1)
    assert not rejected
    return headers


# --------------------------------------------------------------------------------------------- accepted geometry


def test_good_series_geometry_sorted_along_normal_not_instance_number(tmp_path):
    series = write_ct_series(tmp_path / "s", n_slices=18, rows=24, columns=20, pixel_spacing=(0.7, 0.8))
    geometry = SeriesCheck()(_headers(series))
    assert geometry.shape == (20, 24, 18)
    assert geometry.spacing == pytest.approx((0.8, 0.7, 2.0))
    assert geometry.spacing_mm == "0.800x0.700x2.000"
    np.testing.assert_allclose(geometry.affine_ras, series.affine_ras, atol=1e-6)
    # the factory writes InstanceNumber against the position order: sorting must follow the positions
    along = [h.position[2] for h in geometry.slices]
    assert along == sorted(along)
    assert [h.path for h in geometry.slices] == series.files
    instance_numbers = [pydicom.dcmread(h.path, stop_before_pixels=True).InstanceNumber for h in geometry.slices]
    assert instance_numbers == sorted(instance_numbers, reverse=True)


def test_reversed_normal_and_oblique_orientation_sort_along_the_normal(tmp_path):
    angle = np.radians(20)
    # rows in the axial plane, columns along -z: the normal lies in the x-y plane, mostly A-P (a coronal series)
    orientation = (np.cos(angle), np.sin(angle), 0.0, 0.0, 0.0, -1.0)
    series = write_ct_series(tmp_path / "obl", n_slices=16, orientation=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    geometry = SeriesCheck()(_headers(series))
    np.testing.assert_allclose(geometry.affine_ras, series.affine_ras, atol=1e-6)
    assert geometry.affine_ras[2, 2] == pytest.approx(-2.0)  # normal (0, 0, -1) in LPS: z decreases along k
    coronal = write_ct_series(tmp_path / "cor", n_slices=16, orientation=orientation)
    (series_cor,) = group_series(_headers(coronal))
    assert series_skip_reason(series_cor) == "skipped: not axial (slice normal mostly A-P: coronal)"


def test_discovery_accepts_good_series_and_reads_headers_only(tmp_path):
    series = write_ct_series(tmp_path / "patient" / "study" / "series", n_slices=20)
    result = discover_series(tmp_path, workers=2)
    assert result.n_files == 20
    assert [s.folder for s in result.accepted] == [series.folder]
    assert result.rejections == []
    header = result.accepted[0].slices[0]
    # raw identifiers are kept for hashing/matching only and never shown
    assert header.patient_id == PHI["PatientID"]
    assert PHI["PatientID"] not in repr(header)
    assert header.pixel_offset is not None and header.pixel_problem is None


# --------------------------------------------------------------------------------------------- one bad aspect each


def _positions(spacings, start=-40.0):
    z = [start]
    for s in spacings:
        z.append(z[-1] + s)
    return [(-80.0, -90.0, v) for v in z]


BAD_SERIES = {
    "gap": (
        dict(positions=[p for i, p in enumerate(_positions([2.0] * 19)) if i != 7]),
        "missing slices: a gap of 4.000 mm between -28.000 and -24.000 mm along the normal where the spacing is "
        "2.000 mm (about 1 slice(s) missing)",
    ),
    "duplicate": (
        dict(positions=_positions([2.0] * 9 + [0.0] + [2.0] * 9)),
        "duplicate slice positions: 2 slices share positions, e.g. -22.000 mm along the normal",
    ),
    "non_uniform": (
        dict(positions=_positions([2.0, 2.5] * 9 + [2.0])),
        "non-uniform slice spacing: 2.000 to 2.500 mm (seen: 2.000, 2.500; tolerance 0.020 mm)",
    ),
    "tilt": (
        dict(tilt_degrees=15.0),
        "gantry tilt of 15.00 degrees: slice positions drift 10.18 mm in-plane over 38.00 mm",
    ),
    "jitter": (
        dict(positions=[(-80.0 + (0.9 if i == 5 else 0.0), -90.0, -40.0 + 2 * i) for i in range(20)]),
        "slice positions are not on one line: up to 0.900 mm off the line through the first and last slice",
    ),
    "too_few": (dict(n_slices=5), "too few slices: 5 (minimum 16)"),
    "unsupported_syntax": (
        dict(transfer_syntax=MPEG2MPML),
        "unsupported transfer syntax MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100): pydicom has no decoder",
    ),
    "mixed_orientation": (
        dict(
            edit=lambda k, ds: (
                setattr(ds, "ImageOrientationPatient", ["1", "0", "0", "0", "0.99", "0.1411"]) if k == 4 else None
            )
        ),
        "orientation differs between slices: (1, 0, 0, 0, 1, 0) vs (1, 0, 0, 0, 0.99, 0.1411) in 1 of 20 files",
    ),
    "mixed_matrix": (
        dict(
            edit=lambda k, ds: (
                (setattr(ds, "Rows", 12), setattr(ds, "PixelData", bytes(12 * 20 * 2))) if k == 3 else None
            )
        ),
        "slice sizes (Rows x Columns) differ: 24x20 (19 slices), 12x20 (1 slices)",
    ),
    "mixed_pixel_spacing": (
        dict(edit=lambda k, ds: setattr(ds, "PixelSpacing", ["0.75", "0.8"]) if k == 2 else None),
        "PixelSpacing differs between slices: 0.7000x0.8000, 0.7500x0.8000 mm",
    ),
    "missing_position": (
        dict(edit=lambda k, ds: delattr(ds, "ImagePositionPatient") if k in (0, 1) else None),
        "missing or invalid ImagePositionPatient in 2 of 20 files",
    ),
    "colour": (
        dict(edit=lambda k, ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR")),
        "not a grayscale image (PhotometricInterpretation PALETTE COLOR, SamplesPerPixel 1)",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_SERIES))
def test_each_bad_series_is_rejected_with_a_specific_reason(tmp_path, kind):
    kwargs, expected = BAD_SERIES[kind]
    kwargs = {"n_slices": 20, **kwargs}
    series = write_ct_series(tmp_path / kind, **kwargs)
    result = discover_series(tmp_path, workers=1)
    assert result.accepted == []
    rejection = _only_rejection(result, series.folder)
    assert rejection.reason.startswith(expected), rejection.reason
    assert rejection.n_files == len(series.files)
    assert rejection.series_uid == series.series_uid
    assert "\n" not in rejection.reason


def test_gantry_tilt_reports_the_header_tilt_too(tmp_path):
    series = write_ct_series(
        tmp_path / "tilt", n_slices=20, tilt_degrees=-7.5, edit=lambda k, ds: setattr(ds, "GantryDetectorTilt", "-7.5")
    )
    reason = SeriesCheck().reason(_headers(series))
    assert reason.startswith("gantry tilt of 7.50 degrees")
    assert "GantryDetectorTilt (-7.5)" in reason
    assert reason.endswith("tilted stacks are rejected, not resampled")


def test_tiny_tilt_below_half_a_pixel_is_accepted(tmp_path):
    # 0.01 degrees over 38 mm drifts 0.007 mm, far below half a 0.7 mm pixel
    series = write_ct_series(tmp_path / "s", n_slices=20, tilt_degrees=0.01)
    assert SeriesCheck().reason(_headers(series)) is None


def test_rounded_positions_within_tolerance_are_uniform(tmp_path):
    # 0.625 mm spacing written with two decimals: 0.62 / 0.63 steps, as some scanners do
    z = [round(-40 + 0.625 * i, 2) for i in range(20)]
    series = write_ct_series(tmp_path / "s", positions=[(-80.0, -90.0, v) for v in z])
    geometry = SeriesCheck()(_headers(series))
    assert geometry.spacing[2] == pytest.approx(0.625, abs=0.002)


def test_min_slices_is_configurable(tmp_path):
    series = write_ct_series(tmp_path / "s", n_slices=6)
    headers = _headers(series)
    assert SeriesCheck(min_slices=16).reason(headers) == "too few slices: 6 (minimum 16)"
    assert SeriesCheck(min_slices=6).reason(headers) is None
    with pytest.raises(ValueError):
        SeriesCheck(min_slices=0)


def test_transfer_syntax_problem_uses_pydicoms_decoders():
    assert transfer_syntax_problem(JPEG2000Lossless) is None  # pylibjpeg-openjpeg is a dependency
    assert transfer_syntax_problem("1.2.840.10008.1.2.1") is None
    assert (
        transfer_syntax_problem("1.2.3.4.5") == "unsupported transfer syntax 1.2.3.4.5: pydicom has no decoder for it"
    )
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed here")
    problem = transfer_syntax_problem(JPEGLSLossless)
    assert problem.startswith(
        "transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) cannot be decoded here"
    )


def test_jpeg2000_series_is_accepted(tmp_path):
    series = write_ct_series(tmp_path / "j2k", n_slices=16, rows=32, columns=32, transfer_syntax=JPEG2000Lossless)
    result = discover_series(tmp_path, workers=1)
    assert [s.folder for s in result.accepted] == [series.folder]
    assert result.accepted[0].slices[0].transfer_syntax == JPEG2000Lossless


def test_multiframe_enhanced_ct_is_rejected(tmp_path):
    path = write_enhanced_ct(tmp_path / "enhanced" / "volume.dcm", n_frames=20)
    result = discover_series(tmp_path, workers=1)
    rejection = _only_rejection(result, path.parent)
    assert rejection.reason.startswith("multi-frame Enhanced CT is not supported (1 file(s), up to 20 frames)")


def test_files_that_are_not_usable_dicom_are_rejected_as_files(tmp_path):
    good = write_ct_series(tmp_path / "good", n_slices=16)
    text = write_text_file(tmp_path / "notes" / "readme.txt")
    nifti_named = write_text_file(tmp_path / "notes" / "volume.nii.gz", "x")
    empty = write_text_file(tmp_path / "notes" / "empty.dcm", "")
    garbage = tmp_path / "notes" / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x07" * 64)
    truncated_series = write_ct_series(tmp_path / "truncated", n_slices=16)
    victim = truncated_series.files[5]
    victim.write_bytes(victim.read_bytes()[:-300])

    result = discover_series(tmp_path, workers=2)
    assert [s.folder for s in result.accepted] == [good.folder]
    reasons = {r.path: r.reason for r in result.rejections}
    assert reasons[text] == "not a DICOM file (no DICM prefix)"
    assert reasons[nifti_named] == "not a DICOM file (no DICM prefix); a NIfTI file: pass it with --nifti-glob"
    assert reasons[empty] == "not a DICOM file (no DICM prefix)"
    assert reasons[garbage].startswith("unreadable DICOM header: ")
    assert (
        reasons[truncated_series.folder] == f"truncated pixel data: 660 of 960 bytes (24x20x16 bits) in {victim.name}"
    )
    # every file is accounted for exactly once
    assert sum(s.n_files for s in result.accepted) + sum(r.n_files for r in result.rejections) == result.n_files == 36


# --------------------------------------------------------------------------------------------- choosing series


def test_primary_series_is_chosen_per_study_and_the_others_explained(tmp_path):
    study = generate_uid()
    primary = write_ct_series(tmp_path / "ax", study_uid=study, n_slices=20)
    thinner = write_ct_series(tmp_path / "ax_thick", study_uid=study, n_slices=17)
    scout = write_ct_series(
        tmp_path / "scout", study_uid=study, n_slices=2, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    derived = write_ct_series(
        tmp_path / "mpr", study_uid=study, n_slices=20, image_type=("DERIVED", "SECONDARY", "AXIAL")
    )
    mr = write_ct_series(tmp_path / "mr", study_uid=study, n_slices=20, modality="MR")
    result = discover_series(tmp_path, workers=1)
    assert result.n_studies == 1
    assert [s.folder for s in result.accepted] == [primary.folder]
    assert _only_rejection(result, thinner.folder).reason == (
        "skipped: not the primary series of its study (17 slices; the primary has 20)"
    )
    assert _only_rejection(result, scout.folder).reason == (
        "skipped: scout/LOCALIZER series (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)"
    )
    assert _only_rejection(result, derived.folder).reason == (
        "skipped: DERIVED/SECONDARY images (ImageType DERIVED\\SECONDARY\\AXIAL)"
    )
    assert _only_rejection(result, mr.folder).reason == "skipped: modality MR (not CT)"


def test_a_failing_primary_falls_back_to_the_next_series_of_the_study(tmp_path):
    study = generate_uid()
    broken = write_ct_series(
        tmp_path / "thin", study_uid=study, positions=[p for i, p in enumerate(_positions([1.0] * 40)) if i != 9]
    )
    good = write_ct_series(tmp_path / "thick", study_uid=study, n_slices=20)
    check = SeriesCheck()
    chosen, rejections = choose_series(group_series(_headers(broken) + _headers(good)), check)
    assert chosen is not None and chosen.folder == good.folder
    assert [r.reason.split(":")[0] for r in rejections] == ["missing slices"]


def test_several_series_in_one_folder_resolve_like_the_reader(tmp_path):
    folder = tmp_path / "mixed"
    axial = write_ct_series(folder, n_slices=20, file_prefix="AX")
    write_ct_series(folder, n_slices=2, file_prefix="LOC", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    result = discover_series(tmp_path, workers=1)
    assert [s.series_uid for s in result.accepted] == [axial.series_uid]
    # two primary series of different studies in one folder: the reader could not tell which one is meant
    other = tmp_path / "two_studies"
    write_ct_series(other, n_slices=20, file_prefix="A")
    write_ct_series(other, n_slices=18, file_prefix="B")
    result = discover_series(other, workers=1)
    assert len(result.accepted) == 1
    (problem,) = [r for r in result.rejections]
    assert problem.reason.startswith("its folder also holds 1 other series and a reader of the folder would pick")


def test_series_without_uids_group_by_folder(tmp_path):
    def blank(k, ds):
        ds.StudyInstanceUID = ""
        ds.SeriesInstanceUID = ""
        ds.SOPInstanceUID = ""

    a = write_ct_series(tmp_path / "a", n_slices=16, edit=blank)
    b = write_ct_series(tmp_path / "b", n_slices=16, edit=blank)
    result = discover_series(tmp_path, workers=1)
    assert sorted(s.folder for s in result.accepted) == [a.folder, b.folder]
    assert result.accepted[0].fingerprint() != result.accepted[1].fingerprint()


# --------------------------------------------------------------------------------------------- pydicom's own CT files


def _copy(files, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / Path(f).name)
    return folder


def test_pydicom_bundled_ct_files_are_handled(tmp_path):
    dicomdir = PYDICOM_TEST_FILES / "dicomdirtests"
    single = _copy([PYDICOM_TEST_FILES / "CT_small.dcm"], tmp_path / "ct_small")
    j2k = _copy([PYDICOM_TEST_FILES / "J2K_pixelrep_mismatch.dcm"], tmp_path / "j2k_single")
    derived = _copy([PYDICOM_TEST_FILES / "693_J2KI.dcm"], tmp_path / "derived")
    five = _copy(sorted((dicomdir / "98892001" / "CT5N").iterdir()), tmp_path / "ct5n")
    scout = _copy(sorted((dicomdir / "98892001" / "CT2N").iterdir()), tmp_path / "ct2n")
    irregular = _copy(sorted((dicomdir / "77654033" / "CT2").iterdir()), tmp_path / "ct2")

    default = discover_series(tmp_path, workers=1)
    assert default.accepted == []
    assert _only_rejection(default, single).reason == "too few slices: 1 (minimum 16)"
    assert _only_rejection(default, five).reason == "too few slices: 5 (minimum 16)"
    assert _only_rejection(default, scout).reason.startswith("skipped: scout/LOCALIZER series")
    assert _only_rejection(default, derived).reason.startswith("skipped: DERIVED/SECONDARY images")

    relaxed = discover_series(tmp_path, workers=1, check=SeriesCheck(min_slices=1))
    accepted = {s.folder: s.geometry.spacing_mm for s in relaxed.accepted}
    assert accepted == {single: "0.661x0.661x5.000", j2k: "0.431x0.431x5.000", five: "0.488x0.488x2.500"}
    assert _only_rejection(relaxed, irregular).reason.startswith(
        "missing slices: a gap of 202.500 mm between -99.480 and 103.020 mm"
    )


def test_read_header_on_a_real_scanner_file(shared_data):
    folder = shared_data / "dicom" / "totalseg_abdomen_ct"
    header = read_header(sorted(folder.iterdir())[0])
    assert header.transfer_syntax == JPEG2000Lossless
    assert (header.rows, header.columns) == (512, 512)
    assert header.pixel_spacing == pytest.approx((0.9765625, 0.9765625))
    assert header.series_uid == "" and header.study_uid == ""  # blanked by the data's anonymiser
    result = discover_series(folder)
    (series,) = result.accepted
    assert series.geometry.shape == (512, 512, 20)
    assert series.geometry.spacing_mm == "0.977x0.977x2.000"


def test_default_positions_helper_is_consistent():
    positions = default_positions(3, origin=(0, 0, 0), orientation=(1, 0, 0, 0, 1, 0), slice_spacing=2.0)
    assert positions == [(0.0, 0.0, 0.0), (0.0, 0.0, 2.0), (0.0, 0.0, 4.0)]


def test_series_check_raises_series_rejected(tmp_path):
    series = write_ct_series(tmp_path / "s", n_slices=3)
    with pytest.raises(SeriesRejected, match=r"^too few slices: 3 \(minimum 16\)$"):
        SeriesCheck()(_headers(series))


# --------------------------------------------------------------------------------------------- issue 13 reasons


def test_every_dicomdir_of_pydicoms_media_tree_is_listed_as_such_and_the_images_still_count(tmp_path):
    tree = shutil.copytree(PYDICOM_TEST_FILES / "dicomdirtests", tmp_path / "media")
    result = discover_series(tree, workers=1, check=SeriesCheck(min_slices=1))
    dicomdirs = {r.path.relative_to(tree).as_posix(): r for r in result.rejections if r.kind == "DICOMDIR"}
    expected = {p.relative_to(tree).as_posix() for p in tree.rglob("DICOMDIR*") if p.is_file()}
    assert set(dicomdirs) == expected and len(expected) == 8  # the variants pydicom ships: big endian, implicit...
    assert {r.reason for r in dicomdirs.values()} == {DICOMDIR_REASON}
    assert all(r.n_files == 1 for r in dicomdirs.values())
    # the images it indexes are judged on their own: the five-slice CT is accepted
    assert [s.folder.relative_to(tree).as_posix() for s in result.accepted] == ["98892001/CT5N"]
    assert sum(s.n_files for s in result.accepted) + sum(r.n_files for r in result.rejections) == result.n_files


def test_a_tie_between_equally_long_series_names_the_tie_break_rule(tmp_path):
    study = generate_uid()
    first = write_ct_series(tmp_path / "a_series", study_uid=study, n_slices=18)
    second = write_ct_series(tmp_path / "b_series", study_uid=study, n_slices=18)
    result = discover_series(tmp_path, workers=1)
    assert [s.folder for s in result.accepted] == [first.folder]  # first in folder-path order
    reason = _only_rejection(result, second.folder).reason
    assert reason == (
        "skipped: not the primary series of its study: a tie (18 slices each) with the primary series in a_series, "
        f"broken by {TIE_BREAK_RULE} (the first that passes the checks is primary)"
    )
    # a shorter series keeps the plain reason
    shorter = write_ct_series(tmp_path / "c_series", study_uid=study, n_slices=17)
    assert _only_rejection(discover_series(tmp_path, workers=1), shorter.folder).reason == (
        "skipped: not the primary series of its study (17 slices; the primary has 18)"
    )


def test_a_partly_derived_series_names_its_derived_files(tmp_path):
    derived = {2, 7, 11}

    def mark(k, ds):
        if k in derived:
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]

    series = write_ct_series(tmp_path / "s", n_slices=20, edit=mark)
    reason = _only_rejection(discover_series(tmp_path, workers=1), series.folder).reason
    names = sorted(series.files[k].name for k in derived)  # slices are listed in file-name order
    assert reason == (
        f"skipped: DERIVED/SECONDARY images (ImageType DERIVED\\SECONDARY\\AXIAL) in 3 of 20 files "
        f"({names[0]}, {names[1]} and 1 more)"
    )


@pytest.mark.parametrize("shift_mm", [0.6, 1.3, 5.0])
def test_a_moved_slice_is_a_position_inconsistency_naming_its_file(tmp_path, shift_mm):
    z = [-40.0 + 2.0 * k for k in range(20)]
    z[8] += shift_mm  # 5 mm jumps over its neighbour: it still leaves one hole and crowds one place
    series = write_ct_series(tmp_path / "s", positions=[(-80.0, -90.0, v) for v in z])
    reason = SeriesCheck().reason(_headers(series))
    assert reason.startswith(
        f"slice position inconsistency: {series.files[8].name} lies at {-24.0 + shift_mm:.3f} mm along the normal, "
        "off the 2.000 mm grid of the other 19 slices, which has an empty place at -24.000 mm"
    ), reason
    # a slice that is really missing is still called that
    gap = write_ct_series(tmp_path / "gap", positions=[(-80.0, -90.0, v) for i, v in enumerate(z) if i != 8])
    assert SeriesCheck().reason(_headers(gap)).startswith("missing slices")


def test_a_damaged_file_rejects_the_series_of_its_folder_naming_it(tmp_path):
    series = write_ct_series(tmp_path / "s", n_slices=20)
    victim = series.files[-1]  # the last slice: without it the rest would pass as a complete 19-slice series
    victim.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x07" * 64)
    result = discover_series(tmp_path, workers=1)
    assert result.accepted == []
    row = _only_rejection(result, series.folder)
    assert row.reason == (
        f"unreadable file in the series folder: {victim.name} (unreadable DICOM header: TransferSyntaxUID is not a "
        "valid UID); the series may be missing that slice"
    )
    assert (row.n_files, _only_rejection(result, victim).n_files) == (19, 1)
    # a file that is not DICOM at all blocks nothing
    victim.write_text("export notes\n")
    assert [s.folder for s in discover_series(tmp_path, workers=1).accepted] == [series.folder]


def test_a_cut_off_jpeg2000_file_is_found_from_its_header(tmp_path):
    series = write_ct_series(tmp_path / "s", n_slices=16, rows=32, columns=32, transfer_syntax=JPEG2000Lossless)
    victim = series.files[4]
    victim.write_bytes(victim.read_bytes()[:-40])
    header = read_header(victim)
    assert header.pixel_problem.startswith("truncated pixel data: item 2 of the encapsulated pixel data has ")
    reason = _only_rejection(discover_series(tmp_path, workers=1), series.folder).reason
    assert reason == f"{header.pixel_problem} in {victim.name}"


def test_fast_header_parse_equals_pydicom_dcmread_on_every_pydicom_test_file(monkeypatch):
    from pipeline.data import dicom

    files = sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())
    assert len(files) > 150

    def parse(path):
        try:
            return dicom.read_header(path)
        except dicom.HeaderError as err:
            return (str(err), err.kind)

    fast = [parse(p) for p in files]
    monkeypatch.setattr(dicom, "_parse_fast", lambda fp: None)  # every file through dcmread
    slow = [parse(p) for p in files]
    assert sum(isinstance(h, dicom.SliceHeader) for h in fast) > 150
    mismatches = [(p.name, a, b) for p, a, b in zip(files, fast, slow, strict=True) if a != b]
    assert mismatches == []
