"""The received-bundle gate: what every reader of a bundle from outside passes through before using it.

One package below ``inference`` and ``evaluation`` (and ``sharing``, which exports bundles), so that
``aamct bundle verify``, ``bundle inspect``, ``evaluate-cohort --bundle`` and ``infer`` cannot differ in what they
accept:

* :mod:`~pipeline.trust.archive` -- layout and size caps from the zip's central directory, capped inflation;
* :mod:`~pipeline.trust.checksums`, :mod:`~pipeline.trust.signing` -- integrity and origin (Ed25519);
* :mod:`~pipeline.trust.configs` -- configs read as data, compared with what the exporter writes;
* :mod:`~pipeline.trust.torchscript` -- operator allowlist, then a time- and memory-limited child process;
* :mod:`~pipeline.trust.gate` -- all of them in order (:func:`check_bundle`, :func:`receive_bundle`);
* :mod:`~pipeline.trust.text` -- control characters escaped in every listing.

Names are imported lazily so that ``aamct --help`` does not load torch.
"""

from __future__ import annotations

from pipeline._lazy import lazy_exports

__all__ = [
    "ArchiveLimits",
    "GateOptions",
    "VerificationReport",
    "check_bundle",
    "printable",
    "receive_bundle",
]

_HOME = {
    "ArchiveLimits": "archive",
    "GateOptions": "gate",
    "VerificationReport": "gate",
    "check_bundle": "gate",
    "receive_bundle": "gate",
    "printable": "text",
}

__getattr__, __dir__ = lazy_exports(__name__, _HOME)
