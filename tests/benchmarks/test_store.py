"""Accumulating benchmark results: keys that follow what changes a number, portable files, seed aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import bench_small_lesions as small
from benchmarks.demo_models import demo_cohort
from benchmarks.store import REPO_ROOT, ResultStore, cohort_fingerprint, network_fingerprint, portable


def test_network_fingerprint_follows_the_function_not_the_call():
    roi = (32, 32, 32)  # small, to keep the test quick; the benchmarks use the demo window
    base = network_fingerprint("aam_student_small", roi=roi)
    assert network_fingerprint("aam_student_small", roi=roi) == base  # deterministic
    assert network_fingerprint("aam_student_small", {"width": 0.125}, roi=roi) != base  # another network
    assert network_fingerprint("resnet18", {"widen_factor": 0.25}, roi=roi) != base


def test_cohort_fingerprint_ignores_where_the_cohort_lies_but_not_what_it_holds(tmp_path):
    one = demo_cohort("hard", cases=24, size=32, seed=3, workdir=tmp_path / "a")
    two = demo_cohort("hard", cases=24, size=32, seed=3, workdir=tmp_path / "b")
    assert str(tmp_path / "a") in one.datalist.read_text()  # the datalist does hold machine paths ...
    assert cohort_fingerprint(one.truth_dir, one.datalist) == cohort_fingerprint(two.truth_dir, two.datalist)
    # ... but another lesion volume (what a changed generator writes) is another cohort
    truth = two.truth_dir / "truth.csv"
    rows = truth.read_text().splitlines()
    positive = next(i for i, row in enumerate(rows) if ",positive," in row)
    fields = rows[positive].split(",")
    fields[6] = str(float(fields[6]) + 1.0)  # lesion_volume_ml
    rows[positive] = ",".join(fields)
    truth.write_text("\n".join(rows) + "\n")
    assert cohort_fingerprint(one.truth_dir, one.datalist) != cohort_fingerprint(two.truth_dir, two.datalist)


def test_store_serves_a_unit_only_under_its_own_key_and_writes_no_machine_paths(tmp_path):
    store = ResultStore("demo", root=tmp_path)
    key = {"network": "resnet18", "train_seed": 2, "recipe": {"epochs": 30}}
    record = {"run_dir": str(REPO_ROOT / "runs" / "x"), "test_auc": 0.8}
    path = store.save(key, record, "hard", "resnet18-seed2")
    assert path == tmp_path / "demo" / "hard" / "resnet18-seed2.json"
    loaded = store.load(key, "hard", "resnet18-seed2")
    assert loaded["test_auc"] == 0.8 and loaded["run_dir"] == "runs/x"
    assert str(REPO_ROOT) not in path.read_text()
    assert store.load({**key, "train_seed": 3}, "hard", "resnet18-seed2") is None  # another seed is not served
    assert store.load({**key, "recipe": {"epochs": 10}}, "hard", "resnet18-seed2") is None
    assert store.load(key, "hard", "missing") is None
    assert portable([REPO_ROOT / "a", {"b": f"{REPO_ROOT}/c d"}]) == ["a", {"b": "c d"}]


def _record(label: str, seed: int, probabilities, predicted, volumes, labels) -> dict:
    cases = [
        {"case_id": f"c{i}", "label": int(y), "probability": float(p), "predicted": int(d), "lesion_volume_ml": v}
        for i, (y, p, d, v) in enumerate(zip(labels, probabilities, predicted, volumes, strict=True))
    ]
    return {"network_label": label, "key": {"train_seed": seed}, "val_auc": 0.9, "seconds": 60.0, "cases": cases}


def test_aggregate_averages_probabilities_over_seeds_and_counts_sensitivity_per_seed():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    volumes = [0, 0, 0, 0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    rng = np.random.default_rng(0)
    seeds = {s: rng.random(10) for s in range(3)}
    # seed s detects the positives whose volume is above s + 1 ml (the small ones are missed more often)
    predicted = {s: [int(y == 1 and v > s + 1) for y, v in zip(labels, volumes, strict=True)] for s in seeds}
    records = [_record("net", s, seeds[s], predicted[s], volumes, labels) for s in seeds]
    records += [_record("other", s, 1 - seeds[s], predicted[s], volumes, labels) for s in seeds]
    block = small.aggregate(records, ["net", "other"])
    row = block["networks"]["net"]
    mean = np.mean([seeds[s] for s in seeds], axis=0)
    assert row["seed_averaged_auc"] == pytest.approx(roc_auc_score(labels, mean))
    assert row["test_auc"]["mean"] == pytest.approx(np.mean([roc_auc_score(labels, seeds[s]) for s in seeds]))
    # sensitivity per seed: 5/6, 4/6, 3/6; pooled 12/18
    assert row["sensitivity"]["per_seed"]["values"] == pytest.approx([5 / 6, 4 / 6, 3 / 6])
    assert row["sensitivity"]["pooled"]["numerator"] == 12 and row["sensitivity"]["pooled"]["denominator"] == 18
    smallest = row["tertiles"][small.TERTILES[0]]  # volumes 1 and 2 ml
    assert smallest["per_seed"]["values"] == pytest.approx([0.5, 0.0, 0.0])
    assert block["delong"][0]["a"] == "net" and block["delong"][0]["b"] == "other"
    assert block["trivial"]["auc"] == 0.5 and block["trivial"]["sensitivity"] == 1.0  # 6 of 10 are positive
    # a seed scored on other cases is refused
    shuffled = json.loads(json.dumps(records[0]))
    shuffled["cases"] = shuffled["cases"][::-1]
    with pytest.raises(ValueError, match="other test cases"):
        small.aggregate([*records, {**shuffled, "key": {"train_seed": 9}}], ["net"])


def test_network_option_strings_parse():
    choice = small.parse_network("resnet18:widen_factor=0.25")
    assert choice.name == "resnet18" and choice.options == {"widen_factor": 0.25}
    assert choice.label == "resnet18(widen_factor=0.25)" and choice.slug == "resnet18-widen_factor0p25"
    assert small.parse_network("densenet121").options == {}
    with pytest.raises(SystemExit, match="not key=value"):
        small.parse_network("resnet18:widen")


def test_tertile_auc_scores_each_third_against_every_negative():
    import pandas as pd

    # negatives score 0.1..0.4; the small positives 0.2 and 0.3 (half the pairs won), the large ones 0.9
    table = pd.DataFrame(
        {
            "label": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
            "probability": [0.1, 0.2, 0.3, 0.4, 0.25, 0.05, 0.6, 0.6, 0.9, 0.95],
            "lesion_volume_ml": [0, 0, 0, 0, 1.0, 1.5, 3.0, 3.5, 8.0, 9.0],
        }
    )
    aucs = small.tertile_aucs(table, (2.0, 5.0))
    # smallest third: 0.25 beats 0.1 and 0.2 (2 of 4), 0.05 beats none -> 2/8
    assert aucs[small.TERTILES[0]] == pytest.approx(2 / 8)
    assert aucs[small.TERTILES[1]] == pytest.approx(1.0) and aucs[small.TERTILES[2]] == pytest.approx(1.0)
