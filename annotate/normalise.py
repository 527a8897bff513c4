"""Flux normalisation before rendering: each spectrum divided by its median over usable pixels
(numpy; `render_torch` has the same on a GPU). Shared by every encoding."""

from __future__ import annotations

import numpy as np


def row_median(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    """(B,) median of each row of (B, n) `values` over its `good` entries (the mean of the two
    middle values for an even count); NaN for rows with none. One partition per row (O(n)),
    not a sort: unusable entries become +inf and so lie above every rank that is read."""
    filled = np.where(good, values, np.inf)
    n_good = good.sum(axis=1)
    out = np.full(len(values), np.nan, dtype=filled.dtype)
    for i, n in enumerate(n_good.tolist()):
        if n == 0:
            continue
        upper = n // 2
        row = filled[i]
        row.partition(upper)
        middle = row[upper]
        out[i] = middle if n % 2 else 0.5 * (row[:upper].max() + middle)
    return out


def normalise_flux(flux: np.ndarray, mask: np.ndarray, how: str = "median") -> np.ndarray:
    """(B, n) flux divided by each row's median over usable pixels (its mean |flux| if that median
    is not positive). Unusable pixels (masked or non-finite) are returned as 0."""
    good = ~mask & np.isfinite(flux)
    if how == "none":
        return np.where(good, flux, 0.0).astype(np.float32)
    scale = row_median(flux, good)
    low = ~(scale > 0)
    if low.any():  # the mean |flux| only for rows whose median is not positive
        n_good = np.maximum(good[low].sum(axis=1), 1)  # summed in float64: the same in any order
        scale[low] = np.where(good[low], np.abs(flux[low]).astype(np.float64), 0.0).sum(axis=1) / n_good
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return np.where(good, flux / scale[:, None], 0.0).astype(np.float32)
