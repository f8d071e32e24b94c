"""One default per stage setting: every config's effective value, the transform chains and the Makefile agree with it.

The configs are parsed with MONAI's own ``ConfigParser`` as the bundle CLI merges them, so what is compared is the
value a run would use, not the text of a file.
"""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess

import pytest
from monai.bundle import ConfigParser

from pipeline.contracts.defaults import (
    CONFIG_DEFAULTS,
    DEFAULT_BODY_THRESHOLD_HU,
    DEFAULT_DISTILLATION_STAGES,
    DEFAULT_HU_WINDOW,
    DEFAULT_INFERENCE_NETWORK_NAME,
    DEFAULT_NETWORK_NAME,
    DEFAULT_ROI_SIZE,
    DEFAULT_SPACING,
)
from pipeline.transforms import augmentation_transforms, eval_transforms, infer_transforms, preprocessing_transforms
from pipeline.transforms import train_transforms as train_chain
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "bundle" / "configs"
PREPROCESSING_KEYS = ("roi_size", "spacing", "hu_window")
#: every way the bundle's configs are run (evaluate / distill / multi-GPU are merged over train.json)
RUNS = {
    "train": ["train.json"],
    "evaluate": ["train.json", "evaluate.json"],
    "distill": ["train.json", "distill.json"],
    "multi_gpu_train": ["train.json", "multi_gpu_train.json"],
    "inference": ["inference.json"],
}


def _parser(files, tmp_path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in files])
    # checkpoints without a run record: the configs' own defaults apply
    parser.update({"output_dir": str(tmp_path), "bundle_root": str(tmp_path), "teacher_ckpt": str(tmp_path / "t.pt")})
    return parser


@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_config_uses_the_contract_default_of_each_setting(run, tmp_path):
    parser = _parser(RUNS[run], tmp_path)
    for key in PREPROCESSING_KEYS:
        assert parser.get_parsed_content(key) == CONFIG_DEFAULTS[key], (run, key)
    expected_network = DEFAULT_INFERENCE_NETWORK_NAME if run == "inference" else DEFAULT_NETWORK_NAME
    assert parser.get_parsed_content("network_name") == expected_network, run
    if run == "distill":
        assert parser.get_parsed_content("teacher_network") == DEFAULT_NETWORK_NAME
        assert parser.get_parsed_content("stages") == list(DEFAULT_DISTILLATION_STAGES)
    if run == "inference":
        inferer = parser.get_parsed_content("inferer")
        assert tuple(inferer.roi_size) == DEFAULT_ROI_SIZE
        assert parser.get_parsed_content("frozen_threshold").is_default


def test_the_torchscript_config_carries_the_defaults_as_literals():
    # recipients have MONAI only, so these are literals; export overwrites them with the run's own settings
    config = json.loads((CONFIGS / "inference_torchscript.json").read_text())
    for key in (*PREPROCESSING_KEYS, "body_threshold_hu"):
        assert config[key] == CONFIG_DEFAULTS[key], key
    assert config["body_threshold_hu"] == DEFAULT_BODY_THRESHOLD_HU


def test_the_ddp_config_keeps_train_json_initialize_list(tmp_path):
    single = _parser(RUNS["train"], tmp_path)
    ddp = _parser(RUNS["multi_gpu_train"], tmp_path)
    # multi_gpu_train.json only fills distributed_setup, so the run record and every other step stay in
    assert ddp["initialize"] == single["initialize"]
    assert "$@run_record" in ddp["initialize"] and "$@distributed_setup" in ddp["initialize"]
    assert single["distributed_setup"] == [] and ddp["distributed_setup"]


@pytest.mark.parametrize(
    "chain", [preprocessing_transforms, eval_transforms, infer_transforms, train_chain, augmentation_transforms]
)
def test_the_transform_chains_default_to_the_contract(chain):
    defaults = {name: p.default for name, p in inspect.signature(chain).parameters.items()}
    expected = {
        "roi_size": DEFAULT_ROI_SIZE,
        "spacing": DEFAULT_SPACING,
        "hu_window": DEFAULT_HU_WINDOW,
        "body_threshold_hu": DEFAULT_BODY_THRESHOLD_HU,
    }
    for name, value in expected.items():
        if name in defaults:
            assert defaults[name] == value, (chain.__name__, name)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["train", "evaluate", "distill"])
def test_the_makefile_passes_no_setting_unless_asked(target):
    def dry_run(*variables: str) -> str:
        process = subprocess.run(
            ["make", "-n", "--no-print-directory", target, *variables],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert process.returncode == 0, process.stderr
        return process.stdout

    plain = dry_run()
    for option in ("--network_name", "--roi_size", "--spacing", "--hu_window", "--stages", "--split", "--epochs"):
        assert option not in plain, (target, option)
    if target != "evaluate":
        assert "--network_name resnet50" in dry_run("NETWORK=resnet50")
