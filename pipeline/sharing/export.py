"""``aamct bundle export``: a trained bundle -> ``NAME.zip`` a collaborator can verify and run with MONAI alone.

What the zip holds (MONAI's archive layout, every member under ``NAME/``)::

    NAME/configs/metadata.json              version bumped, changelog entry, model card, frozen operating point
    NAME/configs/inference.json ...         the source bundle's configs (they import ``pipeline``)
    NAME/configs/inference_torchscript.json stock-MONAI inference on models/model.ts (no ``pipeline`` anywhere)
    NAME/models/model.pt                    the network's state dict (loadable with ``weights_only=True``)
    NAME/models/model.ts                    TorchScript of ``DenseClassifier(network)`` via MONAI ``ckpt_export``
    NAME/models/operating_point.json        the frozen threshold (read by ``aamct infer``), when a report is given
    NAME/docs/README.md                     the model card (metadata + evaluation report + datalist counts)
    NAME/LICENSE
    NAME/checksums.sha256                   sha256 of every other member (its own digest is in the zip comment)

Why the TorchScript model returns the dense class map rather than logits: the package scores a case by running
MONAI's sliding window over the network's dense class-activation map and averaging the stitched map
(:class:`pipeline.inference.DenseClassificationInferer`). Tracing ``DenseClassifier(network)`` lets the recipient's
config do the same with stock ``SlidingWindowInferer`` + a spatial mean + softmax, so both paths compute the same
numbers for any volume size. The exporter checks that on a synthetic CT volume before writing the zip (``parity``).

Before zipping, the staged bundle is searched for the cohort's patient identifiers (:mod:`pipeline.sharing.phi_guard`)
and the metadata is validated against the repository's MONAI metadata schema; either failing stops the export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.sharing.archive import BUNDLE_NAME_PATTERN, write_bundle_zip
from pipeline.sharing.checksums import CHECKSUM_FILENAME, digests_of_tree, format_checksums, sha256_of_file
from pipeline.sharing.config_listing import code_references, load_config_file, references_to_package
from pipeline.sharing.metadata import VersionPart, metadata_problems, release_metadata
from pipeline.sharing.model_card import (
    MODEL_CARD_KEY,
    build_model_card,
    read_report,
    render_model_card,
    summarize_datalist,
)
from pipeline.sharing.monai_logs import quiet_monai_bundle_logs
from pipeline.sharing.phi_guard import collect_phi_values, datalist_images, find_phi

__all__ = [
    "EAGER_CONFIG_CANDIDATES",
    "PARITY_TOLERANCE",
    "PROJECT_BUNDLE",
    "SHARED_PARAMETER_KEYS",
    "TORCHSCRIPT_CONFIG",
    "ExportResult",
    "export_bundle",
    "torchscript_parity",
    "write_synthetic_ct",
]

logger = logging.getLogger(__name__)

#: the recipient's config, built on models/model.ts
TORCHSCRIPT_CONFIG = "inference_torchscript.json"
#: configs searched (in order) for the eager ``network_def`` and the preprocessing / inferer parameters
EAGER_CONFIG_CANDIDATES = ("inference.json", "train.json")
#: the repository's own bundle: its inference_torchscript.json is used when the source bundle has none
PROJECT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
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


def _export_torchscript(
    *, root: Path, eager_config: Path, net_id: str, state: Mapping[str, torch.Tensor], input_shape: list[int]
) -> None:
    """Trace ``DenseClassifier(network_def)`` to ``models/model.ts`` with MONAI's ``ckpt_export``."""
    from monai.bundle import ckpt_export

    # ckpt_export loads the checkpoint into the module it exports; the wrapper keeps the network under ``model.``
    with tempfile.TemporaryDirectory(prefix=".aamct-ts-") as tmp:
        dense_checkpoint = Path(tmp) / "dense_state.pt"
        torch.save({f"model.{key}": value for key, value in state.items()}, dense_checkpoint)
        try:
            with quiet_monai_bundle_logs():
                ckpt_export(
                    net_id=_DENSE_NET_ID,
                    filepath=str(root / "models" / "model.ts"),
                    ckpt_file=str(dense_checkpoint),
                    meta_file=str(root / "configs" / "metadata.json"),
                    config_file=str(eager_config),
                    use_trace=True,
                    input_shape=input_shape,
                    # torch's own check_trace re-traces and re-runs the model (three quarters of the export time);
                    # verify=True compares the traced and eager outputs instead, and the parity check follows
                    converter_kwargs={"verify": True, "rtol": 1e-4, "atol": 1e-5, "check_trace": False},
                    bundle_root=str(root),
                    **{_DENSE_NET_ID: {"_target_": "pipeline.networks.DenseClassifier", "model": f"@{net_id}"}},
                )
        except UserError:
            raise
        except Exception as err:
            raise UserError(
                f"{eager_config}: TorchScript export of '{net_id}' failed "
                f"({type(err).__name__}: {' '.join(str(err).split())[:300]})"
            ) from err


