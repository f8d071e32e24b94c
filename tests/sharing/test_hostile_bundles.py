"""Issue 28's attacks on a received bundle, each built at test time from the freshly exported tiny bundle.

The attacker controls the whole zip: after changing a member they recompute ``large_files.yml``,
``checksums.sha256`` and the zip comment (:func:`_forge`), so only the gate's content checks can catch them. A
payload that would run writes a marker file; every test asserts the marker is absent.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.inference.bundle import resolve_bundle
from pipeline.sharing.export import _write_large_files
from pipeline.sharing.inspection import inspect_bundle
from pipeline.sharing.verify import verify_bundle
from pipeline.trust.archive import COMMENT_PREFIX, ArchiveLimits
from pipeline.trust.checksums import digests_of_tree, format_checksums, sha256_of_file
from pipeline.trust.layout import CHECKSUM_FILENAME, MODEL_FILES, SIGNATURE_FILENAME
from pipeline.trust.signing import sign_checksums, write_key_pair


def _unpack(zip_path: Path, target: Path) -> Path:
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(target)
    return next(p for p in target.iterdir() if p.is_dir())


def _write_zip(root: Path, out: Path, *, compression: int) -> Path:
    """The attacker's zip writer: every member under ``NAME/``, the checksum file's digest in the comment."""
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            archive.write(path, f"{root.name}/{path.relative_to(root).as_posix()}")
        archive.comment = f"{COMMENT_PREFIX}{sha256_of_file(root / CHECKSUM_FILENAME)}".encode()
    return out


def _forge(exported, tmp_path: Path, edit, *, name: str = "forged.zip", compression: int = zipfile.ZIP_STORED) -> Path:
    """The exported zip with ``edit(root)`` applied, made self-consistent again as an attacker would (stored, not
    deflated, unless asked: quicker to write and to read)."""
    root = _unpack(exported.zip_path, tmp_path / "forge")
    edit(root)
    _write_large_files(root, list(MODEL_FILES))
    (root / CHECKSUM_FILENAME).write_text(format_checksums(digests_of_tree(root)))
    out = _write_zip(root, tmp_path / name, compression=compression)
    shutil.rmtree(tmp_path / "forge")
    return out


def _edit_json(root: Path, member: str, change) -> None:
    path = root / member
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _cohort(tmp_path: Path, exported) -> Path:
    """A manifest of the fixture's test DICOM series (real cases, so a refusal is the gate's, not the data's)."""
    manifest = tmp_path / "manifest.csv"
    data = json.loads(Path(exported.cohort.datalist).read_text())
    rows = [
        {"case_id": f"case-{i}", "image": item["image"], "label": ["negative", "positive"][int(item["label"])]}
        for i, item in enumerate((data.get("testing") or data.get("training"))[:2])
    ]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _evaluate_cohort(zip_path: Path, manifest: Path, out: Path, *extra: str) -> int:
    return main(["evaluate-cohort", "--bundle", str(zip_path), "--manifest", str(manifest), "--out", str(out), *extra])


