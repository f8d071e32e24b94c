"""benchmarks.demo_models: the Makefile's demo recipe, the cohort with its truth, and train-once reuse."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from benchmarks import demo_models
from tests.conftest import REPO_ROOT


def _makefile_demo_recipe() -> dict[str, str]:
    """``DEMO_CASES``, ``DEMO_SIZE`` and the ``VAR=value`` pairs of ``DEMO_TRAIN`` (what ``make demo`` trains with)."""
    text = (REPO_ROOT / "Makefile").read_text()
    values = dict(re.findall(r"^(DEMO_[A-Z]+)\s*:?=\s*(.+?)\s*$", text, flags=re.MULTILINE))
    recipe = dict(pair.split("=", 1) for pair in values["DEMO_TRAIN"].split())
    return {**recipe, "CASES": values["DEMO_CASES"], "SIZE": values["DEMO_SIZE"]}


def test_recipe_is_the_makefiles_demo_recipe():
    make = _makefile_demo_recipe()
    recipe = demo_models.DEMO_RECIPE
    assert make["NETWORK"] == demo_models.DEMO_NETWORK
    assert float(make["LR"]) == recipe["learning_rate"]
    assert int(make["BATCH"]) == recipe["batch_size"]
    assert make["SCHEDULE"] == recipe["lr_schedule"]
    assert (make["LATER_TIES"] == "true") == recipe["keep_later_ties"]
    assert int(make["EPOCHS"]) == recipe["epochs"]
    assert make["SELECTION"] == recipe["checkpoint_selection"]
    assert int(make["PATIENCE"]) == recipe["early_stop_patience"]
    assert (
        int(make["CASES"]) == demo_models.DEMO_COHORT["cases"] and int(make["SIZE"]) == demo_models.DEMO_COHORT["size"]
    )


@pytest.fixture
def fake_bundle(monkeypatch):
    """Stands in for the two bundle subprocesses (minutes of training): writes what they write, counts the calls."""
    calls: list[tuple[str, str]] = []

    def run(bundle_id, cohort, run_dir, settings, network, network_kwargs, train_seed, log):
        calls.append((bundle_id, run_dir.name))
        if bundle_id == "training":
            (run_dir / "models").mkdir(parents=True, exist_ok=True)
            (run_dir / "models" / "model.pt").write_bytes(b"weights")
            (run_dir / "models" / "run.json").write_text(json.dumps({"network_name": network}))
        else:
            (run_dir / "metrics.json").write_text(json.dumps({"auc": 0.8, "splits": {"val": {"auc": 0.9}}}))

    monkeypatch.setattr(demo_models, "_bundle", run)
    return calls


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One work folder, its hard cohort (24 scans at 32 x 32: the fewest the 5-fold split takes) made once."""
    folder = tmp_path_factory.mktemp("demo_models")
    demo_models.demo_cohort("hard", cases=24, size=32, seed=3, workdir=folder)
    return folder


def test_cohort_has_truth_and_a_split_manifest_and_is_reused(workdir):
    first = demo_models.demo_cohort("hard", cases=24, size=32, seed=3, workdir=workdir)
    manifest = pd.read_csv(first.manifest, dtype=str)
    truth = pd.read_csv(first.truth_dir / "truth.csv", dtype=str)
    # every manifest row maps to a truth row by its series folder, with the same label
    by_folder = truth.set_index("path")
    for row in manifest.itertuples():
        folder = row.image.split("/")[-1]
        assert by_folder.loc[folder, "label"] == row.label
        assert (first.truth_dir / by_folder.loc[folder, "lesion_mask"]).is_file()
    assert set(manifest["split"]) >= {"train", "test"} and first.datalist.is_file()
    assert first.settings["difficulty"] == "hard" and first.settings["cases"] == 24
    stamp = first.manifest.stat().st_mtime_ns
    again = demo_models.demo_cohort("hard", cases=24, size=32, seed=3, workdir=workdir)
    assert again.folder == first.folder and again.manifest.stat().st_mtime_ns == stamp  # not regenerated


def test_a_finished_run_is_reused_and_a_changed_recipe_or_partial_run_is_trained_again(workdir, fake_bundle):
    kwargs = {"cases": 24, "size": 32, "seed": 3, "workdir": workdir}
    first = demo_models.trained_demo_model("resnet18", "hard", network_kwargs={"widen_factor": 0.25}, **kwargs)
    assert not first.reused and [c[0] for c in fake_bundle] == ["training", "evaluating"]
    assert first.test_auc == 0.8 and first.val_auc == 0.9 and first.checkpoint.is_file()
    recipe = json.loads((first.run_dir / "recipe.json").read_text())
    assert recipe["network_kwargs"] == {"widen_factor": 0.25} and recipe["learning_rate"] == 6e-4
    assert len(recipe["training_code"]) == 64 and recipe["cohort"]["difficulty"] == "hard"

    second = demo_models.trained_demo_model("resnet18", "hard", network_kwargs={"widen_factor": 0.25}, **kwargs)
    assert second.reused and second.run_dir == first.run_dir and len(fake_bundle) == 2

    # another recipe is another run folder, trained
    other = demo_models.trained_demo_model(
        "resnet18", "hard", network_kwargs={"widen_factor": 0.25}, recipe={"epochs": 3}, **kwargs
    )
    assert not other.reused and other.run_dir != first.run_dir and len(fake_bundle) == 4

    # a run whose record does not match (here: edited by hand, as a code change would) is trained again
    recipe["training_code"] = "0" * 64
    (first.run_dir / "recipe.json").write_text(json.dumps(recipe))
    stale = demo_models.trained_demo_model("resnet18", "hard", network_kwargs={"widen_factor": 0.25}, **kwargs)
    assert not stale.reused and len(fake_bundle) == 6

    # a run killed before its record was written is trained again
    (first.run_dir / "recipe.json").unlink()
    partial = demo_models.trained_demo_model("resnet18", "hard", network_kwargs={"widen_factor": 0.25}, **kwargs)
    assert not partial.reused and len(fake_bundle) == 8
