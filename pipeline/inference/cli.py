"""``aamct evaluate-cohort`` (batch job for a new cohort) and ``aamct infer`` (score a few images).

Both build everything from the bundle's ``configs/inference.json`` through MONAI's ``ConfigParser`` (the same objects
``python -m monai.bundle run inference --config_file configs/inference.json`` builds), with the command-line options
as config overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import UserError
from pipeline.overrides import parse_set_overrides

__all__ = ["register"]

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate-cohort`` and ``infer`` to the ``aamct`` subcommands."""
    cohort = sub.add_parser(
        "evaluate-cohort",
        help="score a cohort with a trained bundle (heatmaps, predictions.csv) and evaluate it where labels exist",
        description=(
            "Run whole-volume sliding-window inference on every case of a manifest (or every DICOM series / NIfTI "
            "file under a folder), write predictions.csv with one row per case (status ok/error), heatmaps in each "
            "source image's geometry and PNG montages, then the evaluation report when the cohort has labels. "
            "Resumable: a rerun skips finished cases. Shards across torchrun ranks automatically (RANK/WORLD_SIZE), "
            "or by --shard i/n followed by --merge."
        ),
    )
    cohort.add_argument("--bundle", required=True, help="bundle folder, training run folder (models/model.pt) or zip")
    source = cohort.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="manifest CSV (case_id, image[, label, site, split, fold])")
    source.add_argument(
        "--input",
        help="folder searched for DICOM series and NIfTI files as `aamct manifest build` searches (unlabelled); "
        "what it would reject is listed as error rows with its reason",
    )
    cohort.add_argument("--out", required=True, help="run folder (created; a rerun resumes it)")
    cohort.add_argument("--split", help="only the manifest rows of this split (e.g. test)")
    _add_common_options(cohort)
    cohort.add_argument(
        "--shard", help="score only shard i of n (0-based, e.g. 0/4); default: torchrun's RANK/WORLD_SIZE"
    )
    cohort.add_argument("--merge", action="store_true", help="only merge the shards' results and write the report")
    cohort.add_argument("--retry-errors", action="store_true", help="rerun cases a previous run marked error")
    cohort.add_argument("--no-report", action="store_true", help="skip the evaluation report")
    cohort.set_defaults(func=_cmd_evaluate_cohort)

    infer = sub.add_parser(
        "infer",
        help="score DICOM series folders / NIfTI files with a trained bundle and write their heatmaps",
        description="Score images given on the command line (no labels, no report); outputs as evaluate-cohort.",
    )
    infer.add_argument("images", nargs="+", help="DICOM series folders or NIfTI files")
    infer.add_argument("--bundle", required=True, help="bundle folder, training run folder (models/model.pt) or zip")
    infer.add_argument("--out", required=True, help="output folder")
    _add_common_options(infer)
    infer.set_defaults(func=_cmd_infer)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    from pipeline.contracts.defaults import DEFAULT_CASE_TIMEOUT_S

    parser.add_argument(
        "--case-timeout",
        type=lambda text: _number(text, float, "--case-timeout"),
        default=DEFAULT_CASE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"a case running longer becomes an error row and the batch goes on (default {DEFAULT_CASE_TIMEOUT_S:g}; "
        "0: no limit)",
    )
    parser.add_argument(
        "--trust",
        metavar="PUBKEY",
        help="a bundle zip must carry this sender key's Ed25519 signature (their .pub file, or 64 hex digits)",
    )
    parser.add_argument(
        "--expect-sha256",
        metavar="DIGEST",
        help="a bundle zip must have this SHA-256 (the digest its sender published)",
    )
    parser.add_argument(
        "--allow-out-of-scope",
        action="store_true",
        help="score scans the scope check finds out of scope (not a chest CT with lungs in view) instead of "
        "refusing them; their rows say scope out_of_scope and scope_note says they were scored anyway",
    )
    parser.add_argument("--threshold", type=_probability, help="operating threshold (default: the bundle's frozen one)")
    parser.add_argument("--device", help="torch device for the network windows, e.g. cpu or cuda:0 (default: auto)")
    parser.add_argument("--sw-batch-size", type=_positive_int, help="sliding windows per forward pass")
    parser.add_argument("--overlap", type=_fraction, help="sliding-window overlap, 0 <= f < 1")
    parser.add_argument("--no-heatmaps", action="store_true", help="score only: no heatmap NIfTI, no montage")
    parser.add_argument("--no-montage", action="store_true", help="no PNG montage")
    parser.add_argument("--heatmap-dtype", choices=("uint8", "float32"), help="heatmap storage (default uint8, scaled)")
    parser.add_argument(
        "--heatmap",
        choices=("cam", "gradcam", "gradcampp", "layercam", "attention", "occlusion", "occlusion_c2f"),
        help="map kind: the dense CAM, Grad-CAM / Grad-CAM++ at the network's registry layer, LayerCAM (one or more "
        "comma-separated --gradcam-layer), the AAM's spatial attention (AAM-ResNets), occlusion sensitivity, or "
        "occlusion coarse to fine (default: the bundle's heatmap_kind)",
    )
    parser.add_argument(
        "--gradcam-layer",
        help="Grad-CAM layer by module name, or LayerCAM's comma-separated layers (default: the registry's, e.g. layer4)",
    )
    parser.add_argument("--attention-stage", help="attention map of one stage (e.g. layer1) or mean (default)")
    parser.add_argument(
        "--heatmap-values",
        choices=("relative", "raw"),
        help="relative: 0-1 of the maximum inside --heatmap-region, 0 outside (default); raw: the map's own units",
    )
    parser.add_argument(
        "--heatmap-region",
        choices=("lungs", "body", "none"),
        help="where a relative map keeps its values (default: the bundle's heatmap_region)",
    )
    parser.add_argument(
        "--cpu-form",
        choices=("deployed", "eager"),
        help="on the CPU, score through the network's deployed TorchScript form (oneDNN convolutions, the default) "
        "or the eager network; the probabilities agree to float32 rounding",
    )
    parser.add_argument(
        "--dicom-out",
        type=Path,
        help="also write, per DICOM case, the heatmap as a DICOM Parametric Map and the score and decision as a "
        "DICOM SR into this folder (viewers overlay them on the source series); pseudonymous patient module",
    )
    parser.add_argument(
        "--keep-patient-identity",
        action="store_true",
        help="with --dicom-out: copy the source's patient and study identity into the DICOM outputs, so a PACS "
        "files them with the patient (in-hospital use only; off by default)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override any key of configs/inference.json, e.g. --set 'roi_size=[128,128,64]' (repeatable)",
    )


