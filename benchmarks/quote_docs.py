"""Put each benchmark's own one-paragraph summary into README.md and bundle/docs/README.md.

Run from the repository root after a benchmark rewrote its results file::

    .venv/bin/python -m benchmarks.quote_docs [--check]

Each quoted paragraph sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` markers; the text between
them is replaced by the benchmark's ``headline`` of its committed results file (:data:`QUOTES`), so prose and
results cannot drift apart (``tests/benchmarks/test_docs_quote_results.py`` checks the documents hold them).
``--check`` changes nothing and exits 1 when a document is out of date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULTS = REPO_ROOT / "benchmarks" / "results"
DOCUMENTS = (REPO_ROOT / "README.md", REPO_ROOT / "bundle" / "docs" / "README.md")


def _localisation(name: str, difficulty: str) -> Callable[[], str]:
    def quote() -> str:
        from benchmarks.bench_localisation import headline

        return headline(json.loads((RESULTS / name).read_text()), difficulty=difficulty)

    return quote


def _small_lesions(difficulty: str) -> Callable[[], str]:
    def quote() -> str:
        from benchmarks.bench_small_lesions import headline

        return headline(json.loads((RESULTS / "small_lesions.json").read_text()), difficulty)

    return quote


def _distillation() -> str:
    from benchmarks.bench_distillation_terms import headline

    return headline(json.loads((RESULTS / "distillation_terms.json").read_text()))


def _medmnist_file(stem: str) -> Callable[[], str]:
    def quote() -> str:
        from benchmarks.medmnist import headline

        return headline(json.loads((RESULTS / f"{stem}.json").read_text()))

    return quote


_medmnist = _medmnist_file("medmnist_adrenalmnist3d_aam_resnet18")


def _demo() -> str:
    from benchmarks.bench_demo import headline

    return headline(json.loads((RESULTS / "demo.json").read_text()))


def _resolution() -> str:
    from benchmarks.bench_resolution import headline

    return headline(json.loads((RESULTS / "resolution.json").read_text()))


#: marker name -> the paragraph it holds
QUOTES: dict[str, Callable[[], str]] = {
    "localisation-default": _localisation("localisation.json", "default"),
    "localisation-hard": _localisation("localisation.json", "hard"),
    "small-lesions-hard": _small_lesions("hard"),
    "small-lesions-default": _small_lesions("default"),
    "distillation": _distillation,
    "medmnist": _medmnist,
    "medmnist-seed2": _medmnist_file("medmnist_adrenalmnist3d_seed2"),
    "medmnist-densenet": _medmnist_file("medmnist_adrenalmnist3d_densenet121_small"),
    "demo": _demo,
    "resolution": _resolution,
}


def fill(text: str, quotes: dict[str, str]) -> str:
    """``text`` with every marked paragraph replaced by its quote (wrapped at 116 columns)."""
    for name, quote in quotes.items():
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n)(.*?)(<!-- /results:{re.escape(name)} -->)", re.S)
        body = "\n".join(textwrap.wrap(quote, width=116, break_on_hyphens=False)) + "\n"
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or ``--check``) the marked paragraphs of both documents."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quote_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a document is out of date")
    args = parser.parse_args(argv)
    quotes = {name: make() for name, make in QUOTES.items()}
    stale = []
    for document in DOCUMENTS:
        before = document.read_text()
        after = fill(before, quotes)
        if after != before:
            stale.append(document)
            if not args.check:
                document.write_text(after)
    for document in stale:
        print(f"{'out of date' if args.check else 'updated'}: {document.relative_to(REPO_ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
