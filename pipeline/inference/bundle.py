"""Finding what an inference run needs in a bundle: its root, config, weights and class names.

Accepted ``--bundle`` forms: a bundle folder (``configs/`` + ``models/model.pt``), a training run folder with
``models/model.pt`` but no ``configs/inference.json`` (the project's own ``bundle/configs/inference.json`` is used
then, with the network and preprocessing of the run's ``models/run.json``), or a bundle zip. A zip comes from outside: it passes the received-bundle gate (:func:`pipeline.trust.receive_bundle`:
integrity, size caps, configs read as data, TorchScript checked) and is extracted once under the run folder. A
bundle folder holding ``checksums.sha256`` (an export, unpacked) has its configs checked the same way: a received
config is only ever parsed as the in-memory object that was compared with the exporter's, so the only code MONAI's
parser runs from it is this repository's.

The frozen threshold and the run record are contracts between stages, read with
:func:`pipeline.contracts.frozen_threshold` and :func:`pipeline.contracts.settings_for`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.contracts.defaults import DEFAULT_CLASS_NAMES
from pipeline.contracts.run_record import settings_for
from pipeline.errors import UserError
from pipeline.trust.configs import PINNED_KEYS, check_config_folder, is_code, require_no_deviations
from pipeline.trust.layout import CHECKSUM_FILENAME

__all__ = [
    "PROJECT_BUNDLE",
    "file_fingerprint",
    "inference_config_path",
    "load_inference_config",
    "load_weights",
    "parsed_content",
    "read_class_names",
    "read_state_dict",
    "resolve_bundle",
]

logger = logging.getLogger(__name__)

#: the project's own bundle, used for run folders that carry weights but no inference config
PROJECT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"


def resolve_bundle(
    bundle: str | os.PathLike,
    *,
    extract_to: str | os.PathLike | None = None,
    trust: str | os.PathLike | None = None,
    expect_sha256: str | None = None,
) -> Path:
    """The root folder of a bundle given as a folder or a zip.

    Args:
        bundle: bundle folder, run folder or ``.zip``.
        extract_to: where a zip is extracted (a sub-folder named after the zip and its hash is created, and reused
            by a rerun); defaults to a folder beside the zip.
        trust: for a zip: the sender's public key; the zip must carry its signature.
        expect_sha256: for a zip: the SHA-256 its sender published.

    Returns:
        The folder holding ``models/model.pt`` (and usually ``configs/``).

    Raises:
        UserError: if the path is missing, a zip is refused by the gate or unreadable, or no ``models/model.pt``.
    """
    from pipeline.trust.gate import receive_bundle

    path = Path(bundle).expanduser()
    if not path.exists():
        raise UserError(f"{path}: bundle not found")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path}: not a bundle folder or zip")
        return receive_bundle(
            path, Path(extract_to) if extract_to is not None else path.parent, trust=trust, expect_sha256=expect_sha256
        ).resolve()
    if trust is not None or expect_sha256 is not None:
        raise UserError(f"{path}: --trust / --expect-sha256 check a bundle zip; give the zip, not a folder")
    for candidate in (path, *_single_subfolder(path)):
        if (candidate / "models" / "model.pt").is_file():
            return candidate.resolve()
    raise UserError(f"{Path(bundle)}: no models/model.pt in this bundle (train first, or point at the bundle root)")


def _single_subfolder(path: Path) -> list[Path]:
    children = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return children if len(children) == 1 else []


def inference_config_path(bundle_root: str | os.PathLike) -> Path:
    """The inference config of a bundle, or the project's default one for a run folder without configs.

    Args:
        bundle_root: from :func:`resolve_bundle`.

    Returns:
        Path of ``inference.json``.

    Raises:
        UserError: if neither exists.
    """
    own = Path(bundle_root) / "configs" / "inference.json"
    if own.is_file():
        return own
    default = PROJECT_BUNDLE / "configs" / "inference.json"
    if default.is_file():
        logger.info("%s has no configs/inference.json: using the project's %s", bundle_root, default)
        return default
    raise UserError(f"{bundle_root}: no configs/inference.json, and the project's default {default} is missing")


def load_inference_config(bundle_root: str | os.PathLike, overrides: Mapping[str, Any] | None = None):
    """Parse a bundle's inference config with MONAI's ``ConfigParser``, pointed at ``bundle_root``.

    A bundle folder with configs of its own (an exported bundle, whether it still holds its ``checksums.sha256`` or
    not) is received: its configs are read as data and compared with the exporter's (:func:`pipeline.trust.configs.check_config_folder`); the parser gets the compared object, so
    every expression it evaluates is this repository's own.

    When the config is the project's default (a run folder without ``configs/inference.json``), the network and
    preprocessing are the run's own (:func:`pipeline.contracts.settings_for` on its ``models/run.json``, written by
    training and distillation), so they match the weights; without a record the config's defaults stay.

    Args:
        bundle_root: from :func:`resolve_bundle`.
        overrides: config keys to set (``output_dir``, ``manifest``, ...), applied last.

    Returns:
        The ``monai.bundle.ConfigParser`` (nothing instantiated yet).

    Raises:
        UserError: if the config is missing or not valid JSON.
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_root).resolve()
    config_path = inference_config_path(root)
    parser = ConfigParser()
    own_configs = config_path.parent == root / "configs"
    if own_configs and root != PROJECT_BUNDLE.resolve():
        # a bundle folder with configs of its own (an export, extracted by hand or by the gate, with or without its
        # checksums): parse once, compare with the exporter's, hand MONAI that very object. Only the project's own
        # bundle/ folder is parsed as it is: it is the reference the comparison uses.
        parsed, deviations = check_config_folder(root / "configs")
        if not (root / CHECKSUM_FILENAME).is_file():
            # a bundle folder assembled by hand: plain values of the path keys are its own (the command line sets
            # them anyway); code that is not the exporter's still refuses it
            deviations = [
                d for d in deviations if d.key_path.split("#")[0] not in PINNED_KEYS or _is_code_text(d.value)
            ]
        require_no_deviations(deviations, source=root)
        if not isinstance(parsed.get("inference.json"), dict):
            raise UserError(f"{config_path}: not a bundle config (a JSON object expected)")
        parser.read_config(parsed["inference.json"])
        parser.update({"bundle_root": str(root), **dict(overrides or {})})
        return parser
    try:
        parser.read_config(config_path)
    except (json.JSONDecodeError, ValueError) as err:
        raise UserError(f"{config_path}: not a readable bundle config ({err})") from None
    if config_path.parent != root / "configs":
        # a run folder without its own inference config: the network and preprocessing its weights were trained with
        settings = settings_for(root)
        if settings.recorded:
            parser.update(settings.config_overrides())
    parser.update({"bundle_root": str(root), **dict(overrides or {})})
    return parser


