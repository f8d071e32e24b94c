"""MedMNIST benchmark: cohort writing in the datalist contract, statistics, Markdown, and one tiny bundle run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from benchmarks import medmnist
from benchmarks.bench_medmnist import add_medmnist_arguments, settings_from_args
from pipeline.contracts.datalist import select
from pipeline.errors import UserError
from pipeline.evaluation.roc import delong_test, roc_auc
from tests.bundle_process import monai_bundle
from tests.conftest import REPO_ROOT, shared_path

SIZE = 28  # MedMNIST's own resolution


@pytest.fixture(autouse=True)
def _bundle_runs_in_this_process(monkeypatch):
    """The benchmark's bundle runs (``python -m monai.bundle run`` in a child process, ``medmnist._run_bundle``) run
    in the test process: the child's own command line (``medmnist._cli_value`` for each override), read by
    python-fire as in the child, so what the orchestration passes is what a child would see. The tests here are
    about the orchestration (reuse, resume, tables); the stock command itself is run in a subprocess by
    tests/training/test_train_bundle.py. Saves ~10 s of interpreter start-up per run."""
    monkeypatch.setattr(medmnist, "_run_bundle", _run_bundle_in_process)


def _run_bundle_in_process(run_id, config_files, overrides):
    """``medmnist._run_bundle`` with the child's command line given to ``python -m monai.bundle``'s entry point in
    this process; returns its wall seconds, raises the same ``UserError`` on a non-zero exit."""
    started = time.perf_counter()
    # the child's command line, built as medmnist._run_bundle builds it
    config = str([str(medmnist.CONFIGS / name) for name in config_files])
    argv = ["run", run_id, "--config_file", config, "--meta_file", str(medmnist.CONFIGS / "metadata.json")]
    for key, value in overrides.items():
        argv += [f"--{key}", medmnist._cli_value(value)]
    done = monai_bundle(*argv, cwd=REPO_ROOT)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no error output")
        raise UserError(f"{run_id} of {overrides.get('output_dir', '?')} exited {done.returncode}: {last}")
    return time.perf_counter() - started


def _write_npz(path: Path, *, per_split: int = 8, seed: int = 0) -> Path:
    """A MedMNIST-layout npz of blobs: positives are larger spheres, so a network can tell them apart."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"))
    arrays = {}
    for split in ("train", "val", "test"):
        labels = np.array([i % 2 for i in range(per_split)], dtype=np.uint8)
        images = []
        for label in labels:
            radius = (8 if label else 4) + rng.uniform(-1, 1)
            centre = rng.uniform(11, 17, size=3).reshape(3, 1, 1, 1)
            images.append((((grid - centre) ** 2).sum(0) <= radius**2).astype(np.uint8) * 255)
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)  # MedMNIST stores (N, 1)
    np.savez(path, **arrays)
    return path


def test_write_cohort_follows_the_datalist_contract(tmp_path):
    npz = _write_npz(tmp_path / "tiny.npz", per_split=6)
    datalist_path = medmnist.write_cohort(npz, tmp_path / "cohort")

    data = json.loads(datalist_path.read_text())
    assert data["classes"] == ["negative", "positive"]
    assert len(load_decathlon_datalist(datalist_path, data_list_key="training")) == 12
    train, val, test = select(data, "train", 0), select(data, "val", 0), select(data, "test", None)
    assert [len(train), len(val), len(test)] == [6, 6, 6]
    assert all("-train-" in e["case_id"] for e in train) and all("-val-" in e["case_id"] for e in val)
    with np.load(npz) as archive:
        expected = archive["test_images"][3]
        expected_label = int(archive["test_labels"][3, 0])
    entry = next(e for e in test if e["case_id"].endswith("-test-0003"))
    assert entry["label"] == expected_label
    image = nib.load(entry["image"])
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)
    np.testing.assert_array_equal(image.affine, np.eye(4))


