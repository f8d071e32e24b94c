"""Cohort ingestion: DICOM discovery and checks, NIfTI checks, manifests, patient-level splits, the demo cohort."""
