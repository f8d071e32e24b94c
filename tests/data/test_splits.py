"""Patient-level stratified splits of a manifest, the rewritten manifest and its datalist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from monai.data import load_decathlon_datalist

from pipeline.cli import main
from pipeline.contracts.datalist import datalist_beside, select
from pipeline.data.splits import infer_class_names, split_manifest
from pipeline.errors import UserError

SITES = ("site-a", "site-b", "site-c")


def write_manifest(
    folder: Path, *, n_patients: int = 45, n_double: int = 15, seed: int = 0, name: str = "cohort.csv"
) -> Path:
    """A manifest of ``n_patients`` patients, ``n_double`` of them with two scans, over three sites.

    Images are real (empty) files under ``images/`` so the datalist's resolved paths can be checked.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(["positive"] * (n_patients // 2) + ["negative"] * (n_patients - n_patients // 2))
    doubles = set(rng.choice(n_patients, n_double, replace=False).tolist())
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for patient in range(n_patients):
        site = SITES[patient % 3]
        for scan in range(1 + (patient in doubles)):
            case_id = f"case-{patient:03d}{scan}"
            image = f"images/{case_id}.nii.gz"
            (folder / image).touch()
            rows.append(
                {
                    "case_id": case_id,
                    "patient_id": f"pt-{patient:04x}",
                    "image": image,
                    "label": labels[patient],
                    "site": site,
                    "split": "",
                    "fold": "",
                    "n_slices": "064",  # leading zero: must come back untouched
                    "spacing_mm": "0.70,0.70,5.00",
                }
            )
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path)


def test_patients_stay_whole_and_splits_are_stratified(manifest):
    result = split_manifest(manifest, seed=0)
    frame = read(manifest)
    per_patient = frame.groupby("patient_id")[["split", "fold"]].nunique()
    assert (per_patient["split"] == 1).all() and (per_patient["fold"] == 1).all()
    assert set(frame["split"]) == {"train", "test"}

    patients = frame.drop_duplicates("patient_id")
    test_share = (patients["split"] == "test").mean()
    assert abs(test_share - 0.3) < 0.05
    overall = (patients["label"] == "positive").mean()
    for split in ("train", "test"):
        share = (patients.loc[patients["split"] == split, "label"] == "positive").mean()
        assert abs(share - overall) < 0.1, f"{split} positive share {share:.2f} vs {overall:.2f}"

    train = frame[frame["split"] == "train"]
    assert sorted(set(train["fold"])) == ["0", "1", "2", "3", "4"]
    assert (frame.loc[frame["split"] != "train", "fold"] == "").all()
    for fold in "01234":
        assert set(train.loc[train["fold"] == fold, "label"]) == {"negative", "positive"}
    assert result.patients["test"] == patients["split"].eq("test").sum()
    assert sum(sum(c.values()) for c in result.cases.values()) == len(frame)


def test_other_columns_and_row_order_are_kept(manifest):
    before = read(manifest)
    split_manifest(manifest)
    after = read(manifest)
    assert list(after.columns) == list(before.columns)
    pd.testing.assert_frame_equal(after.drop(columns=["split", "fold"]), before.drop(columns=["split", "fold"]))
    assert after["n_slices"].eq("064").all()


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    a = write_manifest(tmp_path / "a")
    b = write_manifest(tmp_path / "b")
    c = write_manifest(tmp_path / "c")
    split_manifest(a, seed=7)
    split_manifest(b, seed=7)
    split_manifest(c, seed=8)
    assert read(a)[["split", "fold"]].equals(read(b)[["split", "fold"]])
    assert not read(a)[["split", "fold"]].equals(read(c)[["split", "fold"]])


def test_split_does_not_depend_on_row_order(tmp_path):
    ordered = write_manifest(tmp_path / "ordered")
    shuffled = tmp_path / "shuffled" / "cohort.csv"
    write_manifest(tmp_path / "shuffled")
    read(shuffled).sample(frac=1.0, random_state=3).to_csv(shuffled, index=False)
    split_manifest(ordered, seed=2)
    split_manifest(shuffled, seed=2)
    by_case = read(ordered).set_index("case_id")[["split", "fold"]]
    pd.testing.assert_frame_equal(by_case, read(shuffled).set_index("case_id")[["split", "fold"]].loc[by_case.index])


def test_external_site_holds_out_exactly_that_site(manifest):
    result = split_manifest(manifest, external_site="site-c")
    frame = read(manifest)
    assert (frame.loc[frame["site"] == "site-c", "split"] == "external").all()
    assert (frame.loc[frame["site"] != "site-c", "split"] != "external").all()
    assert result.external_rule == "site site-c"
    assert "external" in result.summary()


def test_external_count_holds_out_that_many_patients_of_both_classes(manifest):
    split_manifest(manifest, external_count=6, seed=1)
    frame = read(manifest)
    external = frame[frame["split"] == "external"]
    assert external["patient_id"].nunique() == 6
    assert set(external["label"]) == {"negative", "positive"}
    assert frame.groupby("patient_id")["split"].nunique().max() == 1


def test_patient_at_two_sites_cannot_be_held_out_by_site(manifest):
    frame = read(manifest)
    doubled = frame["patient_id"].value_counts().index[0]
    rows = frame.index[frame["patient_id"] == doubled]
    frame.loc[rows[0], "site"], frame.loc[rows[1], "site"] = "site-a", "site-c"
    frame.to_csv(manifest, index=False)
    with pytest.raises(UserError, match=rf"patient {doubled} has cases at site-c and at 'site-a'.*two splits"):
        split_manifest(manifest, external_site="site-c")


