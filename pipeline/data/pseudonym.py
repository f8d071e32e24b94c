"""Pseudonymous case and patient ids: keyed HMAC-SHA256, so ids are stable per site but not reversible.

Without the key nobody can recompute an id from a PatientID or a UID (a plain hash of a PatientID could be
brute-forced from the hospital's ID format), and with the same key the same series always gets the same id, so
manifests built on different days line up. The key is looked up in this order:

1. ``--key-file`` (``key_file=``): the file's contents (stripped) are the key;
2. the environment variable ``AAMCT_PSEUDONYM_KEY``;
3. a per-user key file, ``$XDG_CONFIG_HOME/aamct/pseudonym.key`` (default ``~/.config/aamct/pseudonym.key``), created
   once with 256 random bits and mode 0600.

Share the key only with those who should be able to link new data to existing ids (e.g. a second site that must use
the same ids); losing it only means new ids, never a privacy leak.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import UserError

__all__ = ["KEY_ENV_VAR", "Pseudonymizer", "default_key_path", "load_key"]

KEY_ENV_VAR = "AAMCT_PSEUDONYM_KEY"
#: hex digits kept from the HMAC: 40 bits, collision-free in practice for cohorts of thousands (checked on build)
_DIGITS = 10
#: shortest key accepted from a file or the environment: shorter keys make the ids guessable
_MIN_KEY_BYTES = 16

logger = logging.getLogger(__name__)


def default_key_path() -> Path:
    """The per-user key file: ``$XDG_CONFIG_HOME/aamct/pseudonym.key`` or ``~/.config/aamct/pseudonym.key``."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "aamct" / "pseudonym.key"


def load_key(key_file: str | os.PathLike | None = None) -> bytes:
    """Find the pseudonymisation key (see the module docstring for the order).

    Args:
        key_file: explicit key file; takes precedence over the environment and the per-user file.

    Returns:
        The key bytes.

    Raises:
        UserError: the key file is missing, unreadable or shorter than 16 bytes, or the environment key is too short.
    """
    if key_file is not None:
        path = Path(key_file)
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise UserError(f"{path}: cannot read the pseudonym key file ({err.strerror or err})") from None
        if len(key) < _MIN_KEY_BYTES:
            raise UserError(f"{path}: pseudonym key is {len(key)} bytes; use at least {_MIN_KEY_BYTES}")
        return key
    env_key = os.environ.get(KEY_ENV_VAR, "").strip()
    if env_key:
        if len(env_key.encode()) < _MIN_KEY_BYTES:
            raise UserError(f"{KEY_ENV_VAR}: pseudonym key is shorter than {_MIN_KEY_BYTES} bytes")
        return env_key.encode()
    return _per_user_key(default_key_path())


def _per_user_key(path: Path) -> bytes:
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two concurrent first runs must not end up with different keys
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as err:
            raise UserError(
                f"{path}: cannot create the per-user pseudonym key ({err.strerror or err}); pass --key-file "
                f"or set {KEY_ENV_VAR}"
            ) from None
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            logger.info("created a new pseudonym key at %s (keep it to reproduce the same ids later)", path)
    try:
        key = path.read_bytes().strip()
    except OSError as err:
        raise UserError(f"{path}: cannot read the per-user pseudonym key ({err.strerror or err})") from None
    if len(key) < _MIN_KEY_BYTES:
        raise UserError(f"{path}: pseudonym key is {len(key)} bytes; use at least {_MIN_KEY_BYTES}")
    return key


class Pseudonymizer:
    """Turns identifiers into ``case-<hex>`` / ``pt-<hex>`` ids with HMAC-SHA256 under one secret key.

    Each kind of id is computed in its own domain (a prefix inside the HMAC message), so a case id never equals a
    patient id computed from the same string.

    Args:
        key: the secret key (see :func:`load_key`).
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonym key must not be empty")
        self._key = bytes(key)

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(key=<hidden>)"

    def _digest(self, domain: str, parts: Iterable[str]) -> str:
        message = "\x1f".join([domain, *parts]).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_DIGITS]

    def case_id(self, study_uid: str, series_uid: str) -> str:
        """Case id of one series, from its StudyInstanceUID and SeriesInstanceUID."""
        return "case-" + self._digest("case", [study_uid.strip(), series_uid.strip()])

    def case_id_from_fingerprint(self, fingerprint: str) -> str:
        """Case id of a series or file without UIDs (a content fingerprint: positions, FrameOfReference, file hash)."""
        return "case-" + self._digest("case-fingerprint", [fingerprint])

    def patient_id(self, patient_id: str, *, fallback: str = "") -> str:
        """Patient id from the raw PatientID, or from ``fallback`` (e.g. the StudyInstanceUID) when it is empty.

        Args:
            patient_id: raw PatientID (used only inside the HMAC, never stored).
            fallback: identifier used when ``patient_id`` is blank; it gets its own domain so it can never collide
                with a real PatientID.

        Raises:
            ValueError: both are empty.
        """
        if patient_id.strip():
            return "pt-" + self._digest("patient", [patient_id.strip()])
        if fallback.strip():
            return "pt-" + self._digest("patient-fallback", [fallback.strip()])
        raise ValueError("neither a PatientID nor a fallback identifier was given")
