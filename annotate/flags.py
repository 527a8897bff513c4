"""PRED_FLAGS: the quality bitmask written with every prediction (documented in the README)."""

from __future__ import annotations

import enum


class PredFlag(enum.IntFlag):
    """Bits of PRED_FLAGS. A row with NO_SPECTRUM, NO_USABLE_PIXELS or PATH_REFUSED has NaN predictions."""

    NO_SPECTRUM = 1 << 0        # spectrum file missing, unreadable or of an unknown format
    NO_USABLE_PIXELS = 1 << 1   # fewer than 100 usable pixels on the grid (NaN/inf or |flux| > 1e20, zero ivar, ...), or zero flux at all of them
    LOW_COVERAGE = 1 << 2       # predicted, but under half of the grid had usable pixels
    NO_REFERENCE_Z = 1 << 3     # the catalog has no usable reference z (missing, NaN, ZWARNING != 0)
    NOT_SELECTED = 1 << 4       # the row fails the survey's selection rules (excluded from cross-checks)
    UNKNOWN_REFERENCE_CLASS = 1 << 5  # the catalog's class is not GALAXY/QSO/STAR
    PATH_REFUSED = 1 << 6       # the catalog's path points outside the spectra root; not read
    DUPLICATE_ID = 1 << 7       # another row of the catalog has the same object id (both predicted)
    SMALL_DELTACHI2 = 1 << 8    # the fit's best solution beats the next other one by Δχ² < 9 · max(χ²_ν, 1)
    Z_AT_EDGE = 1 << 9          # the fit's minimum lies at the edge of the redshift range scanned
    FIT_VIT_DISAGREE = 1 << 10  # the fit's class differs from the ViT's, or its z fails Ross et al. against the ViT's
    FIT_FAILED = 1 << 11        # the fit found no solution; PRED_CLASS and PRED_Z are the ViT's
    FEH_NO_SKILL = 1 << 12      # a star whose PRED_TEFF lies outside fit.stellar.FEH_SKILL_TEFF, where PRED_FEH showed no skill
    SPIKES_LEFT_OUT = 1 << 13   # the fit left out the pixels of spikes narrower than any line (cosmic-ray hits; fit.spikes); wider hits may remain
    FLUX_OFFSET = 1 << 14       # a fitted star's lines all shallower or deeper than its nearest training stars' (a constant in its flux: wrong sky subtraction); where shallower, labels read with it taken out

    @classmethod
    def describe(cls) -> str:
        return "; ".join(f"{flag.value}={flag.name}" for flag in cls)


NO_PREDICTION = PredFlag.NO_SPECTRUM | PredFlag.NO_USABLE_PIXELS | PredFlag.PATH_REFUSED
