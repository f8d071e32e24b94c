"""An HTML gallery of a scored cohort: every case's heatmap overlay, sorted by score, error cases with their reason.

``write_gallery(cohort_dir)`` reads the cohort's ``predictions.csv`` (one row per input case, written by
``aamct evaluate-cohort``: ``case_id, probability, predicted_label, status, reason, label, heatmap, montage``...) and
writes ``gallery.html`` beside it: one card per case, scored cases by descending probability (the cases a reader most
wants to check first), then the error cases with their one-line reason, so every input case appears. Each scored
card shows the case's PNG overlay (three planes through the map's peak, see
:func:`pipeline.inference.heatmap.write_overlay_png`) and links the PNG and the heatmap NIfTI (open it over the scan
in 3D Slicer or ITK-SNAP). Links are relative, so the cohort folder can be zipped or served as it is.

The page is static HTML with a few lines of inline script that mark every image ``data-state="loaded"`` or
``"broken"`` once the page has loaded (a browser test reads them; a reader sees a red frame on a broken image).
No PHI: the page shows what ``predictions.csv`` holds (pseudonymous ids, scores, labels, sites).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from pipeline.errors import UserError
from pipeline.io import write_text_atomic

__all__ = ["GALLERY_NAME", "gallery_rows", "write_gallery"]

#: the gallery's file name inside the cohort folder
GALLERY_NAME = "gallery.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #111; color: #eee; }
h1 { font-size: 1.3em; } p.note { color: #bbb; max-width: 60em; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
.card { background: #222; border-radius: 6px; padding: 0.6em; width: 560px; }
.card img { width: 100%; display: block; border: 2px solid transparent; }
.card img[data-state="broken"] { border-color: #e33; }
.card.error { border-left: 4px solid #e33; }
.meta { font-size: 0.9em; margin-top: 0.4em; } .meta a { color: #8cf; margin-right: 1em; }
.reason { color: #f99; font-family: monospace; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  document.querySelectorAll("img.overlay").forEach(function (img) {
    img.dataset.state = img.complete && img.naturalWidth > 0 ? "loaded" : "broken";
  });
  document.body.dataset.ready = "yes";
});
"""


def gallery_rows(cohort_dir: str | os.PathLike, predictions_csv: str | os.PathLike | None = None) -> pd.DataFrame:
    """The cohort's cases in gallery order: scored cases by descending probability, then error cases by id.

    Args:
        cohort_dir: the ``aamct evaluate-cohort`` output folder.
        predictions_csv: the predictions table (default: ``cohort_dir/predictions.csv``).

    Returns:
        The rows (strings, missing values as ``""``) with a ``probability_value`` float column.

    Raises:
        UserError: the table is missing, unreadable or lacks ``case_id`` / ``status``.
    """
    path = Path(predictions_csv) if predictions_csv is not None else Path(cohort_dir) / "predictions.csv"
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no predictions table (run aamct evaluate-cohort first)") from None
    except (ValueError, pd.errors.ParserError) as err:
        raise UserError(f"{path}: cannot read the predictions table ({err})") from None
    missing = [column for column in ("case_id", "status") if column not in rows.columns]
    if missing:
        raise UserError(f"{path}: the predictions table lacks the column(s) {', '.join(missing)}")
    for column in (
        "probability",
        "predicted_label",
        "reason",
        "label",
        "heatmap",
        "montage",
        "site",
        "scope",
        "lung_ml",
        "lung_extent_mm",
        "lung_cut",
        "scope_note",
    ):
        if column not in rows.columns:
            rows[column] = ""
    rows["probability_value"] = pd.to_numeric(rows["probability"], errors="coerce")
    scored = rows[rows["status"] == "ok"].sort_values(["probability_value", "case_id"], ascending=[False, True])
    others = rows[rows["status"] != "ok"].sort_values("case_id")
    return pd.concat([scored, others], ignore_index=True)


