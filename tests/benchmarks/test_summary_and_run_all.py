"""``benchmarks.summary`` and ``benchmarks.run_all``: rendering real-shaped results, recording failures."""

from __future__ import annotations

import json
import sys

from benchmarks import run_all, summary


def _write(folder, name, data):
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_summary_puts_each_figure_beside_its_peer_with_the_ratio(tmp_path):
    _write(
        tmp_path,
        "networks",
        {
            "reference": "resnet50",
            "load_average_start": [3.5, 3.0, 2.0],
            "load_average_end": [4.25, 3.0, 2.0],
            "networks": {
                "aam_student": {"params": 13_000_000, "flops": 10.0, "latency_s": 2.0},
                "resnet50": {"params": 52_000_000, "flops": 40.0, "latency_s": 8.0},
            },
        },
    )
    _write(
        tmp_path,
        "ingestion",
        {
            "command": "bench ingestion --repeats 7",
            "read_uncompressed": {
                "median_s": {
                    "ours_default": 0.1,
                    "pydicom_plain": 0.5,
                    "monai_loadimage_itkreader": "skipped: itk not installed",
                }
            },
        },
    )
    (tmp_path / "evaluation.json").write_text("{ half written")

    text = summary.write_summary(tmp_path).read_text()

    assert "| aam_student | 13,000,000 | 0.25 | 10 | 0.25 | 2 | 0.25 |" in text
    assert "3.5 -> 4.25" in text  # the machine load at the time
    assert "| pydicom_plain | 0.1 | 0.5 | 5 |" in text
    assert "skipped: itk not installed" in text
    assert "`bench ingestion --repeats 7`" in text
    assert "unreadable" in text.split("## evaluation")[1].split("##")[0]
    for absent in ("inference", "training", "distillation", "medmnist"):
        assert "not run" in text.split(f"## {absent}")[1].split("\n## ")[0]


def test_summary_renders_medmnist_against_the_published_best(tmp_path):
    _write(
        tmp_path,
        "medmnist_adrenalmnist3d",
        {
            "published_applies": True,
            "published": [
                {"method": "A", "test_auc": 0.8, "test_acc": 0.7},
                {"method": "B", "test_auc": 0.7, "test_acc": 0.8},
            ],
            "models": {"aam_resnet50": {"test_auc": 0.88, "test_acc": 0.84}},
            "n_test": 298,
            "wall_seconds": 30.0,
            "cpu_count": 2,
            "runs_total": 4,
            "runs_reused": 3,
            "run_seconds": 600.0,
        },
    )
    text = summary.write_summary(tmp_path).read_text()
    assert "| aam_resnet50 | 0.88 | — | 0.8 | 1.1 | 0.84 | 0.8 | 1.05 |" in text
    # a table assembled from earlier runs says so, with what the runs cost, not only this invocation's wall time
    assert "wall time 0.5 min on 2 CPU(s) (3 of 4 runs reused from an earlier invocation; training + evaluation" in text
    assert "of all runs 10.0 min)" in text


def test_quick_commands_write_to_the_given_folder(tmp_path):
    spec = next(s for s in run_all.BENCHMARKS if s.name == "networks")
    full = run_all.benchmark_command(spec, results_dir=tmp_path, quick=False, python="py")
    quick = run_all.benchmark_command(spec, results_dir=tmp_path, quick=True, python="py")
    assert full == ["py", "-m", "benchmarks.bench_networks", "--output", str(tmp_path / "networks.json")]
    assert quick[: len(full)] == full and len(quick) > len(full)


def test_run_all_records_a_failure_and_goes_on(tmp_path):
    record = run_all.run_all(
        names=["evaluation"], quick=True, results_dir=tmp_path, python=str(tmp_path / "no-such-python")
    )
    outcome = record["benchmarks"]["evaluation"]
    assert outcome["status"] == "failed" and outcome["returncode"] != 0
    assert json.loads((tmp_path / "run_all.json").read_text())["benchmarks"]["evaluation"]["status"] == "failed"
    assert "run by `benchmarks.run_all`: failed" in (tmp_path / "summary.md").read_text()


def test_run_all_runs_a_real_benchmark_and_summarises_it(tmp_path):
    record = run_all.run_all(names=["evaluation"], quick=True, results_dir=tmp_path, python=sys.executable)
    assert record["benchmarks"]["evaluation"]["status"] == "ok", record["benchmarks"]["evaluation"]["stderr_tail"]
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert [size["n_cases"] for size in result["sizes"]] == [1000]
    section = (tmp_path / "summary.md").read_text().split("## evaluation")[1].split("\n## ")[0]
    assert "(quick settings)" in section and "| 1000 | delong_fast |" in section


