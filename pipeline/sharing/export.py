"""``aamct bundle export``: a trained bundle -> ``NAME.zip`` a collaborator can verify and run with MONAI alone.

The zip is named ``NAME_vVERSION.zip`` (the model zoo's convention, what ``monai.bundle download`` fetches) and
holds MONAI's archive layout, every member under ``NAME/``::

    NAME/configs/metadata.json              release version, changelog, weights digest, model card, eval_metrics,
                                            operating point
    NAME/configs/inference.json ...         the source bundle's configs (they import ``pipeline``), with portable
                                            paths (bundle_root ".", no repository or absolute path)
    NAME/configs/inference_torchscript.json stock-MONAI inference on models/model_dense.ts (no ``pipeline`` anywhere)
    NAME/models/model.pt                    the network's state dict (loadable with ``weights_only=True``)
    NAME/models/model.ts                    TorchScript of the network: (B, 1, x, y, z) -> (B, C) logits, exactly
                                            what ``network_data_format`` in metadata.json describes
    NAME/models/model_dense.ts              TorchScript of ``DenseClassifier(network)``: the dense class-logit map
    NAME/models/operating_point.json        the frozen threshold (read by ``aamct infer``), when a report is given
    NAME/docs/README.md                     the model card (metadata + run summary + datalist counts)
    NAME/large_files.yml                    the model files with their sha256 (model-zoo convention; stock
                                            ``python -m monai.bundle download_large_files`` checks them)
    NAME/LICENSE
    NAME/checksums.sha256                   sha256 of every other member (its own digest is in the zip comment)

Why two TorchScript files: ``model.ts`` is the model the metadata describes, so stock MONAI tools
(``verify_net_in_out``) and anyone loading it get ``(B, C)`` logits. The package scores a whole volume by running
MONAI's sliding window over the network's dense class-activation map and averaging the stitched map
(:class:`pipeline.inference.DenseClassificationInferer`); ``model_dense.ts`` is that map, so the recipient's
``inference_torchscript.json`` does the same with stock ``SlidingWindowInferer`` + a spatial mean + softmax and gets
the same numbers for any volume size. The dense map is traced once; ``model.ts`` is that trace under a scripted
spatial mean (:class:`pipeline.networks.SpatialMeanClassifier`, checked against the network's own logits). The
exporter checks that on a synthetic CT volume before writing the zip
(``parity``), and that ``model.ts`` returns the shape the metadata states.

The release version is new only for new weights (:mod:`pipeline.sharing.release`): exporting the same weights again
keeps the version an earlier export in the output folder (or the source metadata) gave them.

Before zipping, the staged bundle is searched for the cohort's patient identifiers (:mod:`pipeline.sharing.phi_guard`)
and the metadata is validated against the repository's MONAI metadata schema; either failing stops the export.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.contracts.run_record import find_run_record, settings_for
from pipeline.errors import UserError
from pipeline.evaluation.handlers import RunSummary, read_run_summary
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.sharing.archive import BUNDLE_NAME_PATTERN, write_bundle_zip
from pipeline.sharing.metadata import VersionPart, metadata_problems, release_metadata
from pipeline.sharing.model_card import (
    MODEL_CARD_KEY,
    build_model_card,
    network_summary,
    render_model_card,
    summarize_datalist,
)
from pipeline.sharing.monai_logs import quiet_monai_bundle_logs
from pipeline.sharing.phi_guard import collect_phi_values, datalist_images, find_phi
from pipeline.sharing.release import (
    SOURCE_VERSION_KEY,
    WEIGHTS_DIGEST_KEY,
    earlier_releases,
    release_version,
    state_dict_sha256,
)
from pipeline.trust.checksums import digests_of_tree, format_checksums, sha256_of_file
from pipeline.trust.config_listing import code_references, load_config_file, references_to_package
from pipeline.trust.layout import (
    CHECKSUM_FILENAME,
    DENSE_MODEL_FILE,
    EAGER_CONFIG_CANDIDATES,
    LARGE_FILES,
    PORTABLE_PATHS,
    PROJECT_BUNDLE,
    SIGNATURE_FILENAME,
    TORCHSCRIPT_CONFIG,
)

__all__ = [
    "DENSE_MODEL_FILE",
    "EAGER_CONFIG_CANDIDATES",
    "LARGE_FILES",
    "PARITY_TOLERANCE",
    "PORTABLE_PATHS",
    "PROJECT_BUNDLE",
    "SHARED_PARAMETER_KEYS",
    "TORCHSCRIPT_CONFIG",
    "ExportResult",
    "config_path_problems",
    "export_bundle",
    "torchscript_parity",
    "write_synthetic_ct",
    "zip_name",
]

logger = logging.getLogger(__name__)

#: parameters copied from the eager config into the TorchScript config so both preprocess and window alike
SHARED_PARAMETER_KEYS = (
    "roi_size",
    "spacing",
    "hu_window",
    "body_threshold_hu",
    "sw_batch_size",
    "overlap",
    "blend_mode",
    "sigma_scale",
    "padding_mode",
)
#: largest accepted difference between eager and TorchScript-config probabilities
PARITY_TOLERANCE = 1e-5
_REPOSITORY_PREFIXES = ("runs/", "bundle/", "./runs/", "./bundle/")
_QUOTED_ABSOLUTE = re.compile(r"""['"](/|[A-Za-z]:[\\/])[^'"]*['"]""")
_DENSE_NET_ID = "_aamct_export_dense_network"
_LICENSE_CANDIDATES = ("LICENSE", "LICENSE.txt", "docs/license.txt", "docs/LICENSE")


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What :func:`export_bundle` wrote.

    Attributes:
        zip_path: the bundle zip.
        name: bundle name (top-level folder in the zip).
        version: the released version.
        previous_version: the source bundle's version.
        weights_sha256: digest of the shipped weights (:func:`pipeline.sharing.release.state_dict_sha256`).
        version_kept_from: the earlier release of the same weights whose version was kept (a zip name or
            ``"the source metadata"``); ``None`` when the export released a new version.
        zip_sha256: the zip's SHA-256 (publish it: recipients check it with ``verify --expect-sha256``).
        signed: whether the checksum file was signed (``sign_key``).
        members: member paths relative to ``NAME/``.
        parity_max_abs_diff: largest eager-vs-TorchScript-config probability difference on the synthetic volume,
            or ``None`` when the check was skipped.
        phi_fields_checked: DICOM keywords whose cohort values were searched for (empty: no DICOM headers).
        notes: warnings for the user (e.g. no evaluation report).
    """

    zip_path: Path
    name: str
    version: str
    previous_version: str
    members: tuple[str, ...]
    parity_max_abs_diff: float | None
    phi_fields_checked: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    weights_sha256: str = ""
    version_kept_from: str | None = None
    zip_sha256: str = ""
    signed: bool = False

    def summary(self) -> str:
        """Lines for the terminal."""
        lines = [
            f"exported {self.zip_path} ({self.name} {self.previous_version} -> {self.version}, "
            f"{len(self.members)} members)",
            "  parity: "
            + (
                f"TorchScript config vs eager model max |dp| = {self.parity_max_abs_diff:.2e}"
                if self.parity_max_abs_diff is not None
                else "skipped"
            ),
            "  PHI guard: "
            + (
                f"searched for the cohort's {', '.join(self.phi_fields_checked)} values: none found"
                if self.phi_fields_checked
                else "no DICOM patient fields to search for (no datalist, or NIfTI only)"
            ),
        ]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(
            f"  sha256 of the zip: {self.zip_sha256} (publish it: recipients run aamct bundle verify "
            f"--expect-sha256 {self.zip_sha256[:12]}...)"
            + ("; checksums signed (recipients: --trust YOUR_KEY.pub)" if self.signed else "")
        )
        lines.append(f"  next: aamct bundle verify {self.zip_path}")
        return "\n".join(lines)


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: {what} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} must be a JSON object")
    return data


