"""DICOM results a hospital opens in its viewer: the heatmap as a Parametric Map, the case score as a Structured Report.

For each DICOM input case :func:`write_dicom_outputs` writes, with highdicom, two objects that belong to the source
series (same Study, same Frame of Reference, every frame and measurement referencing the source instances):

* ``<case_id>_heatmap_pm.dcm`` -- a **Parametric Map** (16-bit unsigned ``PixelData``, one frame per source slice,
  a Real World Value Mapping that names the values and maps them back: ``value = stored * slope + intercept``). A
  viewer overlays it on the series like a PET on a CT. The heatmap's range ``[min, max]`` is spread over the 65536
  stored levels (``intercept = min``, ``slope = (max - min) / 65535``), so the map reads back to the NIfTI heatmap
  within half a step, ``slope / 2`` (about 8e-6 of the range), at half the size of float32 ``FloatPixelData``
  (10.5 MB instead of 21.0 MB for 20 slices of 512 x 512, measured).
* ``<case_id>_score_sr.dcm`` -- a **Comprehensive 3D SR** holding a TID 1500 Measurement Report: the positive-class
  probability (a numeric measurement, UCUM unit ``1``), the frozen operating threshold, and the operating-point
  decision (qualitative evaluation: SNOMED CT 10828004 "Positive" / 260385009 "Negative"), with the source series
  as evidence and the algorithm identified. SR is the standard's home for a coded result of an algorithm; a
  Key Object Selection or a Secondary Capture could carry text, not a coded measurement a PACS can query.

Which viewers show what (from their documentation):

* **3D Slicer** with the QuantitativeReporting extension (built on dcmqi, "DICOM for Quantitative Imaging": voxel
  segmentations as DICOM SEG, parametric maps as DICOM Parametric Map, measurements as SR TID 1500; see the dcmqi
  README and the QuantitativeReporting guide) loads the Parametric Map as a volume over the series and the SR's
  measurements.
* **OHIF Viewer v3** fuses a Parametric Map over its series through ``@ohif/extension-cornerstone-dicom-pmap``
  (published from OHIF 3.9) and shows SRs through ``@ohif/extension-cornerstone-dicom-sr``.
* Clinical PACS viewers differ, and many show neither a Parametric Map nor TID 1500 content (a Segmentation
  or a Secondary Capture is what they display); for them the NIfTI heatmap and the PNG montage of
  ``aamct evaluate-cohort`` remain the way to look at the map. No Segmentation is written: the heatmap is evidence,
  not a segmentation, and a binary SEG would present it as one.

Identity: by default the patient module is pseudonymous: PatientName and PatientID are the case's pseudonym;
every date, time and person name of the source, PatientSex / Age, AccessionNumber, StudyID, institution, station and
device serial number are empty, private tags and references to worklist / study-component objects are dropped: nothing
identifying is copied from the source. The Study and Frame of Reference UIDs are
kept (the objects must reference the source to overlay on it), the SOP Instance UIDs of the source slices appear as
references, and every object gets new Series and SOP Instance UIDs. ``keep_patient_identity=True`` (the CLI's
``--keep-patient-identity``, for in-hospital use only) copies the source's patient and study modules instead, so a
PACS files the results under the right patient. Either way the equipment modules (General Equipment,
ContributingEquipmentSequence) name this product only, never the source's Manufacturer, model, software versions,
serial number, institution or station (:data:`EQUIPMENT_ATTRIBUTES`; highdicom would copy them from the source).

Cost: on the 512 x 512 x 64 real chest the DICOM step takes about 0.65 s of a 5 s case (read 0.31, Parametric Map
0.29, SR 0.05 s; benchmarks/results/case_time.md, loaded 2-core machine): the SR carries no per-slice image library,
the map is quantised in float32 in place, the headers are scrubbed without converting every value, and highdicom's
tables are loaded once when the writer is made.

The heatmap array is the one inference produced on the source grid as :mod:`pipeline.data.reader` loads it (RAS
``(X, Y, Z)`` with the series' affine). Frames are laid out through the series geometry
(:class:`pipeline.data.dicom.SeriesCheck` sorts the slices along their normal and gives the RAS affine of that
order), and the map is put onto that grid through the two affines (:func:`pipeline.inference.heatmap.resample_to_grid`;
an identical grid is copied as is), never by assuming a slice order.

highdicom has the IODs; this module only decides what goes into them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.data.dicom import SeriesCheck, SeriesGeometry, SeriesRejected, choose_series, group_series, scan_headers
from pipeline.errors import UserError
from pipeline.inference.heatmap import resample_to_grid
from pipeline.io import atomic_path

__all__ = [
    "CODE_SCHEME",
    "DICOM_STAGES",
    "DicomOutputWriter",
    "DicomOutputs",
    "EQUIPMENT_ATTRIBUTES",
    "IDENTITY_ATTRIBUTES",
    "series_geometry",
    "write_dicom_outputs",
]

#: private coding scheme of the measurement names (PS3.16 8.2: "99" prefix for local schemes)
CODE_SCHEME = "99AAMCT"
#: attributes blanked in the pseudonymised outputs (Patient and General Study modules: identifying or dates)
IDENTITY_ATTRIBUTES: tuple[str, ...] = (
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PerformedProcedureStepID",
    "RequestedProcedureID",
    "ScheduledProcedureStepID",
)
#: sequences removed in the pseudonymised outputs: identifiers, and references to objects outside the series
#: (a study component, a modality worklist request) that would carry the hospital's own identifiers
_IDENTITY_SEQUENCES: tuple[str, ...] = (
    "OtherPatientIDsSequence",
    "PatientInsurancePlanCodeSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "RequestAttributesSequence",
    "IssuerOfAccessionNumberSequence",
    "IssuerOfPatientIDQualifiersSequence",
    "ContributingEquipmentSequence",  # earlier processing (e.g. an anonymiser), with its dates
)
#: the source's equipment (General Equipment module and its kin): removed from the copies the derived objects are
#: built from, whatever the identity setting, so the equipment modules of the outputs name this product only.
#: highdicom copies a source image's Manufacturer, model, software versions, serial number, institution and station
#: into ContributingEquipmentSequence ("acquisition equipment of the source"); a site, scanner and workstation
#: name narrow down who was scanned where, and none of it is needed to overlay the map on the series.
EQUIPMENT_ATTRIBUTES: tuple[str, ...] = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "DeviceUID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "InstitutionalDepartmentTypeCodeSequence",
    "StationName",
    "GantryID",
    "UDISequence",
    "ContributingEquipmentSequence",
)
#: the timed steps of :func:`write_dicom_outputs` (the cohort table's ``seconds_dicom_<step>`` columns): reading the
#: source headers and putting the map on the series grid, the Parametric Map (built and saved), the SR (likewise)
DICOM_STAGES: tuple[str, ...] = ("read", "pm", "sr")
_STUDY_TYPE2 = ("StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName", "AccessionNumber")
_MANUFACTURER = "aamct"


@dataclass(frozen=True, kw_only=True)
class DicomOutputs:
    """What :func:`write_dicom_outputs` wrote for one case.

    Attributes:
        parametric_map: the heatmap Parametric Map file.
        structured_report: the score / decision SR file.
        frame_of_reference_uid: the source's Frame of Reference (shared by both objects).
        referenced_instances: SOP Instance UIDs of the source slices, in frame order.
        pseudonymised: ``False`` when the source's patient identity was kept.
        notes: what the user should know (e.g. a source without a SeriesInstanceUID).
        stage_seconds: wall-clock seconds per step (keys from :data:`DICOM_STAGES`).
    """

    parametric_map: Path
    structured_report: Path
    frame_of_reference_uid: str
    referenced_instances: tuple[str, ...]
    pseudonymised: bool
    notes: tuple[str, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)


def series_geometry(series_dir: str | os.PathLike) -> SeriesGeometry:
    """The checked geometry of the series in a folder, read from the headers only (the reader's own rule).

    Args:
        series_dir: a DICOM series folder (the one inference read).

    Returns:
        Its :class:`~pipeline.data.dicom.SeriesGeometry` (slices sorted along the normal, RAS affine).

    Raises:
        UserError: no DICOM files, or no series passing the ingestion's checks.
    """
    folder = Path(series_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a DICOM series folder")
    headers, _ = scan_headers(sorted(p for p in folder.iterdir() if p.is_file()))
    if not headers:
        raise UserError(f"{folder}: no DICOM files")
    check = SeriesCheck(min_slices=1)
    series = group_series(headers)
    try:
        if len(series) == 1:
            return check(series[0].slices)
    except SeriesRejected as err:
        raise UserError(f"{folder}: {err}") from None
    chosen, rejections = choose_series(series, check)
    if chosen is None or chosen.geometry is None:
        reasons = "; ".join(sorted({r.reason for r in rejections})[:2])
        raise UserError(f"{folder}: none of its {len(series)} series is readable ({reasons})")
    return chosen.geometry


def _frames_on_series_grid(heatmap: np.ndarray, heatmap_affine: np.ndarray, geometry: SeriesGeometry) -> np.ndarray:
    """``(frames, rows, columns)`` float32: frame ``k`` is the map on the ``k``-th slice along the normal."""
    values = np.asarray(heatmap, dtype=np.float32)
    while values.ndim > 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 3:
        raise UserError(f"the heatmap must be a 3D volume, got shape {values.shape}")
    affine = np.asarray(heatmap_affine, dtype=np.float64)
    same_grid = values.shape == tuple(geometry.shape) and np.allclose(affine, geometry.affine_ras, atol=1e-4)
    if not same_grid:
        values = resample_to_grid(
            values, source_affine=affine, target_affine=geometry.affine_ras, target_shape=geometry.shape
        )
    # grid axes are (columns, rows, slices) in the DICOM order the geometry fixes; a frame is (rows, columns)
    return np.ascontiguousarray(np.transpose(values, (2, 1, 0)), dtype=np.float32)


def _source_datasets(geometry: SeriesGeometry) -> list[Dataset]:
    return [pydicom.dcmread(header.path, stop_before_pixels=True) for header in geometry.slices]


def _with_identity(datasets: Sequence[Dataset], *, case_id: str, keep: bool) -> tuple[list[Dataset], list[str]]:
    """Copies of the source headers whose patient and study identity the derived objects may carry, and notes on
    the source UIDs that had to be filled in."""
    out = []
    notes: list[str] = []
    frame_of_reference = str(datasets[0].get("FrameOfReferenceUID") or "")
    # an export that blanked its Study / Series UIDs (the real JPEG 2000 series in the tests does) cannot be
    # referenced as it is: derive stable UIDs from the frame of reference, the same for every slice and every rerun
    filled = {
        keyword: generate_uid(entropy_srcs=[frame_of_reference, keyword])
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID")
        if not all(ds.get(keyword) for ds in datasets)
    }
    notes += [
        f"the source series has no {keyword}: the outputs use {uid}, derived from its frame of reference; a viewer "
        "cannot match them to the source by that UID"
        for keyword, uid in filled.items()
    ]
    for source in datasets:
        ds = Dataset()
        ds.update(source)  # shallow copy of the elements: the source files are never modified
        ds.file_meta = source.file_meta
        # some exports (the real JPEG 2000 series in the tests) leave SOPClassUID / SOPInstanceUID empty in the
        # dataset and keep them in the file meta only; the references need them
        meta = getattr(source, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        for keyword, uid in filled.items():
            setattr(ds, keyword, uid)
        for keyword in _STUDY_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")  # General Study type 2: highdicom copies them, present if empty
        for keyword in EQUIPMENT_ATTRIBUTES:  # whatever ``keep``: the outputs' equipment is this product's
            if keyword in ds:
                del ds[keyword]
        if not keep:
            # the elements unconverted (``Dataset.elements``): converting every value of 64 headers only to test
            # its VR cost 0.5 s of a 64-slice series (profiled); private tags go, dates, times and person names of
            # the source (highdicom copies e.g. AcquisitionDateTime into records) are emptied, so that type 2
            # attributes stay present
            for element in list(ds.elements()):
                tag = element.tag
                if tag.is_private:
                    del ds[tag]
                    continue
                vr = element.VR or (dictionary_VR(tag) if tag in DicomDictionary else "")
                if vr in ("DA", "DT", "TM", "PN") or keyword_for_tag(tag) in IDENTITY_ATTRIBUTES:
                    ds[tag] = DataElement(tag, vr, "")
            ds.PatientName = f"{case_id}^"  # family-name component only (a single-component person name)
            ds.PatientID = case_id
            for keyword in _IDENTITY_SEQUENCES:
                if keyword in ds:
                    del ds[keyword]
        out.append(ds)
    return out, notes


def _save(dataset: Dataset, target: Path) -> Path:
    with atomic_path(target, suffix=".dcm") as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return target


def _software_version() -> str:
    from pipeline import __version__

    return __version__  # the one version (pipeline/__init__.py), also where the package is not installed


#: largest stored value of the Parametric Map's 16-bit unsigned pixels
_STORED_MAX = 65535


def _quantised(frames: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored uint16 frames, slope, intercept)`` with ``frames ~= stored * slope + intercept`` within ``slope / 2``.

    Raises:
        UserError: if the map holds NaN or infinite values (they have no stored level).
    """
    values = np.asarray(frames, dtype=np.float32)
    # min and max are NaN / infinite when any value is, so two passes check finiteness and find the range
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int((~np.isfinite(values)).sum())
        raise UserError(f"the heatmap holds {bad} NaN or infinite values; no Parametric Map written")
    slope = (high - low) / _STORED_MAX if high > low else 1.0  # a constant map: every pixel 0, value = intercept
    # in float32, in place (a 512 x 512 x 64 map is 16.8 M values): the rounding error of float32 arithmetic here is
    # below 0.01 of a step, so every value still reads back within half a step (plus 1e-7 of the range)
    scaled = np.subtract(values, np.float32(low), dtype=np.float32)
    scaled *= np.float32(1.0 / slope)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, _STORED_MAX, out=scaled)
    return scaled.astype(np.uint16), slope, low


