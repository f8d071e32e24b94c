"""No machine paths in the results: every file under ``benchmarks/results/`` says nothing about the machine that ran it.

Absolute paths (``/work/main/runs/...``, ``/tmp/...``, ``/home/<user>/...``, ``C:\\...``) in a committed results
file are meaningless to a reader, leak a user name, and make two identical runs differ. The writers record paths
relative to the repository root (:func:`benchmarks.store.portable`, through ``write_result_json`` /
``write_result_text``); this test holds every file there to it, naming the file and the offending value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import run_all, summary
from benchmarks.store import REPO_ROOT, RESULTS_ROOT, portable, write_result_json, write_result_text

#: suffixes of the text files scanned (every results file the benchmarks write is one of these)
TEXT_SUFFIXES = {".json", ".md", ".csv", ".txt", ".yaml", ".yml"}
#: top-level folders of the usual machine roots: a path starting with one of them is absolute even as one component
_ROOTS = "work|tmp|root|home|Users|mnt|media|data|srv|opt|var|usr|private|scratch|gpfs|lustre|nfs|Volumes"
#: an absolute POSIX path (a known root, or any ``/a/b`` of two or more components) or a Windows drive path; not
#: part of a URL (``https://host/a/b``), a relative path (``runs/a/b``), a ratio (``1/2``) or ``$TMPDIR/...``
ABSOLUTE_PATH = re.compile(
    rf"(?<![\w.~:/\\$-])(?:/(?:{_ROOTS})(?![\w.-])(?:/[^\s\"'`),;]*)?|/[\w.@+-]+(?:/[\w.@+-]+)+/?)"
    r"|(?<![\w/])[A-Za-z]:(?:\\\\|\\|/)[\w.-]"
)


def absolute_paths(text: str) -> list[str]:
    """The absolute machine paths in a text, in order."""
    return [match.group(0) for match in ABSOLUTE_PATH.finditer(text)]


def results_files(root: Path = RESULTS_ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def test_no_results_file_holds_an_absolute_path():
    files = results_files()
    assert files, f"no results files under {RESULTS_ROOT}"
    offending = []
    for path in files:
        found = absolute_paths(path.read_text(encoding="utf-8", errors="replace"))
        if found:
            unique = list(dict.fromkeys(found))
            offending.append(f"{path.relative_to(REPO_ROOT)}: {', '.join(map(repr, unique[:3]))}")
    assert not offending, "absolute paths in results files (write them relative to the repository root):\n" + (
        "\n".join(offending)
    )


@pytest.mark.parametrize(
    "text",
    [
        "/work/main/runs/demo_models/x",
        '"run_dir": "/home/alice/aamct/runs/a"',
        "--work-dir /tmp/bench_distill_work",
        "--out /tmp",
        "`/root/.cache/x.npz`",
        "/srv/data/cohort/case.nii.gz",
        '"C:\\\\Users\\\\bob\\\\runs"',
        "D:/cohorts/a",
    ],
)
def test_the_scan_finds_absolute_paths(text):
    assert absolute_paths(text), text


@pytest.mark.parametrize(
    "text",
    [
        "runs/demo_models/x",
        "../shared/data/medmnist/a.npz",
        "$TMPDIR/bench_distill_work",
        "https://github.com/Project-MONAI/MONAI/blob/dev/x.py",
        "AUC 0.91 (1/2 of the cases), 12.5 volumes/s, sensitivity / specificity, mean/std",
        ".venv/bin/python -m benchmarks.bench_medmnist --results-dir benchmarks/results",
        "N/A, n/a, TP/FP, 2/5 seeds",
    ],
)
def test_the_scan_leaves_portable_text_alone(text):
    assert absolute_paths(text) == [], text


def test_portable_writers_strip_the_machine(tmp_path):
    import tempfile

    record = {
        "run_dir": REPO_ROOT / "runs" / "a",
        "root": str(REPO_ROOT),
        "npz": str(REPO_ROOT.parent / "shared" / "data" / "x.npz"),
        "work_dir": str(Path(tempfile.gettempdir()).resolve() / "w"),
        "command": f"{REPO_ROOT / '.venv/bin/python'} -m benchmarks.x --out {REPO_ROOT / 'benchmarks/results/x.json'}",
        "url": "https://example.org/work/main/a",
    }
    written = json.loads(write_result_json(tmp_path / "r.json", record).read_text())
    assert written["run_dir"] == "runs/a" and written["root"] == "."
    assert written["npz"] == "../shared/data/x.npz" and written["work_dir"] == "$TMPDIR/w"
    assert written["url"] == record["url"]
    assert written["command"] == ".venv/bin/python -m benchmarks.x --out benchmarks/results/x.json"
    assert absolute_paths(json.dumps(written)) == []
    text = write_result_text(tmp_path / "r.md", f"Command: `{record['command']}`").read_text()
    assert str(REPO_ROOT) not in text
    assert portable(f"{REPO_ROOT}2/x") == f"../{REPO_ROOT.name}2/x"  # a sibling folder is not inside the repo


def test_run_all_records_a_portable_command(tmp_path):
    outside = run_all.run_benchmark(["/usr/bin/env", "true"])  # an interpreter outside the repository: named only
    assert outside["command"] == "env true"
    inside = run_all.run_benchmark(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", "pass", str(REPO_ROOT / "benchmarks" / "results")]
    )
    assert inside["command"] == ".venv/bin/python -c pass benchmarks/results"
    path = summary.write_json_record(tmp_path / "run_all.json", {"itk_path": str(REPO_ROOT / "itk")})
    assert json.loads(path.read_text()) == {"itk_path": "itk"}