def _probability(text: str) -> float:
    value = _number(text, float, "--threshold")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text, float, "--overlap")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = _number(text, int, "--sw-batch-size")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _number(text: str, kind: type, name: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: not a number: {text!r}") from None


def _overrides(args: argparse.Namespace, *, output_dir: Path) -> dict[str, Any]:
    overrides: dict[str, Any] = {"output_dir": str(output_dir), "progress_bar": sys.stderr.isatty()}
    if args.device:
        overrides["device"] = f"$torch.device({args.device!r})"
        overrides["amp"] = f"$torch.device({args.device!r}).type == 'cuda'"
    if args.sw_batch_size is not None:
        overrides["sw_batch_size"] = args.sw_batch_size
    if args.overlap is not None:
        overrides["overlap"] = args.overlap
    if args.no_heatmaps:
        overrides.update(write_heatmaps=False, write_montage=False)
    if args.no_montage:
        overrides["write_montage"] = False
    if args.heatmap_dtype:
        overrides["heatmap_dtype"] = args.heatmap_dtype
    for option in ("heatmap", "gradcam_layer", "attention_stage", "heatmap_values", "heatmap_region", "cpu_form"):
        if getattr(args, option, None):
            overrides["heatmap_kind" if option == "heatmap" else option] = getattr(args, option)
    if args.keep_patient_identity and args.dicom_out is None:
        raise UserError("--keep-patient-identity only applies to --dicom-out outputs; give --dicom-out DIR")
    if args.dicom_out is not None:
        overrides["dicom_out"] = str(args.dicom_out)
        overrides["keep_patient_identity"] = bool(args.keep_patient_identity)
    if args.threshold is not None:
        overrides["frozen_threshold"] = f"$pipeline.contracts.FrozenThreshold({args.threshold!r}, 'command line')"
    if getattr(args, "allow_out_of_scope", False):
        overrides["allow_out_of_scope"] = True
    overrides.update(parse_set_overrides(args.set))
    return overrides


def _config(args: argparse.Namespace, out: Path, extra: dict[str, Any] | None = None):
    from pipeline.inference.bundle import load_inference_config, resolve_bundle

    root = resolve_bundle(
        args.bundle,
        extract_to=out,
        trust=getattr(args, "trust", None),
        expect_sha256=getattr(args, "expect_sha256", None),
    )
    return load_inference_config(root, {**_overrides(args, output_dir=out), **(extra or {})})


def _parsed(parser, key: str):
    """``parser.get_parsed_content(key)`` with user mistakes in the config reported in one line."""
    from pipeline.inference.bundle import parsed_content

    return parsed_content(parser, key)


def _cmd_evaluate_cohort(args: argparse.Namespace) -> int:
    from pipeline.data.loading import DEFAULT_MIN_SLICES
    from pipeline.inference.cohort import CohortRunner, Shard, read_cases, summary_dict

    out = Path(args.out)
    parser = _config(args, out, {"retry_errors": bool(args.retry_errors), "evaluate": not args.no_report})
    # a folder is searched with the loader's minimum slice count, so discovery and loading agree (a bundle exported
    # before the key existed loads with the loader's default)
    min_slices = _parsed(parser, "min_slices") if "min_slices" in parser.get() else DEFAULT_MIN_SLICES
    cases = read_cases(args.manifest or args.input, split=args.split, min_slices=min_slices)
    if args.merge:
        # merging needs no network: build the runner from the settings only
        from pipeline.inference.bundle import file_fingerprint

        threshold = _parsed(parser, "frozen_threshold")
        runner = CohortRunner(
            predictor=None,
            output_dir=out,
            threshold=threshold.threshold,
            threshold_source=threshold.source,
            class_names=_parsed(parser, "class_names"),
            positive_index=_parsed(parser, "positive_index"),
            fingerprint=file_fingerprint(_parsed(parser, "checkpoint")),
            evaluate_predictions=_parsed(parser, "runner#evaluate_predictions"),
            write_report=_parsed(parser, "runner#write_report"),
            # a bundle exported before the gallery existed has no such key: merge without it
            write_gallery=_parsed(parser, "runner#write_gallery") if parser.get("runner#write_gallery") else None,
        )
        runner.claim_output_dir()
        merged = runner.merge(cases)
        report, note = runner.write_report(merged) if not args.no_report else (None, "report skipped (--no-report)")
        print(f"merged {len(merged)} cases: {int((merged['status'] == 'ok').sum())} ok -> {runner.predictions_path}")
        print(f"report: {report}" if report else note)
        return 0
    shard = Shard.parse(args.shard) if args.shard else Shard.from_environment()
    runner: CohortRunner = _parsed(parser, "runner")
    runner.case_timeout = args.case_timeout
    threshold = _parsed(parser, "frozen_threshold")
    if threshold.is_default:
        logger.warning(
            "the bundle has no frozen operating threshold: predicted labels use 0.5 (not chosen on validation)"
        )
    summary = runner.run(cases, shard=shard)
    if shard.from_torchrun and shard.index != 0:
        return 0
    print(json.dumps(summary_dict(summary), indent=2))
    print(summary.line)
    if summary.report_note:
        print(summary.report_note)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from pipeline.inference.cohort import CohortCase, Shard, path_pseudonym

    out = Path(args.out)
    # a missing or rejected image is an error row like any other, so the other images are still scored
    cases = [CohortCase(case_id=path_pseudonym(Path(image).resolve()), image=Path(image)) for image in args.images]
    if len({case.case_id for case in cases}) != len(cases):
        raise UserError("an image is given more than once")
    runner = _parsed(_config(args, out, {"evaluate": False}), "runner")
    runner.case_timeout = args.case_timeout
    summary = runner.run(cases, shard=Shard())
    frame = pd.read_csv(runner.predictions_path, keep_default_na=False)
    by_id = {case.case_id: case.image for case in cases}
    for row in frame.itertuples():
        ok = row.status == "ok"
        score = f"{float(row.probability):.4f} -> {row.predicted_label}" if ok else f"{row.status}: {row.reason}"
        print(f"{row.case_id}  {by_id.get(row.case_id, '')}  {score}")
    return 0 if summary.n_error == 0 else 1