def _is_code_text(value: str) -> bool:
    try:
        return is_code(json.loads(value))
    except ValueError:
        return True  # not a JSON value: a structural deviation, never waved through


def read_state_dict(
    checkpoint: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> Mapping[str, torch.Tensor]:
    """The state dict of a checkpoint: a bare one (MONAI's layout) or one nested under ``model`` / ``network`` /
    ``state_dict``, read with ``weights_only=True`` (a shared checkpoint cannot run code).

    Args:
        checkpoint: path of the weights.
        map_location: where tensors are loaded.

    Returns:
        Parameter / buffer name -> tensor.

    Raises:
        UserError: if the file is missing or unreadable, or holds no state dict.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: model weights not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt / foreign file
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__})") from None
    if isinstance(state, Mapping):
        for key in ("model", "network", "state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: holds no state dict")
    return state


def load_weights(
    network: torch.nn.Module, checkpoint: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load a bundle's ``model.pt`` into a network (strictly) and return the network in eval mode.

    Accepts MONAI's layout (a bare state dict) and a dict holding it under ``model`` / ``network`` /
    ``state_dict``. Loaded with ``weights_only=True``: a shared checkpoint cannot run code.

    Args:
        network: the network built from the same config as the one trained.
        checkpoint: path of the weights.
        map_location: where tensors are loaded.

    Returns:
        ``network`` with the weights, in eval mode.

    Raises:
        UserError: if the file is missing or unreadable, or does not match the network.
    """
    path = Path(checkpoint)
    state = read_state_dict(path, map_location=map_location)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"{path}: weights do not match the configured network ({first})") from None
    return network.eval()


def read_class_names(bundle_root: str | os.PathLike) -> list[str]:
    """Class names in label order, from ``configs/metadata.json``.

    Reads ``class_names`` or ``classes`` (a list), or the model-zoo ``network_data_format.outputs.pred.channel_def``
    (index -> name); falls back to ``negative, positive``.

    Args:
        bundle_root: bundle folder.

    Returns:
        The class names, index 0 first.
    """
    data = _read_json(Path(bundle_root) / "configs" / "metadata.json") or {}
    for key in ("class_names", "classes"):
        classes = data.get(key)
        if isinstance(classes, list) and len(classes) >= 2:
            return [str(c) for c in classes]
    channel_def = data.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def")
    if isinstance(channel_def, Mapping) and len(channel_def) >= 2:
        try:
            return [str(channel_def[k]) for k in sorted(channel_def, key=int)]
        except ValueError:
            pass
    return list(DEFAULT_CLASS_NAMES)


def file_fingerprint(path: str | os.PathLike, length: int = 16) -> str:
    """Leading hex digits of a file's SHA-256 (identifies the model a run folder's results came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    return data if isinstance(data, dict) else None


def parsed_content(parser, key: str, *, what: str = "inference config"):
    """``parser.get_parsed_content(key)`` with a user mistake in the config reported in one line.

    MONAI's config machinery wraps an instantiation error in its own ``RuntimeError``; the innermost cause is what
    the user needs, and a :class:`~pipeline.errors.UserError` inside it is raised as it is.

    Args:
        parser: a ``monai.bundle.ConfigParser`` (e.g. from :func:`load_inference_config`).
        key: the config id to build.
        what: how the error names the config (e.g. the bundle's path).

    Returns:
        The parsed content.

    Raises:
        UserError: the innermost cause, in one line.
    """
    try:
        return parser.get_parsed_content(key)
    except UserError:
        raise
    except Exception as err:
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"{what}: cannot build {key!r}: {type(cause).__name__}: {cause}") from None
