"""``aamct stats auc``, ``aamct stats ttest``, ``aamct report`` and ``aamct crossval``.

``aamct crossval`` composes two stages: training's fold runner (:mod:`pipeline.training.crossval`, which trains and
evaluates every network on every fold through the bundle) and evaluation's report of the pooled out-of-fold
predictions (:mod:`pipeline.evaluation.crossval_report`). Training ranks below evaluation in the data flow, so the
runner is handed the report writer here instead of importing it.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

__all__ = ["register"]


def _ratio(text: str) -> float:
    """``0.25`` or ``1/4``."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a ratio: {text!r} (e.g. 0.25 or 1/4)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the test/train ratio must be positive, got {text}")
    return value


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"confidence must be between 0 and 1, got {text}")
    return value


def _add_ci_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--confidence", type=_confidence, default=0.95, help="confidence level (default 0.95)")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument(
        "--bootstrap-method", choices=("percentile", "bca"), default="percentile", help="bootstrap interval"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--delong-scale",
        choices=("logit", "auc"),
        default="logit",
        help="scale of the DeLong AUC interval: logit (default: stays inside (0, 1) and is asymmetric near 1, like "
        "the AUC's sampling distribution) or auc (AUC ± z·SE clipped to [0, 1], as R pROC's "
        "ci.auc(method = 'delong') reports it; use it to reconcile with pROC)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation subcommands to the top-level parser."""
    stats = sub.add_parser("stats", help="AUC confidence intervals and model-comparison tests")
    ssub = stats.add_subparsers(dest="stats_command", metavar="<test>")
    ssub.required = True

    auc = ssub.add_parser(
        "auc",
        help="AUC with DeLong and stratified-bootstrap CIs per score; paired DeLong test for two scores",
        description="Read a CSV with one row per case, a ground-truth column and one or two score columns (higher = "
        "more likely positive). Prints the AUC, its DeLong CI (logit scale unless --delong-scale auc) and stratified bootstrap CI per score, "
        "and with two scores the two-sided p-value of the paired DeLong test.",
    )
    auc.add_argument("--csv", type=Path, required=True, help="CSV file, one row per case")
    auc.add_argument("--truth", required=True, help="ground-truth column (0/1, negative/positive, or see --positive)")
    auc.add_argument("--score", action="append", required=True, help="score column; give twice to compare two")
    auc.add_argument("--positive", help="value of the truth column that marks a positive case")
    _add_ci_options(auc)
    auc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    auc.set_defaults(func=_cmd_auc)

    ttest = ssub.add_parser(
        "ttest",
        help="compare two models' per-fold scores: independent, paired and Nadeau-Bengio corrected t-tests",
        description="Per-fold scores of model A (--a) and model B (--b) over the same folds. Prints the independent "
        "(pooled) t-test, which is the wrong test for shared folds and is shown with a note, the paired t-test, and "
        "the Nadeau-Bengio corrected resampled t-test. p-values are one-sided (A > B) and two-sided.",
    )
    ttest.add_argument("--a", type=float, nargs="+", required=True, metavar="X", help="model A's score per fold")
    ttest.add_argument("--b", type=float, nargs="+", required=True, metavar="Y", help="model B's score per fold")
    ttest.add_argument(
        "--test-train-ratio",
        type=_ratio,
        default=None,
        metavar="R",
        help="n_test / n_train of one fold for the Nadeau-Bengio correction (e.g. 1/4; default 1/(folds-1))",
    )
    ttest.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ttest.set_defaults(func=_cmd_ttest)

    report = sub.add_parser(
        "report",
        help="evaluation report (HTML + JSON + CSV + PNG) from a predictions CSV",
        description="Evaluate a predictions CSV (columns case_id, label, probability, and optionally site, split, "
        "status, reason, fold) split by split at one frozen threshold, and write report.html, metrics.json, "
        "metrics.csv, per_site.csv, misclassified.csv and figures/ to --out.",
    )
    report.add_argument("predictions", type=Path, help="predictions CSV")
    report.add_argument("--out", type=Path, required=True, help="output folder")
    frozen = report.add_mutually_exclusive_group()
    frozen.add_argument("--threshold", type=float, help="frozen decision threshold (probability >= T is positive)")
    frozen.add_argument("--validation", type=Path, help="validation predictions CSV on which to choose the threshold")
    report.add_argument(
        "--threshold-method",
        choices=("youden", "target-sensitivity"),
        default="youden",
        help="how to choose the threshold on --validation (default youden)",
    )
    report.add_argument("--target-sensitivity", type=float, help="for --threshold-method target-sensitivity, e.g. 0.9")
    report.add_argument("--classes", help="the two class names, negative first, e.g. 'negative,positive'")
    report.add_argument("--positive", help="label value of the positive class (instead of --classes)")
    report.add_argument("--ci-method", choices=("wilson", "clopper-pearson"), default="wilson")
    report.add_argument("--rejections", type=Path, help="the manifest's rejections CSV, counted in the case flow")
    report.add_argument("--title", default="aamct evaluation report", help="report title")
    _add_ci_options(report)
    report.set_defaults(func=_cmd_report)

    from pipeline.training.crossval import add_crossval_arguments

    crossval = sub.add_parser(
        "crossval",
        help="k-fold cross-validation of the AAM-ResNet against baselines through the bundle (resumable)",
        description="Train every network on every fold through `python -m monai.bundle run training`, evaluate the "
        "held-out fold through evaluate.json, pool the out-of-fold predictions and write the cross-validation "
        "report: per-fold metrics, mean ± sd, cross-validated mean ROC, paired and Nadeau-Bengio corrected t-tests "
        "and pooled DeLong of each baseline against the reference. Finished folds are skipped on a re-run.",
    )
    add_crossval_arguments(crossval)
    crossval.set_defaults(func=_cmd_crossval)


