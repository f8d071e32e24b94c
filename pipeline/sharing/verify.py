"""``aamct bundle verify NAME.zip``: is this archive intact, well-formed, and what code would it run?

Checks, in order (the integrity checks stop the run: nothing else is read from an archive that fails them):

1. layout -- one ``NAME/`` folder, safe member names, the members a shared bundle must have;
2. checksum file -- ``checksums.sha256`` against the digest recorded in the zip comment;
3. checksums -- every member against ``checksums.sha256`` (changed, missing and unlisted members are named);
4. metadata -- ``configs/metadata.json`` against the repository's MONAI metadata schema (offline), and a changelog
   entry for its version;
5. configs -- every config parses; every ``$`` expression and ``_target_`` is listed; the TorchScript config must not
   use the ``pipeline`` package (its recipients only have MONAI);
6. weights -- ``models/model.pt`` loads with ``torch.load(weights_only=True)`` as a state dict of tensors;
7. large files -- every entry of ``large_files.yml`` (model-zoo convention) names a member whose sha256 it states;
8. TorchScript -- MONAI ``verify_net_in_out`` on ``models/model.ts``, loaded through a config written by the
   verifier (so no expression of the bundle's configs is evaluated for it), and its output shape equal to the
   ``(B, C, *spatial_shape)`` the metadata's output describes (MONAI checks the channels only); ``model_dense.ts``
   loads and returns a ``(B, C, x, y, z)`` map;
9. eager network -- when ``pipeline`` is importable and the eager ``network_def`` targets ``pipeline.networks.*``:
   MONAI ``verify_net_in_out`` on it, the weights loaded strictly into it, and its output compared with
   ``model.ts`` (logits) and its dense map with ``model_dense.ts`` on the same input. Building it evaluates that
   ``network_def`` (and the config's ``$import`` lines, as MONAI's ``ConfigParser`` does);
   ``check_networks=False`` (``--no-network-checks``) evaluates nothing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.sharing.archive import BundleArchive, extract_bundle, open_bundle_archive
from pipeline.sharing.checksums import CHECKSUM_FILENAME, compare_checksums, parse_checksums, sha256_of_file
from pipeline.sharing.config_listing import (
    CONFIG_SUFFIXES,
    CodeReference,
    code_references,
    load_config_file,
    references_to_package,
)
from pipeline.sharing.export import DENSE_MODEL_FILE, EAGER_CONFIG_CANDIDATES, LARGE_FILES, TORCHSCRIPT_CONFIG
from pipeline.sharing.metadata import load_metadata_schema, metadata_problems
from pipeline.sharing.monai_logs import quiet_monai_bundle_logs

__all__ = [
    "NETWORK_AGREEMENT_ATOL",
    "REQUIRED_MEMBERS",
    "TRUSTED_NETWORK_PREFIX",
    "CheckResult",
    "VerificationReport",
    "verify_bundle",
]

logger = logging.getLogger(__name__)

#: members every shared bundle must contain (relative to ``NAME/``)
REQUIRED_MEMBERS = (
    "configs/metadata.json",
    f"configs/{TORCHSCRIPT_CONFIG}",
    "models/model.pt",
    "models/model.ts",
    f"models/{DENSE_MODEL_FILE}",
    LARGE_FILES,
    "docs/README.md",
    "LICENSE",
    CHECKSUM_FILENAME,
)
#: TorchScript and eager dense maps must agree to this (absolute, logits) on the same input
NETWORK_AGREEMENT_ATOL = 1e-4
#: the eager network_def is only built when its ``_target_`` lives here (this package's network registry)
TRUSTED_NETWORK_PREFIX = "pipeline.networks."


@dataclass(frozen=True)
class CheckResult:
    """One verification step.

    Attributes:
        name: short name (``checksums``, ``metadata``, ...).
        ok: whether it passed (``None``: skipped).
        detail: one line: what was found, or why it failed / was skipped.
    """

    name: str
    ok: bool | None
    detail: str


@dataclass
class VerificationReport:
    """Everything :func:`verify_bundle` found.

    Attributes:
        archive: the zip.
        name: bundle name, when the layout could be read.
        version: bundle version, when the metadata could be read.
        checks: the steps in order.
        references: every ``$`` expression and ``_target_`` of every config.
        needs_package: the references that use ``pipeline`` (fine in the eager configs, an error in the
            TorchScript config).
    """

    archive: Path
    name: str | None = None
    version: str | None = None
    checks: list[CheckResult] = field(default_factory=list)
    references: list[CodeReference] = field(default_factory=list)
    needs_package: list[CodeReference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(check.ok is not False for check in self.checks)

    @property
    def first_failure(self) -> CheckResult | None:
        """The first failed check, if any."""
        return next((check for check in self.checks if check.ok is False), None)

    def add(self, name: str, ok: bool | None, detail: str) -> bool:
        """Record a step and return ``ok`` (``None`` counts as passed)."""
        self.checks.append(CheckResult(name, ok, " ".join(detail.split())))
        return ok is not False

    def lines(self) -> list[str]:
        """Terminal report: the checks, then the code listing."""
        mark = {True: "ok  ", False: "FAIL", None: "skip"}
        out = [f"bundle {self.name or '?'} {self.version or ''} ({self.archive})".rstrip()]
        out += [f"  {mark[c.ok]} {c.name}: {c.detail}" for c in self.checks]
        if self.references:
            flagged = {id(ref) for ref in self.needs_package}
            out.append(f"code the configs would run ({len(self.references)} entries: file  key  kind  value):")
            for ref in self.references:
                suffix = "   [imports pipeline: needs aamct]" if id(ref) in flagged else ""
                out.append(f"  {ref.line()}{suffix}")
        out.append("verified: OK" if self.ok else f"verification FAILED: {self.first_failure.detail}")
        return out


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def _check_integrity(report: VerificationReport, bundle: BundleArchive) -> bool:
    missing = [m for m in REQUIRED_MEMBERS if m not in bundle.members]
    report.add(
        "layout",
        not missing,
        f"{len(bundle.members)} members under {bundle.name}/"
        if not missing
        else f"missing required member {bundle.name}/{missing[0]}",
    )
    if CHECKSUM_FILENAME in missing:
        # without the checksum file nothing else can be trusted
        return False
    try:
        digests = bundle.member_digests()
    except UserError as err:
        report.add("checksums", False, str(err))
        return False
    recorded = bundle.checksum_file_sha256
    if recorded is None:
        report.add("checksum file", False, f"the zip comment has no digest of {bundle.name}/{CHECKSUM_FILENAME}")
        return False
    if digests[CHECKSUM_FILENAME] != recorded:
        report.add(
            "checksum file",
            False,
            f"member {bundle.name}/{CHECKSUM_FILENAME}: sha256 does not match the digest in the zip comment",
        )
        return False
    report.add("checksum file", True, f"{CHECKSUM_FILENAME} matches the zip comment")
    with zipfile.ZipFile(bundle.path) as archive:
        text = archive.read(f"{bundle.name}/{CHECKSUM_FILENAME}").decode("utf-8", errors="replace")
    try:
        expected = parse_checksums(text, source=f"{bundle.name}/{CHECKSUM_FILENAME}")
    except UserError as err:
        report.add("checksums", False, str(err))
        return False
    actual = {member: digest for member, digest in digests.items() if member != CHECKSUM_FILENAME}
    mismatches = compare_checksums(expected, actual)
    if mismatches:
        first = mismatches[0]
        more = f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        report.add("checksums", False, f"member {bundle.name}/{first.describe()}{more}")
        return False
    report.add("checksums", True, f"sha256 of all {len(actual)} members match")
    return not missing


def _check_metadata(report: VerificationReport, root: Path, schema_path: str | Path | None) -> dict[str, Any] | None:
    path = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        report.add("metadata", False, f"configs/metadata.json is not valid JSON ({err})")
        return None
    if not isinstance(metadata, Mapping):
        report.add("metadata", False, "configs/metadata.json is not a JSON object")
        return None
    report.version = str(metadata.get("version"))
    problems = metadata_problems(metadata, schema=load_metadata_schema(schema_path))
    if problems:
        report.add("metadata", False, f"configs/metadata.json: {problems[0]}")
        return dict(metadata)
    changelog = metadata.get("changelog") or {}
    if metadata.get("version") not in changelog:
        report.add(
            "metadata", False, f"configs/metadata.json: changelog has no entry for version {metadata['version']}"
        )
        return dict(metadata)
    report.add("metadata", True, f"valid against the MONAI metadata schema; version {metadata['version']}")
    return dict(metadata)


def _check_configs(report: VerificationReport, root: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for path in sorted((root / "configs").iterdir()):
        if path.suffix.lower() not in CONFIG_SUFFIXES or path.name == "metadata.json":
            continue
        try:
            parsed[path.name] = load_config_file(path)
        except UserError as err:
            report.add("configs", False, str(err))
            return parsed
        report.references += code_references(parsed[path.name], file=path.name)
    report.needs_package = references_to_package(report.references, "pipeline")
    report.add(
        "configs",
        True,
        f"{len(parsed)} configs parsed; {len(report.references)} expressions / targets listed below",
    )
    in_ts = [ref for ref in report.needs_package if ref.file == TORCHSCRIPT_CONFIG]
    report.add(
        "torchscript config",
        not in_ts,
        f"{TORCHSCRIPT_CONFIG} uses stock MONAI only"
        if not in_ts
        else f"{TORCHSCRIPT_CONFIG}: {in_ts[0].key_path} uses the pipeline package ({in_ts[0].value})",
    )
    return parsed


def _check_weights(report: VerificationReport, root: Path) -> Mapping[str, torch.Tensor] | None:
    try:
        state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign / malicious pickle is refused by the weights-only unpickler
        report.add("weights", False, f"models/model.pt does not load with weights_only=True ({_one_line(err)})")
        return None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        report.add("weights", False, "models/model.pt is not a state dict of tensors")
        return None
    n_values = sum(int(v.numel()) for v in state.values())
    report.add("weights", True, f"state dict of {len(state)} tensors ({n_values:,} values), loaded weights-only")
    return state


def _roi_size(ts_config: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[int] | None:
    roi = ts_config.get("roi_size")
    if isinstance(roi, list) and all(isinstance(v, int) for v in roi):
        return roi
    shape = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape")
    if isinstance(shape, list) and all(isinstance(v, int) for v in shape):
        return shape
    return None


def _net_in_out(net_id: str, config: Path, meta: Path, root: Path, roi: list[int]) -> None:
    from monai.bundle import verify_net_in_out

    with quiet_monai_bundle_logs():
        verify_net_in_out(
            net_id=net_id,
            meta_file=str(meta),
            config_file=str(config),
            device="cpu",
            bundle_root=str(root),
            **{"_meta_#network_data_format#inputs#image#spatial_shape": roi},
        )


def _check_large_files(report: VerificationReport, root: Path) -> None:
    import yaml

    try:
        entries = (yaml.safe_load((root / LARGE_FILES).read_text(encoding="utf-8")) or {}).get("large_files")
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as err:
        report.add("large files", False, f"{LARGE_FILES}: not readable YAML ({_one_line(err)})")
        return
    if not isinstance(entries, list) or not entries:
        report.add("large files", False, f"{LARGE_FILES}: no 'large_files' list")
        return
    for entry in entries:
        path = str((entry or {}).get("path", ""))
        target = root / path
        if not path or ".." in Path(path).parts or not target.is_file():
            report.add("large files", False, f"{LARGE_FILES}: {path!r} is not a member of the bundle")
            return
        if str(entry.get("hash_type", "")).lower() != "sha256" or sha256_of_file(target) != entry.get("hash_val"):
            report.add("large files", False, f"{LARGE_FILES}: the sha256 of {path} is not the one listed")
            return
    report.add("large files", True, f"{len(entries)} model files match the sha256 in {LARGE_FILES}")


def _output_spec(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    outputs = metadata.get("network_data_format", {}).get("outputs", {}) or {}
    return next(iter(outputs.values()), {}) if outputs else {}


def _check_networks(
    report: VerificationReport, root: Path, metadata: Mapping[str, Any], configs: Mapping[str, Any], state
) -> None:
    ts_config = configs.get(TORCHSCRIPT_CONFIG) or {}
    roi = _roi_size(ts_config, metadata)
    if roi is None:
        report.add("torchscript", False, f"no integer roi_size in {TORCHSCRIPT_CONFIG} or input spatial_shape")
        return
    meta = root / "configs" / "metadata.json"
    model_ts = root / "models" / "model.ts"
    dense_ts = root / "models" / DENSE_MODEL_FILE
    # a config written here, not the bundle's: loading the TorchScript file must not evaluate the bundle's code
    loader = root.parent / "verify_torchscript_loader.json"
    loader.write_text(
        json.dumps(
            {"imports": ["$import torch"], "network_def": f"$torch.jit.load({str(model_ts)!r}, map_location='cpu')"}
        )
    )
    channels = int(metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("num_channels", 1))
    generator = torch.Generator().manual_seed(0)
    sample = torch.rand((1, channels, *roi), generator=generator)
    spec = _output_spec(metadata)
    expected = (1, int(spec.get("num_channels", 0)), *[v for v in spec.get("spatial_shape") or []])
    try:
        _net_in_out("network_def", loader, meta, root, roi)
        scripted = torch.jit.load(str(model_ts), map_location="cpu").eval()
        dense_scripted = torch.jit.load(str(dense_ts), map_location="cpu").eval()
        with torch.no_grad():
            logits, dense_map = scripted(sample), dense_scripted(sample)
    except Exception as err:
        report.add("torchscript", False, f"models/model.ts / {DENSE_MODEL_FILE}: {_one_line(err)}")
        return
    if tuple(logits.shape) != expected:
        report.add(
            "torchscript",
            False,
            f"models/model.ts returns {tuple(logits.shape)} where network_data_format says {expected}",
        )
        return
    if dense_map.ndim != 5 or dense_map.shape[:2] != logits.shape[:2]:
        report.add(
            "torchscript",
            False,
            f"models/{DENSE_MODEL_FILE} returns {tuple(dense_map.shape)}, not a (1, C, x, y, z) map",
        )
        return
    report.add(
        "torchscript",
        True,
        f"verify_net_in_out passed on models/model.ts with input {roi}; it returns {tuple(logits.shape)} as the "
        f"metadata says; {DENSE_MODEL_FILE} returns a {tuple(dense_map.shape)} map",
    )

    eager_name = next((n for n in EAGER_CONFIG_CANDIDATES if "network_def" in (configs.get(n) or {})), None)
    if eager_name is None:
        report.add("eager network", None, "no eager config with a network_def in the bundle")
        return
    target = (
        (configs[eager_name].get("network_def") or {}).get("_target_")
        if isinstance(configs[eager_name].get("network_def"), Mapping)
        else None
    )
    if not (isinstance(target, str) and target.startswith(TRUSTED_NETWORK_PREFIX)):
        # building it would run code the recipient has not reviewed; the listing above shows what it is
        report.add(
            "eager network", None, f"{eager_name} network_def is {target!r}, not {TRUSTED_NETWORK_PREFIX}*: not run"
        )
        return
    if importlib.util.find_spec("pipeline.networks") is None:
        report.add("eager network", None, f"{eager_name} needs the aamct package, which is not installed")
        return
    from monai.bundle import ConfigParser

    from pipeline.networks import DenseClassifier

    eager_path = root / "configs" / eager_name
    try:
        _net_in_out("network_def", eager_path, meta, root, roi)
        parser = ConfigParser()
        parser.read_config(f=str(eager_path))
        parser.read_meta(f=str(meta))
        parser["bundle_root"] = str(root)
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(state, strict=True)
        network.eval()
    except Exception as err:
        report.add("eager network", False, f"{eager_name} network_def with models/model.pt: {_one_line(err)}")
        return
    with torch.no_grad():
        eager_logits = network(sample)
        eager_map = DenseClassifier(network)(sample)
    if eager_map.shape != dense_map.shape or eager_logits.shape != logits.shape:
        report.add(
            "eager network",
            False,
            f"model.ts / {DENSE_MODEL_FILE} outputs {tuple(logits.shape)} / {tuple(dense_map.shape)} differ from the "
            f"eager network's {tuple(eager_logits.shape)} / {tuple(eager_map.shape)}",
        )
        return
    difference = max(float((eager_map - dense_map).abs().max()), float((eager_logits - logits).abs().max()))
    report.add(
        "eager network",
        difference <= NETWORK_AGREEMENT_ATOL,
        f"weights load strictly into {eager_name} network_def; model.ts, {DENSE_MODEL_FILE} and model.pt agree "
        f"(max |diff| {difference:.1e} on a random input)"
        if difference <= NETWORK_AGREEMENT_ATOL
        else f"the TorchScript models and model.pt disagree by {difference:.2e} on the same input: not the same model",
    )


def verify_bundle(
    archive: str | Path, *, schema_path: str | Path | None = None, check_networks: bool = True
) -> VerificationReport:
    """Verify a bundle zip (see the module docstring for the checks).

    Args:
        archive: ``NAME.zip``.
        schema_path: metadata JSON schema (default: the repository's copy).
        check_networks: run the TorchScript and eager network checks (they load and run the model).

    Returns:
        The :class:`VerificationReport`; ``report.ok`` says whether it passed. Problems of the bundle are recorded
        in the report, not raised.

    Raises:
        UserError: if ``archive`` does not exist.
    """
    report = VerificationReport(archive=Path(archive))
    if not Path(archive).is_file():
        raise UserError(f"{archive}: bundle zip not found")
    try:
        bundle = open_bundle_archive(archive)
    except UserError as err:
        report.add("layout", False, str(err))
        return report
    report.name = bundle.name
    if not _check_integrity(report, bundle):
        return report
    with tempfile.TemporaryDirectory(prefix=".aamct-verify-") as tmp:
        root = extract_bundle(bundle, tmp)
        metadata = _check_metadata(report, root, schema_path)
        configs = _check_configs(report, root)
        state = _check_weights(report, root)
        _check_large_files(report, root)
        if not check_networks:
            report.add("torchscript", None, "network checks not requested")
        elif metadata is not None and state is not None and report.ok:
            _check_networks(report, root, metadata, configs, state)
        else:
            report.add("torchscript", None, "skipped after an earlier failure")
    return report
