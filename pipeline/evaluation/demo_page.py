"""``aamct demo-summary``: the headline of a ``make demo`` run and its one page, ``RUN/index.html``.

A newcomer's run ends with many files (the evaluation report, the cohort's heatmap gallery, the exported bundle and
its model card, logs). This module reads them back and prints the few lines that say what came out, and writes a
page linking the rest:

* the test AUC with its DeLong CI, sensitivity and specificity at the threshold frozen on validation
  (``RUN/metrics.json``, written by the ``evaluating`` bundle run);
* the exported model's default map scored with the pointing game on the test positives
  (:mod:`pipeline.inference.localisation`, 10 mm margin) against the generator's lesion masks
  (``aamct demo-data --masks``), beside the maps that ignore the image (position prior, a random lung point);
* the seconds of each stage (``RUN/stage_seconds.tsv``, written by the Makefile);
* the bundle zip and the outcome of its verification (``RUN/export.log``).

Nothing here recomputes a figure another stage owns: AUC, CI and the operating point are read, the hit rate is the
library's scoring of the written maps.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.io import write_text_atomic

__all__ = ["demo_summary", "index_links", "map_hit_rate", "register", "render_headline", "write_index"]

#: the stage names the Makefile times, in the order they run
STAGES: tuple[str, ...] = ("data", "manifest", "train", "evaluate", "cohort", "export")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing (run make demo first)") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None


def map_hit_rate(
    run: Path, *, margin_mm: float | None = None, cohort: Path | None = None, per_case: bool = False
) -> dict[str, Any] | None:
    """Pointing game of the cohort's written maps on the test positives, with the image-blind baselines.

    Args:
        run: the demo run folder (``manifest.csv``, ``cohort/predictions.csv``, ``cohort_dicom_truth/``).
        margin_mm: the pointing game's margin (default :data:`pipeline.inference.localisation.DEFAULT_MARGIN_MM`).
        cohort: the ``evaluate-cohort`` output folder (default ``run/cohort``).
        per_case: keep each case's figures (``map.cases``: hit, peak distance, lesion volume ...).

    Returns:
        ``{"map": summary, "baselines": {...}, "margin_mm"}``, or ``None`` when the run has no truth masks or no maps.
    """
    from pipeline.inference.localisation import (
        DEFAULT_MARGIN_MM,
        load_on_same_grid,
        position_baselines,
        score_case,
        summarise_localisation,
    )

    margin = DEFAULT_MARGIN_MM if margin_mm is None else float(margin_mm)
    truth_dir = run / "cohort_dicom_truth"
    cohort = run / "cohort" if cohort is None else Path(cohort)
    predictions = cohort / "predictions.csv"
    if not (truth_dir / "truth.csv").is_file() or not predictions.is_file():
        return None
    with open(truth_dir / "truth.csv", newline="", encoding="utf-8") as handle:
        truth = {row["path"]: row for row in csv.DictReader(handle)}
    with open(run / "manifest.csv", newline="", encoding="utf-8") as handle:
        manifest = {row["case_id"]: row for row in csv.DictReader(handle)}
    scores, lesions, lungs, spacings = [], [], [], []
    with open(predictions, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            case = manifest.get(row.get("case_id", ""))
            if case is None or case["label"] != "positive" or not row.get("heatmap"):
                continue
            masks = truth.get(Path(case["image"]).name)
            if masks is None or not masks.get("lesion_mask"):
                continue
            heat_path = Path(row["heatmap"])
            heat_path = heat_path if heat_path.is_absolute() else cohort / heat_path
            (heat, lesion, lung), affine = load_on_same_grid(
                heat_path, truth_dir / masks["lesion_mask"], truth_dir / masks["lung_mask"]
            )
            spacing = [float(v) for v in (affine[:3, :3] ** 2).sum(axis=0) ** 0.5]
            scores.append(score_case(row["case_id"], heat, lesion, lung, spacing_mm=spacing, margin_mm=margin))
            lesions.append(lesion)
            lungs.append(lung)
            spacings.append(spacing)
    if not scores:
        return None
    summary = summarise_localisation(scores, margin_mm=margin)
    if not per_case:
        summary.pop("cases", None)
    baselines = position_baselines(lesions, lungs, spacings, margin_mm=margin).as_dict() if len(scores) > 1 else {}
    return {"map": summary, "baselines": baselines, "margin_mm": margin}


def _stage_seconds(run: Path) -> dict[str, float]:
    path = run / "stage_seconds.tsv"
    if not path.is_file():
        return {}
    seconds: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].strip().isdigit():
            seconds[parts[0]] = int(parts[1]) / 1000.0
    return seconds


def _bundle(run: Path) -> dict[str, Any]:
    """The newest exported zip and what its verification said (``export.log``)."""
    zips = sorted(run.glob("*.zip"), key=lambda p: p.stat().st_mtime)
    log = run / "export.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    verified = [line.strip() for line in text.splitlines() if re.search(r"\bverif", line, re.I)]
    ok = bool(verified) and not re.search(r"\b(fail|error)", text, re.I)
    return {"zip": zips[-1] if zips else None, "verified": ok, "verify_line": verified[-1] if verified else None}


def _model_card(run: Path, bundle_zip: Path | None) -> Path | None:
    """The model card of the exported zip, copied beside the run (a browser opens it from there)."""
    if bundle_zip is None:
        return None
    with zipfile.ZipFile(bundle_zip) as archive:
        names = [n for n in archive.namelist() if n.endswith("docs/README.md")]
        if not names:
            return None
        text = archive.read(names[0]).decode("utf-8", errors="replace")
    target = run / "model_card.html"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>model card</title>"
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "pre{white-space:pre-wrap;word-wrap:break-word}</style></head><body>"
        f"<p>From <code>{html.escape(bundle_zip.name)}</code> ({html.escape(names[0])})</p>"
        f"<pre>{html.escape(text)}</pre></body></html>\n"
    )
    write_text_atomic(target, page)
    return target


def demo_summary(run: str | os.PathLike) -> dict[str, Any]:
    """Everything the headline and the index page show, read from the run's files.

    Raises:
        UserError: the run has no ``metrics.json`` (``make demo`` did not get to the evaluation).
    """
    run = Path(run)
    metrics = _read_json(run / "metrics.json")
    record = {}
    if (run / "models" / "run.json").is_file():
        record = _read_json(run / "models" / "run.json")
    bundle = _bundle(run)
    return {
        "run": run,
        "metrics": metrics,
        "network": record.get("network_name"),
        "written_by": record.get("written_by"),
        "numerics": record.get("numerics") or {},
        "maps": map_hit_rate(run),
        "stages": _stage_seconds(run),
        "bundle": bundle,
        "model_card": _model_card(run, bundle["zip"]),
        "report": run / metrics["report"] if metrics.get("report") else None,
        "gallery": run / "cohort" / "gallery.html",
    }


def _rate(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("rate") is None:
        return "n/a"
    hits = f" ({entry['hits']}/{entry['n']})" if "hits" in entry else ""
    return f"{entry['rate']:.2f}{hits}"


def render_headline(summary: dict[str, Any]) -> list[str]:
    """The last lines ``make demo`` prints."""
    m = summary["metrics"]
    ci = m.get("auc_ci") or [float("nan"), float("nan")]
    lines = [
        "=" * 78,
        f"aamct demo: {summary['network']} ({summary['written_by']}), test split n={m.get('n')}",
        f"  test AUC {m['auc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}, DeLong)",
        f"  at the threshold frozen on validation ({m.get('threshold', float('nan')):.3f}): "
        f"sensitivity {m.get('sensitivity', float('nan')):.2f}, specificity {m.get('specificity', float('nan')):.2f}",
    ]
    maps = summary["maps"]
    if maps:
        base = maps["baselines"]
        lines.append(
            f"  map points at the lesion (pointing game, {maps['margin_mm']:.0f} mm): "
            f"{_rate(maps['map']['pointing_game'])} of test positives; position prior "
            f"{_rate(base.get('position_prior_peak'))}, random lung point {_rate(base.get('random_point_in_lung'))}"
        )
    else:
        lines.append("  map: not scored (no lesion masks or no maps in this run)")
    stages = summary["stages"]
    if stages:
        parts = ", ".join(f"{name} {stages[name]:.0f} s" for name in STAGES if name in stages)
        lines.append(f"  time: {parts}; total {sum(stages.values()):.0f} s")
    bundle = summary["bundle"]
    if bundle["zip"] is not None:
        state = bundle["verify_line"] if bundle["verified"] else "NOT verified (see export.log)"
        lines.append(f"  bundle: {bundle['zip']} ({state})")
    lines.append(f"  open: {summary['run'] / 'index.html'}")
    lines.append("=" * 78)
    return lines


def index_links(summary: dict[str, Any]) -> dict[str, Path | None]:
    """The files the index page links: report, gallery, model card, bundle."""
    gallery = summary["gallery"]
    return {
        "evaluation report": summary["report"],
        "heatmap gallery": gallery if gallery is not None and gallery.is_file() else None,
        "model card": summary["model_card"],
        "bundle zip": summary["bundle"]["zip"],
    }


def write_index(summary: dict[str, Any]) -> Path:
    """``RUN/index.html``: the headline and links (relative, so the folder can be moved or zipped)."""
    run = summary["run"]
    items = []
    for label, target in index_links(summary).items():
        if target is None:
            items.append(f"<li>{html.escape(label)}: not written by this run</li>")
            continue
        href = os.path.relpath(target, run).replace(os.sep, "/")
        items.append(
            f'<li><a href="{html.escape(href)}">{html.escape(label)}</a> <code>{html.escape(href)}</code></li>'
        )
    headline = "\n".join(render_headline(summary)[1:-1])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aamct demo run</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#111}}
pre{{background:#f4f4f4;padding:1em;white-space:pre-wrap;word-wrap:break-word;font-size:15px}}
li{{margin:.3em 0}}</style></head>
<body><h1>aamct demo run</h1>
<pre>{html.escape(headline)}</pre>
<h2>Open</h2><ul>
{chr(10).join(items)}
</ul>
<p>Generated cohort (no patient data). Logs: train.log, evaluate.log, cohort.log, export.log in this folder.</p>
</body></html>
"""
    return write_text_atomic(run / "index.html", page)


def _run(args: argparse.Namespace) -> int:
    summary = demo_summary(args.run)
    write_index(summary)
    print("\n".join(render_headline(summary)))
    return 0


def register(subparsers: Any) -> None:
    """Add ``aamct demo-summary``."""
    parser = subparsers.add_parser(
        "demo-summary",
        help="print a make demo run's headline and write RUN/index.html",
        description="Read a make demo run's metrics, maps, stage times and exported bundle; print the headline "
        "and write RUN/index.html linking the report, the gallery and the model card.",
    )
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="the demo run folder (default runs/demo)")
    parser.set_defaults(func=_run)
