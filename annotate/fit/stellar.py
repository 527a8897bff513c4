"""The fit's stellar parameters: for rows the fit classes STAR, Teff, log g and [Fe/H] are the
labels of the training stars nearest by χ² (`annotate.stellarbaseline`), the spectrum first moved
to rest by the fitted velocity: each label the mean over the best non-negative mixture of the
FitSettings.stellar_mix (15) nearest, weighted by their shares in it (the mean of the K = 5
nearest with stellar_mix 0). The mixture places a star between its neighbours by its spectrum
where the plain mean weighs a far neighbour like a near one; it raised R² in every label on the
training stars in 4 folds, where the 15 was chosen (figures: README, "The template fit").

The training stars are the MILES stars of the fit's STAR bases (the default model's training
stars; its held-out stars are in neither), broadened to the SDSS resolution (69 km/s), on the run's
grid, each divided by its running-mean continuum so that flux calibration and reddening do not enter.
On held-out stars this beats the shipped ViT in each label at S/N ≥ 10 (below it the ViT's Teff
is the closer; README, "The template fit"), which is why PRED_TEFF/LOGG/FEH take these values
where the fit found a star.

Each label's 1σ is √((scale · spread)² + floor²), the spread being the standard deviation of the K
neighbours' labels: far from the library's stars (a type it has few of) the neighbours disagree
and σ grows. scale and floor are fitted per label by `annotate.fit.calibrate` on stars the
library was built without, fold by fold, and kept in data/calibration.json ('stellar').

A star whose lines are all shallower (or deeper) than its nearest training stars', as a constant
added to (or taken from) its flux by a wrong sky subtraction makes them, is flagged FLUX_OFFSET;
where they are shallower its labels are read with that constant taken out (`stellar_labels`).
"""

from __future__ import annotations

import numpy as np

from .. import stellarbaseline

SEARCH_PIXELS = 1  # whole pixels searched around the fitted velocity (its rounding)
# Teff (K) within which the fit's [Fe/H] has skill: on the training stars in 4 folds (12,000
# spectra with the realism effects, seeds 7100 and 8100), R² of [Fe/H] at S/N >= 20 by the fit's
# own Teff was -0.23 below 4,000 K, 0.77-0.88 at 4,000-8,000 K, 0.39-0.56 at 8,000-11,000 K and
# 0.03 above (README, "The default model", limits). Outside it PRED_FLAGS gets FEH_NO_SKILL.
FEH_SKILL_TEFF = (4000.0, 11000.0)
# a star's lines shallower or deeper than its nearest training stars' by this share of the
# continuum (a constant of a fifth of the continuum's level added to or taken from the flux), at
# this Δχ² or more, are taken for a wrong sky subtraction (stellar_labels; PRED_FLAGS FLUX_OFFSET)
OFFSET_VEIL = 0.2
OFFSET_GAIN = 25.0


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


def stellar_labels(grid, bases, f: np.ndarray, w: np.ndarray, shifts: np.ndarray, k: int,
                   calibration: dict | None = None, mix: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """((n, 3) Teff [K], log g, [Fe/H] [dex], (n, 3) their 1σ, (n,) bool offset) of spectra (n,
    n_pix) with weights w (0 = unusable) whose fitted velocities are `shifts` (n,) pixels; NaN where
    a label is unknown (σ also where fewer than two neighbours have it). `calibration`: {label:
    {'scale', 'floor'}} (annotate.fit.calibrate); None: σ is the neighbours' spread itself. `mix`
    > 0: the labels of the best mixture of the `mix` nearest stars, not the mean of the k nearest.

    offset: the rows whose lines are shallower or deeper than their k nearest stars' by at least
    OFFSET_VEIL of the continuum, at a Δχ² of OFFSET_GAIN or more (`stellarbaseline.dilution`), as a
    constant added to or taken from the flux makes them (sky subtracted wrongly). Where the lines
    are shallower the labels are those of the spectrum with that constant taken out (normalised
    flux (n − b) / a)."""
    if len(f) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, bool)
    templates, usable, labels = training_stars(grid, bases)
    found: dict = {}
    means, spread = stellarbaseline.nearest_templates(f, w, templates, usable, labels, k=k, max_shift=SEARCH_PIXELS,
                                                      shifts=shifts, spread=True, mix=mix, found=found)
    norm_f, norm_w = found["flux"], found["ivar"]
    veil, scale, offset, gain = stellarbaseline.dilution(norm_f, norm_w, templates, usable, found["order"], found["shift"])
    with np.errstate(invalid="ignore"):
        moved = (np.abs(veil) >= OFFSET_VEIL) & (gain >= OFFSET_GAIN) & (scale > 0)
    # taken out only where light was added: where flux was taken away a cool star's blue end falls
    # to or below zero, its continuum is lost, and the labels with the constant taken out were the
    # worse in Teff (README, "The template fit": a constant in a star's flux)
    if (moved & (veil > 0)).any():
        rows = np.flatnonzero(moved & (veil > 0))
        a, b = scale[rows, None], offset[rows, None]
        means[rows], spread[rows] = stellarbaseline.nearest_templates(
            np.where(norm_w[rows] > 0, (norm_f[rows] - b) / a, 0.0), norm_w[rows] * a * a, templates, usable, labels,
            k=k, max_shift=SEARCH_PIXELS, spread=True, mix=mix)
    return means, stellar_sigma(spread, calibration), moved


def stellar_sigma(spread: np.ndarray, calibration: dict | None) -> np.ndarray:
    """(n, 3) 1σ of the labels from their neighbours' spread (n, 3): √((scale · spread)² + floor²)
    per label of `calibration` ({label: {'scale', 'floor'}}), the spread itself without one."""
    if calibration is None:
        return np.array(spread, float)
    terms = np.array([[calibration[key]["scale"], calibration[key]["floor"]] for key in stellarbaseline.LABELS])
    return np.hypot(terms[:, 0] * spread, terms[:, 1])
