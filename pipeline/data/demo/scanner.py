"""How the demo's scanners acquire: the sites' protocols, the matrix and slice geometry, stored HU and noise.

Three sites (``site-a``, ``site-b``, ``site-c``) differ in field of view, noise level and noise grain, so an
external-site hold-out shows a small domain shift. The noise is Gaussian, correlated in-plane like a reconstruction
kernel's grain, with a per-site sigma of 15-25 HU. Stored values are HU + 1024, clipped to the 12-bit range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.errors import UserError

__all__ = ["SITES", "DemoGeometry", "demo_geometry"]


#: the demo sites
SITES: tuple[str, ...] = ("site-a", "site-b", "site-c")

# Stored value = HU + 1024 (RescaleIntercept -1024), clipped to the 12-bit range scanners use.
_RESCALE_INTERCEPT = -1024
_HU_MIN, _HU_MAX = -1024, 3071
_MIN_SIZE, _MAX_SIZE = 32, 1024


@dataclass(frozen=True)
class _SiteProtocol:
    """How a site's scanner reconstructs: field of view, noise level and noise grain (in-plane correlation)."""

    field_of_view_mm: float
    noise_sigma_hu: float
    noise_grain_px: float
    station: str


_SITE_PROTOCOLS: dict[str, _SiteProtocol] = {
    "site-a": _SiteProtocol(field_of_view_mm=350.0, noise_sigma_hu=18.0, noise_grain_px=0.8, station="DEMO-CT-A"),
    "site-b": _SiteProtocol(field_of_view_mm=360.0, noise_sigma_hu=24.0, noise_grain_px=1.0, station="DEMO-CT-B"),
    "site-c": _SiteProtocol(field_of_view_mm=340.0, noise_sigma_hu=15.0, noise_grain_px=0.6, station="DEMO-CT-C"),
}


@dataclass(frozen=True)
class DemoGeometry:
    """Matrix and slice geometry of the demo scans for one ``size``.

    Attributes:
        size: in-plane matrix (rows = columns).
        min_slices: fewest slices of a scan.
        max_slices: most slices of a scan.
        slice_spacing_mm: distance between slice centres (slices are contiguous: thickness = spacing).
    """

    size: int
    min_slices: int
    max_slices: int
    slice_spacing_mm: float

    def pixel_spacing_mm(self, site: str) -> float:
        """In-plane pixel size at ``site`` (its field of view over the matrix)."""
        return round(_SITE_PROTOCOLS[site].field_of_view_mm / self.size, 4)


def demo_geometry(size: int) -> DemoGeometry:
    """The demo geometry for an in-plane matrix ``size``.

    Slices scale with the matrix between two anchors, 24-32 slices at 64 and 50-80 at 512 (a chest CT as acquired);
    the slice spacing keeps the mean cranio-caudal coverage at about 325 mm (5.0 mm at 512, 11.6 mm at 64). A scan's
    slice count is drawn in that range and raised where needed so that it covers both lungs, apex to base.

    Args:
        size: in-plane matrix, 32..1024.

    Returns:
        The geometry.

    Raises:
        UserError: if ``size`` is outside 32..1024.
    """
    if not isinstance(size, int) or isinstance(size, bool) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise UserError(f"--size must be an integer from {_MIN_SIZE} to {_MAX_SIZE}, got {size!r}")
    anchors = [32, 64, 512]
    min_slices = int(round(np.interp(size, anchors, [16, 24, 50])))
    max_slices = int(round(np.interp(size, anchors, [22, 32, 80])))
    spacing = round(325.0 / ((min_slices + max_slices) / 2), 1)
    return DemoGeometry(size=size, min_slices=min_slices, max_slices=max_slices, slice_spacing_mm=spacing)


def _scanner_noise(rng: np.random.Generator, shape: tuple[int, ...], protocol: _SiteProtocol) -> np.ndarray:
    """Gaussian noise correlated in-plane (reconstruction-kernel grain), scaled to the site's sigma in HU."""
    white = rng.standard_normal(shape, dtype=np.float32)
    grain = protocol.noise_grain_px
    noise = ndimage.gaussian_filter(white, (0.0, grain, grain), truncate=3.0)
    return noise * np.float32(protocol.noise_sigma_hu / max(float(noise.std()), 1e-6))
