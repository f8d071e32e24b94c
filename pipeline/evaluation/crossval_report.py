"""The cross-validation report: each network's out-of-fold evaluation and every baseline against the reference.

Given the pooled out-of-fold predictions of each network (as :mod:`pipeline.training.crossval` collects them from
its fold runs), :func:`write_crossval_report` writes

* ``OUT/<network>/cv_report/``: the full evaluation report over the network's out-of-fold predictions (per-fold
  metrics, mean ± sd, cross-validated mean ROC with the fold spread), by :func:`~pipeline.evaluation.report.write_report`;
* ``OUT/crossval_report/``: per-fold AUCs, the paired t-test and the Nadeau-Bengio corrected resampled t-test over
  folds, and the paired DeLong test on the pooled out-of-fold predictions of each baseline against the reference
  (``report.html``, ``crossval.json``, ``per_fold.csv``, ``summary.csv``, ``comparisons.csv``,
  ``figures/cv_roc_models.png``).

The statistics are :func:`~pipeline.evaluation.crossval.compare_cross_validated_models` and
:func:`~pipeline.evaluation.report.evaluate_predictions`; this module only arranges their results into files.
``aamct crossval`` (:mod:`pipeline.evaluation.cli`) hands this writer to the fold runner, which lives in training
and so cannot import it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

__all__ = ["write_crossval_report"]

logger = logging.getLogger(__name__)


def _paired_frames(
    frames: Mapping[str, Any], names: tuple[str, str], class_names: Sequence[str]
) -> tuple[Any, Any, int]:
    """Both networks' accepted cases with 0/1 labels and numeric folds, restricted to the cases both scored."""
    import pandas as pd

    from pipeline.evaluation.checks import binary_truth

    prepared = []
    for name in names:
        frame = frames[name]
        ok = frame[(frame["status"].str.lower().isin(["", "ok"])) & (frame["label"] != "")].copy()
        ok["label"] = binary_truth(ok["label"], classes=class_names, source=f"{name} out-of-fold predictions")
        ok["probability"] = pd.to_numeric(ok["probability"])
        ok["fold"] = ok["fold"].astype(int)
        prepared.append(ok)
    common = set(prepared[0]["case_id"]) & set(prepared[1]["case_id"])
    dropped = len(set(prepared[0]["case_id"]) ^ set(prepared[1]["case_id"]))
    a, b = (frame[frame["case_id"].isin(common)].reset_index(drop=True) for frame in prepared)
    return a, b, dropped


def write_crossval_report(
    out_of_fold: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    reference: str,
    class_names: Sequence[str] = ("negative", "positive"),
    test_train_ratio: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Path]:
    """Per-network out-of-fold reports and the comparison of every network with the reference.

    Args:
        out_of_fold: network -> pooled out-of-fold predictions (columns as :func:`collect_out_of_fold` writes).
        out_dir: the cross-validation root; reports go to ``<out_dir>/<network>/cv_report`` and
            ``<out_dir>/crossval_report``.
        reference: the network the others are compared with.
        class_names: the two class names, negative first.
        test_train_ratio: ``n_test / n_train`` per fold for the Nadeau-Bengio test (default ``1/(J-1)``).
        n_resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        The written paths (``html``, ``json``, ``per_fold``, ``summary``, ``comparisons``, ``figure``, and
        ``report:<network>`` for each network's report).

    Raises:
        UserError: the reference has no predictions.
    """
    import pandas as pd

    from pipeline.evaluation.crossval import compare_cross_validated_models
    from pipeline.evaluation.plots import plot_cv_roc_comparison
    from pipeline.evaluation.report import evaluate_predictions, write_report
    from pipeline.io import write_csv_atomic, write_json_atomic, write_text_atomic

    if reference not in out_of_fold:
        raise UserError(f"reference network {reference!r} has no out-of-fold predictions")
    root = Path(out_dir)
    target = root / "crossval_report"
    target.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    per_fold_rows, summary_rows, reports = [], [], {}
    for network, frame in out_of_fold.items():
        report = evaluate_predictions(
            frame.drop(columns=["network"], errors="ignore"), classes=class_names, n_resamples=n_resamples, seed=seed
        )
        written = write_report(report, root / network / "cv_report", title=f"aamct cross-validation: {network}")
        paths[f"report:{network}"] = written["html"]
        reports[network] = report
        if report.cross_validation is not None:
            per_fold_rows.append(report.cross_validation.assign(network=network))
            summary_rows.append(report.cross_validation_summary.assign(network=network))
    per_fold = pd.concat(per_fold_rows, ignore_index=True) if per_fold_rows else pd.DataFrame()
    summary = pd.concat(summary_rows, ignore_index=True) if summary_rows else pd.DataFrame()
    if not per_fold.empty:
        per_fold = per_fold[["network", *[c for c in per_fold.columns if c != "network"]]]
        summary = summary[["network", *[c for c in summary.columns if c != "network"]]]

    comparisons, comparison_rows = {}, []
    for network in out_of_fold:
        if network == reference:
            continue
        key = f"{reference} vs {network}"
        ref_frame, other_frame, dropped = _paired_frames(out_of_fold, (reference, network), class_names)
        try:
            result = compare_cross_validated_models(
                ref_frame, other_frame, names=(reference, network), metric="auc", test_train_ratio=test_train_ratio
            )
        except UserError as err:
            comparisons[key] = {"reason": str(err), "cases_not_scored_by_both": dropped}
            comparison_rows.append({"reference": reference, "baseline": network, "test": "all", "note": str(err)})
            continue
        entry = result.to_dict()
        entry["cases_not_scored_by_both"] = dropped
        comparisons[key] = entry
        for test in result.tests.values():
            comparison_rows.append(
                {
                    "reference": reference,
                    "baseline": network,
                    "test": test.name,
                    "statistic": test.t,
                    "df": test.df,
                    "p_two_sided": test.p_two_sided,
                    "p_one_sided_reference_better": test.p_one_sided,
                    "difference": test.mean_difference,
                    "note": test.reason or "",
                }
            )
        pooled = result.pooled_delong
        comparison_rows.append(
            {
                "reference": reference,
                "baseline": network,
                "test": "paired DeLong, pooled out-of-fold",
                "statistic": pooled.z if pooled else None,
                "df": None,
                "p_two_sided": pooled.p_value if pooled else None,
                "p_one_sided_reference_better": None,
                "difference": pooled.difference if pooled else None,
                "note": result.pooled_delong_reason or "",
            }
        )
    comparison_table = pd.DataFrame(comparison_rows)

    figure_models = {name: [(y, p) for _, y, p in rep.cv_folds] for name, rep in reports.items() if rep.cv_folds}
    if figure_models:
        try:
            paths["figure"] = plot_cv_roc_comparison(target / "figures" / "cv_roc_models.png", figure_models)
        except UserError as err:
            logger.warning("cross-validated ROC comparison not drawn: %s", err)
    paths["per_fold"] = write_csv_atomic(target / "per_fold.csv", per_fold)
    paths["summary"] = write_csv_atomic(target / "summary.csv", summary)
    paths["comparisons"] = write_csv_atomic(target / "comparisons.csv", comparison_table)
    payload = {
        "reference": reference,
        "networks": list(out_of_fold),
        "class_names": list(class_names),
        "test_train_ratio": test_train_ratio,
        "threshold_note": "per-fold sensitivity, specificity and accuracy use the default threshold 0.5 on "
        "out-of-fold probabilities; AUC and Brier score are threshold-free",
        "per_network": {name: rep.to_dict() for name, rep in reports.items()},
        "comparisons": comparisons,
    }
    paths["json"] = write_json_atomic(target / "crossval.json", payload)
    paths["html"] = write_text_atomic(
        target / "report.html", _crossval_html(reference, reports, per_fold, summary, comparison_table, paths)
    )
    return paths


