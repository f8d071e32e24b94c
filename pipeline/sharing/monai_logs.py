"""Keep MONAI's bundle-script chatter out of ``aamct bundle`` output.

``monai.bundle.scripts`` logs every call's full argument summary at INFO to stdout through its own handler, which
would interleave with the verification report. The level is raised for the duration of a call, except when the
``aamct`` logger is at DEBUG (``aamct -v``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["quiet_monai_bundle_logs"]

_MONAI_BUNDLE_LOGGER = "monai.bundle.scripts"


@contextlib.contextmanager
def quiet_monai_bundle_logs() -> Iterator[None]:
    """Raise ``monai.bundle.scripts`` to WARNING inside the block (unchanged when the root logger is at DEBUG)."""
    logger = logging.getLogger(_MONAI_BUNDLE_LOGGER)
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)
