"""The distillation cascade: end to end through the stock bundle CLI on a written DICOM cohort, and its pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import run as bundle_run
from monai.networks.nets import resnet50
from torch import nn

from pipeline.data.demo import write_demo_cohort
from pipeline.data.manifest import build_manifest
from pipeline.data.splits import split_manifest
from pipeline.errors import UserError
from pipeline.evaluation.roc import auc_summary
from pipeline.networks import build
from pipeline.training.cascade import (
    MONAI_RESNET50_3D_PARAMS,
    DistillationCascade,
    StageSpec,
    count_flops,
    count_parameters,
    cpu_latency_ms,
    load_state_dict,
    predict_scores,
    run_or_exit,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [str(REPO_ROOT / "bundle" / "configs" / "train.json"), str(REPO_ROOT / "bundle" / "configs" / "distill.json")]
TINY_ROI = [32, 32, 32]


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory) -> Path:
    """A 12-case generated chest-CT cohort written as DICOM series, with its manifest and 2-fold datalist."""
    root = tmp_path_factory.mktemp("cascade_cohort")
    key = root / "pseudonym.key"
    key.write_text("00112233445566778899aabbccddeeff\n")
    cohort = write_demo_cohort(root / "dicom", cases=12, size=32, seed=3)
    manifest = root / "manifest.csv"
    build_manifest(
        dicom_root=root / "dicom",
        nifti_glob=None,
        labels_csv=cohort.labels_csv,
        out=manifest,
        key_file=key,
        workers=1,
    )
    split_manifest(manifest, test_fraction=0.2, n_folds=2, seed=0)
    return manifest


def _bundle_overrides(manifest: Path, out: Path, teacher_ckpt: Path, **extra) -> dict:
    return {
        "datalist": str(manifest),
        "output_dir": str(out),
        "teacher_ckpt": str(teacher_ckpt),
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "roi_size": TINY_ROI,
        "latency_repeats": 5,
        **extra,
    }


@pytest.mark.slow
def test_tiny_cascade_runs_end_to_end_through_the_bundle(demo_manifest, tmp_path):
    # the teacher may be any registry network (the real aam_resnet50 is slow on a CPU); the student is the real
    # aam_student, so the parameter budget below is the one the issue sets
    teacher = build("aam_student_small")
    teacher_ckpt = tmp_path / "teacher" / "models" / "model.pt"
    teacher_ckpt.parent.mkdir(parents=True)
    torch.save(teacher.state_dict(), teacher_ckpt)
    out = tmp_path / "distill"
    stages = [
        {"network": "aam_student_small", "name": "assistant"},
        {"network": "aam_student", "attention_weight": 10.0, "attention_source": "aam"},
    ]
    bundle_run(
        "distilling",
        config_file=CONFIGS,
        **_bundle_overrides(demo_manifest, out, teacher_ckpt, network_name="aam_student_small", stages=stages),
    )

    summary = json.loads((out / "distill_summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["assistant", "aam_student"]
    assert [s["teacher"] for s in summary["stages"]] == ["teacher", "assistant"]
    assert summary["stages"][1]["teacher_network"] == "aam_student_small"
    assert all(s["mode"] == "distillation" and s["epochs_run"] == 1 for s in summary["stages"])

    student_entry = summary["stages"][-1]
    student_params = count_parameters(build("aam_student"))
    assert student_entry["params"] == student_params
    assert student_params <= 0.31 * MONAI_RESNET50_3D_PARAMS
    assert summary["reference"]["params"] == count_parameters(
        resnet50(spatial_dims=3, n_input_channels=1, num_classes=2)
    )
    assert summary["student"]["params_ratio_to_resnet50"] == pytest.approx(student_params / MONAI_RESNET50_3D_PARAMS)
    assert summary["student"]["params_budget"]["within"] is True
    assert summary["student"]["params_ratio_to_teacher"] == pytest.approx(
        student_params / count_parameters(teacher), rel=1e-9
    )

    for entry in [summary["teacher"], *summary["stages"]]:
        assert entry["flops"] > 0 and len(entry["cpu_latency_ms_all"]) == 5
        assert entry["cpu_latency_ms"] == pytest.approx(float(np.median(entry["cpu_latency_ms_all"])))
        detail = entry["val_auc_detail"]
        assert detail["n_positive"] + detail["n_negative"] >= 2
        if entry["val_auc"] is not None:
            assert 0.0 <= entry["val_auc"] <= 1.0
    # the bigger student costs more FLOPs than the small assistant at the same ROI
    assert summary["stages"][1]["flops"] > summary["stages"][0]["flops"]

    # every stage's best checkpoint and the final student weights are plain state dicts of their networks
    for name, network in (("assistant", "aam_student_small"), ("aam_student", "aam_student")):
        load_state_dict(build(network), out / name / "model.pt")
        assert (out / name / "train_history.json").is_file()
    final = load_state_dict(build("aam_student"), out / "models" / "model.pt")
    torch.testing.assert_close(
        final.state_dict(), torch.load(out / "aam_student" / "model.pt", weights_only=True), rtol=0, atol=0
    )

    text = (out / "distill_summary.json").read_text()
    for phi_key in ("PatientName", "PatientID", "BirthDate"):
        assert phi_key not in text


def test_bundle_reports_a_missing_teacher_checkpoint_in_one_line(demo_manifest, tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(SystemExit) as exit_info:
        bundle_run(
            "distilling",
            config_file=CONFIGS,
            **_bundle_overrides(demo_manifest, tmp_path / "out", missing, network_name="aam_student_small"),
        )
    message = str(exit_info.value)
    assert message.startswith("aamct: error: ") and "\n" not in message
    assert str(missing) in message and "not found" in message


# ---------------------------------------------------------------- pieces, on tiny in-memory batches


def _tiny_loader(n_batches: int = 2, size: int = 32) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        label = torch.tensor([[0], [1], [0], [1]])
        image = torch.rand(4, 1, size, size, size, generator=generator) + 0.5 * label.view(-1, 1, 1, 1, 1)
        batches.append({"image": image, "label": label})
    return batches


class _CrossEntropy(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target.reshape(-1).long())


def _cascade(tmp_path: Path, teacher_ckpt: Path, **kwargs) -> DistillationCascade:
    arguments = {
        "teacher_network": "aam_student_small",
        "teacher_ckpt": teacher_ckpt,
        "stages": ["aam_student_small"],
        "network_factory": build,
        "optimizer_factory": lambda params: torch.optim.AdamW(params, lr=1e-3),
        "task_loss": _CrossEntropy(),
        "train_data_loader": _tiny_loader(),
        "val_data_loader": _tiny_loader(1),
        "auc_summary": auc_summary,
        "output_dir": tmp_path / "out",
        "roi_size": TINY_ROI,
        "max_epochs": 1,
        "latency_repeats": 1,
    }
    arguments.update(kwargs)
    return DistillationCascade(**arguments)


def test_a_stage_without_soft_terms_trains_from_labels_only(tmp_path):
    cascade = _cascade(tmp_path, tmp_path / "unused.pt", kd_weight=0.0, train_data_loader=_tiny_loader(1))
    network, entry = cascade.train_stage(
        {"network": "aam_student_small", "name": "scratch"}, teacher=build("aam_student")
    )
    assert entry["mode"] == "from_scratch" and entry["teacher"] is None
    assert (tmp_path / "out" / "scratch" / "model.pt").is_file()
    labels, scores = predict_scores(network, _tiny_loader(1))
    assert labels.tolist() == [0, 1, 0, 1] and scores.shape == (4,)
    assert np.all((scores >= 0) & (scores <= 1))


def test_cascade_rejects_bad_stage_lists_and_checkpoints(tmp_path):
    with pytest.raises(UserError, match="at least one stage"):
        _cascade(tmp_path, tmp_path / "t.pt", stages=[])
    with pytest.raises(UserError, match="unique"):
        _cascade(tmp_path, tmp_path / "t.pt", stages=["aam_student", "aam_student"])
    with pytest.raises(UserError, match="unknown keys"):
        StageSpec.parse({"network": "aam_student", "temprature": 2})
    with pytest.raises(UserError, match="attention_source"):
        _cascade(tmp_path, tmp_path / "t.pt", attention_source="everywhere")

    wrong = tmp_path / "wrong.pt"
    torch.save(build("aam_student_small").state_dict(), wrong)
    with pytest.raises(UserError, match="does not fit"):
        load_state_dict(build("aam_student"), wrong, what="teacher checkpoint")
    with pytest.raises(SystemExit, match="aamct: error: .*not found"):
        run_or_exit(_cascade(tmp_path, tmp_path / "missing.pt"))


def test_stage_spec_parses_names_and_overrides():
    assert StageSpec.parse("aam_student") == StageSpec(network="aam_student", name="aam_student")
    spec = StageSpec.parse(
        {"network": "aam_student", "name": "s", "temperature": 2.0, "network_kwargs": {"width": 0.5}}
    )
    assert (spec.name, dict(spec.overrides), dict(spec.network_kwargs)) == ("s", {"temperature": 2.0}, {"width": 0.5})


def test_flop_count_of_a_single_convolution_is_two_flops_per_multiply_add():
    conv = nn.Conv3d(2, 3, kernel_size=3, padding=1, bias=False)
    roi = (4, 5, 6)
    expected = 2 * (3 * 4 * 5 * 6) * (2 * 27)
    assert count_flops(conv, roi, in_channels=2) == expected


def test_cpu_latency_restores_threads_and_training_mode():
    network = build("aam_student_small").train()
    threads = torch.get_num_threads()
    timings = cpu_latency_ms(network, TINY_ROI, threads=1, warmup=1, repeats=3)
    assert len(timings) == 3 and all(t > 0 for t in timings)
    assert torch.get_num_threads() == threads
    assert network.training
    with pytest.raises(ValueError):
        cpu_latency_ms(network, TINY_ROI, repeats=0)


def test_the_registry_student_meets_the_parameter_budget():
    reference = count_parameters(resnet50(spatial_dims=3, n_input_channels=1, num_classes=2))
    assert reference == MONAI_RESNET50_3D_PARAMS
    assert count_parameters(build("aam_student")) <= int(0.31 * reference)


def test_each_stage_logs_to_its_own_tensorboard_folder_and_shows_progress(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cascade = _cascade(
        tmp_path,
        tmp_path / "unused.pt",
        kd_weight=0.0,
        max_epochs=2,
        tensorboard_dir=tmp_path / "tb",
        progress=True,
    )
    cascade.train_stage({"network": "aam_student_small", "name": "stage_a"}, teacher=None)
    events = EventAccumulator(str(tmp_path / "tb" / "stage_a")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "val_auc"} <= scalars
    # one validation point per trainer epoch, on the trainer's epoch axis; one loss point per iteration
    assert [event.step for event in events.Scalars("val_auc")] == [1, 2]
    assert len(events.Scalars("train_loss")) == 2 * len(_tiny_loader())
    assert "stage_a" in capsys.readouterr().err  # the tqdm bar is named after the stage