def _cmd_auc(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from pipeline.errors import UserError
    from pipeline.evaluation.checks import UndefinedStatisticError, binary_truth, finite_scores
    from pipeline.evaluation.roc import auc_summary, delong_test

    if not args.csv.is_file():
        raise UserError(f"{args.csv}: file not found")
    if len(args.score) > 2:
        raise UserError("give one or two --score columns")
    if len(set(args.score)) != len(args.score):
        raise UserError(f"--score {args.score[0]} given twice; compare two different columns")
    try:
        frame = pd.read_csv(args.csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{args.csv}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in [args.truth, *args.score] if c not in frame.columns]
    if missing:
        raise UserError(f"{args.csv}: no column {', '.join(map(repr, missing))} (columns: {', '.join(frame.columns)})")
    truth = binary_truth(frame[args.truth], positive=args.positive, source=f"{args.csv} column {args.truth!r}")
    scores = {}
    for column in args.score:
        text = frame[column].str.strip().replace("", "nan")
        numbers = pd.to_numeric(text, errors="coerce")
        bad = numbers.isna() & ~text.str.lower().eq("nan")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{args.csv} column {column!r}: {text.iloc[row]!r} at row {row + 1} is not a number")
        scores[column] = finite_scores(numbers.to_numpy(), source=f"{args.csv} column {column!r}")
    results = {
        column: auc_summary(
            truth,
            values,
            confidence=args.confidence,
            n_resamples=args.n_resamples,
            bootstrap_method=args.bootstrap_method,
            delong_scale=args.delong_scale,
            seed=args.seed,
        )
        for column, values in scores.items()
    }
    delong_p = delong_reason = test = None
    if len(scores) == 2:
        try:
            test = delong_test(truth, *scores.values(), confidence=args.confidence)
            delong_p = test.p_value
        except UndefinedStatisticError as err:
            delong_reason = str(err)

    if args.json:
        payload: dict = {
            "scores": {},
            "delong_p": delong_p,
            "confidence": args.confidence,
            "delong_scale": args.delong_scale,
        }
        for column, result in results.items():
            entry = {
                "auc": result.auc,
                "delong_se": result.delong_se,
                "delong_ci": list(result.delong_ci) if result.delong_ci else None,
                "bootstrap_ci": list(result.bootstrap_ci) if result.bootstrap_ci else None,
            }
            if result.reason:
                entry["reason"] = result.reason
            payload["scores"][column] = entry
        if delong_reason:
            payload["delong_p_reason"] = delong_reason
        print(json.dumps(payload, indent=2))
        return 0

    level = f"{args.confidence * 100:g}%"
    width = max(8, *(len(c) for c in results))
    delong_header = f"DeLong {level} CI ({args.delong_scale})"
    print(
        f"{'score':<{width}}  {'n+':>5}  {'n-':>5}  {'AUC':>6}  {'SE':>6}  {delong_header:>24}  {'bootstrap ' + level + ' CI':>19}"
    )
    for column, result in results.items():
        auc_text = f"{result.auc:.4f}" if result.auc is not None else "undef."
        delong = f"{result.delong_ci[0]:.4f}\u2013{result.delong_ci[1]:.4f}" if result.delong_ci else "undefined"
        boot = f"{result.bootstrap_ci[0]:.4f}\u2013{result.bootstrap_ci[1]:.4f}" if result.bootstrap_ci else "undefined"
        se_text = f"{result.delong_se:.4f}" if result.delong_se is not None else "undef."
        print(
            f"{column:<{width}}  {result.n_positive:>5}  {result.n_negative:>5}  {auc_text:>6}  {se_text:>6}  "
            f"{delong:>24}  {boot:>19}"
        )
    for column, result in results.items():
        if result.reason:
            print(f"{column}: {result.reason}")
    if test is not None:
        a, b = args.score
        print(
            f"paired DeLong test, {a} vs {b}: difference {test.difference:+.4f} ({level} CI "
            f"{test.difference_ci[0]:+.4f} to {test.difference_ci[1]:+.4f}), z = {test.z:.3f}, p = {test.p_value:.4g}"
        )
    elif delong_reason:
        print(f"paired DeLong test: undefined: {delong_reason}")
    return 0


def _cmd_ttest(args: argparse.Namespace) -> int:
    from pipeline.evaluation.crossval import INDEPENDENT_TEST_NOTE, compare_fold_scores

    tests = compare_fold_scores(args.a, args.b, test_train_ratio=args.test_train_ratio, include_independent=True)
    if args.json:
        payload = {}
        for key, result in tests.items():
            entry: dict = {
                "t": result.t,
                "df": result.df,
                "p": {"one_sided": result.p_one_sided, "two_sided": result.p_two_sided},
            }
            if result.reason:
                entry["reason"] = result.reason
            payload[key] = entry
        print(json.dumps(payload, indent=2))
        # the note goes to stderr so that stdout stays valid JSON
        print(INDEPENDENT_TEST_NOTE, file=sys.stderr)
        return 0
    width = max(len(r.name) for r in tests.values())
    print(f"{'test':<{width}}  {'t':>9}  {'df':>4}  {'p (one-sided, a > b)':>20}  {'p (two-sided)':>13}")
    for result in tests.values():
        if result.t is None:
            print(f"{result.name:<{width}}  {'undefined':>9}  {result.df:>4g}  {result.reason}")
            continue
        print(
            f"{result.name:<{width}}  {result.t:>9.2f}  {result.df:>4g}  {result.p_one_sided:>20.3g}  "
            f"{result.p_two_sided:>13.3g}"
        )
    print(f"mean difference (a - b): {tests['paired'].mean_difference:.4g} over {len(args.a)} folds")
    print(INDEPENDENT_TEST_NOTE)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError
    from pipeline.evaluation.report import evaluate_predictions, write_report

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if classes is not None and args.positive is not None:
        raise UserError("give either --classes or --positive, not both")
    if args.threshold_method == "target-sensitivity" and args.target_sensitivity is None:
        raise UserError("--threshold-method target-sensitivity needs --target-sensitivity")
    if args.threshold_method == "target-sensitivity" and args.validation is None:
        raise UserError("--threshold-method target-sensitivity chooses on --validation data; give --validation")
    result = evaluate_predictions(
        args.predictions,
        threshold=args.threshold,
        validation=args.validation,
        threshold_method=args.threshold_method.replace("-", "_"),
        target_sensitivity=args.target_sensitivity,
        classes=classes,
        positive=args.positive,
        confidence=args.confidence,
        ci_method=args.ci_method,
        n_resamples=args.n_resamples,
        bootstrap_method=args.bootstrap_method,
        seed=args.seed,
        rejections=args.rejections,
        delong_scale=args.delong_scale,
    )
    paths = write_report(result, args.out, title=args.title)
    for name, split in result.splits.items():
        print(
            f"{name:<10} n={split.n:<5} AUC {split.auc.format()}  sensitivity {split.metrics.sensitivity.format()}  "
            f"specificity {split.metrics.specificity.format()}"
        )
    print(f"threshold {result.operating_point.threshold:.4g} ({result.operating_point.chosen_on})")
    for note in result.notes:
        print(f"note: {note}")
    print(f"report: {paths['html']}")
    return 0


def _cmd_crossval(args: argparse.Namespace) -> int:
    from pipeline.evaluation.crossval_report import write_crossval_report
    from pipeline.training.crossval import describe_fold, run_crossval, settings_from_args

    result = run_crossval(
        settings_from_args(args),
        write_report=write_crossval_report,
        on_fold=lambda record: print(describe_fold(record), flush=True),
    )
    data = json.loads(result.report_paths["json"].read_text(encoding="utf-8"))
    for network, report in data["per_network"].items():
        cv = report.get("cross_validation") or {}
        auc = next((row for row in cv.get("summary", []) if row["metric"] == "auc"), None)
        if auc and auc["mean"] is not None:
            sd = "undefined" if auc["sd"] is None else f"{auc['sd']:.3f}"
            print(f"{network:<16} AUC {auc['mean']:.3f} ± {sd} over {auc['n_folds_defined']} folds")
    for key, comparison in data["comparisons"].items():
        if "reason" in comparison:
            print(f"{key}: not compared: {comparison['reason']}")
            continue
        nb = comparison["tests"]["nadeau_bengio"]
        delong = comparison.get("pooled_delong")
        nb_text = "undefined" if nb["p_two_sided"] is None else f"{nb['p_two_sided']:.4g}"
        delong_text = "undefined" if not delong else f"{delong['p_value']:.4g}"
        print(f"{key}: Nadeau-Bengio p = {nb_text}, pooled DeLong p = {delong_text}")
    print(f"report: {result.report_paths['html']}")
    return 0