def _eager_config(configs: Path, explicit: str | None) -> Path:
    if explicit is not None:
        path = configs / explicit
        if not path.is_file():
            raise UserError(f"{path}: network config not found")
        return path
    for candidate in EAGER_CONFIG_CANDIDATES:
        path = configs / candidate
        if path.is_file() and "network_def" in load_config_file(path):
            return path
    raise UserError(f"{configs}: no config with a network_def ({', '.join(EAGER_CONFIG_CANDIDATES)})")


def _eager_parser(config: Path, meta: Path, bundle_root: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=str(config))
    parser.read_meta(f=str(meta))
    parser["bundle_root"] = str(bundle_root)
    return parser


def _parsed(parser, key: str, config: Path) -> Any:
    try:
        return parser.get_parsed_content(key)
    except UserError:
        raise
    except Exception as err:
        raise UserError(
            f"{config}: cannot build '{key}' ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from err


def _find_license(bundle_dir: Path) -> Path:
    for candidate in _LICENSE_CANDIDATES:
        path = bundle_dir / candidate
        if path.is_file():
            return path
    raise UserError(
        f"{bundle_dir}: no LICENSE (looked for {', '.join(_LICENSE_CANDIDATES)}); a shared bundle needs one"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _sync_torchscript_config(ts_config: dict[str, Any], eager_parser, eager_path: Path) -> dict[str, Any]:
    """Copy the preprocessing / window parameters the eager config defines into the TorchScript config."""
    synced = dict(ts_config)
    for key in SHARED_PARAMETER_KEYS:
        if key in eager_parser.get() and key in synced:
            synced[key] = _jsonable(_parsed(eager_parser, key, eager_path))
    return synced


def write_synthetic_ct(path: str | Path, *, shape: tuple[int, int, int] = (56, 48, 28), seed: int = 0) -> Path:
    """A small CT-like NIfTI (air, body, two lungs, noise; HU, RAS 2 x 2 x 4 mm) for the export's parity check.

    Args:
        path: ``.nii.gz`` file to write.
        shape: voxels (x, y, z).
        seed: noise seed.

    Returns:
        ``path``.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 <= 1.0
    volume[body] = 40.0
    for side in (-0.4, 0.4):
        lung = ((x - side) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 1.1) ** 2 <= 1.0
        volume[lung] = -850.0
    lesion = ((x - 0.4) / 0.1) ** 2 + ((y - 0.1) / 0.1) ** 2 + (z / 0.2) ** 2 <= 1.0
    volume[lesion] = -450.0
    volume += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    path = Path(path)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), str(path))
    return path


def torchscript_parity(
    bundle_root: str | Path,
    *,
    eager_config: str | Path,
    sample: str | Path,
    torchscript_config: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of one volume through the eager config and through the TorchScript config.

    Eager: the eager config's ``preprocessing`` and ``inferer`` (or :func:`pipeline.transforms.infer_transforms` and
    :class:`pipeline.inference.DenseClassificationInferer` built from its parameters when it has neither, e.g.
    ``train.json``), its ``network_def`` with ``models/model.pt`` loaded. TorchScript: the ``preprocessing``,
    ``network``, ``inferer`` and ``postprocessing`` of ``configs/inference_torchscript.json``, on the CPU.

    Args:
        bundle_root: bundle folder (``configs/``, ``models/model.pt``, ``models/model.ts``).
        eager_config: the config holding ``network_def`` (name under ``configs/`` or a path).
        sample: a volume (NIfTI file or DICOM series folder).
        torchscript_config: default ``configs/inference_torchscript.json``.

    Returns:
        ``(eager_probabilities, torchscript_probabilities)``, each of shape ``(num_classes,)``.

    Raises:
        UserError: if a config component cannot be built.
    """
    from monai.bundle import ConfigParser

    from pipeline.inference import DenseClassificationInferer
    from pipeline.inference.bundle import load_weights
    from pipeline.transforms import infer_transforms

    root = Path(bundle_root)
    eager_path = Path(eager_config) if Path(eager_config).is_file() else root / "configs" / str(eager_config)
    meta = root / "configs" / "metadata.json"
    eager = _eager_parser(eager_path, meta, root)
    eager["device"] = "$torch.device('cpu')"
    if "allow_out_of_scope" in eager.get():
        # the parity volume is a small phantom: what is compared is the two configs' numbers, not its anatomy
        eager["allow_out_of_scope"] = True
    network = load_weights(_parsed(eager, "network_def", eager_path), root / "models" / "model.pt")
    params = {k: _parsed(eager, k, eager_path) for k in SHARED_PARAMETER_KEYS if k in eager.get()}
    if "preprocessing" in eager.get():
        preprocessing = _parsed(eager, "preprocessing", eager_path)
    else:
        preprocessing = infer_transforms(
            **{k: params[k] for k in ("roi_size", "spacing", "hu_window", "body_threshold_hu") if k in params}
        )
    if "inferer" in eager.get():
        inferer = _parsed(eager, "inferer", eager_path)
    else:
        renamed = {"blend_mode": "mode"}
        inferer = DenseClassificationInferer(
            **{
                renamed.get(k, k): params[k]
                for k in ("roi_size", "sw_batch_size", "overlap", "blend_mode", "sigma_scale", "padding_mode")
                if k in params
            }
        )
    with torch.no_grad():
        image = preprocessing({"image": str(sample)})["image"]
        eager_probabilities = torch.softmax(inferer(image[None], network), dim=1)[0]

    ts_path = Path(torchscript_config) if torchscript_config is not None else root / "configs" / TORCHSCRIPT_CONFIG
    scripted = ConfigParser()
    scripted.read_config(f=str(ts_path))
    scripted.read_meta(f=str(meta))
    scripted["bundle_root"] = str(root)
    scripted["device"] = "$torch.device('cpu')"
    ts_preprocessing = _parsed(scripted, "preprocessing", ts_path)
    ts_network = _parsed(scripted, "network", ts_path)
    ts_inferer = _parsed(scripted, "inferer", ts_path)
    ts_postprocessing = _parsed(scripted, "postprocessing", ts_path)
    with torch.no_grad():
        ts_image = ts_preprocessing({"image": str(sample)})["image"]
        dense = ts_inferer(ts_image[None], ts_network)
        ts_probabilities = ts_postprocessing({"pred": dense[0]})["pred"]
    return (
        np.asarray(eager_probabilities.detach().cpu().numpy(), dtype=np.float64),
        np.asarray(torch.as_tensor(ts_probabilities).detach().cpu().numpy(), dtype=np.float64),
    )


def _export_dense_torchscript(
    *,
    root: Path,
    eager_config: Path,
    net_id: str,
    state: Mapping[str, torch.Tensor],
    input_shape: list[int],
) -> None:
    """Trace ``DenseClassifier(network)`` to ``models/model_dense.ts`` with MONAI's ``ckpt_export`` (which embeds the
    metadata and the config in the file); :func:`_classifier_from_dense` makes ``model.ts`` from that trace."""
    from monai.bundle import ckpt_export

    with tempfile.TemporaryDirectory(prefix=".aamct-ts-") as tmp:
        checkpoint = Path(tmp) / "state.pt"
        # ckpt_export loads the checkpoint into the module it exports; the dense wrapper keeps the network under model.
        torch.save({f"model.{key}": value for key, value in state.items()}, checkpoint)
        try:
            with quiet_monai_bundle_logs():
                ckpt_export(
                    filepath=str(root / "models" / DENSE_MODEL_FILE),
                    ckpt_file=str(checkpoint),
                    meta_file=str(root / "configs" / "metadata.json"),
                    config_file=str(eager_config),
                    use_trace=True,
                    input_shape=input_shape,
                    # torch's own check_trace re-traces and re-runs the model (three quarters of the export time);
                    # verify=True compares the traced and eager outputs instead, and the parity check follows
                    converter_kwargs={"verify": True, "rtol": 1e-4, "atol": 1e-5, "check_trace": False},
                    bundle_root=str(root),
                    net_id=_DENSE_NET_ID,
                    **{_DENSE_NET_ID: {"_target_": "pipeline.networks.DenseClassifier", "model": f"@{net_id}"}},
                )
        except UserError:
            raise
        except Exception as err:
            raise UserError(
                f"{eager_config}: TorchScript export of '{net_id}' to models/{DENSE_MODEL_FILE} failed "
                f"({type(err).__name__}: {' '.join(str(err).split())[:300]})"
            ) from err


def _classifier_from_dense(root: Path, eager_config: Path, network: torch.nn.Module, input_shape: list[int]) -> None:
    """``models/model.ts``: the traced dense map of ``models/model_dense.ts`` under a scripted spatial mean.

    One trace per export (the classifier and its dense map share every layer; a second trace cost as much as the
    first). Checked against the eager network on a seeded input as MONAI's converter checks a trace (``rtol`` 1e-4,
    ``atol`` 1e-5), and saved with the same embedded metadata and config as ``ckpt_export`` writes.
    """
    from monai.bundle import ConfigParser
    from monai.data import save_net_with_metadata

    from pipeline.networks import SpatialMeanClassifier

    dense = torch.jit.load(str(root / "models" / DENSE_MODEL_FILE), map_location="cpu").eval()
    classifier = torch.jit.script(SpatialMeanClassifier(dense).eval())
    sample = torch.rand(input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = network.eval()(sample), classifier(sample)
    if expected.shape != got.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise UserError(
            f"{eager_config}: models/model.ts (the spatial mean of the dense map) differs from the network's logits "
            f"(max |diff| {float((got - expected).abs().max()) if got.shape == expected.shape else 'shape'}); the "
            "network's class_activation must average to its forward"
        )
    metadata = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    config = {f"{eager_config.stem}.json": json.dumps(ConfigParser.load_config_file(str(eager_config))).encode()}
    save_net_with_metadata(
        classifier,
        str(root / "models" / "model.ts"),
        include_config_vals=False,
        append_timestamp=False,
        meta_values=metadata,
        more_extra_files=config,
    )


def zip_name(name: str, version: str) -> str:
    """``NAME_vVERSION.zip``: the model zoo's file name, which ``monai.bundle download`` looks for."""
    return f"{name}_v{version}.zip"


def _looks_like_repository_path(text: str) -> bool:
    stripped = text.strip()
    return (
        os.path.isabs(stripped)
        or bool(re.match(r"^[A-Za-z]:[\\/]", stripped))
        or stripped in ("bundle", "runs", "./bundle", "./runs")
        or stripped.startswith(_REPOSITORY_PREFIXES)
    )


def config_path_problems(config: Any, *, file: str) -> list[str]:
    """Absolute or repository paths in a config (plain strings and quoted literals inside ``$`` expressions).

    Args:
        config: the parsed config.
        file: its name, for the messages.

    Returns:
        ``"<file> <key path>: <value>"`` per offending value; empty when the config is portable.
    """
    problems: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{where}#{key}" if where else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{where}#{index}")
        elif isinstance(value, str):
            if value.startswith("$"):
                # a quoted '/...' literal is absolute unless it is appended to a path ("@bundle_root + '/eval'")
                if any(value[: m.start()].rstrip()[-1:] != "+" for m in _QUOTED_ABSOLUTE.finditer(value)):
                    problems.append(f"{file} {where}: {value[:120]}")
            elif not value.startswith(("@", "%")) and _looks_like_repository_path(value):
                problems.append(f"{file} {where}: {value[:120]}")

    walk(config, "")
    return problems


def _portable_configs(configs: Path) -> None:
    """Give every staged config's path keys their :data:`PORTABLE_PATHS` value; refuse any other local path."""
    for path in sorted(configs.glob("*.json")):
        if path.name == "metadata.json":
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            continue
        changed = False
        for key, portable in PORTABLE_PATHS.items():
            value = config.get(key)
            # expressions such as "$os.path.join(@bundle_root, 'eval')" are relative already
            if isinstance(value, str) and not value.startswith(("$", "@", "%")) and value != portable:
                config[key] = portable
                changed = True
        problems = config_path_problems(config, file=f"configs/{path.name}")
        if problems:
            raise UserError(
                f"{problems[0]} is a local path; a shared bundle must hold relative paths only (set it to a path "
                "relative to the bundle, or to an expression on @bundle_root, in the source config)"
            )
        if changed:
            write_text_atomic(path, json.dumps(config, indent=2) + "\n")


def _write_large_files(root: Path, files: list[str]) -> Path:
    """``large_files.yml`` of the model zoo: each model file with its sha256 (``url`` empty: it is in the zip)."""
    import yaml

    entries = [
        {"path": name, "url": "", "hash_val": sha256_of_file(root / name), "hash_type": "sha256"} for name in files
    ]
    text = (
        "# model files of this bundle with their sha256 (MONAI model-zoo convention). They ship in the zip, so url is\n"
        "# empty; `python -m monai.bundle download_large_files --bundle_path .` checks every digest (offline).\n"
        + yaml.safe_dump({"large_files": entries}, sort_keys=False)
    )
    return write_text_atomic(root / LARGE_FILES, text)


def _check_classifier_shape(root: Path, metadata: Mapping[str, Any], input_shape: list[int]) -> tuple[int, ...]:
    """``models/model.ts`` must return the ``(B, C, *spatial_shape)`` the metadata's output describes."""
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    spec = next(iter(outputs.values()), {}) if outputs else {}
    expected = (input_shape[0], int(spec.get("num_channels", 0)), *[int(v) for v in spec.get("spatial_shape") or []])
    scripted = torch.jit.load(str(root / "models" / "model.ts"), map_location="cpu").eval()
    with torch.no_grad():
        shape = tuple(scripted(torch.zeros(input_shape)).shape)
    if shape != expected:
        raise UserError(
            f"configs/metadata.json: network_data_format describes outputs of shape {expected}, but models/model.ts "
            f"returns {shape}; fix the outputs entry of the source metadata"
        )
    return shape


def _copy_tree_files(source: Path, target: Path, *, skip: set[str]) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or relative.as_posix() in skip or any(p.startswith(".") for p in relative.parts):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def _recorded_overrides(checkpoint: Path, config: Path) -> dict[str, Any]:
    """The run record's settings that the exported config has as keys (nothing without a record)."""
    settings = settings_for(checkpoint)
    if not settings.recorded:
        return {}
    keys = set(json.loads(config.read_text(encoding="utf-8")))
    recorded = settings.config_overrides()
    logger.info("%s: network and preprocessing from the run record %s: %s", checkpoint, settings.record, recorded)
    return {key: value for key, value in recorded.items() if key.split("#")[0] in keys}


def _dense_description(network: torch.nn.Module, input_shape: list[int]) -> dict[str, Any]:
    """What ``models/model_dense.ts`` returns for the metadata's input size (recorded in metadata.json)."""
    from pipeline.networks import DenseClassifier

    with torch.no_grad():
        shape = tuple(DenseClassifier(network).eval()(torch.zeros(input_shape)).shape)
    stride = [int(round(i / o)) for i, o in zip(input_shape[2:], shape[2:], strict=True)]
    return {
        "file": f"models/{DENSE_MODEL_FILE}",
        "type": "logits",
        "format": "dense class-logit map",
        "num_channels": int(shape[1]),
        "input_shape": list(input_shape[1:]),
        "output_shape": list(shape[1:]),
        "output_stride": stride,
        "description": "(B, C_in, x, y, z) -> (B, C, about x/s, y/s, z/s) with s = output_stride; the case logits are "
        "its spatial mean (configs/inference_torchscript.json: sliding window, spatial mean, softmax)",
    }


def _out_zip(out: Path, name: str | None, version: str) -> tuple[str, Path]:
    """Bundle name and zip path: ``out`` is a folder, or a ``NAME.zip`` whose stem names the bundle."""
    if out.suffix.lower() == ".zip":
        stem = out.stem
        match = re.match(r"^(.+)_v\d+\.\d+\.\d+$", stem)
        bundle_name = name or (match.group(1) if match else stem)
        return bundle_name, out.parent / zip_name(bundle_name, version)
    if (out.exists() and not out.is_dir()) or (out.suffix and not out.is_dir()):
        raise UserError(f"{out}: the output must be a folder or a .zip path")
    if not name:
        raise UserError(f"{out}: give --name when --out is a folder (the zip is named NAME_vVERSION.zip)")
    return name, out / zip_name(name, version)


def export_bundle(
    bundle_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    name: str | None = None,
    bump: VersionPart = "patch",
    change: str | None = None,
    network_config: str | None = None,
    net_id: str = "network_def",
    overrides: Mapping[str, Any] | None = None,
    check_parity: bool = True,
    check_phi: bool = True,
    sign_key: str | os.PathLike | None = None,
    model_note: str | None = None,
) -> ExportResult:
    """Export a trained bundle as a shareable, checksummed MONAI bundle zip ``NAME_vVERSION.zip``.

    The source bundle is not modified; everything is staged in a temporary folder beside the zip and the zip is
    written atomically.

    Args:
        bundle_dir: source bundle folder (``configs/metadata.json``, a config with ``network_def``, ``LICENSE``).
        out: the folder to write ``NAME_vVERSION.zip`` into (``name`` required), or a ``NAME.zip`` path whose
            stem names the bundle (the file written is ``NAME_vVERSION.zip`` beside it).
        checkpoint: trained weights (default ``bundle_dir/models/model.pt``); a bare state dict or one nested under
            ``model`` / ``network`` / ``state_dict``, read with ``weights_only=True``. The run record beside it
            (``models/run.json``) gives the network and preprocessing.
        report: the run's ``metrics.json`` (its summary, read by
            :func:`pipeline.evaluation.handlers.read_run_summary`) for the model card, ``eval_metrics`` and the
            frozen threshold.
        datalist: the training datalist JSON, for the card's data summary and the PHI guard.
        name: bundle name (default: the zip's stem).
        bump: semantic-version part to increase when the weights are new (the same weights keep the version of
            their earlier export, :mod:`pipeline.sharing.release`).
        change: changelog text for the version (default: the earlier release's entry when the version is kept, else
            a description of this export).
        network_config: config file under ``configs/`` holding ``net_id`` (default: first of
            :data:`EAGER_CONFIG_CANDIDATES` that has it).
        net_id: id of the network definition in that config.
        overrides: keys replaced in the exported copy of that config (e.g. ``{"network_name": "aam_student"}`` for
            a run trained with a network other than the config's default); the source bundle is not touched.
        check_parity: run the eager-vs-TorchScript-config check on a synthetic volume (recommended).
        check_phi: search the staged bundle for the datalist's DICOM patient identifiers.
        sign_key: an Ed25519 private key (PEM, ``aamct bundle keygen``): ``checksums.sha256`` is signed with it
            (``checksums.sha256.sig``), so a recipient can check the origin with ``verify --trust KEY.pub``.
        model_note: why this model is the one exported (the model card's "Why this model" line), e.g. why the
            trained network and not its distilled student.

    Returns:
        The :class:`ExportResult`.

    Raises:
        UserError: for a missing or invalid input, a metadata schema violation, a local path in a config, a
            failed TorchScript export, a model.ts whose output is not what the metadata says, a parity failure, or
            a patient identifier found in the staged bundle.
    """
    source = Path(bundle_dir)
    out = Path(out)
    configs = source / "configs"
    if not configs.is_dir():
        raise UserError(
            f"{source}: not a bundle folder (no configs/); for a training run use "
            f"--bundle bundle --checkpoint {source / 'models' / 'model.pt'}"
        )
    source_meta = _read_json_object(configs / "metadata.json", "bundle metadata")
    if "version" not in source_meta:
        raise UserError(f"{configs / 'metadata.json'}: missing required key 'version' (cannot bump the bundle version)")
    source_version = str(source_meta["version"])
    bundle_name, out_zip = _out_zip(out, name, source_version)  # the folder and name; the version follows below
    if not BUNDLE_NAME_PATTERN.match(bundle_name):
        raise UserError(f"{out}: bundle name {bundle_name!r} must be letters, digits, '_', '-' or '.'")
    checkpoint_path = Path(checkpoint) if checkpoint is not None else source / "models" / "model.pt"
    if not checkpoint_path.is_file():
        raise UserError(f"{checkpoint_path}: trained weights not found (train first, or pass --checkpoint)")
    if sign_key is not None and not Path(sign_key).is_file():
        raise UserError(f"{sign_key}: signing key not found (create one with aamct bundle keygen)")
    from pipeline.inference.bundle import load_weights, read_state_dict

    weights_sha256 = state_dict_sha256(read_state_dict(checkpoint_path))
    release = release_version(
        source_meta, weights_sha256=weights_sha256, earlier=earlier_releases(out_zip.parent, bundle_name), part=bump
    )
    out_zip = out_zip.parent / zip_name(bundle_name, release.version)
    license_path = _find_license(source)
    run_summary: RunSummary | None = read_run_summary(report) if report is not None else None
    datalist_data = _read_json_object(Path(datalist), "datalist") if datalist is not None else None
    data_summary = summarize_datalist(datalist_data) if datalist_data is not None else None
    eager_source = _eager_config(configs, network_config)
    ts_source = configs / TORCHSCRIPT_CONFIG
    if not ts_source.is_file():
        ts_source = PROJECT_BUNDLE / "configs" / TORCHSCRIPT_CONFIG
        if not ts_source.is_file():
            raise UserError(f"{configs}: no {TORCHSCRIPT_CONFIG}, and the project's default is missing")
        logger.info("%s has no %s: using the project's %s", configs, TORCHSCRIPT_CONFIG, ts_source)
    ts_imports = references_to_package(code_references(load_config_file(ts_source), file=ts_source.name), "pipeline")
    if ts_imports:
        raise UserError(f"{ts_source}: {ts_imports[0].key_path} uses the pipeline package; recipients only have MONAI")

    notes: list[str] = []
    if release.kept_from is not None:
        notes.append(
            f"weights unchanged since {release.kept_from} (sha256 {weights_sha256[:12]}): version {release.version} "
            "kept"
        )
    if run_summary is None:
        notes.append("no --report: the model card shows no measured performance and no frozen threshold")
    if data_summary is None:
        notes.append("no --datalist: the model card has no training data summary and the PHI guard had no headers")

    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{bundle_name}-export-", dir=out_zip.parent) as tmp:
        root = Path(tmp) / bundle_name
        (root / "configs").mkdir(parents=True)
        (root / "models").mkdir()
        (root / "docs").mkdir()
        _copy_tree_files(configs, root / "configs", skip={"metadata.json", TORCHSCRIPT_CONFIG})
        _portable_configs(root / "configs")  # a local path fails here, before any heavy work (again after staging)
        docs = source / "docs"
        if docs.is_dir():
            _copy_tree_files(docs, root / "docs", skip={"README.md", "license.txt", "LICENSE"})
            if (docs / "README.md").is_file():
                shutil.copyfile(docs / "README.md", root / "docs" / "source_README.md")
        shutil.copyfile(license_path, root / "LICENSE")

        # metadata first: ckpt_export embeds it in the TorchScript files
        weights_note = f"weights sha256 {weights_sha256[:12]}"
        released = release_metadata(
            source_meta,
            version=release.version,
            change=change
            or f"exported with aamct bundle export ({weights_note}; model.ts classifier, model_dense.ts dense map)",
        )
        if change is None and release.changelog_entry:
            released["changelog"][release.version] = release.changelog_entry  # the same release, told the same
        released[WEIGHTS_DIGEST_KEY] = weights_sha256
        released[SOURCE_VERSION_KEY] = (
            source_meta.get(SOURCE_VERSION_KEY, source_version)
            if release.kept_from == "the source metadata"
            else source_version
        )
        card = build_model_card(released, name=bundle_name, run_summary=run_summary, data_summary=data_summary)
        card["dense_model"] = DENSE_MODEL_FILE
        released[MODEL_CARD_KEY] = card
        # the run's own numbers, as its metrics.json holds them (the source's placeholder is dropped without one)
        released["eval_metrics"] = run_summary.headline.eval_metrics() if run_summary is not None else {}
        if card.get("operating_threshold"):
            released["operating_point"] = {
                "threshold": card["operating_threshold"]["value"],
                "method": card["operating_threshold"].get("method"),
                "chosen_on": card["operating_threshold"].get("chosen_on"),
            }
        problems = metadata_problems(released)
        if problems:
            raise UserError(f"{configs / 'metadata.json'}: does not match the MONAI metadata schema: {problems[0]}")
        meta_path = write_json_atomic(root / "configs" / "metadata.json", released)

        eager_staged = root / "configs" / eager_source.name
        # the run's models/run.json (network and preprocessing of these weights) unless the caller overrides a key
        overrides = {**_recorded_overrides(checkpoint_path, eager_staged), **dict(overrides or {})}
        if overrides:
            staged = json.loads(eager_staged.read_text(encoding="utf-8"))
            for key, value in overrides.items():
                *parents, leaf = key.split("#")  # "network_def#width" is the bundle CLI's nested form
                scope = staged
                for part in parents:
                    scope = scope.get(part) if isinstance(scope, dict) else None
                if not isinstance(scope, dict) or (not parents and leaf not in scope):
                    raise UserError(f"{eager_source}: --set {key}: no such key in the config")
                scope[leaf] = value
            write_text_atomic(eager_staged, json.dumps(staged, indent=2) + "\n")
        eager = _eager_parser(eager_staged, meta_path, root)
        eager["device"] = "$torch.device('cpu')"
        network = load_weights(_parsed(eager, net_id, eager_staged), checkpoint_path).eval()
        record_path = find_run_record(checkpoint_path)
        card["network"] = network_summary(
            json.loads(record_path.read_text(encoding="utf-8")) if record_path is not None else None,
            parameters=sum(p.numel() for p in network.parameters()),
            why=model_note,
        )
        state = {key: value.detach().cpu().clone() for key, value in network.state_dict().items()}
        torch.save(state, root / "models" / "model.pt")

        ts_config = _sync_torchscript_config(load_config_file(ts_source), eager, eager_staged)
        write_text_atomic(root / "configs" / TORCHSCRIPT_CONFIG, json.dumps(ts_config, indent=2) + "\n")
        _portable_configs(root / "configs")
        roi = ts_config.get("roi_size") or (released["network_data_format"]["inputs"]["image"]["spatial_shape"])
        inputs = released.get("network_data_format", {}).get("inputs", {})
        in_channels = int(next(iter(inputs.values()), {}).get("num_channels", 1)) if inputs else 1
        input_shape = [1, in_channels, *roi]
        released["dense_output"] = _dense_description(network, input_shape)
        meta_path = write_json_atomic(root / "configs" / "metadata.json", released)
        _export_dense_torchscript(
            root=root, eager_config=eager_staged, net_id=net_id, state=state, input_shape=input_shape
        )
        _classifier_from_dense(root, eager_staged, network, input_shape)
        _check_classifier_shape(root, released, input_shape)
        if card.get("operating_threshold"):
            write_json_atomic(root / "models" / "operating_point.json", released["operating_point"])
        write_text_atomic(root / "docs" / "README.md", render_model_card(card))
        _write_large_files(root, ["models/model.pt", "models/model.ts", f"models/{DENSE_MODEL_FILE}"])

        parity = None
        if check_parity:
            sample = write_synthetic_ct(Path(tmp) / "parity_sample.nii.gz")
            eager_p, ts_p = torchscript_parity(root, eager_config=eager_staged, sample=sample)
            parity = float(np.max(np.abs(eager_p - ts_p)))
            if not parity <= PARITY_TOLERANCE:
                raise UserError(
                    f"{root.name}/configs/{TORCHSCRIPT_CONFIG}: probabilities differ from the eager model by "
                    f"{parity:.2e} (> {PARITY_TOLERANCE:g}) on a synthetic volume; its preprocessing or window "
                    f"settings no longer match {eager_source.name}"
                )

        phi_fields: tuple[str, ...] = ()
        if check_phi and datalist_data is not None:
            needles = collect_phi_values(datalist_images(datalist_data))
            phi_fields = tuple(sorted(needles))
            hits = find_phi(root, needles)
            if hits:
                raise UserError(
                    f"{out_zip}: export stopped: {hits[0].file} contains a {hits[0].keyword} value of the cohort "
                    f"({len(hits)} finding(s)); remove it from the source bundle"
                )

        write_text_atomic(root / CHECKSUM_FILENAME, format_checksums(digests_of_tree(root)))
        if sign_key is not None:
            from pipeline.trust.signing import sign_checksums

            write_text_atomic(
                root / SIGNATURE_FILENAME, sign_checksums((root / CHECKSUM_FILENAME).read_bytes(), sign_key)
            )
        members = tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))
        write_bundle_zip(root, out_zip, name=bundle_name)

    return ExportResult(
        zip_path=out_zip,
        name=bundle_name,
        version=released["version"],
        previous_version=source_version,
        members=members,
        parity_max_abs_diff=parity,
        phi_fields_checked=phi_fields,
        notes=tuple(notes),
        weights_sha256=weights_sha256,
        version_kept_from=release.kept_from,
        zip_sha256=sha256_of_file(out_zip),
        signed=sign_key is not None,
    )
