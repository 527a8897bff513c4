"""The common wavelength grid of the spectra store and flux-conserving resampling onto it.

Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class WavelengthGrid:
    """A log-linear vacuum wavelength grid.

    loglam_start: log10 of the first pixel centre in Å; loglam_step: dex per pixel; n_pix: pixels.
    The default is SDSS's own 1e-4 dex sampling from 3600 to 10400 Å, with pixel centres on exact
    multiples of 1e-4 dex so that SDSS coadds map one-to-one onto store pixels.
    """

    loglam_start: float = 3.5563
    loglam_step: float = 1e-4
    n_pix: int = 4608

    def __post_init__(self):
        if self.n_pix < 2 or self.loglam_step <= 0:
            raise ConfigError(f"wavelength grid needs n_pix >= 2 and loglam_step > 0, got {self}")

    @classmethod
    def from_range(cls, wave_min_aa: float, wave_max_aa: float, loglam_step: float = 1e-4):
        """Grid covering [wave_min_aa, wave_max_aa] with pixel centres on multiples of the step."""
        start = np.ceil(np.log10(wave_min_aa) / loglam_step) * loglam_step
        n_pix = int(np.floor((np.log10(wave_max_aa) - start) / loglam_step)) + 1
        return cls(round(float(start), 10), loglam_step, n_pix)

    @property
    def loglam(self) -> np.ndarray:
        """(n_pix,) float64 log10 wavelength of pixel centres, Å."""
        return self.loglam_start + self.loglam_step * np.arange(self.n_pix)

    @property
    def wavelength(self) -> np.ndarray:
        """(n_pix,) float64 vacuum wavelength of pixel centres, Å."""
        return 10.0**self.loglam

    @property
    def edges(self) -> np.ndarray:
        """(n_pix + 1,) float64 pixel edges, Å."""
        half = 0.5 * self.loglam_step
        return 10.0 ** (self.loglam_start - half + self.loglam_step * np.arange(self.n_pix + 1))

    def to_dict(self) -> dict:
        return asdict(self)


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air → vacuum wavelengths (Å) with the refractive index of Morton 2000 (ApJS 130, 403),
    as used by the SDSS and VALD; valid above 2000 Å."""
    s2 = (1e4 / wave_air) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (38.92568793293 - s2)
    return wave_air * n


def pixel_edges(wavelength: np.ndarray) -> np.ndarray:
    """(n + 1,) edges of pixels with centres `wavelength` (n,), Å, ascending: midpoints, extrapolated."""
    mid = 0.5 * (wavelength[1:] + wavelength[:-1])
    first = wavelength[0] - (mid[0] - wavelength[0])
    last = wavelength[-1] + (wavelength[-1] - mid[-1])
    return np.concatenate([[first], mid, [last]])


FLUX_LIMIT = 1e20  # |flux| beyond this is no measurement in any survey's units: the pixel counts as bad


def resample(
    wavelength: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    bad: np.ndarray,
    grid: WavelengthGrid,
    min_coverage: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flux-conserving resampling of one spectrum onto `grid`.

    wavelength: (n,) ascending vacuum Å; flux: (n,) flux density per Å (any unit);
    ivar: (n,) inverse variance of flux; bad: (n,) bool, pixels without usable data (so are pixels
    with non-finite values or |flux| > FLUX_LIMIT).

    Each output pixel is the mean flux density over the good parts of the source pixels it overlaps
    (integrals of a piecewise-constant spectrum, so total flux is conserved). Its variance is
    Σ aᵢ Δᵢ σᵢ² / (Σ aᵢ)² with aᵢ the overlap and Δᵢ the source pixel width, exact when pixels
    align and a close estimate otherwise. Output pixels whose good overlap covers less than
    `min_coverage` of their width, or that lie outside the source range, are masked (ivar 0).

    Returns flux (n_pix,) float32, ivar (n_pix,) float32, mask (n_pix,) bool (True = no data).
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        good = ~np.asarray(bad, dtype=bool) & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) \
            & (np.abs(flux) <= FLUX_LIMIT)
    src_edges = pixel_edges(wavelength)
    width = np.diff(src_edges)
    f = np.where(good, flux, 0.0)
    var = np.where(good, 1.0 / np.where(good, ivar, 1.0), 0.0)
    cum_flux = np.concatenate([[0.0], np.cumsum(f * width)])
    cum_width = np.concatenate([[0.0], np.cumsum(np.where(good, width, 0.0))])
    cum_var = np.concatenate([[0.0], np.cumsum(var * width * width)])

    out_edges = grid.edges
    at = lambda cum: np.interp(out_edges, src_edges, cum)  # noqa: E731
    sum_flux = np.diff(at(cum_flux))
    sum_width = np.diff(at(cum_width))
    sum_var = np.diff(at(cum_var))
    out_width = np.diff(out_edges)
    inside = (out_edges[:-1] >= src_edges[0]) & (out_edges[1:] <= src_edges[-1])
    covered = inside & (sum_width >= min_coverage * out_width)
    safe_width = np.where(covered, sum_width, 1.0)
    out_flux = np.where(covered, sum_flux / safe_width, 0.0)
    out_var = np.where(covered, sum_var / safe_width**2, 0.0)
    out_ivar = np.where(covered & (out_var > 0), 1.0 / np.where(out_var > 0, out_var, 1.0), 0.0)
    mask = ~covered | (out_ivar <= 0)
    return out_flux.astype(np.float32), out_ivar.astype(np.float32), mask
