"""The fit's stellar parameters: for rows the fit classes STAR, Teff, log g and [Fe/H] are the
mean labels of the K training stars nearest by χ² (`annotate.stellarbaseline`), the spectrum
first moved to rest by the fitted velocity.

The training stars are the MILES stars of the fit's STAR bases (the default model's training
stars; its held-out stars are in neither), broadened to the SDSS resolution (69 km/s), on the run's
grid, each divided by its running-mean continuum so that flux calibration and reddening do not enter.
On held-out stars this beats the shipped ViT in log g and [Fe/H] at every S/N (README, "The
template fit"), which is why PRED_TEFF/LOGG/FEH take these values where the fit found a star.
"""

from __future__ import annotations

import numpy as np

from .. import stellarbaseline

SEARCH_PIXELS = 1  # whole pixels searched around the fitted velocity (its rounding)


_TRAINING_STARS: dict = {}


def training_stars(grid, bases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(templates (S, n_pix) float32, usable (S, n_pix) bool, labels (S, 3)) of the training
    stars of `bases` (a BasisSet: the library's stars outside its held-out ones) on `grid` (a
    WavelengthGrid); built once per process, grid and basis set (0.7 s on 2 cores)."""
    from ..simulate.templates import load_library

    key = (grid, bases.sha256, bases.held_out_stars.tobytes())
    if key not in _TRAINING_STARS:
        lib = load_library()
        train = np.setdiff1d(np.arange(lib.n_star), bases.held_out_stars)
        _TRAINING_STARS.clear()  # one grid at a time is what a process needs
        _TRAINING_STARS[key] = stellarbaseline.template_stars(lib, train, grid)
    return _TRAINING_STARS[key]


def stellar_labels(grid, bases, f: np.ndarray, w: np.ndarray, shifts: np.ndarray, k: int) -> np.ndarray:
    """(n, 3) Teff [K], log g, [Fe/H] [dex] of spectra (n, n_pix) with weights w (0 = unusable)
    whose fitted velocities are `shifts` (n,) pixels; NaN where a label is unknown."""
    if len(f) == 0:
        return np.zeros((0, 3))
    templates, usable, labels = training_stars(grid, bases)
    return stellarbaseline.nearest_templates(f, w, templates, usable, labels, k=k, max_shift=SEARCH_PIXELS,
                                             shifts=shifts)
