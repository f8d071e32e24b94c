"""Bundle ``metadata.json`` against the MONAI metadata schema kept in this repository (offline).

MONAI's ``verify_metadata`` downloads the schema named by the ``schema`` key and then runs ``jsonschema.validate``;
on an offline machine the download fails, so the schema lives in ``pipeline/trust/schema/`` (see the ``$comment``
in that file for its source) and is passed as ``filepath=`` -- MONAI skips the download when the file exists. Here
the same ``jsonschema`` validation runs in-process to report the most relevant error in one line
(``jsonschema.exceptions.best_match``), which MONAI's own message (the whole error text) does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

__all__ = ["METADATA_SCHEMA_PATH", "METADATA_SCHEMA_URL", "load_metadata_schema", "metadata_problems"]

#: the MONAI bundle metadata schema, kept in the repository for offline validation
METADATA_SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "monai_bundle_metadata.schema.json"
#: the URL MONAI bundles put in ``metadata["schema"]``; this repository's schema file stands in for it offline
METADATA_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
)


@lru_cache(maxsize=1)
def _schema_cached(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_metadata_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The metadata JSON schema (the repository's copy unless ``path`` is given).

    Args:
        path: another schema file.

    Returns:
        The schema as a dict.

    Raises:
        UserError: if the file is missing or is not JSON.
    """
    schema_path = Path(path) if path is not None else METADATA_SCHEMA_PATH
    if not schema_path.is_file():
        raise UserError(f"{schema_path}: metadata schema file not found")
    try:
        return _schema_cached(str(schema_path))
    except json.JSONDecodeError as err:
        raise UserError(f"{schema_path}: metadata schema is not valid JSON ({err.msg}, line {err.lineno})") from err


def metadata_problems(metadata: Mapping[str, Any], *, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Every schema violation of a bundle's metadata, most relevant first, as one-line messages.

    Args:
        metadata: the parsed ``metadata.json``.
        schema: the JSON schema (default: :func:`load_metadata_schema`).

    Returns:
        Messages such as ``"missing required key 'task'"`` or ``"network_data_format.inputs.image.num_channels:
        'one' is not of type 'integer'"``; empty when the metadata is valid.
    """
    from jsonschema import Draft7Validator
    from jsonschema.exceptions import best_match

    validator = Draft7Validator(dict(schema if schema is not None else load_metadata_schema()))
    errors = list(validator.iter_errors(dict(metadata)))
    if not errors:
        return []
    first = best_match(errors)
    ordered = [first] + [e for e in errors if e is not first]
    return [_describe(error) for error in ordered]


def _describe(error) -> str:
    where = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        message = f"missing required key {missing[0]!r}" if missing else error.message
    elif error.validator == "anyOf" and all(s.get("required") for s in error.validator_value):
        # e.g. required_packages_version / optional_packages_version: the message would print the whole instance
        keys = " or ".join(repr(s["required"][0]) for s in error.validator_value)
        message = f"missing required key {keys}"
    else:
        message = error.message
    # jsonschema messages quote the offending value, which may be a whole object: keep the line short
    message = " ".join(message.split())
    message = message if len(message) <= 200 else message[:197] + "..."
    return f"{where}: {message}" if where else message
