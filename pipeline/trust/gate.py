"""The received-bundle gate: one function every reader of a bundle zip passes through before anything is used.

``aamct bundle verify`` prints its report; ``aamct evaluate-cohort`` / ``infer`` with a zip (through
:func:`receive_bundle`) refuse on its first failure; so they cannot differ in what they accept. In order (each
integrity step stops the run: nothing else is read from a zip that fails it):

1. origin -- ``--expect-sha256``: the zip's SHA-256 against the digest its sender published;
2. layout and caps -- from the central directory, nothing inflated (:mod:`pipeline.trust.archive`): one ``NAME/``
   folder, safe names, no duplicates or links, member count, per-member / total size, compression ratio;
3. checksum file -- ``checksums.sha256`` against the digest in the zip comment; checksums -- every member streamed
   (capped) against it; signature -- ``--trust PUBKEY``: ``checksums.sha256.sig`` is that key's Ed25519 signature
   of it. Without ``--expect-sha256`` or ``--trust`` the report says plainly that the origin is unchecked;
4. extraction -- into a fresh folder, capped while inflating, removed on any failure;
5. configs as data (:mod:`pipeline.trust.configs`): every ``$`` / ``@`` / ``%`` / ``_target_`` equal to the
   exporter's at the same key, the path keys pinned, ``logging.conf`` the repository's, no code files; the report
   lists every expression ``python -m monai.bundle run`` would execute (MONAI evaluates configs by design);
6. metadata -- against the repository's MONAI metadata schema (offline) with a changelog entry for its version;
7. weights -- ``model.pt`` with ``torch.load(weights_only=True)``, a state dict of tensors;
   large files -- ``large_files.yml`` names members whose sha256 it states;
8. network -- built from the bundle's data (``network_name`` and the plain ``network_def`` arguments of
   ``inference.json``) through :func:`pipeline.networks.build`, nothing evaluated; the weights load strictly;
9. TorchScript (:mod:`pipeline.trust.torchscript`) -- no ``__setstate__``; in a child with a time and memory limit:
   operators in the allowlist (else refused before it runs), parameters equal to ``model.pt``, and outputs equal
   to the rebuilt network's (``model.ts``: logits, ``model_dense.ts``: the dense map) on four probes: a CT-like
   window (air, body, lungs), all zeros (air after windowing), all ones and the seeded random input; the logits'
   shape the metadata's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.contracts import defaults
from pipeline.errors import UserError
from pipeline.trust.archive import ArchiveLimits, BundleArchive, extract_bundle, open_bundle_archive, read_member
from pipeline.trust.checksums import compare_checksums, parse_checksums, sha256_of_file
from pipeline.trust.config_listing import CodeReference, code_references, references_to_package
from pipeline.trust.configs import ConfigDeviation, check_config_folder, code_member_problems, is_code
from pipeline.trust.layout import (
    CHECKSUM_FILENAME,
    DENSE_MODEL_FILE,
    LARGE_FILES,
    REQUIRED_MEMBERS,
    SIGNATURE_FILENAME,
    TORCHSCRIPT_CONFIG,
)
from pipeline.trust.text import printable

__all__ = [
    "NETWORK_AGREEMENT_ATOL",
    "CheckResult",
    "GateOptions",
    "VerificationReport",
    "check_bundle",
    "probe_inputs",
    "receive_bundle",
]

logger = logging.getLogger(__name__)

#: TorchScript and the rebuilt network must agree to this (absolute, logits and dense maps; weights too)
NETWORK_AGREEMENT_ATOL = 1e-4
_GATE_RECORD = "gate.json"
_NETWORK_DEF_FIXED = ("_target_", "name", "in_channels", "num_classes", "options")


@dataclass(frozen=True)
class CheckResult:
    """One verification step.

    Attributes:
        name: short name (``checksums``, ``metadata``, ...).
        ok: whether it passed (``None``: skipped / not checked).
        detail: one line: what was found, or why it failed / was skipped.
    """

    name: str
    ok: bool | None
    detail: str


@dataclass
class VerificationReport:
    """Everything :func:`check_bundle` found.

    Attributes:
        archive: the zip.
        name: bundle name, when the layout could be read.
        version: bundle version, when the metadata could be read.
        checks: the steps in order.
        references: every ``$`` expression and ``_target_`` of every config: what ``python -m monai.bundle run``
            executes.
        needs_package: the references that use ``pipeline`` (fine in the eager configs, an error in the
            TorchScript config).
        deviations: code or pinned values that are not the exporter's (each fails verification).
        origin_checked: whether ``--trust`` or ``--expect-sha256`` confirmed who made the zip.
    """

    archive: Path
    name: str | None = None
    version: str | None = None
    checks: list[CheckResult] = field(default_factory=list)
    references: list[CodeReference] = field(default_factory=list)
    needs_package: list[CodeReference] = field(default_factory=list)
    deviations: list[ConfigDeviation] = field(default_factory=list)
    origin_checked: bool = False

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
        self.checks.append(CheckResult(name, ok, printable(" ".join(str(detail).split()))))
        return ok is not False

    def lines(self) -> list[str]:
        """Terminal report: the checks, the deviations, the code listing, the verdict (every line escaped)."""
        mark = {True: "ok  ", False: "FAIL", None: "skip"}
        out = [f"bundle {printable(self.name or '?')} {printable(self.version or '')} ({self.archive})".rstrip()]
        out += [f"  {mark[c.ok]} {c.name}: {printable(c.detail)}" for c in self.checks]
        if self.deviations:
            out.append(f"not what aamct bundle export writes ({len(self.deviations)}: file  key: value):")
            out += [f"  {d.line()}" for d in self.deviations]
        if self.references:
            flagged = {id(ref) for ref in self.needs_package}
            out.append(
                f"code that `python -m monai.bundle run` executes from these configs (MONAI evaluates configs by "
                f"design; aamct does not) ({len(self.references)} entries: file  key  kind  value):"
            )
            for ref in self.references:
                suffix = "   [imports pipeline: needs aamct]" if id(ref) in flagged else ""
                out.append(f"  {printable(ref.line(), limit=300)}{suffix}")
        if self.ok:
            origin = "origin checked" if self.origin_checked else "origin NOT checked (give --trust or --expect-sha256)"
            out.append(f"verified: OK (integrity and content; {origin})")
        else:
            out.append(f"verification FAILED: {printable(self.first_failure.detail)}")
        return out


@dataclass(frozen=True, kw_only=True)
class GateOptions:
    """How a bundle is checked.

    Attributes:
        trust: the sender's public key (PEM file or 64 hex digits): the checksum file must carry its signature.
        expect_sha256: the zip's SHA-256 as its sender published it.
        check_networks: build the network and check / run the TorchScript files (``False``: nothing is loaded).
        schema_path: metadata JSON schema (default: the repository's copy).
        limits: the zip's caps.
        time_limit_s: time limit of the TorchScript child process.
        memory_bytes: address space the child may add.
    """

    trust: str | os.PathLike | None = None
    expect_sha256: str | None = None
    check_networks: bool = True
    schema_path: str | os.PathLike | None = None
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    time_limit_s: float = defaults.TORCHSCRIPT_TIME_LIMIT_S
    memory_bytes: int = defaults.TORCHSCRIPT_MEMORY_LIMIT_BYTES


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {printable(' '.join(str(err).split()), limit=300)}"


def _check_origin_digest(report: VerificationReport, path: Path, expected: str) -> bool:
    wanted = expected.strip().lower()
    actual = sha256_of_file(path)
    if actual != wanted:
        return report.add(
            "origin",
            False,
            f"the zip's sha256 {actual[:16]}... is not the expected {printable(wanted[:16])}...: not the sender's file",
        )
    report.origin_checked = True
    return report.add("origin", True, f"the zip's sha256 is the expected {wanted[:16]}...")


def _check_integrity(report: VerificationReport, bundle: BundleArchive, options: GateOptions) -> bool:
    missing = [m for m in REQUIRED_MEMBERS if m not in bundle.members]
    report.add(
        "layout",
        not missing,
        f"{len(bundle.members)} members under {bundle.name}/, {bundle.total_bytes:,} bytes inflated (within the caps)"
        if not missing
        else f"missing required member {bundle.name}/{missing[0]}",
    )
    if missing:
        return False
    recorded = bundle.checksum_file_sha256
    if recorded is None:
        return report.add("checksum file", False, f"the zip comment has no digest of {bundle.name}/{CHECKSUM_FILENAME}")
    try:
        checksum_bytes = read_member(bundle, CHECKSUM_FILENAME)
    except UserError as err:
        return report.add("checksum file", False, str(err))
    if hashlib.sha256(checksum_bytes).hexdigest() != recorded:
        return report.add(
            "checksum file",
            False,
            f"member {bundle.name}/{CHECKSUM_FILENAME}: sha256 does not match the digest in the zip comment",
        )
    report.add("checksum file", True, f"{CHECKSUM_FILENAME} matches the zip comment")
    try:
        expected = parse_checksums(
            checksum_bytes.decode("utf-8", errors="replace"), source=f"{bundle.name}/{CHECKSUM_FILENAME}"
        )
        digests = bundle.member_digests()
    except UserError as err:
        return report.add("checksums", False, str(err))
    actual = {m: d for m, d in digests.items() if m not in (CHECKSUM_FILENAME, SIGNATURE_FILENAME)}
    mismatches = compare_checksums(expected, actual)
    if mismatches:
        first = mismatches[0]
        more = f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        return report.add("checksums", False, f"member {bundle.name}/{first.describe()}{more}")
    report.add("checksums", True, f"sha256 of all {len(actual)} members match")
    return _check_signature(report, bundle, checksum_bytes, options)


def _check_signature(
    report: VerificationReport, bundle: BundleArchive, checksum_bytes: bytes, options: GateOptions
) -> bool:
    from pipeline.trust.signing import load_public_key, parse_signature, verify_signature

    signature = None
    if SIGNATURE_FILENAME in bundle.members:
        try:
            signature = parse_signature(
                read_member(bundle, SIGNATURE_FILENAME), source=f"{bundle.name}/{SIGNATURE_FILENAME}"
            )
        except UserError as err:
            return report.add("signature", False, str(err))
    if options.trust is not None:
        trusted = load_public_key(options.trust)
        if signature is None:
            return report.add(
                "signature", False, f"--trust given but the bundle is not signed (no {SIGNATURE_FILENAME})"
            )
        problem = verify_signature(checksum_bytes, signature, trusted)
        if problem is not None:
            return report.add("signature", False, problem)
        report.origin_checked = True
        return report.add("signature", True, f"checksums signed by the trusted key {signature.fingerprint}")
    if not report.origin_checked:
        signed = f"signed by key {signature.fingerprint}, a key not checked" if signature else "not signed"
        report.add(
            "origin",
            None,
            f"NOT checked: this says the zip agrees with itself, not who made it ({signed}); give --trust PUBKEY "
            "or --expect-sha256 DIGEST",
        )
    return True


def _check_metadata(report: VerificationReport, root: Path, schema_path) -> dict[str, Any] | None:
    from pipeline.trust.metadata_schema import load_metadata_schema, metadata_problems

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


def _check_configs(report: VerificationReport, root: Path, members) -> dict[str, Any] | None:
    try:
        parsed, deviations = check_config_folder(root / "configs")
    except UserError as err:
        report.add("configs", False, str(err))
        return None
    deviations = code_member_problems(members) + deviations
    for name, config in parsed.items():
        if name != "metadata.json":
            report.references += code_references(config, file=name)
    report.needs_package = references_to_package(report.references, "pipeline")
    report.deviations = deviations
    if deviations:
        report.add(
            "configs",
            False,
            f"{len(deviations)} value(s) are not what aamct bundle export writes, first: {deviations[0].line()}",
        )
        return None
    report.add(
        "configs",
        True,
        f"{len(parsed)} configs read as data: every expression, reference and _target_ is the exporter's "
        f"({len(report.references)} listed below); nothing evaluated",
    )
    in_ts = [ref for ref in report.needs_package if ref.file == TORCHSCRIPT_CONFIG]
    if in_ts:
        report.add("torchscript config", False, f"{TORCHSCRIPT_CONFIG}: {in_ts[0].key_path} uses the pipeline package")
        return None
    return parsed


def _check_weights(report: VerificationReport, root: Path):
    import torch

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


def _check_large_files(report: VerificationReport, root: Path) -> bool:
    import yaml

    try:
        entries = (yaml.safe_load((root / LARGE_FILES).read_text(encoding="utf-8")) or {}).get("large_files")
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as err:
        return report.add("large files", False, f"{LARGE_FILES}: not readable YAML ({_one_line(err)})")
    if not isinstance(entries, list) or not entries:
        return report.add("large files", False, f"{LARGE_FILES}: no 'large_files' list")
    for entry in entries:
        path = str((entry or {}).get("path", "")) if isinstance(entry, Mapping) else ""
        target = root / path
        if not path or ".." in Path(path).parts or Path(path).is_absolute() or not target.is_file():
            return report.add("large files", False, f"{LARGE_FILES}: {printable(path)!r} is not a member of the bundle")
        if str(entry.get("hash_type", "")).lower() != "sha256" or sha256_of_file(target) != entry.get("hash_val"):
            return report.add("large files", False, f"{LARGE_FILES}: the sha256 of {path} is not the one listed")
    return report.add("large files", True, f"{len(entries)} model files match the sha256 in {LARGE_FILES}")


def _class_count(metadata: Mapping[str, Any]) -> int:
    for key in ("class_names", "classes"):
        if isinstance(metadata.get(key), list) and len(metadata[key]) >= 2:
            return len(metadata[key])
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    spec = next(iter(outputs.values()), {}) if outputs else {}
    return int(spec.get("num_channels", 2))


def _rebuild_network(report: VerificationReport, root: Path, configs: Mapping[str, Any], metadata, state):
    """The network from the bundle's data through the registry, with the weights loaded strictly."""
    from pipeline.contracts.run_record import settings_for
    from pipeline.networks import build

    config = configs.get("inference.json") or {}
    name = config.get("network_name")
    definition = config.get("network_def") if isinstance(config.get("network_def"), Mapping) else {}
    if not isinstance(name, str) or is_code(name):
        report.add("network", False, "inference.json network_name is not a registry name (plain text)")
        return None
    kwargs = {k: v for k, v in definition.items() if k not in _NETWORK_DEF_FIXED and not is_code(v)}
    in_channels = definition.get("in_channels", 1)
    try:
        options = dict(settings_for(root / "models" / "model.pt", network_name=name).network_kwargs)
        network = build(
            name,
            in_channels=in_channels if isinstance(in_channels, int) else 1,
            num_classes=_class_count(metadata),
            options=options,
            **kwargs,
        )
        network.load_state_dict(state, strict=True)
    except (UserError, RuntimeError, TypeError, ValueError) as err:
        report.add("network", False, f"{name} {kwargs} from the registry with models/model.pt: {_one_line(err)}")
        return None
    report.add("network", True, f"{name} {json.dumps(kwargs)} built by the registry; models/model.pt loads strictly")
    return network.eval()


def probe_inputs(shape: tuple[int, ...], *, hu_window=(-1000.0, 400.0), seed: int = 0):
    """The gate's probe inputs of ``shape`` ``(1, C, x, y, z)``, as the network sees them (HU window -> 0..1).

    ``ct``: a chest-like window (air outside an elliptic body at 40 HU, two lungs at -850 HU, a lesion at -450 HU,
    noise of 20 HU; clipped, so the air is exactly 0); ``zeros`` (air); ``ones`` (bone); ``random``: uniform, seeded.
    """
    import numpy as np
    import torch

    low, high = float(hu_window[0]), float(hu_window[1])
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[2:]], indexing="ij")
    hu = np.full(shape[2:], -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.7) ** 2 <= 1.0] = 40.0
    for side in (-0.4, 0.4):
        hu[((x - side) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 1.1) ** 2 <= 1.0] = -850.0
    hu[((x - 0.4) / 0.1) ** 2 + ((y - 0.1) / 0.12) ** 2 + (z / 0.25) ** 2 <= 1.0] = -450.0
    hu += rng.normal(0.0, 20.0, size=hu.shape) * (hu > -1000.0)
    ct = np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32)
    ct_tensor = torch.from_numpy(np.broadcast_to(ct, shape).copy())
    generator = torch.Generator().manual_seed(seed)
    return {
        "ct": ct_tensor,
        "zeros": torch.zeros(shape),
        "ones": torch.ones(shape),
        "random": torch.rand(shape, generator=generator),
    }