def test_each_medmnist_result_is_attributed_to_the_run_all_entry_that_made_it(tmp_path):
    for stem in ("medmnist_adrenalmnist3d", "medmnist_adrenalmnist3d_distillation", "medmnist_adrenalmnist3d_rerun"):
        _write(tmp_path, stem, {"dataset": "adrenalmnist3d", "models": {}, "n_test": 1, "command": f"{stem}-cmd"})
    log = {
        "benchmarks": {
            "medmnist": {"command": "main-table", "status": "ok", "wall_seconds": 11},
            "medmnist_distillation": {"command": "student-vs-scratch", "status": "ok", "wall_seconds": 22},
        }
    }
    (tmp_path / "run_all.json").write_text(json.dumps(log))
    text = summary.write_summary(tmp_path).read_text()
    main, distillation = text.split("## medmnist_adrenalmnist3d_distillation")
    main = main.split("## medmnist_adrenalmnist3d")[1]
    distillation, rerun = distillation.split("## medmnist_adrenalmnist3d_rerun")
    assert "`main-table`" in main and "ok, 11 s" in main and "student-vs-scratch" not in main
    assert "`student-vs-scratch`" in distillation and "ok, 22 s" in distillation
    # a results file no run_all entry made keeps its own command and no run_all line
    assert "`medmnist_adrenalmnist3d_rerun-cmd`" in rerun and "run_all" not in rerun
    spec_names = [spec.name for spec in run_all.BENCHMARKS]
    assert {"medmnist_distillation", "medmnist_placement", "medmnist_ablation", "medmnist_aam_resnet18"} <= set(
        spec_names
    )


def test_distillation_latencies_come_from_the_interleaved_measurement_when_recorded(tmp_path):
    block = {
        "command": "bench-distil-demo",
        "models": {
            "teacher": {"network": "big", "test_auc": 0.9, "params": 100, "cpu_latency_ms": 3400.0},
            "student_distilled": {"network": "small", "test_auc": 0.9, "params": 10, "cpu_latency_ms": 1396.0},
        },
        "latency_interleaved": {"threads=1": {"median_ms": {"big": 40.0, "small": 10.0}}},
    }
    _write(tmp_path, "distillation", {"datasets": {"demo": block, "old": {**block, "latency_interleaved": None}}})
    text = summary.write_summary(tmp_path).read_text()
    demo, old = text.split("*demo*")[1].split("*old*")
    assert "measured in turn, 1 thread" in demo and "`bench-distil-demo`" in demo
    assert "| student_distilled | small | 0.9 | 0.9 | 1 | 10 | 0.1 | 10 | 0.25 |" in demo
    assert "per stage" in old and "| 1396 | 0.411 |" in old


def test_the_quick_training_benchmark_cohort_can_be_split_and_too_few_cases_is_one_line(tmp_path, capsys):
    from benchmarks import bench_training

    spec = run_all._spec("training")
    cases = int(spec.quick_args[spec.quick_args.index("--cases") + 1])
    datalist = json.loads(bench_training._write_cohort(tmp_path / "ok", cases=cases, size=32).read_text())
    assert {row["fold"] for row in datalist["training"]} == set(range(5))
    out = tmp_path / "training.json"
    assert bench_training.main(["--cases", "8", "--size", "32", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_training: error: too few patients") and len(err.splitlines()) == 1
    assert not out.exists()


def test_summary_shows_deployed_latency_peer_ratios_goals_and_small_lesion_tertiles(tmp_path):
    _write(
        tmp_path,
        "networks",
        {
            "networks": {
                "aam_resnet18": {
                    "params": 30,
                    "latency_s": 3.0,
                    "deployed": {"median_s": 1.5},
                    "peer": "resnet18",
                },
                "resnet18": {"params": 30, "latency_s": 2.0, "deployed": {"median_s": 1.0}},
                "resnet50": {"params": 60, "latency_s": 4.0, "deployed": {"median_s": 2.0}},
            },
            "goals": [
                {
                    "goal": "aam_resnet18 latency <= 1.25x resnet18",
                    "eager_median_ratio": 1.5,
                    "deployed_median_ratio": 1.5,
                    "met_eager": False,
                    "met_deployed": False,
                }
            ],
        },
    )
    _write(
        tmp_path,
        "small_lesions",
        {
            "difficulties": {
                "hard": {
                    "n_test": 40,
                    "tertile_edges_ml": [1.5, 4.0],
                    "networks": {
                        "aam_resnet18": {
                            "seeds": [0, 1],
                            "test_auc": {"mean": 0.8, "sd": 0.05},
                            "seed_averaged_auc": 0.81,
                            "seed_averaged_auc_ci": [0.7, 0.9],
                            "tertiles": {"smallest third": {"per_seed": {"mean": 0.25, "sd": 0.1}}},
                        }
                    },
                }
            }
        },
    )
    text = summary.render_summary(summary.load_results(tmp_path))
    assert "| aam_resnet18 | 30 | 0.5 | — | — | 3 | 0.75 | 1.5 | 0.75 | resnet18 1.5 / 1.5 |" in text
    assert "| aam_resnet18 latency <= 1.25x resnet18 | 1.5 / 1.5 | no / no |" in text
    assert "## small_lesions" in text and "| aam_resnet18 | 2 | 0.800 ± 0.050 | 0.81 (0.7-0.9) | 0.25 ± 0.10 |" in text