def write_gallery(
    cohort_dir: str | os.PathLike,
    *,
    predictions_csv: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    title: str = "Heatmap gallery",
    map_description: str | None = None,
    lazy_after: int = 200,
) -> Path:
    """Write the gallery page of a scored cohort.

    Args:
        cohort_dir: the ``aamct evaluate-cohort`` output folder (image links are relative to it).
        predictions_csv: the predictions table (default: ``cohort_dir/predictions.csv``).
        out: the page (default: ``cohort_dir/gallery.html``); links are made relative to its folder.
        title: the page title.
        map_description: what the maps show (printed under the title; the cohort job passes its map maker's
            whole description); default: the ``descrip`` of the first heatmap NIfTI (kind, units, region), which
            NIfTI cuts at 80 bytes.
        lazy_after: images after this many load lazily (a cohort of thousands stays quick to open).

    Returns:
        The written page.

    Raises:
        UserError: see :func:`gallery_rows`.
    """
    cohort_dir = Path(cohort_dir)
    out = Path(out) if out is not None else cohort_dir / GALLERY_NAME
    rows = gallery_rows(cohort_dir, predictions_csv)
    if map_description is None:
        map_description = _description_of_first_map(rows, cohort_dir)
    n_ok = int((rows["status"] == "ok").sum())
    n_out = int((rows["status"] == "out_of_scope").sum())
    n_in_scope = int((rows["scope"] == "in_scope").sum())
    n_scored_out = int(((rows["status"] == "ok") & (rows["scope"] == "out_of_scope")).sum())
    cards = [
        _card(row, cohort_dir, out.parent, lazy=index >= lazy_after)
        for index, row in enumerate(rows.to_dict("records"))
    ]
    note = (
        "Each image: axial, coronal and sagittal planes through the map's peak (lung window, map in colour, "
        "cross at the peak). The map shows where the network's evidence for a positive call lies; it is not a "
        "segmentation of the lesions."
    )
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style>",
            f"<script>{_SCRIPT}</script>",
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="summary">{len(rows)} cases: {n_in_scope} in scope, {n_out + n_scored_out} out of scope'
            f"{f' ({n_scored_out} scored anyway)' if n_scored_out else ''}, {len(rows) - n_ok - n_out} with errors; "
            f"{n_ok} scored, sorted by probability, highest first; out-of-scope and error cases last.</p>",
            f'<p class="note">{html.escape(map_description)}</p>' if map_description else "",
            f'<p class="note">{html.escape(note)}</p>',
            '<div class="grid">',
            *cards,
            "</div>",
            "</body></html>",
            "",
        ]
    )
    return write_text_atomic(out, page)


def _card(row: dict, cohort_dir: Path, page_dir: Path, *, lazy: bool) -> str:
    case = html.escape(row["case_id"])
    facts = [f"<b>{case}</b>"]
    if row["status"] == "ok" and row["probability"] != "":
        facts.append(f"p = {row['probability_value']:.3f}")
    if row["predicted_label"]:
        facts.append(f"called {html.escape(row['predicted_label'])}")
    if row["label"]:
        facts.append(f"label {html.escape(row['label'])}")
    if row["site"]:
        facts.append(html.escape(row["site"]))
    facts.append(f"status {html.escape(row['status'])}")
    if row["scope"]:
        lung = f"{row['scope'].replace('_', ' ')}: lung {row['lung_ml']} ml over {row['lung_extent_mm']} mm"
        facts.append(html.escape(lung + (f", cut at the {row['lung_cut']}" if row["lung_cut"] else "")))
    if row["scope_note"]:
        facts.append(html.escape(row["scope_note"]))
    header = f'<div class="facts">{" · ".join(facts)}</div>'
    if row["status"] != "ok":
        reason = html.escape(row["reason"] or "no reason recorded")
        return (
            f'<div class="card error" id="{case}" data-case="{case}" data-status="{html.escape(row["status"])}">'
            f'{header}<div class="reason">{reason}</div></div>'
        )
    links, image = [], '<div class="reason">no overlay image written for this case</div>'
    png = _linked(row["montage"], cohort_dir, page_dir)
    nifti = _linked(row["heatmap"], cohort_dir, page_dir)
    if png is not None:
        loading = ' loading="lazy"' if lazy else ""
        image = f'<a href="{png}"><img class="overlay" src="{png}" alt="heatmap overlay of {case}"{loading}></a>'
        links.append(f'<a href="{png}">PNG</a>')
    if nifti is not None:
        links.append(f'<a href="{nifti}">heatmap NIfTI</a>')
    return (
        f'<div class="card" id="{case}" data-case="{case}" data-status="ok">{image}{header}'
        f'<div class="meta">{"".join(links)}</div></div>'
    )


def _description_of_first_map(rows: pd.DataFrame, cohort_dir: Path) -> str | None:
    """``Maps: <descrip>`` of the first written heatmap NIfTI, or None."""
    import nibabel as nib

    for value in rows.loc[rows["status"] == "ok", "heatmap"]:
        path = Path(value) if Path(value).is_absolute() else cohort_dir / value
        if value and path.is_file():
            try:
                text = nib.load(path).header["descrip"].tobytes().decode("ascii", "replace").rstrip("\x00").strip()
            except Exception:  # an unreadable map is the card's problem, not the page's
                return None
            return f"Maps: {text}" if text else None
    return None


def _linked(value: str, cohort_dir: Path, page_dir: Path) -> str | None:
    """A URL of a file named in the predictions table, relative to the page; None for no file."""
    if not value:
        return None
    path = Path(value) if Path(value).is_absolute() else cohort_dir / value
    if not path.is_file():
        return None
    relative = os.path.relpath(path.resolve(), page_dir.resolve())
    return html.escape(quote(Path(relative).as_posix()), quote=True)