def test_limit_keeps_both_classes_and_their_proportion(tmp_path):
    npz = _write_npz(tmp_path / "tiny.npz", per_split=20)
    data = json.loads(medmnist.write_cohort(npz, tmp_path / "cohort", limit=6).read_text())
    test_labels = [e["label"] for e in data["test"]]
    assert len(test_labels) == 6 and sorted(set(test_labels)) == [0, 1]


def test_bad_npz_is_a_one_line_user_error(tmp_path):
    broken = tmp_path / "broken.npz"
    np.savez(broken, train_images=np.zeros((2, 4, 4, 4), np.uint8))
    with pytest.raises(UserError, match="missing .*val_images"):
        medmnist.load_npz_splits(broken)
    with pytest.raises(UserError, match="not found"):
        medmnist.write_cohort(tmp_path / "absent.npz", tmp_path / "cohort")
    assert not (tmp_path / "cohort").exists()


def test_real_adrenal_npz_has_the_documented_splits():
    splits = medmnist.load_npz_splits(shared_path("medmnist", "adrenalmnist3d.npz"))
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 1188, "val": 98, "test": 298}
    assert int(splits["test"][1].sum()) == 69


def _seed_runs(labels, probabilities):
    """Run records as ``summarize`` takes them: one per seed, in seed order."""
    return [{"seed": seed, "labels": labels, "probabilities": p} for seed, p in enumerate(probabilities)]


def test_summarize_means_and_paired_delong_against_baselines():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 20)
    good = [labels * 0.6 + rng.uniform(0, 0.5, labels.size) for _ in range(2)]
    weak = [labels * 0.1 + rng.uniform(0, 0.5, labels.size) for _ in range(2)]
    runs = {
        "aam_resnet50": _seed_runs(labels, good),
        "resnet18": _seed_runs(labels, weak),
    }
    summary = medmnist.summarize(runs, params={"aam_resnet50": 10, "resnet18": 5})

    aam = summary["models"]["aam_resnet50"]
    assert aam["test_auc"] == pytest.approx(np.mean([roc_auc(labels, p) for p in good]))
    assert aam["test_acc"] == pytest.approx(np.mean([np.mean((p >= 0.5) == labels) for p in good]))
    assert len(aam["seeds"]) == 2 and aam["params"] == 10
    (comparison,) = summary["delong"]
    expected = delong_test(labels, np.mean(good, axis=0), np.mean(weak, axis=0))
    assert comparison["baseline"] == "resnet18"
    assert comparison["p_value"] == pytest.approx(expected.p_value)


def test_markdown_puts_measured_rows_beside_published_ones():
    result = {
        "dataset": "adrenalmnist3d",
        "published_applies": True,
        "models": {
            "aam_resnet50": {"test_auc": 0.871, "test_auc_sd": 0.01, "test_auc_ci": [0.8, 0.92], "test_acc": 0.81}
        },
        "delong": [
            {"model": "aam_resnet50", "baseline": "resnet18", "auc_model": 0.871, "auc_baseline": 0.8, "p_value": 0.04}
        ],
        "wall_seconds": 120.0,
    }
    text = medmnist.render_markdown(result)
    assert "| aam_resnet50 | 0.871 ± 0.010 | 0.800–0.920 |" in text
    for method, auc, _ in medmnist.PUBLISHED_ADRENAL_28:
        assert f"| {method} | {auc:.3f} |" in text
    assert "MedMNIST v2" in text and "| resnet18 |" in text