def test_too_few_patients_per_class_for_the_folds(tmp_path):
    small = write_manifest(tmp_path, n_patients=10, n_double=2)
    with pytest.raises(UserError, match=r"too few patients per class for 5 folds: class '(positive|negative)' has \d"):
        split_manifest(small)
    assert read(small)["split"].eq("").all(), "a failed split must leave the manifest untouched"
    split_manifest(small, n_folds=2)  # the same cohort works with fewer folds


def test_problems_in_the_manifest_are_user_errors(tmp_path, manifest):
    frame = read(manifest)
    frame.drop(columns=["site"]).to_csv(tmp_path / "no_site.csv", index=False)
    with pytest.raises(UserError, match=r"no_site.csv: missing column\(s\) site"):
        split_manifest(tmp_path / "no_site.csv")

    unlabelled = frame.copy()
    unlabelled.loc[4, "label"] = ""
    unlabelled.to_csv(tmp_path / "unlabelled.csv", index=False)
    with pytest.raises(UserError, match=rf"1 case\(s\) have no label, e.g. line 6 \({frame.at[4, 'case_id']}\)"):
        split_manifest(tmp_path / "unlabelled.csv")

    with pytest.raises(UserError, match=r"line 2 .* has label '(positive|negative)', which is not one of the classes"):
        split_manifest(manifest, class_names=["healthy", "covid"])

    with pytest.raises(UserError, match="no case has site 'site-z'"):
        split_manifest(manifest, external_site="site-z")
    with pytest.raises(UserError, match="manifest not found"):
        split_manifest(tmp_path / "absent.csv")


def test_explicit_classes_accept_names_and_integers(manifest):
    frame = read(manifest)
    frame["label"] = frame["label"].map({"negative": "0", "positive": "covid"})
    frame.to_csv(manifest, index=False)
    result = split_manifest(manifest, class_names=["normal", "covid"])
    datalist = json.loads(result.datalist_path.read_text())
    assert datalist["classes"] == ["normal", "covid"]
    expected = dict(zip(frame["case_id"], frame["label"].map({"0": 0, "covid": 1}), strict=True))
    for key in ("training", "test"):
        for entry in datalist[key]:
            assert entry["label"] == expected[entry["case_id"]]


def test_mixed_label_patient_is_kept_whole_and_reported(manifest):
    frame = read(manifest)
    doubled = frame["patient_id"].value_counts().index[0]
    rows = frame.index[frame["patient_id"] == doubled]
    frame.loc[rows[0], "label"], frame.loc[rows[1], "label"] = "negative", "positive"
    frame.to_csv(manifest, index=False)
    result = split_manifest(manifest)
    assert result.mixed_label_patients == 1
    assert read(manifest).loc[rows, "split"].nunique() == 1


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["positive", "negative", "positive"], ["negative", "positive"]),
        (["pneumonia", "covid", "Normal"], ["Normal", "covid", "pneumonia"]),
        (["1", "0", "2", ""], ["0", "1", "2"]),
        (["1.0", "0"], ["0", "1"]),
        (["yes", "no"], ["no", "yes"]),
    ],
)
def test_class_name_rule(labels, expected):
    assert infer_class_names(labels) == expected


@pytest.mark.parametrize(("labels", "message"), [(["0", "positive"], "mix integers"), (["Covid", "covid"], "case")])
def test_class_name_rule_rejects_ambiguous_labels(labels, message):
    with pytest.raises(UserError, match=message):
        infer_class_names(labels)


def test_datalist_loads_with_monai_and_matches_the_manifest(manifest):
    result = split_manifest(manifest, external_site="site-b", seed=3)
    assert result.datalist_path == datalist_beside(manifest) == manifest.with_name("cohort.datalist.json")
    frame = read(manifest)
    training = load_decathlon_datalist(result.datalist_path, data_list_key="training")
    assert len(training) == frame["split"].eq("train").sum()
    for entry in training:
        assert Path(entry["image"]).is_absolute() and Path(entry["image"]).is_file()
        assert entry["label"] in (0, 1) and 0 <= entry["fold"] < 5
    external = load_decathlon_datalist(result.datalist_path, data_list_key="external")
    assert {e["site"] for e in external} == {"site-b"}
    assert len(external) == frame["split"].eq("external").sum()

    fold_of_case = dict(zip(frame["case_id"], frame["fold"], strict=True))
    val = select(result.datalist_path, "val", 2)
    assert val and all(fold_of_case[e["case_id"]] == "2" for e in val)
    train = select(result.datalist_path, "train", 2)
    assert {e["case_id"] for e in train} | {e["case_id"] for e in val} == {e["case_id"] for e in training}
    assert not {e["case_id"] for e in train} & {e["case_id"] for e in val}
    test_ids = {e["case_id"] for e in select(result.datalist_path, "test")}
    assert test_ids == set(frame.loc[frame["split"] == "test", "case_id"])


def test_cli_split_exit_codes(manifest, capsys):
    assert main(["manifest", "split", str(manifest), "--external-count", "5", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "test" in out and "external" in out and "fold 4" in out
    assert manifest.with_name("cohort.datalist.json").is_file()

    assert main(["manifest", "split", str(manifest.with_name("missing.csv"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aamct: error:") and "missing.csv" in err and len(err.strip().splitlines()) == 1

    assert main(["manifest", "split", str(manifest), "--folds", "40"]) == 2
    assert "too few patients per class" in capsys.readouterr().err
