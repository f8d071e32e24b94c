"""``aamct manifest build|split`` and ``aamct demo-data``."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data-stage subcommands to the top-level parser."""
    manifest = sub.add_parser("manifest", help="build, split and check cohort manifests")
    msub = manifest.add_subparsers(dest="manifest_command", metavar="<action>")
    msub.required = True

    build = msub.add_parser(
        "build",
        help="discover DICOM series / NIfTI files and write a validated manifest plus its rejections",
        description="Walk a DICOM tree (headers only) and/or NIfTI files, check every series, and write FILE.csv "
        "with one row per accepted case and FILE.rejections.csv with one row per rejected series or file.",
    )
    build.add_argument("--dicom-root", type=Path, help="folder searched recursively for DICOM files")
    build.add_argument("--nifti-glob", help="glob of NIfTI files, e.g. 'data/**/*.nii.gz'")
    build.add_argument(
        "--labels", type=Path, help="CSV mapping series/studies/paths to labels (see data_manifests/README.md)"
    )
    build.add_argument("--site", help="site name for cases whose site is not given in the labels CSV")
    build.add_argument(
        "--min-slices", type=int, default=None, help="fewest slices a series or volume may have (default 16)"
    )
    build.add_argument(
        "--allow-out-of-scope",
        action="store_true",
        help="keep scans the scope check finds out of scope (not a chest CT with lungs in view) in the manifest, "
        "with scope out_of_scope, instead of rejecting them",
    )
    build.add_argument(
        "--key-file",
        type=Path,
        help="secret key for pseudonymous ids (default: env AAMCT_PSEUDONYM_KEY or a per-user key file)",
    )
    build.add_argument(
        "--workers",
        type=int,
        default=None,
        help="header-reading threads (default 1: fastest on local disks; more can help on a network share)",
    )
    build.add_argument("--out", required=True, help="manifest CSV to write")
    build.add_argument(
        "--quiet", action="store_true", help="no progress bar (it is shown only when stderr is a terminal anyway)"
    )
    build.set_defaults(func=_cmd_build)

    split = msub.add_parser("split", help="patient-level stratified train/test (+external) split and 5 folds")
    split.add_argument("manifest", type=Path, help="manifest CSV (rewritten with split and fold filled in)")
    ext = split.add_mutually_exclusive_group()
    ext.add_argument("--external-site", help="hold out every case of this site as the external test set")
    ext.add_argument("--external-count", type=int, help="hold out this many patients as the external test set")
    split.add_argument("--test-fraction", type=float, default=0.3, help="share of patients in the test split")
    split.add_argument("--folds", type=int, default=5, help="cross-validation folds over the training split")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument(
        "--classes", help="comma-separated class names, index = integer label (default: from the labels)"
    )
    split.add_argument("--datalist", type=Path, help="datalist JSON to write (default: <manifest>.datalist.json)")
    split.set_defaults(func=_cmd_split)

    demo = sub.add_parser("demo-data", help="write the generated chest-CT-like demo cohort as DICOM series")
    demo.add_argument("--out", type=Path, required=True, help="folder to write the cohort into")
    demo.add_argument("--cases", type=int, default=40)
    demo.add_argument("--size", type=int, default=64, help="in-plane matrix size (512 for the full geometry)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--difficulty",
        default="default",
        help="default (the learnable demo) or hard (4-7 smaller, fainter ground-glass opacities per positive anywhere in the lungs, "
        "2-13 %% of the lung)",
    )
    demo.add_argument(
        "--lesion-size-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="size of every lesion as measured on its mask (unit: --lesion-size-unit); hard default: 30 60 mm",
    )
    demo.add_argument(
        "--lesion-size-unit",
        default="mm",
        help="mm (equivalent-sphere diameter, the default) or ml (volume) for --lesion-size-range",
    )
    demo.add_argument(
        "--masks",
        action="store_true",
        help="also write each scan's lesion and lung mask (NIfTI on the series' grid) and truth.csv / lesions.csv "
        "into --truth-dir",
    )
    demo.add_argument(
        "--truth-dir", type=Path, help="folder for the masks and truth tables (default: <out>_truth beside --out)"
    )
    demo.set_defaults(func=_cmd_demo)


def _cmd_build(args: argparse.Namespace) -> int:
    from pipeline.data.manifest import build_manifest

    result = build_manifest(
        dicom_root=args.dicom_root,
        nifti_glob=args.nifti_glob,
        labels_csv=args.labels,
        out=args.out,
        site=args.site,
        min_slices=args.min_slices,
        key_file=args.key_file,
        workers=args.workers,
        progress=not args.quiet,
        allow_out_of_scope=args.allow_out_of_scope,
    )
    print(result.summary())
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from pipeline.data.splits import split_manifest

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    result = split_manifest(
        args.manifest,
        external_site=args.external_site,
        external_count=args.external_count,
        test_fraction=args.test_fraction,
        n_folds=args.folds,
        seed=args.seed,
        class_names=classes,
        datalist_out=args.datalist,
    )
    print(result.summary())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.data.demo import write_demo_cohort

    result = write_demo_cohort(
        args.out,
        cases=args.cases,
        size=args.size,
        seed=args.seed,
        difficulty=args.difficulty,
        lesion_size_range=tuple(args.lesion_size_range) if args.lesion_size_range else None,
        lesion_size_unit=args.lesion_size_unit,
        masks=args.masks,
        truth_dir=args.truth_dir,
    )
    print(result.summary())
    return 0