def _copy_tree_files(source: Path, target: Path, *, skip: set[str]) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or relative.as_posix() in skip or any(p.startswith(".") for p in relative.parts):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def _eval_metrics(card: Mapping[str, Any]) -> dict[str, Any]:
    metrics = card.get("metrics") or {}
    primary = metrics.get("primary_split")
    split = (metrics.get("splits") or {}).get(primary) if primary else None
    if not split:
        return {}
    out: dict[str, Any] = {"split": primary, "n": split.get("n"), "auc": split.get("auc")}
    if split.get("auc_ci"):
        out["auc_ci"] = split["auc_ci"]
    for name in ("sensitivity", "specificity"):
        if split.get(name):
            out[name] = split[name]["value"]
            out[f"{name}_ci"] = split[name].get("ci")
    if card.get("operating_threshold"):
        out["threshold"] = card["operating_threshold"]["value"]
    return out


def _recorded_overrides(checkpoint: Path, config: Path) -> dict[str, Any]:
    """The run record's settings that the exported config has as keys (nothing without a record)."""
    from pipeline.training.run_record import recorded_settings

    keys = set(json.loads(config.read_text(encoding="utf-8")))
    recorded = recorded_settings(checkpoint)
    if recorded:
        logger.info("%s: network and preprocessing from the run record: %s", checkpoint, recorded)
    return {key: value for key, value in recorded.items() if key.split("#")[0] in keys}


