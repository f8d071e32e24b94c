"""``aamct bundle verify NAME.zip``: the received-bundle gate's report, printed for a person to read.

The checks are the gate's (:mod:`pipeline.trust.gate`), the same that ``evaluate-cohort --bundle NAME.zip`` and
``infer`` pass a zip through before using it; this module only runs them in a temporary folder that is removed
afterwards.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.errors import UserError
from pipeline.trust.archive import ArchiveLimits
from pipeline.trust.gate import NETWORK_AGREEMENT_ATOL, CheckResult, GateOptions, VerificationReport, check_bundle
from pipeline.trust.layout import REQUIRED_MEMBERS

__all__ = [
    "NETWORK_AGREEMENT_ATOL",
    "REQUIRED_MEMBERS",
    "CheckResult",
    "VerificationReport",
    "verify_bundle",
]


def verify_bundle(
    archive: str | os.PathLike,
    *,
    schema_path: str | os.PathLike | None = None,
    check_networks: bool = True,
    trust: str | os.PathLike | None = None,
    expect_sha256: str | None = None,
    limits: ArchiveLimits | None = None,
    time_limit_s: float | None = None,
) -> VerificationReport:
    """Verify a bundle zip (the checks of :mod:`pipeline.trust.gate`), leaving nothing behind.

    Args:
        archive: ``NAME.zip``.
        schema_path: metadata JSON schema (default: the repository's copy).
        check_networks: build the network and check / run the TorchScript files.
        trust: the sender's public key (PEM ``.pub`` or 64 hex digits): the bundle must carry its signature.
        expect_sha256: the zip's SHA-256 as the sender published it.
        limits: the zip's caps (default: :mod:`pipeline.contracts.defaults`).
        time_limit_s: time limit of the TorchScript child (default: ``TORCHSCRIPT_TIME_LIMIT_S``).

    Returns:
        The :class:`VerificationReport`; ``report.ok`` says whether it passed.

    Raises:
        UserError: if ``archive`` does not exist or the trusted key cannot be read.
    """
    if not Path(archive).is_file():
        raise UserError(f"{archive}: bundle zip not found")
    options = GateOptions(
        trust=trust,
        expect_sha256=expect_sha256,
        check_networks=check_networks,
        schema_path=schema_path,
        limits=limits or ArchiveLimits(),
        **({"time_limit_s": time_limit_s} if time_limit_s is not None else {}),
    )
    with tempfile.TemporaryDirectory(prefix=".aamct-verify-") as tmp:
        report, _ = check_bundle(archive, tmp, options=options)
    return report
