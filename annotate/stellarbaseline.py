"""The stellar-parameter baseline a survey scientist would reach for instead of the ViT: the
k nearest template stars by χ².

Each spectrum and each training star (a MILES template broadened to the instrument's resolution
and put on the store grid at rest) is divided by its own smooth continuum (a weighted running mean
of CONTINUUM_PIX pixels), so that flux calibration and reddening do not enter; χ² with a free scale
is computed against every template at whole-pixel shifts within ±MAX_SHIFT (the radial velocity),
and the labels are the mean of the K templates with the lowest χ². It is trained on exactly the
stars the ViT is trained on, and both are scored on the same held-out stars.

Also: RMSE and R² of predictions by S/N bin, the form in which the model card reports both.
"""

from __future__ import annotations

import warnings

import numpy as np

from .grid import WavelengthGrid, resample
from .metrics import r2_score

K = 5
MAX_SHIFT = 3           # pixels (±207 km/s on the SDSS grid: 2.6 σ of the simulated radial velocities)
CONTINUUM_PIX = 151
SNR_BINS = (0.0, 10.0, 20.0, 50.0, np.inf)
LABELS = ("teff", "logg", "feh")


def _smooth(values: np.ndarray, weights: np.ndarray, width: int) -> np.ndarray:
    """Weighted running mean along the last axis (edges use what they have)."""
    kernel = np.ones(width)
    numerator = np.apply_along_axis(np.convolve, -1, values * weights, kernel, mode="same")
    denominator = np.apply_along_axis(np.convolve, -1, weights, kernel, mode="same")
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-30), np.nan)


def normalise(flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flux / continuum, ivar × continuum²), 0 where unusable; (n, n_pix) in and out."""
    weights = (ivar > 0).astype(np.float64)
    continuum = _smooth(np.where(weights > 0, flux, 0.0), weights, CONTINUUM_PIX)
    usable = (weights > 0) & np.isfinite(continuum) & (continuum > 0)
    safe = np.where(usable, continuum, 1.0)
    return np.where(usable, flux / safe, 0.0), np.where(usable, ivar * safe**2, 0.0)


def template_stars(lib, indices: np.ndarray, grid: WavelengthGrid, resolution_sigma_kms: float = 69.0):
    """(normalised templates (k, n_pix) float32, usable (k, n_pix) bool, labels (k, 3)) for the
    library's stars `indices` on `grid` at rest."""
    from .simulate.spectra import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, broaden

    step = lib.star_loglam[1] - lib.star_loglam[0]
    template_sigma = lib.star_fwhm_aa * FWHM_TO_SIGMA / 5000.0 * SPEED_OF_LIGHT_KMS
    extra = np.sqrt(max(resolution_sigma_kms**2 - template_sigma**2, 0.0))
    wave = 10.0**lib.star_loglam
    fluxes, ivars = [], []
    for i in indices:
        flux = broaden(lib.star_flux[i].astype(np.float64), extra, step)
        bad = ~np.isfinite(flux)
        f, _, mask = resample(wave, np.where(bad, 0.0, flux), np.ones_like(flux), bad, grid)
        fluxes.append(np.where(mask, 0.0, f))
        ivars.append((~mask).astype(np.float64))
    flux, usable = normalise(np.array(fluxes), np.array(ivars))
    labels = np.stack([lib.star_teff[indices], lib.star_logg[indices], lib.star_feh[indices]], axis=1)
    return flux.astype(np.float32), usable > 0, labels


def nearest_templates(flux: np.ndarray, ivar: np.ndarray, templates: np.ndarray, usable: np.ndarray,
                      labels: np.ndarray, k: int = K, max_shift: int = MAX_SHIFT, chunk: int = 256) -> np.ndarray:
    """(n, 3) Teff, log g, [Fe/H]: the mean over the k lowest-χ² templates (each label over those
    of the k that have it). flux, ivar: (n, n_pix) on the templates' grid."""
    norm_flux, norm_ivar = normalise(np.asarray(flux, np.float64), np.asarray(ivar, np.float64))
    out = np.full((len(flux), labels.shape[1]), np.nan)
    t = templates.astype(np.float32)
    t2 = (t * t).astype(np.float32)
    valid = usable.astype(np.float32)
    for start in range(0, len(flux), chunk):
        f = norm_flux[start:start + chunk].astype(np.float32)
        w = norm_ivar[start:start + chunk].astype(np.float32)
        best = np.full((len(f), len(t)), np.inf)
        for shift in range(-max_shift, max_shift + 1):
            ts, t2s, vs = (np.roll(a, shift, axis=1) for a in (t, t2, valid))
            if shift > 0:
                vs[:, :shift] = 0
            elif shift < 0:
                vs[:, shift:] = 0
            wf = w * f
            ft = wf @ (ts * vs).T                 # Σ w f t
            tt = w @ (t2s * vs).T                 # Σ w t²
            ff = (wf * f) @ vs.T                  # Σ w f² over the template's pixels
            n_used = (w > 0).astype(np.float32) @ vs.T
            chi2 = (ff - np.where(tt > 0, ft**2 / np.maximum(tt, 1e-30), 0.0)) / np.maximum(n_used, 1.0)
            best = np.minimum(best, np.where(n_used > 100, chi2, np.inf))
        order = np.argsort(best, axis=1)[:, :k]
        with warnings.catch_warnings():  # none of the k has the label: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            out[start:start + len(f)] = np.nanmean(labels[order], axis=1)
    return out


def by_snr(true: np.ndarray, pred: np.ndarray, snr: np.ndarray, bins=SNR_BINS) -> list[dict]:
    """[{'snr': [lo, hi], 'n', 'rmse', 'r2'}] over rows where both are finite."""
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        inside = (snr >= lo) & (snr < hi) & np.isfinite(true) & np.isfinite(pred)
        rmse = float(np.sqrt(np.mean((pred[inside] - true[inside]) ** 2))) if inside.any() else float("nan")
        rows.append({"snr": [lo, None if np.isinf(hi) else hi], "n": int(inside.sum()), "rmse": rmse,
                     "r2": r2_score(true[inside], pred[inside])})
    return rows


def stellar_report(true: np.ndarray, pred: np.ndarray, snr: np.ndarray, min_snr: float = 20.0) -> dict:
    """Per label: RMSE/R² by S/N bin and R² at S/N ≥ `min_snr`. true, pred: (n, 3)."""
    report = {}
    for j, key in enumerate(LABELS):
        high = snr >= min_snr
        report[key] = {"by_snr": by_snr(true[:, j], pred[:, j], snr),
                       f"r2_snr_ge_{min_snr:g}": r2_score(true[high, j], pred[high, j])}
    return report