def export_bundle(
    bundle_dir: str | os.PathLike,
    out_zip: str | os.PathLike,
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
) -> ExportResult:
    """Export a trained bundle as a shareable, checksummed MONAI bundle zip.

    The source bundle is not modified; everything is staged in a temporary folder beside ``out_zip`` and the zip is
    written atomically.

    Args:
        bundle_dir: source bundle folder (``configs/metadata.json``, a config with ``network_def``, ``LICENSE``).
        out_zip: ``NAME.zip`` to write.
        checkpoint: trained weights (default ``bundle_dir/models/model.pt``); a bare state dict or one nested under
            ``model`` / ``network`` / ``state_dict``, read with ``weights_only=True``.
        report: evaluation report JSON (``metrics.json``) for the model card and the frozen threshold.
        datalist: the training datalist JSON, for the card's data summary and the PHI guard.
        name: bundle name (default: the zip's stem).
        bump: semantic-version part to increase.
        change: changelog text for the new version (default: a description of this export).
        network_config: config file under ``configs/`` holding ``net_id`` (default: first of
            :data:`EAGER_CONFIG_CANDIDATES` that has it).
        net_id: id of the network definition in that config.
        overrides: keys replaced in the exported copy of that config (e.g. ``{"network_name": "aam_student"}`` for
            a run trained with a network other than the config's default); the source bundle is not touched.
        check_parity: run the eager-vs-TorchScript-config check on a synthetic volume (recommended).
        check_phi: search the staged bundle for the datalist's DICOM patient identifiers.

    Returns:
        The :class:`ExportResult`.

    Raises:
        UserError: for a missing or invalid input, a metadata schema violation, a failed TorchScript export, a
            parity failure, or a patient identifier found in the staged bundle.
    """
    source = Path(bundle_dir)
    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != ".zip":
        raise UserError(f"{out_zip}: the output must be a .zip file")
    bundle_name = name or out_zip.stem
    if not BUNDLE_NAME_PATTERN.match(bundle_name):
        raise UserError(f"{out_zip}: bundle name {bundle_name!r} must be letters, digits, '_', '-' or '.'")
    configs = source / "configs"
    if not configs.is_dir():
        raise UserError(
            f"{source}: not a bundle folder (no configs/); for a training run use "
            f"--bundle bundle --checkpoint {source / 'models' / 'model.pt'}"
        )
    source_meta = _read_json_object(configs / "metadata.json", "bundle metadata")
    checkpoint_path = Path(checkpoint) if checkpoint is not None else source / "models" / "model.pt"
    if not checkpoint_path.is_file():
        raise UserError(f"{checkpoint_path}: trained weights not found (train first, or pass --checkpoint)")
    license_path = _find_license(source)
    report_data = read_report(report) if report is not None else None
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
    if report_data is None:
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
        docs = source / "docs"
        if docs.is_dir():
            _copy_tree_files(docs, root / "docs", skip={"README.md", "license.txt", "LICENSE"})
            if (docs / "README.md").is_file():
                shutil.copyfile(docs / "README.md", root / "docs" / "source_README.md")
        shutil.copyfile(license_path, root / "LICENSE")

        # metadata first: ckpt_export embeds it in model.ts
        weights_note = f"weights sha256 {sha256_of_file(checkpoint_path)[:12]}"
        released = release_metadata(
            source_meta,
            part=bump,
            change=change or f"exported with aamct bundle export ({weights_note}, TorchScript dense-map model)",
        )
        card = build_model_card(released, name=bundle_name, report=report_data, data_summary=data_summary)
        released[MODEL_CARD_KEY] = card
        eval_metrics = _eval_metrics(card)
        if eval_metrics:
            released["eval_metrics"] = eval_metrics
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
        from pipeline.inference.bundle import load_weights

        network = load_weights(_parsed(eager, net_id, eager_staged), checkpoint_path)
        state = {key: value.detach().cpu().clone() for key, value in network.state_dict().items()}
        torch.save(state, root / "models" / "model.pt")

        ts_config = _sync_torchscript_config(load_config_file(ts_source), eager, eager_staged)
        write_text_atomic(root / "configs" / TORCHSCRIPT_CONFIG, json.dumps(ts_config, indent=2) + "\n")
        roi = ts_config.get("roi_size") or (released["network_data_format"]["inputs"]["image"]["spatial_shape"])
        inputs = released.get("network_data_format", {}).get("inputs", {})
        in_channels = int(next(iter(inputs.values()), {}).get("num_channels", 1)) if inputs else 1
        _export_torchscript(
            root=root, eager_config=eager_staged, net_id=net_id, state=state, input_shape=[1, in_channels, *roi]
        )
        if card.get("operating_threshold"):
            write_json_atomic(root / "models" / "operating_point.json", released["operating_point"])
        write_text_atomic(root / "docs" / "README.md", render_model_card(card))

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
        members = tuple(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))
        write_bundle_zip(root, out_zip, name=bundle_name)

    return ExportResult(
        zip_path=out_zip,
        name=bundle_name,
        version=released["version"],
        previous_version=str(source_meta.get("version")),
        members=members,
        parity_max_abs_diff=parity,
        phi_fields_checked=phi_fields,
        notes=tuple(notes),
    )
