"""A received bundle's configs read as data: every piece of code in them must be the exporter's own.

MONAI's ``ConfigParser`` evaluates ``$`` strings with ``eval``, substitutes ``@`` references and ``%`` macros, and
imports ``_target_`` (``_mode_``, ``_requires_``, ``_disabled_`` steer how). ``aamct bundle export`` copies the
repository's own configs (``bundle/configs``) with plain data changed: the run's network name, sizes and spacing,
the portable paths of :data:`~pipeline.trust.layout.PORTABLE_PATHS`, the TorchScript config's window parameters.
So a received config is accepted when each *code leaf* (a ``$ @ %`` string, or any value under a ``_target_`` /
``_mode_`` / ``_requires_`` / ``_disabled_`` key) is the one at the same key of the reference (the repository's
config after the exporter's path rewrite), and the keys that say where files are read or written
(:data:`PINNED_KEYS`) hold the reference's values. Anything else is a :class:`ConfigDeviation`, listed with its key,
and the bundle is refused. ``logging.conf`` (``logging.config.fileConfig`` evaluates its ``args``) must be the
repository's byte for byte.

Nothing here evaluates anything: configs are parsed as JSON / YAML (``yaml.safe_load``). A reader that then builds
objects from an accepted config (``aamct evaluate-cohort``) runs only this repository's expressions with the bundle's
data. Hand-written: MONAI has no notion of a trusted reference config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle.utils import ID_SEP_KEY

from pipeline.errors import UserError
from pipeline.trust.config_listing import CONFIG_SUFFIXES, load_config_file
from pipeline.trust.layout import PORTABLE_PATHS, PROJECT_BUNDLE
from pipeline.trust.text import printable

__all__ = [
    "CODE_KEYS",
    "PINNED_KEYS",
    "ConfigDeviation",
    "check_config_folder",
    "check_config_texts",
    "code_member_problems",
    "config_deviations",
    "is_code",
    "reference_config",
    "require_no_deviations",
]

#: MONAI's special keys: their values decide what is imported / instantiated / skipped
CODE_KEYS = frozenset({"_target_", "_mode_", "_requires_", "_disabled_"})
#: top-level data keys that name files read or written (or whether identities are kept): they must hold the
#: exporter's value, so a received config cannot point the reader's outputs elsewhere
PINNED_KEYS = frozenset(
    {
        *PORTABLE_PATHS,
        "checkpoint",
        "dicom_out",
        "keep_patient_identity",
        "logging_file",
        "meta_file",
        "config_file",
        "ckpt_dir",
        "ckpt_file",
    }
)
#: file names never accepted in a received bundle (code a recipient's tools could import or run)
_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pth", ".so", ".dll", ".dylib", ".sh", ".bat", ".exe", ".ipynb")
_LOGGING_CONF = "logging.conf"
_REFERENCE_CACHE: dict[str, Any] = {}


def is_code(value: Any) -> bool:
    """Whether a config value is something MONAI's parser evaluates (a ``$`` expression, ``@`` reference or ``%``
    macro)."""
    return isinstance(value, str) and value.startswith(("$", "@", "%"))


@dataclass(frozen=True)
class ConfigDeviation:
    """One place where a received config is not what the exporter writes.

    Attributes:
        file: the config file (``inference.json``) or member.
        key_path: MONAI id of the value (``network_def#kernel``), empty for a whole file.
        value: what the bundle holds (shown escaped).
        expected: what the exporter writes there (``None``: nothing there).
    """

    file: str
    key_path: str
    value: str
    expected: str | None = None

    def line(self) -> str:
        """One escaped terminal line."""
        where = f"{self.file} {self.key_path}".strip()
        wanted = "nothing" if self.expected is None else printable(self.expected, limit=120)
        return f"{printable(where, limit=160)}: {printable(self.value, limit=160)} (the exporter writes {wanted})"


def _components(key: object) -> tuple[str, ...]:
    """A config key as MONAI reads it: ``"a#b"`` / ``"a::b"`` set ``b`` inside ``a`` (``+a`` merges into ``a``)."""
    return tuple(part for part in re.split(r"::|#", str(key)) if part != "") or (str(key),)


def _leaves(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, bool]]:
    """``(path, value, is_code)`` for every leaf; a value under a code key is code whatever its type."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            child = (*path, *_components(key))
            if child[-1] in CODE_KEYS:
                yield child, value, True
            else:
                yield from _leaves(value, child)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for index, value in enumerate(node):
            yield from _leaves(value, (*path, str(index)))
    else:
        yield path, node, is_code(node)


def _portable(config: Any) -> Any:
    """The exporter's path rewrite (``_portable_configs``): plain top-level path values become the portable ones."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for key, portable in PORTABLE_PATHS.items():
        value = out.get(key)
        if isinstance(value, str) and not is_code(value):
            out[key] = portable
    return out


def reference_config(name: str, *, reference_dir: str | Path | None = None) -> Any | None:
    """The config ``name`` as the exporter writes it from the repository's bundle, or ``None`` when it has none.

    Args:
        name: file name under ``configs/`` (``inference.json``).
        reference_dir: the reference configs folder (default ``bundle/configs`` of the repository).

    Returns:
        The parsed config after the exporter's path rewrite.
    """
    folder = Path(reference_dir) if reference_dir is not None else PROJECT_BUNDLE / "configs"
    path = folder / name
    cache_key = str(path)
    if cache_key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[cache_key] = _portable(load_config_file(path)) if path.is_file() else None
    return _REFERENCE_CACHE[cache_key]


def config_deviations(received: Any, reference: Any, *, file: str) -> list[ConfigDeviation]:
    """Every code leaf of ``received`` that is not the reference's at the same key, and every pinned key changed.

    Args:
        received: the parsed received config.
        reference: the parsed reference (:func:`reference_config`), or ``None`` when the exporter writes no such file
            (then every code leaf deviates).
        file: file name for the messages.

    Returns:
        The deviations, in document order; empty when the config is the exporter's up to plain data.
    """
    deviations: list[ConfigDeviation] = []
    expected_code = {path: value for path, value, code in _leaves(reference, ()) if code} if reference else {}
    for path, value, code in _leaves(received, ()):
        if not code:
            continue
        wanted = expected_code.get(path)
        if path in expected_code and value == wanted:
            continue
        if len(path) == 1 and path[0] in PORTABLE_PATHS and value == PORTABLE_PATHS[path[0]]:
            continue
        deviations.append(
            ConfigDeviation(file, ID_SEP_KEY.join(path), json.dumps(value), None if wanted is None else str(wanted))
        )
    if isinstance(received, Mapping):
        reference_map = reference if isinstance(reference, Mapping) else {}
        top = {_components(key)[0]: value for key, value in received.items() if len(_components(key)) == 1}
        nested = sorted({_components(key)[0] for key in received if len(_components(key)) > 1} & PINNED_KEYS)
        deviations += [ConfigDeviation(file, key, "a nested override of a pinned key") for key in nested]
        for key in sorted(PINNED_KEYS & set(top)):
            value = top[key]
            wanted = reference_map.get(key, PORTABLE_PATHS.get(key))
            if value != wanted and not is_code(value):
                deviations.append(ConfigDeviation(file, key, json.dumps(value), json.dumps(wanted)))
    return deviations


def _parse(text: bytes, *, name: str, source: str) -> Any:
    try:
        if name.lower().endswith(".json"):
            return json.loads(text.decode("utf-8"))
        import yaml

        return yaml.safe_load(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{source}: not a valid bundle config ({printable(err, limit=200)})") from None
    except Exception as err:  # yaml errors have their own hierarchy
        raise UserError(f"{source}: cannot parse ({type(err).__name__}: {printable(err, limit=200)})") from None


def check_config_texts(
    texts: Mapping[str, bytes], *, source: str | Path = "configs", reference_dir: str | Path | None = None
) -> tuple[dict[str, Any], list[ConfigDeviation]]:
    """Parse every config of a received ``configs/`` folder and compare each with the exporter's.

    Args:
        texts: path relative to ``configs/`` -> file content (every file of the folder).
        source: the folder or zip, for messages.
        reference_dir: the reference configs (default: the repository's ``bundle/configs``).

    Returns:
        ``(parsed configs by relative path, deviations)``. ``metadata.json`` holds data only (MONAI reads it as the
        ``_meta_`` section, which expressions may reference), so any code leaf in it deviates.

    Raises:
        UserError: naming a config that cannot be parsed.
    """
    reference_folder = Path(reference_dir) if reference_dir is not None else PROJECT_BUNDLE / "configs"
    parsed: dict[str, Any] = {}
    deviations: list[ConfigDeviation] = []
    for relative in sorted(texts):
        name = relative.rsplit("/", 1)[-1]
        if name == _LOGGING_CONF:
            reference = reference_folder / _LOGGING_CONF
            if not reference.is_file() or texts[relative] != reference.read_bytes():
                deviations.append(
                    ConfigDeviation(
                        relative, "", "differs from the repository's logging.conf (fileConfig evaluates it)"
                    )
                )
            continue
        if not name.lower().endswith(CONFIG_SUFFIXES):
            continue
        if not name.lower().endswith(".json"):
            # the exporter writes JSON only; YAML aliases could also make the walk below exponentially long
            deviations.append(ConfigDeviation(relative, "", "a YAML config (the exporter writes JSON only): not read"))
            continue
        parsed[relative] = _parse(texts[relative], name=name, source=f"{source}: configs/{printable(relative)}")
        reference = (
            {}
            if name == "metadata.json"
            else (reference_config(relative, reference_dir=reference_folder) if "/" not in relative else None)
        )
        try:
            deviations += config_deviations(parsed[relative], reference, file=relative)
        except RecursionError:
            deviations.append(ConfigDeviation(relative, "", "nested too deeply to read"))
    return parsed, deviations


def check_config_folder(
    configs: str | Path, *, reference_dir: str | Path | None = None
) -> tuple[dict[str, Any], list[ConfigDeviation]]:
    """:func:`check_config_texts` on a folder's files (the folder of an extracted bundle)."""
    folder = Path(configs)
    texts = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return check_config_texts(texts, source=folder, reference_dir=reference_dir)


def code_member_problems(members: Sequence[str]) -> list[ConfigDeviation]:
    """Members whose names say they are code (``.py``, ``.pth``, ``.so``, ...): an export holds none."""
    return [
        ConfigDeviation(member, "", "a code file; an export holds none")
        for member in members
        if member.lower().endswith(_CODE_SUFFIXES)
    ]


def require_no_deviations(deviations: Sequence[ConfigDeviation], *, source: str | Path) -> None:
    """Raise the first deviation as a one-line UserError (for the readers that do not print a report)."""
    if deviations:
        more = f" (+{len(deviations) - 1} more)" if len(deviations) > 1 else ""
        raise UserError(f"{source}: not the exporter's config: {deviations[0].line()}{more}; run aamct bundle verify")