def _product_equipment():
    """The one ContributingEquipmentSequence item of the outputs: this product as processing equipment.

    highdicom adds the source image's acquisition equipment and its own entry; the outputs name the product that
    made them, nothing of the site's scanner (see :data:`EQUIPMENT_ATTRIBUTES`).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.ContributingEquipment(
        manufacturer=_MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name="aamct",
        software_versions=_software_version(),
        contribution_description="heatmap and case score",
    )


def _parametric_map(sources: Sequence[Dataset], frames: np.ndarray, *, series_number: int, description: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    stored, slope, intercept = _quantised(frames)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HEATMAP",
        lut_explanation="positive-class evidence, arbitrary units",
        unit=codes.UCUM.NoUnits,
        value_range=(0, _STORED_MAX),  # integers: the stored values the linear mapping covers
        slope=slope,
        intercept=intercept,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(sources),
        pixel_array=stored,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name="aamct heatmap",
        software_versions=_software_version(),
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        # on stored values (a Parametric Map has no Modality LUT): the whole stored range is the map's min..max
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=_STORED_MAX / 2.0, window_width=float(_STORED_MAX), voi_lut_function="LINEAR_EXACT"
            )
        ],
        content_label="HEATMAP",
        content_description=description[:64],
    )
    pm.SeriesDescription = "aamct heatmap (research use)"
    pm.ContributingEquipmentSequence = [_product_equipment()]
    if "Laterality" not in pm:
        pm.Laterality = ""  # General Series, type 2C: present and empty (the map covers what the source covers)
    return pm


def _structured_report(
    sources: Sequence[Dataset],
    *,
    probability: float,
    threshold: float,
    positive_class: str,
    series_number: int,
    model_name: str,
):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64] or "aamct", version=_software_version())
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="aamct", manufacturer_name=_MANUFACTURER
        ),
    )
    unitless = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    positive = probability >= threshold
    decision = (
        hd.sr.CodedConcept(value="10828004", scheme_designator="SCT", meaning="Positive")
        if positive
        else hd.sr.CodedConcept(value="260385009", scheme_designator="SCT", meaning="Negative")
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="case score"),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(
                    value="AAMCT001", scheme_designator=CODE_SCHEME, meaning=f"Probability of {positive_class}"[:64]
                ),
                value=float(probability),
                unit=unitless,
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(
                    value="AAMCT002", scheme_designator=CODE_SCHEME, meaning="Frozen operating threshold"
                ),
                value=float(threshold),
                unit=unitless,
                algorithm_id=algorithm,
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept(
                    value="AAMCT003",
                    scheme_designator=CODE_SCHEME,
                    meaning=f"{positive_class} at operating point"[:64],
                ),
                value=decision,
            )
        ],
    )
    # no Image Library (TID 1600, optional in TID 1500): it describes images that measurements reference by
    # region, and a case score references none; the series is listed as the SR's evidence. With one library entry
    # per slice it was most of the SR's cost (2.9 s of 4.1 s for the 64-slice real chest, profiled) and size.
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = "aamct case score (research use)"
    sr.ContributingEquipmentSequence = [_product_equipment()]
    return sr


def write_dicom_outputs(
    series_dir: str | os.PathLike,
    heatmap: np.ndarray,
    heatmap_affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    case_id: str,
    probability: float,
    threshold: float,
    positive_class: str = "positive",
    model_name: str = "aamct classifier",
    keep_patient_identity: bool = False,
    series_number: int = 9900,
) -> DicomOutputs:
    """Write the heatmap Parametric Map and the score SR of one DICOM case (see the module docstring).

    Args:
        series_dir: the source DICOM series folder (the one inference read).
        heatmap: the case's heatmap on the source grid as loaded by :mod:`pipeline.data.reader`, ``(X, Y, Z)``
            (a leading channel of one is accepted).
        heatmap_affine: its ``4x4`` RAS affine.
        out_dir: folder of ``<case_id>_heatmap_pm.dcm`` and ``<case_id>_score_sr.dcm`` (created).
        case_id: the pseudonymous case id (file names; PatientName/PatientID unless the identity is kept).
        probability: the case's positive-class probability.
        threshold: the frozen operating threshold (``probability >= threshold`` is positive).
        positive_class: name of the positive class (in the SR's concept names).
        model_name: algorithm name recorded in the SR.
        keep_patient_identity: copy the source's patient and study identity (in-hospital use); off by default.
        series_number: Series Number of the Parametric Map (the SR gets the next one).

    Returns:
        The :class:`DicomOutputs`.

    Raises:
        UserError: the source is not a readable DICOM series, or the heatmap is not a 3D volume.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    geometry = series_geometry(series_dir)
    frames = _frames_on_series_grid(heatmap, heatmap_affine, geometry)
    sources, notes = _with_identity(_source_datasets(geometry), case_id=case_id, keep=keep_patient_identity)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds["read"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        pm = _parametric_map(
            sources,
            frames,
            series_number=series_number,
            description=f"aamct heatmap, p({positive_class}) = {probability:.3f}",
        )
        pm_path = _save(pm, out / f"{case_id}_heatmap_pm.dcm")
        seconds["pm"] = time.perf_counter() - started
        started = time.perf_counter()
        sr = _structured_report(
            sources,
            probability=probability,
            threshold=threshold,
            positive_class=positive_class,
            series_number=series_number + 1,
            model_name=model_name,
        )
        sr_path = _save(sr, out / f"{case_id}_score_sr.dcm")
        seconds["sr"] = time.perf_counter() - started
    except (ValueError, TypeError, AttributeError) as err:
        raise UserError(f"{series_dir}: cannot build the DICOM outputs ({type(err).__name__}: {err})") from err
    return DicomOutputs(
        parametric_map=pm_path,
        structured_report=sr_path,
        frame_of_reference_uid=str(sources[0].FrameOfReferenceUID),
        referenced_instances=tuple(str(ds.SOPInstanceUID) for ds in sources),
        pseudonymised=not keep_patient_identity,
        notes=tuple(notes),
        stage_seconds=seconds,
    )


class DicomOutputWriter:
    """The cohort runner's hook: write a scored DICOM case's outputs from its heatmap NIfTI.

    The heatmap is read back from the NIfTI file inference wrote (so the Parametric Map holds the values a NIfTI
    viewer shows, within its quantisation step); NIfTI inputs get no DICOM outputs (there is no series to reference).

    Args:
        output_dir: folder of the DICOM outputs (``aamct evaluate-cohort --dicom-out``), one ``<case_id>_*.dcm``
            pair per case.
        keep_patient_identity: see :func:`write_dicom_outputs` (off by default).
        positive_class: name of the positive class.
        model_name: algorithm name recorded in the SR.
    """

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike,
        keep_patient_identity: bool = False,
        positive_class: str = "positive",
        model_name: str = "aamct classifier",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.keep_patient_identity = bool(keep_patient_identity)
        self.positive_class = str(positive_class)
        self.model_name = str(model_name)
        _warm_up()

    def __call__(
        self,
        *,
        image: str | os.PathLike,
        heatmap: str | os.PathLike | None,
        case_id: str,
        probability: float,
        threshold: float,
    ) -> DicomOutputs | None:
        """Write the case's outputs; ``None`` for a NIfTI input.

        Raises:
            UserError: no heatmap was written for a DICOM case, or the outputs cannot be built.
        """
        if not Path(image).is_dir():
            return None
        if heatmap is None:
            raise UserError("no heatmap was written for this case (heatmaps are off), so no Parametric Map")
        import nibabel as nib

        started = time.perf_counter()
        volume = nib.load(str(heatmap))
        values = volume.get_fdata(dtype=np.float32)  # float32 throughout: the map's values need no more
        reading = time.perf_counter() - started
        outputs = write_dicom_outputs(
            image,
            values,
            np.asarray(volume.affine, dtype=np.float64),
            self.output_dir,
            case_id=case_id,
            probability=probability,
            threshold=threshold,
            positive_class=self.positive_class,
            model_name=self.model_name,
            keep_patient_identity=self.keep_patient_identity,
        )
        seconds = dict(outputs.stage_seconds)
        seconds["read"] = seconds.get("read", 0.0) + reading
        return replace(outputs, stage_seconds=seconds)


def _warm_up() -> None:
    """Import highdicom and load the tables it reads once per process (about 1.5 s on 2 cores, profiled), so that
    the cost falls where the run starts, as loading the network does, and not on the first case's DICOM step."""
    try:
        import highdicom  # noqa: F401
        from highdicom import _standard_utils
        from pydicom.sr.codedict import codes  # noqa: F401

        _standard_utils.get_module_attribute_map()
        _standard_utils.get_iod_module_map()
        _standard_utils.get_sop_class_iod_map()
    except Exception:  # noqa: BLE001 - a warm-up only: the first case pays the cost instead
        pass
