"""The listing of every `$` expression and `_target_`, and the detection of `pipeline` imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.trust.config_listing import code_references, load_config_file, references_to_package

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"

CONFIG = {
    "imports": ["$import glob", "$import pipeline.transforms"],
    "bundle_root": ".",
    "network_def": {"_target_": "pipeline.networks.build", "name": "aam_resnet18", "num_classes": "$len(@classes)"},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi_size"},
    "post": ["$from pipeline.x import y", "$monai.pipeline_like.f()", "$@pipeline + 1", "plain $ string"],
}


def test_lists_every_expression_and_target_with_its_key_path():
    listed = [(r.key_path, r.kind, r.value) for r in code_references(CONFIG, file="c.json")]
    assert listed == [
        ("imports::0", "expression", "$import glob"),
        ("imports::1", "expression", "$import pipeline.transforms"),
        ("network_def::_target_", "target", "pipeline.networks.build"),
        ("network_def::num_classes", "expression", "$len(@classes)"),
        ("inferer::_target_", "target", "SlidingWindowInferer"),
        ("post::0", "expression", "$from pipeline.x import y"),
        ("post::1", "expression", "$monai.pipeline_like.f()"),
        ("post::2", "expression", "$@pipeline + 1"),
    ]
    assert all(r.file == "c.json" for r in code_references(CONFIG, file="c.json"))


def test_flags_imports_and_targets_of_the_package_only():
    flagged = [r.key_path for r in references_to_package(code_references(CONFIG, file="c.json"), "pipeline")]
    # a config id called "pipeline" (@pipeline) and a module named like it are not the package
    assert flagged == ["imports::1", "network_def::_target_", "post::0"]


def test_repository_torchscript_config_uses_stock_monai_only():
    path = REPO_CONFIGS / "inference_torchscript.json"
    references = code_references(load_config_file(path), file=path.name)
    assert any(r.value == "SlidingWindowInferer" for r in references)
    assert references_to_package(references, "pipeline") == []
    # only the human-readable _comment may name the package (it explains what the config mirrors)
    config = {key: value for key, value in load_config_file(path).items() if key != "_comment"}
    assert "pipeline" not in json.dumps(config)


def test_repository_inference_config_is_flagged():
    path = REPO_CONFIGS / "inference.json"
    if not path.is_file():
        pytest.skip("bundle/configs/inference.json not present yet")
    assert references_to_package(code_references(load_config_file(path), file=path.name), "pipeline")


def test_unparsable_config_is_a_user_error(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"a": ')
    with pytest.raises(UserError, match="broken.json"):
        load_config_file(bad)