def test_quick_option_sets_the_smoke_run():
    args = add_medmnist_arguments(argparse.ArgumentParser()).parse_args(["--quick", "--models", "resnet18"])
    settings = settings_from_args(args, command="x")
    assert (settings.limit, settings.epochs, settings.seeds, settings.models) == (64, 1, (0,), ("resnet18",))
    # a smoke run works in its own folder: it must not replace the finished runs a full rerun reuses
    full = settings_from_args(add_medmnist_arguments(argparse.ArgumentParser()).parse_args([]), command="x")
    assert (settings.work_dir.name, full.work_dir.name) == ("bench_medmnist_quick", "bench_medmnist")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished 1-epoch unet_encoder run (the registry's smallest network), shared by the tests that only read it:
    ``(settings, result)``."""
    settings = _one_tiny_run(tmp_path_factory.mktemp("tiny_run"))
    # set up before the function-scoped autouse fixture above: its bundle runs are put in this process here
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(medmnist, "_run_bundle", _run_bundle_in_process)
        return settings, medmnist.run_medmnist(settings)


@pytest.mark.slow
def test_one_tiny_run_through_the_bundle(tiny_run):
    settings, result = tiny_run
    tmp_path = settings.work_dir.parent

    written = json.loads((tmp_path / "results" / "medmnist_tiny.json").read_text())
    row = written["models"]["unet_encoder"]
    assert written["n_train"] == written["n_val"] == written["n_test"] == 8
    assert 0.0 <= row["test_auc"] <= 1.0 and 0.0 <= row["test_acc"] <= 1.0
    assert row["params"] > 100_000 and row["seeds"][0]["seed"] == 0
    assert (tmp_path / "work" / "runs" / "unet_encoder_seed0" / "models" / "model.pt").is_file()
    assert result["published_applies"] is False
    assert "| unet_encoder |" in (tmp_path / "results" / "medmnist_tiny.md").read_text()


def test_ablation_variants_differ_in_exactly_the_parameters_they_remove():
    params = {
        variant: medmnist._count_params("aam_student_small", kwargs) for variant, kwargs in medmnist.ABLATIONS.items()
    }
    full = params["full (learned gamma, channel + spatial attention)"]
    assert params["without channel attention (spatial branch only)"] < full
    assert params["without spatial attention (channel branch only)"] < full
    assert params["without attention (gamma-scaled residual only)"] < min(
        params["without channel attention (spatial branch only)"],
        params["without spatial attention (channel branch only)"],
    )
    assert 0 < full - params["without gamma (fixed at 1: plain residual sum)"] < 10_000  # only the gammas
    stage_only = params["attention placement: last unit of each stage only"]
    assert params["without attention (gamma-scaled residual only)"] < stage_only < full


@pytest.mark.slow
def test_ablation_runs_its_variants_and_a_rerun_reuses_finished_runs(tmp_path, monkeypatch):
    npz = _write_npz(tmp_path / "tiny.npz", per_split=8)
    settings = medmnist.MedMNISTSettings(
        npz=npz,
        work_dir=tmp_path / "work",
        results_dir=tmp_path / "results",
        models=(),
        ablation=True,
        ablation_network="aam_student_small",
        ablation_variants=("placement",),  # the full model and one variant: the orchestration is under test
        seeds=(0,),
        epochs=1,
        batch_size=8,
        n_resamples=10,
        name="ablation_tiny",
        command="test",
    )
    result = medmnist.run_medmnist(settings)
    ablation = result["ablation"]
    expected = [
        "full (learned gamma, channel + spatial attention)",
        "attention placement: last unit of each stage only",
    ]
    assert list(ablation) == expected
    assert ablation[expected[1]]["params"] < ablation[expected[0]]["params"]
    assert [row["baseline"] for row in result["ablation_delong"]] == [expected[0]]
    assert all(row["val_auc"] is not None and row["run_minutes"] > 0 for row in ablation.values())
    text = (tmp_path / "results" / "ablation_tiny.md").read_text()
    assert "Ablation of aam_student_small" in text and f"| {expected[1]} |" in text

    weights = sorted((tmp_path / "work" / "runs").glob("*/models/model.pt"))
    assert len(weights) == len(expected)
    stamps = [w.stat().st_mtime_ns for w in weights]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    for stage in ("run_training", "run_distillation", "run_evaluation"):
        monkeypatch.setattr(medmnist, stage, must_not_run)
    again = medmnist.run_medmnist(settings)
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert again["ablation"] == ablation
    assert (result["runs_reused"], again["runs_reused"], again["runs_total"]) == (0, 2, 2)
    assert again["run_seconds"] == pytest.approx(result["run_seconds"]) and result["run_seconds"] > 0
    assert "2 of 2 runs were reused" in (tmp_path / "results" / "ablation_tiny.md").read_text()
    # the full model alone reuses its run and stays the reference
    subset = medmnist.run_medmnist(replace(settings, ablation_variants=("full",)))
    assert list(subset["ablation"]) == expected[:1]
    assert subset["ablation"][expected[0]] == ablation[expected[0]]

    # a changed setting is a different run: it is trained again, not reused
    with pytest.raises(AssertionError, match="trained or evaluated again"):
        medmnist.run_medmnist(replace(settings, epochs=2))


def test_ablation_variants_are_selected_by_word_and_an_unknown_word_is_refused():
    assert medmnist.selected_ablations(None) == medmnist.ABLATIONS
    picked = medmnist.selected_ablations(["gamma"])
    assert list(picked) == [
        "full (learned gamma, channel + spatial attention)",
        "without gamma (fixed at 1: plain residual sum)",
        "without attention (gamma-scaled residual only)",
    ]
    args = add_medmnist_arguments(argparse.ArgumentParser()).parse_args(["--ablation", "--ablation-variants", "nope"])
    with pytest.raises(UserError, match="no variant matches nope"):
        settings_from_args(args, command="x")


def test_distilled_student_is_compared_with_the_same_student_from_scratch():
    rng = np.random.default_rng(3)
    labels = np.array([0] * 30 + [1] * 20)
    distilled = [labels * 0.5 + rng.uniform(0, 0.5, labels.size) for _ in range(2)]
    scratch = [labels * 0.2 + rng.uniform(0, 0.5, labels.size) for _ in range(2)]
    runs = {
        "aam_student": _seed_runs(labels, distilled),
        medmnist.SCRATCH_STUDENT: _seed_runs(labels, scratch),
    }
    summary = medmnist.summarize(runs, params={"aam_student": 13, medmnist.SCRATCH_STUDENT: 13})
    (row,) = summary["delong"]
    assert (row["model"], row["baseline"]) == ("aam_student", medmnist.SCRATCH_STUDENT)
    expected = delong_test(labels, np.mean(distilled, axis=0), np.mean(scratch, axis=0))
    assert row["p_value"] == pytest.approx(expected.p_value) and row["difference"] > 0


def test_each_npz_file_gets_its_own_work_folder_and_a_shared_one_is_refused(tmp_path):
    assert medmnist.default_work_dir(medmnist.DEFAULT_NPZ).name == "bench_medmnist"
    assert medmnist.default_work_dir("x/adrenalmnist3d_64.npz").name == "bench_medmnist_adrenalmnist3d_64"
    assert medmnist.default_work_dir("x/adrenalmnist3d_64.npz", quick=True).name.endswith("_64_quick")
    first, second = _write_npz(tmp_path / "a.npz", per_split=4), _write_npz(tmp_path / "b.npz", per_split=4)
    medmnist.write_cohort(first, tmp_path / "work" / "cohort")
    settings = medmnist.MedMNISTSettings(npz=second, work_dir=tmp_path / "work", models=("resnet18",), seeds=(0,))
    with pytest.raises(UserError, match=r"holds the runs of .*a\.npz; give b\.npz its own --work-dir"):
        medmnist.run_medmnist(settings)


def test_real_64_cube_npz_has_the_documented_splits_at_64_voxels():
    npz = shared_path("medmnist", "adrenalmnist3d_64.npz")
    splits = medmnist.load_npz_splits(npz)
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 1188, "val": 98, "test": 298}
    assert splits["test"][0].shape[1:] == (64, 64, 64)


# --- issue 14: AAM variant probes, width multiplier, run keys, selection on val -----------------------------------


def test_probes_start_with_the_paper_form_and_name_every_option_they_vary():
    from pipeline.networks import PAPER_FORM

    probes = medmnist.selected_ablations(None, variant_set="probes")
    assert probes == medmnist.PROBES
    first = next(iter(probes.values()))
    assert {k: first[k] for k in PAPER_FORM} == PAPER_FORM  # the paper's AAM is the reference row
    keys = {frozenset(kwargs) for kwargs in probes.values()}
    assert len(keys) == 1  # complete over the varied options: a probe's network does not follow registry defaults
    assert len({json.dumps(kwargs, sort_keys=True) for kwargs in probes.values()}) == len(probes)
    with pytest.raises(UserError, match="unknown set"):
        medmnist.selected_ablations(None, variant_set="nope")


def test_width_multiplier_scales_aam_resnets_and_monai_resnets_alike():
    from pipeline.networks import build

    assert medmnist.width_arguments("aam_resnet18", 0.5) == {"width": 0.5}
    assert medmnist.width_arguments("aam_student", 0.5) == {"width": 0.25}  # relative to the entry's own width
    assert medmnist.width_arguments("resnet18", 0.5) == {"widen_factor": 0.5}
    assert medmnist.width_arguments("resnet18", None) == {}
    with torch_meta():
        for name in ("aam_resnet18", "resnet18", "densenet121"):
            full = sum(p.numel() for p in build(name).parameters())
            half = sum(p.numel() for p in build(name, **medmnist.width_arguments(name, 0.5)).parameters())
            assert 0.2 * full < half < 0.3 * full  # parameters go with the square of the width
    assert medmnist.width_arguments("densenet121", 0.25) == {"width": 0.25}
    with pytest.raises(UserError, match="no width option"):
        medmnist.width_arguments("unet_encoder", 0.5)
    with pytest.raises(UserError, match="must be positive"):
        medmnist.width_arguments("resnet18", 0.0)


def torch_meta():
    import torch

    return torch.device("meta")


def test_run_key_follows_the_network_built_not_the_arguments_given(monkeypatch):
    from pipeline.networks import registry

    default = medmnist.resolved_network_arguments("aam_resnet18")
    spelled_out = medmnist.resolved_network_arguments("aam_resnet18", {"attention": default["attention"]})
    assert spelled_out == default  # the same network, however it is asked for
    assert medmnist.resolved_network_arguments("aam_resnet18", {"attention": "stage"}) != default
    # a change of the registry's defaults is a new recipe: a run recorded before it is not reused
    spec = registry._REGISTRY["aam_resnet18"]
    changed = registry.NetworkSpec(spec.name, spec.factory, {**spec.defaults, "gamma_init": 0.25}, spec.stem)
    monkeypatch.setitem(registry._REGISTRY, "aam_resnet18", changed)
    assert medmnist.resolved_network_arguments("aam_resnet18") != default


def test_best_val_auc_is_read_from_the_history_and_the_probe_table_names_the_val_winner(tmp_path):
    history = {"epochs": [{"epoch": 1, "val_auc": 0.7}, {"epoch": 2, "val_auc": 0.8}, {"epoch": 3, "val_auc": 0.75}]}
    (tmp_path / "train_history.json").write_text(json.dumps(history))
    assert medmnist._history(tmp_path) == {"epochs_run": 3, "best_epoch": 2, "val_auc": 0.8}
    labels = np.array([0] * 10 + [1] * 10)
    rng = np.random.default_rng(0)
    runs = {
        name: [{"seed": 0, "labels": labels, "probabilities": labels * 0.3 + rng.uniform(0, 1, 20), "val_auc": val}]
        for name, val in (("paper", 0.71), ("gated", 0.83), ("stage", 0.78))
    }
    summary = medmnist.summarize(runs, params={}, reference="paper")
    assert summary["models"]["gated"]["val_auc"] == pytest.approx(0.83)
    result = {
        "ablation": summary["models"],
        "ablation_delong": summary["delong"],
        "variant_set": "probes",
        "selected_on_val": "gated",
        "ablation_network": "aam_resnet18",
    }
    text = medmnist.render_markdown(result)
    assert "AAM variant probes of aam_resnet18" in text and "| gated | 0.830 |" in text
    assert "Selected on the val split (highest val AUC): **gated**" in text


def test_distillation_teacher_and_loss_weights_come_from_the_command_line():
    parser = add_medmnist_arguments(argparse.ArgumentParser())
    argv = ["--models", "aam_student", "--teacher", "aam_resnet18", "--distill-weight", "attention_weight=100"]
    settings = settings_from_args(parser.parse_args([*argv, "--distill-weight", "hint_weight=0.5"]), command="x")
    assert settings.teacher == "aam_resnet18"
    assert settings.distill_weights == {"attention_weight": 100.0, "hint_weight": 0.5}
    for bad in ("attention=100", "hint_weight=much"):
        with pytest.raises(UserError, match="--distill-weight"):
            settings_from_args(parser.parse_args([*argv, "--distill-weight", bad]), command="x")


def _one_tiny_run(tmp_path):
    """Settings of one 1-epoch unet_encoder run on a tiny written npz (8 cases per split)."""
    return medmnist.MedMNISTSettings(
        npz=_write_npz(tmp_path / "tiny.npz", per_split=8),
        work_dir=tmp_path / "work",
        results_dir=tmp_path / "results",
        models=("unet_encoder",),
        seeds=(0,),
        epochs=1,
        batch_size=8,
        n_resamples=10,
        command="test",
    )


@pytest.mark.slow
def test_a_run_that_died_after_training_is_evaluated_and_one_that_died_in_training_resumes(tmp_path, monkeypatch):
    settings = _one_tiny_run(tmp_path)
    first = medmnist.run_medmnist(settings)
    run_dir = tmp_path / "work" / "runs" / "unet_encoder_seed0"
    (run_dir / "medmnist_run.json").unlink()  # the process died between training and evaluation

    def must_not_train(*args, **kwargs):
        raise AssertionError("the finished training was run again")

    monkeypatch.setattr(medmnist, "run_training", must_not_train)
    again = medmnist.run_medmnist(settings)
    assert again["models"]["unet_encoder"]["test_auc"] == pytest.approx(first["models"]["unet_encoder"]["test_auc"])
    assert again["models"]["unet_encoder"]["seeds"][0]["train_seconds"] > 0  # the earlier epochs' time

    # died inside the training: the next invocation resumes from the last checkpoint
    (run_dir / "medmnist_run.json").unlink()
    (run_dir / "train_history.json").write_text(json.dumps({"epochs": []}))
    seen = {}

    class Resumed(Exception):
        pass

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise Resumed

    monkeypatch.setattr(medmnist, "run_training", capture)
    with pytest.raises(Resumed):
        medmnist.run_medmnist(settings)
    assert seen["resume"] is True
    # a different recipe never resumes another one's checkpoint
    seen.clear()
    with pytest.raises(Resumed):
        medmnist.run_medmnist(replace(settings, learning_rate=5e-4))
    assert seen["resume"] is False


def test_a_variant_spelling_out_the_defaults_reuses_the_default_run(tiny_run, tmp_path, monkeypatch):
    settings, result = tiny_run
    settings = replace(settings, results_dir=tmp_path / "results")  # the shared run's own results stay as written
    trained = result["models"]["unet_encoder"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("an equivalent finished run was trained again")

    for stage in ("run_training", "run_evaluation"):
        monkeypatch.setattr(medmnist, stage, must_not_run)
    spelled = {"reference": {"features": [32, 32, 64, 128, 256]}}  # unet_encoder's defaults, written out
    monkeypatch.setitem(medmnist.VARIANT_SETS, "spelled", spelled)
    probe = replace(settings, models=(), ablation=True, ablation_network="unet_encoder", variant_set="spelled")
    result = medmnist.run_medmnist(probe)
    assert result["ablation"]["reference"]["test_auc"] == pytest.approx(trained["test_auc"])
    other = {"reference": {"features": [16, 16, 32, 64, 128]}}  # a different network is not equivalent
    monkeypatch.setitem(medmnist.VARIANT_SETS, "spelled", other)
    with pytest.raises(AssertionError, match="trained again"):
        medmnist.run_medmnist(probe)


def _write_val_predictions(run_dir: Path, case_ids, labels, probabilities) -> dict:
    """A run folder as the bench leaves it: ``models/model.pt`` (named only) and ``eval_val/predictions.csv``."""
    (run_dir / "eval_val").mkdir(parents=True)
    rows = ["case_id,label,probability,predicted,site,split,fold,status,reason"]
    # written in reverse order: the reader must pair cases by id, not by row
    for case_id, label, prob in reversed(list(zip(case_ids, labels, probabilities, strict=True))):
        name = "positive" if label else "negative"
        rows.append(f"{case_id},{name},{prob},{name},medmnist,val,0,ok,")
    (run_dir / "eval_val" / "predictions.csv").write_text("\n".join(rows) + "\n")
    return {"seed": 0, "checkpoint": str(run_dir / "models" / "model.pt")}


def test_the_val_split_comparison_is_a_paired_delong_test_on_the_val_predictions(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 30)
    ids = [f"val-{i:04d}" for i in range(60)]
    strong = labels * 0.6 + rng.uniform(0, 1, 60)
    weak_seeds = [labels * 0.2 + rng.uniform(0, 1, 60) for _ in range(2)]
    runs = {
        "strong": [_write_val_predictions(tmp_path / "strong", ids, labels, strong)],
        "weak": [_write_val_predictions(tmp_path / f"weak{i}", ids, labels, p) for i, p in enumerate(weak_seeds)],
        "missing": [{"seed": 0, "checkpoint": str(tmp_path / "nothing" / "models" / "model.pt")}],
    }
    rows = {row["model"]: row for row in medmnist.val_comparisons(runs, "strong")}
    assert set(rows) == {"weak", "missing"}
    # the seed-averaged val probabilities, compared with the same DeLong test the test-split tables use
    expected = delong_test(labels, np.mean(weak_seeds, axis=0), strong)
    assert rows["weak"]["difference"] == pytest.approx(expected.difference)
    assert rows["weak"]["p_value"] == pytest.approx(expected.p_value)
    assert rows["weak"]["val_auc_baseline"] == pytest.approx(roc_auc(labels, strong))
    assert rows["weak"]["difference"] < 0
    assert rows["missing"]["p_value"] is None and "missing" in rows["missing"]["note"]


def test_the_probe_table_says_when_the_registry_default_is_not_the_val_winner():
    result = {
        "ablation": {"paper": {"val_auc": 0.83}, "residual": {"val_auc": 0.82}},
        "ablation_delong": [],
        "variant_set": "probes",
        "selected_on_val": "paper",
        "ablation_network": "aam_resnet18",
        "n_val": 98,
        "selection_val_delong": [
            {
                "model": "residual",
                "baseline": "paper",
                "val_auc_model": 0.82,
                "val_auc_baseline": 0.83,
                "difference": -0.01,
                "difference_ci": [-0.05, 0.03],
                "p_value": 0.61,
            },
        ],  # fmt: skip
        "registry_default_variant": "residual",
    }
    text = medmnist.render_markdown(result)
    assert "| residual | 0.820 | 0.830 | -0.010 (-0.050, 0.030) | 0.6100 |" in text
    assert "is **not** the selected variant but **residual**" in text and "cannot tell the two apart" in text
    assert medmnist.render_markdown({**result, "registry_default_variant": "paper"}).count("is this variant") == 1


def test_the_registry_default_aam_resnet18_is_one_of_the_probes():
    default = medmnist.resolved_network_arguments("aam_resnet18")
    matches = [
        v for v, k in medmnist.PROBES.items() if medmnist.resolved_network_arguments("aam_resnet18", k) == default
    ]
    assert len(matches) == 1 and "residual" in matches[0]
