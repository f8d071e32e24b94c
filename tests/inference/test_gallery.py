"""The heatmap gallery of a real scored cohort: every input case listed, error cases with their reason, in a browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.evaluation.report import evaluate_predictions, write_report
from pipeline.inference.cohort import CohortRunner
from pipeline.inference.gallery import gallery_rows, write_gallery
from tests.inference.helpers import chest_like_volume, make_predictor, tiny_network, write_nifti

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
#: the flags known to work on these machines (no network, no GPU, root)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


@pytest.fixture(scope="module")
def scored_cohort(tmp_path_factory) -> Path:
    """Four NIfTI cases scored by the real cohort job (PNG overlays and NIfTI maps), plus two that fail."""
    root = tmp_path_factory.mktemp("gallery")
    rows = []
    for index in range(4):
        label = "positive" if index % 2 else "negative"
        volume = chest_like_volume(blob_at=(12, 18, 12) if label == "positive" else None, seed=index)
        write_nifti(root / "images" / f"img{index}.nii.gz", volume)
        rows.append((f"case-{index:02d}", f"images/img{index}.nii.gz", label, "site-a"))
    (root / "images" / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    rows.append(("case-90", "images/corrupt.nii.gz", "positive", "site-b"))
    rows.append(("case-91", "images/missing.nii.gz", "negative", "site-b"))
    manifest = root / "manifest.csv"
    pd.DataFrame(rows, columns=["case_id", "image", "label", "site"]).to_csv(manifest, index=False)
    runner = CohortRunner(
        predictor=make_predictor(tiny_network(), write_montage=True),
        output_dir=root / "run",
        progress=False,
        fingerprint="test-model",
        evaluate_predictions=evaluate_predictions,
        write_report=write_report,
        write_gallery=write_gallery,  # as bundle/configs/inference.json injects it
    )
    runner.run(manifest)
    return root / "run"


def test_the_cohort_job_writes_the_gallery_and_its_report_links_it(scored_cohort):
    gallery = scored_cohort / "gallery.html"
    assert gallery.is_file()
    # the page says what the maps are: the map maker's whole description (a NIfTI descrip stops at 80 bytes)
    import nibabel as nib

    text = gallery.read_text()
    assert "Maps: aamct CAM positive log-odds" in text
    first_map = next((scored_cohort / "heatmaps").glob("*.nii.gz"))
    descrip = nib.load(first_map).header["descrip"].tobytes().rstrip(b"\x00").decode()
    whole = re.search(r"Maps: ([^<]*)", text).group(1)
    assert whole.startswith(descrip) and whole.endswith("0 outside")
    report = (scored_cohort / "report" / "report.html").read_text()
    href = re.search(r'<a href="([^"]+)">heatmap gallery</a>', report)
    assert href is not None and (scored_cohort / "report" / href.group(1)).resolve() == gallery.resolve()


def test_gallery_lists_every_case_sorted_by_score_with_error_reasons(scored_cohort):
    predictions = pd.read_csv(scored_cohort / "predictions.csv", dtype=str, keep_default_na=False)
    page = write_gallery(scored_cohort, map_description="CAM positive log-odds, 0-1 of the in-body maximum")
    text = page.read_text()
    cards = re.findall(r'<div class="card[^"]*" id="([^"]+)" data-case="[^"]+" data-status="([^"]+)"', text)
    # every input case, once, with its status from the predictions table
    assert sorted(cards) == sorted(zip(predictions["case_id"], predictions["status"], strict=True))
    ok = predictions[predictions["status"] == "ok"].copy()
    ok["p"] = ok["probability"].astype(float)
    expected_order = ok.sort_values("p", ascending=False)["case_id"].tolist() + ["case-90", "case-91"]
    assert [case for case, _ in cards] == expected_order
    for row in predictions[predictions["status"] == "error"].itertuples():
        assert row.reason and html.escape(row.reason) in text
    for row in ok.itertuples():
        # the card's image and NIfTI links point at the files the cohort job wrote
        assert f'src="{row.montage}"' in text and f'href="{row.heatmap}"' in text
        assert (scored_cohort / row.montage).is_file() and (scored_cohort / row.heatmap).is_file()
        assert f"p = {float(row.probability):.3f}" in text and f"label {row.label}" in text
    assert "not a segmentation" in text and "CAM positive log-odds" in text
    assert "Demopatient" not in text and "DEMO-" not in text


def test_gallery_elsewhere_links_back_and_bad_tables_are_user_errors(scored_cohort, tmp_path):
    page = write_gallery(scored_cohort, out=tmp_path / "sub" / "gallery.html")
    text = page.read_text()
    links = re.findall(r'<img class="overlay" src="([^"]+)"', text)
    assert links and all((page.parent / link).resolve().is_file() for link in links)
    with pytest.raises(UserError, match="no predictions table"):
        gallery_rows(tmp_path / "nowhere")
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(UserError, match="lacks the column"):
        gallery_rows(tmp_path, tmp_path / "bad.csv")


def _chromium(*args: str, user_data: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium): browser check skipped"
)
def test_gallery_renders_every_image_in_headless_chromium(scored_cohort, tmp_path):
    page = write_gallery(scored_cohort)
    url = page.resolve().as_uri()
    dom = _chromium("--dump-dom", url, user_data=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-ready="yes"' in dom.stdout, "the page's load handler did not run"
    states = re.findall(r'<img class="overlay"[^>]*data-state="(\w+)"', dom.stdout) or re.findall(
        r'<img[^>]*data-state="(\w+)"[^>]*class="overlay"', dom.stdout
    )
    n_ok = int((pd.read_csv(scored_cohort / "predictions.csv")["status"] == "ok").sum())
    assert states == ["loaded"] * n_ok, states
    assert dom.stdout.count('data-status="error"') == 2

    shot = tmp_path / "gallery.png"
    screenshot = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", url, user_data=tmp_path / "profile-shot")
    assert screenshot.returncode == 0 and shot.is_file(), screenshot.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    # not blank: the dark page carries bright CT pixels and coloured map pixels
    assert pixels.std() > 0.05
    colourful = np.abs(pixels[..., 0] - pixels[..., 2]) > 0.2
    assert colourful.mean() > 0.001