def _left_in(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*")) if out.exists() else []


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def test_an_expression_in_network_def_runs_in_no_command(exported_bundle, tmp_path, marker, capsys):
    payload = f"$open({str(marker)!r}, 'w').write('x') and 1"
    forged = _forge(
        exported_bundle,
        tmp_path,
        lambda root: _edit_json(root, "configs/inference.json", lambda c: c["network_def"].update(in_channels=payload)),
    )
    report = verify_bundle(forged)
    assert not report.ok and report.first_failure.name == "configs"
    assert [d.key_path.split("::")[-1] for d in report.deviations] == ["in_channels"]
    assert "network_def::in_channels" in "\n".join(report.lines())
    assert not marker.exists()
    assert any("NOT what aamct bundle export writes" in line for line in inspect_bundle(forged))
    assert not marker.exists()
    out = tmp_path / "out"
    assert _evaluate_cohort(forged, _cohort(tmp_path, exported_bundle), out) == 2
    assert "refused by the bundle gate" in capsys.readouterr().err
    assert not marker.exists()
    assert not [name for name in _left_in(out) if name.startswith(".forged")]


@pytest.mark.parametrize("keep_checksums", [True, False], ids=["as-exported", "checksums-removed"])
def test_a_hand_extracted_bundle_folder_runs_no_expression_either(
    exported_bundle, tmp_path, marker, capsys, keep_checksums
):
    # a recipient unzips the bundle and points --bundle at the folder: there is no zip for the gate, and the sender
    # may have dropped checksums.sha256 so that the folder looks like the recipient's own
    root = _unpack(exported_bundle.zip_path, tmp_path / "unzipped")
    payload = f"$open({str(marker)!r}, 'w').write('x') and 1"
    _edit_json(root, "configs/inference.json", lambda c: c["network_def"].update(in_channels=payload))
    if not keep_checksums:
        (root / CHECKSUM_FILENAME).unlink()
    out = tmp_path / "out"
    assert _evaluate_cohort(root, _cohort(tmp_path, exported_bundle), out) == 2
    err = capsys.readouterr().err
    assert "not the exporter's config" in err and "in_channels" in err
    assert not marker.exists()


def test_stale_checksums_and_duplicate_members_are_refused_before_extraction(exported_bundle, tmp_path, marker, capsys):
    stale = tmp_path / "stale.zip"
    name = exported_bundle.name
    with zipfile.ZipFile(exported_bundle.zip_path) as source, zipfile.ZipFile(stale, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("configs/inference.json"):
                config = json.loads(data)
                config["imports"].append(f"$open({str(marker)!r}, 'w')")
                data = json.dumps(config).encode()
            target.writestr(info, data)
        target.comment = source.comment
    assert verify_bundle(stale, check_networks=False).first_failure.name == "checksums"
    duplicate = tmp_path / "duplicate.zip"
    shutil.copyfile(exported_bundle.zip_path, duplicate)
    with pytest.warns(UserWarning), zipfile.ZipFile(duplicate, "a") as target:
        target.writestr(f"{name}/configs/inference.json", json.dumps({"imports": [f"$open({str(marker)!r}, 'w')"]}))
    assert "appears twice" in verify_bundle(duplicate).first_failure.detail
    manifest = _cohort(tmp_path, exported_bundle)
    for forged in (stale, duplicate):
        out = tmp_path / f"out-{forged.stem}"
        assert _evaluate_cohort(forged, manifest, out) == 2
        assert "refused by the bundle gate" in capsys.readouterr().err
        assert _left_in(out) == [] or not any(n.endswith(".partial") or n == name for n in _left_in(out))
    assert not marker.exists()


def _save_script(module: torch.nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(module), str(path))


class _WritesAFile(torch.nn.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        return x.flatten(1)[:, :2] * 0.0 + written[:2].float()


def test_a_torchscript_that_writes_a_file_is_refused_before_it_runs(exported_bundle, tmp_path, marker):
    forged = _forge(
        exported_bundle, tmp_path, lambda root: _save_script(_WritesAFile(str(marker)), root / "models" / "model.ts")
    )
    report = verify_bundle(forged)
    assert not report.ok and "aten::from_file" in report.first_failure.detail
    assert "not run" in report.first_failure.detail
    assert not marker.exists()


class _NegativeOnAir(torch.nn.Module):
    """Honest logits unless the input holds an exact 0 (air after windowing): then the classes are swapped."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if bool((x == 0.0).sum() > 0):
            return out * -1.0
        return out


def test_a_torchscript_honest_only_on_random_input_fails_the_equivalence(exported_bundle, tmp_path):
    def edit(root: Path) -> None:
        honest = torch.jit.load(str(root / "models" / "model.ts"))
        _save_script(_NegativeOnAir(honest), root / "models" / "model.ts")

    report = verify_bundle(_forge(exported_bundle, tmp_path, edit))
    assert not report.ok and report.first_failure.name == "torchscript"
    assert "differs from the network rebuilt from model.pt" in report.first_failure.detail
    assert "random input" not in report.first_failure.detail


class _NeverReturns(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(2_000_000_000):
            y = y + 1.0
        return y.flatten(1)[:, :2]


def test_a_forward_that_never_returns_fails_within_the_time_limit(exported_bundle, tmp_path):
    forged = _forge(exported_bundle, tmp_path, lambda root: _save_script(_NeverReturns(), root / "models" / "model.ts"))
    started = time.perf_counter()
    report = verify_bundle(forged, time_limit_s=2.0)
    assert not report.ok and "did not finish within 2 s" in report.first_failure.detail
    assert time.perf_counter() - started < 30.0


def test_a_zip_bomb_is_refused_from_the_directory_and_leaves_nothing(exported_bundle, tmp_path, capsys):
    def edit(root: Path) -> None:
        (root / "models" / "model.pt").write_bytes(bytes(48 * 1024**2))  # deflates about 1000-fold

    bomb = _forge(exported_bundle, tmp_path, edit, compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 20 * 1024**2
    report = verify_bundle(bomb)
    assert report.first_failure.name == "layout" and "zip bomb" in report.first_failure.detail
    out = tmp_path / "out"
    assert _evaluate_cohort(bomb, _cohort(tmp_path, exported_bundle), out) == 2
    assert "zip bomb" in capsys.readouterr().err
    assert [p for p in out.rglob("*") if p.is_file()] == []
    # a lowered size cap refuses the honest bundle the same way, before anything is inflated
    small = ArchiveLimits(max_model_bytes=1024**2)
    assert (
        "more than the 1,048,576 allowed" in verify_bundle(exported_bundle.zip_path, limits=small).first_failure.detail
    )


def test_control_characters_are_escaped_in_every_listing(exported_bundle, tmp_path):
    fake = "\x1b[1A\x1b[2K\rverified: OK"

    def edit(root: Path) -> None:
        _edit_json(root, "configs/inference.json", lambda c: c.update({fake: "$print(1)"}))
        _edit_json(root, "configs/metadata.json", lambda m: m["model_card"].update(name=f"x{fake}"))

    forged = _forge(exported_bundle, tmp_path, edit)
    lines = verify_bundle(forged, check_networks=False).lines() + inspect_bundle(forged)
    text = "\n".join(lines)
    assert "\x1b" not in text and "\r" not in text and "\\x1b[2K\\x0dverified: OK" in text
    assert not any(line.startswith("verified: OK") for line in inspect_bundle(forged))


def _signed(exported, tmp_path: Path, key: Path, *, tamper: bool = False) -> Path:
    def edit(root: Path) -> None:
        (root / CHECKSUM_FILENAME).write_text(
            format_checksums(digests_of_tree(root, exclude=(CHECKSUM_FILENAME, SIGNATURE_FILENAME)))
        )
        signature = json.loads(sign_checksums((root / CHECKSUM_FILENAME).read_bytes(), key))
        if tamper:
            signature["signature"] = ("0" if signature["signature"][0] != "0" else "1") + signature["signature"][1:]
        (root / SIGNATURE_FILENAME).write_text(json.dumps(signature))

    return _forge(exported, tmp_path, edit, name=f"signed-{int(tamper)}.zip")


def test_signature_good_bad_missing_and_the_published_digest(exported_bundle, tmp_path, capsys):
    key, pub = write_key_pair(tmp_path / "sender.key")
    _, other_pub = write_key_pair(tmp_path / "other.key")
    signed = _signed(exported_bundle, tmp_path, key)
    good = verify_bundle(signed, check_networks=False, trust=pub)
    assert good.ok and good.origin_checked and "origin checked" in good.lines()[-1]
    assert "not by the trusted key" in verify_bundle(signed, check_networks=False, trust=other_pub).first_failure.detail
    tampered = verify_bundle(_signed(exported_bundle, tmp_path, key, tamper=True), check_networks=False, trust=pub)
    assert "does not match the checksum file" in tampered.first_failure.detail
    unsigned = _forge(exported_bundle, tmp_path, lambda root: (root / SIGNATURE_FILENAME).unlink(), name="unsigned.zip")
    assert "not signed" in verify_bundle(unsigned, check_networks=False, trust=pub).first_failure.detail
    # the fixture's zip was signed by aamct bundle export --sign: its own public key checks it, another does not
    exported = verify_bundle(exported_bundle.zip_path, check_networks=False, trust=exported_bundle.public_key)
    assert exported.ok and exported.origin_checked
    assert (
        "not by the trusted key"
        in verify_bundle(exported_bundle.zip_path, check_networks=False, trust=pub).first_failure.detail
    )
    plain = verify_bundle(signed, check_networks=False)
    assert plain.ok and not plain.origin_checked and "origin NOT checked" in plain.lines()[-1]
    digest = sha256_of_file(exported_bundle.zip_path)
    assert verify_bundle(exported_bundle.zip_path, check_networks=False, expect_sha256=digest).origin_checked
    wrong = verify_bundle(exported_bundle.zip_path, check_networks=False, expect_sha256="0" * 64)
    assert wrong.first_failure.name == "origin" and "not the sender's file" in wrong.first_failure.detail
    with pytest.raises(UserError, match="is not the expected one"):
        resolve_bundle(exported_bundle.zip_path, extract_to=tmp_path / "run", expect_sha256="0" * 64)
    assert main(["bundle", "keygen", str(tmp_path / "cli.key")]) == 0
    assert (tmp_path / "cli.key.pub").is_file() and "fingerprint" in capsys.readouterr().out


def test_the_honest_bundle_passes_the_gate_and_scores(exported_bundle, tmp_path, capsys):
    manifest = _cohort(tmp_path, exported_bundle)
    out = tmp_path / "out"
    digest = sha256_of_file(exported_bundle.zip_path)
    # the fixture's 32-pixel demo series are no chest CT for the scope check: scored anyway, as the flag allows
    extra = ("--no-heatmaps", "--no-report", "--allow-out-of-scope", "--expect-sha256", digest)
    assert _evaluate_cohort(exported_bundle.zip_path, manifest, out, *extra) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 2 and set(predictions["case_id"]) == {"case-0", "case-1"}
    assert predictions["probability"].between(0, 1).all() and predictions["probability"].notna().all()
    gate = next(out.glob(".*/gate.json"))
    assert json.loads(gate.read_text())["origin_checked"] is True


def test_a_bundle_whose_model_ts_traces_the_network_itself_still_verifies(exported_bundle, tmp_path):
    # earlier exports wrote models/model.ts as a trace of the network itself (keys without the dense wrapper's
    # prefix); the gate still compares its weights and outputs with the network rebuilt from model.pt
    from pipeline.networks import build

    def edit(root: Path) -> None:
        config = json.loads((root / "configs" / "inference.json").read_text())
        state = torch.load(root / "models" / "model.pt", weights_only=True)
        network = build(config["network_name"], num_classes=state["classifier.bias"].numel()).eval()
        network.load_state_dict(state)
        sample = torch.rand(1, 1, *config["roi_size"])
        torch.jit.save(torch.jit.trace(network, sample, check_trace=False), str(root / "models" / "model.ts"))

    report = verify_bundle(_forge(exported_bundle, tmp_path, edit))
    torchscript = next(check for check in report.checks if check.name == "torchscript")
    assert torchscript.ok is True, torchscript.detail
    assert "weights equal model.pt" in torchscript.detail
