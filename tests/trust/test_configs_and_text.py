"""Configs read as data against the exporter's reference, and the escaping of printed text."""

from __future__ import annotations

import pytest

from pipeline.errors import UserError
from pipeline.trust.configs import check_config_texts, config_deviations, reference_config
from pipeline.trust.text import printable


def test_printable_escapes_controls_and_bidi_but_keeps_letters():
    assert printable("a\x1b[2K\rb\u202ec é") == "a\\x1b[2K\\x0db\\u202ec é"
    assert printable("x" * 50, limit=10) == "xxxxxxx..."


def test_the_reference_config_passes_and_each_trick_is_listed_with_its_key():
    reference = reference_config("inference.json")
    assert config_deviations(reference, reference, file="inference.json") == []
    tricks = {
        **reference,
        "imports": [*reference["imports"], "$import os; os.system('x')"],
        "network_def#_target_": "os.system",  # MONAI reads this key as network_def's _target_
        "dicom_out": "/home/user/.config/autostart",
        "heatmap_kind": "@network_def",
        "roi_size": [16, 16, 16],  # plain data: allowed
    }
    found = {d.key_path for d in config_deviations(tricks, reference, file="inference.json")}
    assert found == {f"imports::{len(reference['imports'])}", "network_def::_target_", "dicom_out", "heatmap_kind"}


def test_a_config_the_exporter_does_not_write_and_a_changed_logging_conf_deviate():
    texts = {
        "extra.json": b'{"run": "$print(1)"}',
        "logging.conf": b"[handlers]\nargs=(__import__('os'),)\n",
        "laughs.yaml": b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n",
    }
    parsed, deviations = check_config_texts(texts)
    assert set(parsed) == {"extra.json"}
    assert {d.file for d in deviations} == {"extra.json", "logging.conf", "laughs.yaml"}
    with pytest.raises(UserError, match="not a valid bundle config"):
        check_config_texts({"deep.json": b"[" * 100_000 + b"]" * 100_000})