def _crossval_html(reference, reports, per_fold, summary, comparisons, paths) -> str:
    import pandas as pd

    # the single-run report's HTML helpers, so both reports look alike
    from pipeline.evaluation.report import _CSS, _e, _image, _table

    def number(value, digits=3):
        return "undefined" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>aamct cross-validation</title><style>{_CSS}</style></head><body>",
        "<h1>Cross-validation: AAM-ResNet against baselines</h1>",
        f"<p>Reference network: <b>{_e(reference)}</b>. Every network was trained through the bundle on the same "
        "folds and evaluated on each held-out fold; the statistics below use those out-of-fold predictions.</p>",
        "<h2>Mean \u00b1 SD over folds</h2>",
    ]
    if not summary.empty:
        rows = []
        for network in reports:
            part = summary[summary["network"] == network].set_index("metric")
            rows.append(
                [network]
                + [
                    "undefined"
                    if metric not in part.index or pd.isna(part.loc[metric, "mean"])
                    else f"{part.loc[metric, 'mean']:.3f} \u00b1 {number(part.loc[metric, 'sd'])}"
                    for metric in ("auc", "sensitivity", "specificity", "accuracy", "brier")
                ]
            )
        parts.append(_table(["Network", "AUC", "Sensitivity", "Specificity", "Accuracy", "Brier"], rows))
        parts.append(
            "<p class='muted'>Sensitivity, specificity and accuracy at the default threshold 0.5 (no threshold is "
            "tuned inside cross-validation); AUC and Brier score are threshold-free.</p>"
        )
    if "figure" in paths:
        parts.append("<div class='figs'>" + _image(paths["figure"], "Cross-validated mean ROC per network") + "</div>")
    parts.append("<h2>Per-fold AUC</h2>")
    if not per_fold.empty:
        table = per_fold.pivot_table(index="fold", columns="network", values="auc", aggfunc="first")
        order = [n for n in reports if n in table.columns]
        parts.append(
            _table(["Fold", *order], [[int(f)] + [number(table.loc[f, n]) for n in order] for f in table.index])
        )
    parts.append("<h2>Comparisons with the reference</h2>")
    if comparisons.empty:
        parts.append("<p>Only one network: nothing to compare.</p>")
    else:
        parts.append(
            _table(
                [
                    "Baseline",
                    "Test",
                    "Statistic",
                    "df",
                    "p (two-sided)",
                    "p (one-sided, reference better)",
                    "AUC diff.",
                    "Note",
                ],
                [
                    [
                        r.get("baseline"),
                        r.get("test"),
                        number(r.get("statistic")),
                        "" if r.get("df") is None or pd.isna(r.get("df")) else int(r["df"]),
                        number(r.get("p_two_sided"), 4),
                        number(r.get("p_one_sided_reference_better"), 4),
                        number(r.get("difference")),
                        r.get("note") or "",
                    ]
                    for r in comparisons.to_dict(orient="records")
                ],
                numeric_from=2,
            )
        )
        parts.append(
            "<p class='muted'>The paired t-test treats folds as independent, which they are not (they share "
            "training data); the Nadeau-Bengio corrected resampled t-test inflates the variance by n_test/n_train "
            "for that reason and is the one to quote. The paired DeLong test compares the AUCs of the pooled "
            "out-of-fold predictions of the same cases.</p>"
        )
    parts.append("<h2>Per-network reports</h2><ul>")
    for network in reports:
        parts.append(f"<li><code>{_e(network)}/cv_report/report.html</code></li>")
    parts.append("</ul></body></html>\n")
    return "\n".join(parts)
