"""Who made a bundle: Ed25519 signatures over its checksum file, and the sender's published zip digest.

``checksums.sha256`` lists the SHA-256 of every other member, so signing it signs the whole bundle. The signature
member ``NAME/checksums.sha256.sig`` holds one JSON object: the algorithm, the signer's public key (raw, hex) and
the signature (hex). It tells a recipient which key signed, not that the key is one they trust: that needs
``--trust PUBKEY`` (the sender's public key, received another way), or ``--expect-sha256`` (the zip digest the sender
publishes). Keys are PEM files (PKCS #8 private key, SubjectPublicKeyInfo public key) written by :func:`write_key_pair`
(``aamct bundle keygen``). Uses the ``cryptography`` package (Ed25519 is not in the standard library).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.trust.text import printable

__all__ = [
    "SIGNATURE_ALGORITHM",
    "Signature",
    "key_fingerprint",
    "load_public_key",
    "parse_signature",
    "sign_checksums",
    "verify_signature",
    "write_key_pair",
]

SIGNATURE_ALGORITHM = "ed25519"
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Signature:
    """A parsed signature member.

    Attributes:
        public_key: the signer's raw Ed25519 public key (32 bytes).
        signature: the signature over the checksum file (64 bytes).
    """

    public_key: bytes
    signature: bytes

    @property
    def fingerprint(self) -> str:
        """:func:`key_fingerprint` of the signer's key."""
        return key_fingerprint(self.public_key)


def key_fingerprint(raw_public_key: bytes) -> str:
    """The first 16 hex digits of the SHA-256 of a raw public key (to compare keys by eye)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def _raw_public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


def write_key_pair(private_path: str | os.PathLike, public_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Create an Ed25519 key pair: ``private_path`` (PEM, mode 0600) and ``public_path`` (PEM, default ``.pub``).

    Raises:
        UserError: if either file exists already (a key is never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Path(private_path)
    public = Path(public_path) if public_path is not None else private.with_name(private.name + ".pub")
    for path in (private, public):
        if path.exists():
            raise UserError(f"{path}: exists already; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    private.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                encoding=serialization.Encoding.PEM,
                format=serialization.PrivateFormat.PKCS8,
                encryption_algorithm=serialization.NoEncryption(),
            )
        )
    public.write_bytes(
        key.public_key().public_bytes(
            encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def sign_checksums(checksums: bytes, private_key_path: str | os.PathLike) -> str:
    """The signature member's text for a checksum file's bytes, signed with a PEM Ed25519 private key.

    Raises:
        UserError: if the key file is missing or not an unencrypted Ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(private_key_path)
    if not path.is_file():
        raise UserError(f"{path}: signing key not found (create one with aamct bundle keygen)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path}: not an Ed25519 private key")
    signature = key.sign(checksums)
    return (
        json.dumps(
            {
                "algorithm": SIGNATURE_ALGORITHM,
                "public_key": _raw_public(key.public_key()).hex(),
                "signature": signature.hex(),
            },
            indent=2,
        )
        + "\n"
    )


def parse_signature(text: bytes, *, source: str) -> Signature:
    """Read a signature member.

    Raises:
        UserError: if it is not the JSON object :func:`sign_checksums` writes.
    """
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{source}: not a signature (JSON expected)") from None
    if not isinstance(data, dict) or data.get("algorithm") != SIGNATURE_ALGORITHM:
        raise UserError(f"{source}: not an {SIGNATURE_ALGORITHM} signature")
    public, signature = str(data.get("public_key", "")), str(data.get("signature", ""))
    if len(public) != 64 or len(signature) != 128 or not (_HEX.match(public) and _HEX.match(signature)):
        raise UserError(f"{source}: malformed public key or signature")
    return Signature(public_key=bytes.fromhex(public), signature=bytes.fromhex(signature))


def load_public_key(path: str | os.PathLike) -> bytes:
    """A trusted public key: a PEM file from :func:`write_key_pair`, or a file / string of 64 hex digits (raw key).

    Returns:
        The raw 32-byte key.

    Raises:
        UserError: if it is neither.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    candidate = Path(path)
    text = candidate.read_bytes() if candidate.is_file() else str(path).encode()
    stripped = text.strip().decode("ascii", errors="replace").lower()
    if len(stripped) == 64 and _HEX.match(stripped):
        return bytes.fromhex(stripped)
    if not candidate.is_file():
        raise UserError(f"{printable(path)}: trusted key not found (a .pub file or 64 hex digits)")
    try:
        key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path}: not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path}: not an Ed25519 public key")
    return _raw_public(key)


def verify_signature(checksums: bytes, signature: Signature, trusted_key: bytes) -> str | None:
    """``None`` when ``signature`` is by ``trusted_key`` and valid for ``checksums``, else why not (one line)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if signature.public_key != trusted_key:
        return f"signed by key {signature.fingerprint}, not by the trusted key {key_fingerprint(trusted_key)}"
    try:
        Ed25519PublicKey.from_public_bytes(trusted_key).verify(signature.signature, checksums)
    except InvalidSignature:
        return f"the signature by key {signature.fingerprint} does not match the checksum file"
    return None