def _roi(configs: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[int] | None:
    for candidate in (
        (configs.get(TORCHSCRIPT_CONFIG) or {}).get("roi_size"),
        (configs.get("inference.json") or {}).get("roi_size"),
        metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape"),
    ):
        if (
            isinstance(candidate, list)
            and len(candidate) == 3
            and all(isinstance(v, int) and 0 < v <= 512 for v in candidate)
        ):
            return candidate
    return None


def _check_torchscript(report, root: Path, configs, metadata, state, network, options: GateOptions) -> None:
    import torch

    from pipeline.networks import DenseClassifier
    from pipeline.trust.torchscript import archive_problems, run_torchscript

    files = {"model.ts": root / "models" / "model.ts", DENSE_MODEL_FILE: root / "models" / DENSE_MODEL_FILE}
    problems = [p for path in files.values() for p in archive_problems(path)]
    if problems:
        report.add("torchscript", False, f"refused before loading: {problems[0]}")
        return
    roi = _roi(configs, metadata)
    if roi is None:
        report.add("torchscript", False, f"no integer roi_size in {TORCHSCRIPT_CONFIG} or the input spatial_shape")
        return
    inputs = metadata.get("network_data_format", {}).get("inputs", {}) or {}
    channels = int(next(iter(inputs.values()), {}).get("num_channels", 1)) if inputs else 1
    window = (configs.get("inference.json") or {}).get("hu_window")
    shape = (1, channels, *roi)
    probes = probe_inputs(shape, **({"hu_window": window} if isinstance(window, list) and len(window) == 2 else {}))
    try:
        run = run_torchscript(
            files,
            probes,
            reference=state,
            # model.ts: the spatial mean around the dense trace (dense.model.*); bundles exported earlier hold
            # a trace of the network itself (no prefix)
            prefixes={DENSE_MODEL_FILE: "model.", "model.ts": ("dense.model.", "")},
            time_limit_s=options.time_limit_s,
            memory_bytes=options.memory_bytes,
        )
    except UserError as err:
        report.add("torchscript", False, f"refused: {err}")
        return
    if run.refused:
        name, ops = next(iter(run.refused.items()))
        report.add(
            "torchscript",
            False,
            f"models/{name} uses operator(s) the exporter never writes: {', '.join(ops[:6])}: refused, not run",
        )
        return
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    spec = next(iter(outputs.values()), {}) if outputs else {}
    expected_shape = (1, int(spec.get("num_channels", 0)), *[v for v in spec.get("spatial_shape") or []])
    logits_shape = tuple(run.outputs[("model.ts", "zeros")].shape)
    if logits_shape != expected_shape:
        report.add(
            "torchscript", False, f"models/model.ts returns {logits_shape} where the metadata says {expected_shape}"
        )
        return
    dense = DenseClassifier(network).eval()
    worst, where = 0.0, ""
    with torch.no_grad():
        for probe, tensor in probes.items():
            for name, model in (("model.ts", network), (DENSE_MODEL_FILE, dense)):
                eager = model(tensor.clone())
                scripted = run.outputs[(name, probe)]
                difference = float("inf") if eager.shape != scripted.shape else float((eager - scripted).abs().max())
                if not difference <= worst:
                    worst, where = difference, f"models/{name} on the {probe} input"
    if not worst <= NETWORK_AGREEMENT_ATOL:
        report.add(
            "torchscript",
            False,
            f"{where} differs from the network rebuilt from model.pt by {worst:.2e}: not the same model",
        )
        return
    worst_weights = max(run.weight_diff.values(), default=float("inf"))
    if not worst_weights <= NETWORK_AGREEMENT_ATOL:
        report.add("torchscript", False, "the TorchScript files' weights are not those of models/model.pt")
        return
    report.add(
        "torchscript",
        True,
        f"operators in the exporter's set; weights equal model.pt; model.ts and {DENSE_MODEL_FILE} agree with the "
        f"rebuilt network (max |diff| {worst:.1e} on {', '.join(probes)} inputs {roi}), run in a child "
        f"({run.seconds:.1f} s of {options.time_limit_s:g} s, memory capped)",
    )


def check_bundle(
    archive: str | os.PathLike, workdir: str | os.PathLike, *, options: GateOptions | None = None
) -> tuple[VerificationReport, Path | None]:
    """Run the gate (see the module docstring) on a bundle zip, extracting it under ``workdir``.

    Args:
        archive: ``NAME.zip``.
        workdir: an existing folder; the bundle is extracted to ``workdir/NAME`` (removed again on failure).
        options: :class:`GateOptions`.

    Returns:
        ``(report, extracted root)``; the root is ``None`` when the report failed (nothing is left in
        ``workdir`` then). Problems of the bundle are recorded in the report, not raised.

    Raises:
        UserError: if ``archive`` does not exist or a ``--trust`` key cannot be read.
    """
    options = options or GateOptions()
    path = Path(archive)
    report = VerificationReport(archive=path)
    if not path.is_file():
        raise UserError(f"{path}: bundle zip not found")
    if options.expect_sha256 is not None and not _check_origin_digest(report, path, options.expect_sha256):
        return report, None
    try:
        bundle = open_bundle_archive(path, limits=options.limits)
    except UserError as err:
        report.add("layout", False, str(err))
        return report, None
    report.name = bundle.name
    if not _check_integrity(report, bundle, options):
        return report, None
    try:
        root = extract_bundle(bundle, workdir)
    except UserError as err:
        report.add("extraction", False, str(err))
        return report, None
    try:
        _check_contents(report, root, bundle, options)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    if not report.ok:
        shutil.rmtree(root, ignore_errors=True)
        return report, None
    return report, root


def _check_contents(report: VerificationReport, root: Path, bundle: BundleArchive, options: GateOptions) -> None:
    configs = _check_configs(report, root, bundle.members)
    metadata = _check_metadata(report, root, options.schema_path)
    state = _check_weights(report, root)
    _check_large_files(report, root)
    if not options.check_networks:
        report.add("network", None, "network checks not requested (nothing loaded or run)")
        return
    if configs is None or metadata is None or state is None or not report.ok:
        report.add("network", None, "skipped after an earlier failure")
        return
    network = _rebuild_network(report, root, configs, metadata, state)
    if network is not None:
        _check_torchscript(report, root, configs, metadata, state, network, options)


def receive_bundle(
    archive: str | os.PathLike,
    parent: str | os.PathLike,
    *,
    trust: str | os.PathLike | None = None,
    expect_sha256: str | None = None,
    options: GateOptions | None = None,
) -> Path:
    """A received bundle zip, gated and extracted under ``parent`` (once: a rerun with the same zip reuses it).

    The zip is extracted into ``parent/.STEM-DIGEST.partial`` and renamed to ``parent/.STEM-DIGEST`` only when the
    whole gate passed (its report is kept there as ``gate.json``); on any failure the partial folder is removed.

    Args:
        archive: the zip.
        parent: where to extract (a run's output folder).
        trust: see :class:`GateOptions`.
        expect_sha256: see :class:`GateOptions`.
        options: all the gate's options (``trust`` / ``expect_sha256`` given here win).

    Returns:
        The folder holding the bundle (``.../NAME``).

    Raises:
        UserError: ``"<zip>: refused by the bundle gate: <first failure>"``.
    """
    from dataclasses import replace

    options = options or GateOptions()
    if trust is not None or expect_sha256 is not None:
        options = replace(
            options,
            trust=trust if trust is not None else options.trust,
            expect_sha256=expect_sha256 if expect_sha256 is not None else options.expect_sha256,
        )
    path = Path(archive)
    digest = sha256_of_file(path)
    parent = Path(parent)
    target = parent / f".{path.stem}-{digest[:16]}"
    if options.expect_sha256 is not None and digest != options.expect_sha256.strip().lower():
        raise UserError(f"{path}: refused by the bundle gate: its sha256 {digest[:16]}... is not the expected one")
    record = target / _GATE_RECORD
    if record.is_file():
        previous = json.loads(record.read_text(encoding="utf-8"))
        if options.trust is None or previous.get("origin_checked"):
            children = [p for p in target.iterdir() if p.is_dir()]
            if len(children) == 1:
                return children[0]
    staging = parent / f".{path.stem}-{digest[:16]}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        report, root = check_bundle(path, staging, options=options)
        if root is None:
            raise UserError(f"{path}: refused by the bundle gate: {report.first_failure.detail}")
        if not report.origin_checked:
            logger.warning("%s: origin not checked (give --trust PUBKEY or --expect-sha256 DIGEST)", path)
        (staging / _GATE_RECORD).write_text(
            json.dumps({"lines": report.lines(), "origin_checked": report.origin_checked}, indent=2) + "\n"
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / root.name
