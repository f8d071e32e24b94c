"""The figures README.md and the bundle docs quote are the ones the benchmarks wrote (a rerun that changes them must
change the prose too): each document holds the benchmark's own one-paragraph summary of its results file verbatim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.bench_localisation import headline as localisation_headline

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
DOCUMENTS = (REPO / "README.md", REPO / "bundle" / "docs" / "README.md")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("results", ["localisation.json", "localisation_hard.json"])
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_documents_quote_the_localisation_results(document, results):
    record = json.loads((RESULTS / results).read_text())
    [difficulty] = {row["difficulty"] for row in record["results"]}  # one demo setting per results file
    sentence = localisation_headline(record, difficulty=difficulty)
    assert re.search(r"\d+/\d+ test positives", sentence)  # the summary carries the numbers it is checked for
    assert _flat(sentence) in _flat(document.read_text()), f"{document.name} does not quote {results}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_documents_quote_the_network_comparison(document):
    from benchmarks.medmnist import headline

    record = json.loads((RESULTS / "medmnist_adrenalmnist3d_aam_resnet18.json").read_text())
    sentence = headline(record)
    assert "aam_resnet18 - resnet18" in sentence  # the paired test the default rests on is part of the summary
    assert _flat(sentence) in _flat(document.read_text()), f"{document.name} does not quote the MedMNIST results"


def test_the_default_network_is_the_one_the_comparison_favours():
    # the defaults follow the evidence: the default network has the higher mean test AUC over seeds
    from pipeline.contracts.defaults import DEFAULT_NETWORK_NAME

    models = json.loads((RESULTS / "medmnist_adrenalmnist3d_aam_resnet18.json").read_text())["models"]
    assert max(models, key=lambda name: models[name]["test_auc"]) == DEFAULT_NETWORK_NAME
