"""The fit's flux and weights for a batch of spectra: unusable pixels at weight 0, each spectrum
scaled by its median |flux| (`spectrum_arrays`), and the weights lowered at bright night-sky lines
(`sky_line_weights`, within `sky_line_pixels` of the known lines), where what the sky subtraction
leaves would otherwise be fitted as an emission line. Pure array code."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SKY_CHUNK = 32     # rows of sky_line_weights at a time


def sky_line_weights(w: np.ndarray, window: int, grow: int, near: np.ndarray | None = None) -> np.ndarray:
    """Weights (B, n) with the pixels of bright sky lines down-weighted, from the weights alone.

    A survey's inverse variance includes the sky's photon noise, so a night-sky line shows as a
    narrow rise of the variance above its local level. What the sky subtraction leaves there (a
    fraction of the line's flux, and a P Cygni-like term where the sky model's wavelengths are off
    by a fraction of a pixel) grows with the line's flux, its photon noise only with the square
    root of it: at a bright line the residual is many σ whatever the fraction, and a template fit
    explains it with an emission line ([O I] 5577 Å taken for [O III] 5007 Å at z = 0.114, or for
    [O II] 3727 Å at z = 0.496). Each pixel's weight is divided by the square of its variance over
    the local level of the variance (where it is above it; `_block_median_level` over blocks of
    `window` pixels), the ratio
    first spread over `grow` pixels (the line's wings, where the wavelength error leaves its
    residual): the weight then falls faster than the residual rises. Smooth changes of the noise
    (throughput, the sky's continuum) follow the local level and keep their weights; an object's
    own line raises the variance too where the object's photons dominate the noise (a bright
    galaxy's [O II], [O III] and Hα, a quasar's broad lines) and is then a sky line's twin in the
    weights alone; `near` ((n,) bool), the pixels close to the known sky lines, confines the rule to
    them, so an object's line is lowered only where it falls on a sky line. window 0: `w` itself."""
    if window <= 0:
        return w
    if len(w) > SKY_CHUNK:  # a few rows at a time: the temporaries are several copies of the rows
        return np.concatenate([sky_line_weights(w[a:a + SKY_CHUNK], window, grow, near)
                               for a in range(0, len(w), SKY_CHUNK)])
    valid = w > 0
    if not valid.any():
        return w
    n = w.shape[-1]
    index = np.arange(n)
    # each unusable pixel takes the variance of the nearest usable one before it (after it at the start)
    last = np.maximum.accumulate(np.where(valid, index, -1), axis=-1)
    first = np.minimum.accumulate(np.where(valid, index, n)[..., ::-1], axis=-1)[..., ::-1]
    source = np.where(last >= 0, last, np.minimum(first, n - 1))
    if near is not None:   # the fit's path: no scipy.ndimage (whose import took 0.08 s in each process)
        return _sky_weights_near(w, valid, source, window, grow, near)
    from scipy.ndimage import maximum_filter1d

    with np.errstate(divide="ignore"):
        variance = np.take_along_axis(np.where(valid, 1.0 / np.where(valid, w, 1.0), 0.0), source, axis=-1)
    local = _block_median_level(variance, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(valid & (local > 0), variance / local, 1.0)
    ratio = np.maximum(ratio, 1.0)
    if grow > 1:
        ratio = maximum_filter1d(ratio, size=grow, axis=-1, mode="nearest")
    return np.where(valid, w / ratio**2, 0.0)


def _sky_weights_near(w: np.ndarray, valid: np.ndarray, source: np.ndarray, window: int, grow: int,
                      near: np.ndarray) -> np.ndarray:
    """`sky_line_weights` confined to `near`, computed only where it can change a weight: the
    ratio at the pixels within the maximum filter's reach of a near pixel, and the local level
    from the medians of the blocks whose centres bracket those pixels (what the interpolation
    reads): 587 of 4,608 pixels and 38 of 90 blocks for the SDSS grid's sky lines. The
    same weights to the bit as over all pixels (tests/fit/test_sky.py)."""
    region, blocks, edges, centres, reach = _sky_region(w.shape[-1], window, grow, near.tobytes())
    out = np.where(valid, w, 0.0)
    if len(region) == 0:
        return out

    def variance(pixels: np.ndarray) -> np.ndarray:
        """(B, len(pixels)): the variance at each pixel's source (the nearest usable pixel)."""
        src = source[:, pixels]
        usable = np.take_along_axis(valid, src, axis=-1)
        with np.errstate(divide="ignore"):
            return np.where(usable, 1.0 / np.where(usable, np.take_along_axis(w, src, axis=-1), 1.0), 0.0)

    medians = _block_medians(variance, len(w), edges, blocks)
    local = np.stack([np.interp(region, centres[blocks], row) for row in medians])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(valid[:, region] & (local > 0), variance(region) / local, 1.0)
    ratio = np.maximum(ratio, 1.0)
    # the maximum filter (size grow, 'nearest' at the ends) at the near pixels: `reach` holds the
    # region positions of each near pixel's neighbours
    ratio = ratio[:, reach].max(axis=1)
    near_pixels = np.flatnonzero(near)
    out[:, near_pixels] = np.where(valid[:, near_pixels], w[:, near_pixels] / ratio**2, 0.0)
    return out


@lru_cache(maxsize=8)
def _sky_region(n: int, window: int, grow: int, near_bytes: bytes):
    """(region pixels, needed block indices, block edges, block centres, reach) of
    `_sky_weights_near` for rows of n pixels: the pixels a maximum filter of size `grow` reads
    for a near pixel (scipy's: offsets −(grow // 2) … (grow − 1) // 2, clipped to the row), the
    blocks of `_block_median_level` whose centres bracket one of them (np.interp's two
    neighbours, or the end block beyond the outer centres), and reach (offsets, near pixels):
    the region position of each near pixel's neighbour at each offset."""
    near = np.flatnonzero(np.frombuffer(near_bytes, dtype=bool))
    size = max(grow, 1)
    offsets = np.arange(-(size // 2), (size - 1) // 2 + 1)
    neighbours = np.clip(near[None, :] + offsets[:, None], 0, n - 1)     # (offsets, near)
    region = np.unique(neighbours)
    reach = np.searchsorted(region, neighbours)
    edges, centres = _block_grid(n, window)
    right = np.searchsorted(centres, region, side="right")
    blocks = np.unique(np.clip(np.concatenate([right - 1, right]), 0, len(centres) - 1))
    return region, blocks, edges, centres, reach


def _block_median_level(values: np.ndarray, window: int) -> np.ndarray:
    """(B, n): the median of each of n // window blocks of equal length (to a pixel),
    interpolated linearly between the blocks' centres (constant beyond the outer ones). A
    running median gives much the same at many times the cost."""
    n = values.shape[-1]
    edges, centres = _block_grid(n, window)
    medians = _block_medians(lambda pixels: values[:, pixels], len(values), edges, np.arange(len(centres)))
    index = np.arange(n)
    return np.stack([np.interp(index, centres, row) for row in medians])


def _block_grid(n: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges, centres) of the n // window blocks of `_block_median_level` (lengths differ by at
    most one pixel)."""
    n_blocks = max(n // window, 1)
    edges = np.linspace(0, n, n_blocks + 1).astype(int)
    return edges, 0.5 * (edges[:-1] + edges[1:] - 1)


def _block_medians(values_at, n_rows: int, edges: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """(n_rows, len(blocks)) medians of the blocks `blocks` of `edges`, `values_at(pixels)` giving
    the rows' values (n_rows, len(pixels)) at pixel indices: the blocks of each length in one
    reshape (they differ in length by at most one pixel)."""
    lengths = np.diff(edges)[blocks]
    out = np.empty((n_rows, len(blocks)))
    for length in np.unique(lengths):
        which = np.flatnonzero(lengths == length)
        pixels = (edges[blocks[which]][:, None] + np.arange(length)).ravel()
        out[:, which] = np.median(values_at(pixels).reshape(n_rows, len(which), length), axis=-1)
    return out


def spectrum_arrays(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, sky_window: int = 0,
                    sky_grow: int = 1, sky_near: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(f, w, scale): flux and weights (B, n) float64 with unusable pixels at weight 0, each
    spectrum divided by its median |flux| over usable pixels (`scale`, (B,)), which leaves χ²
    unchanged and keeps the sums well scaled. `sky_window`, `sky_grow`, `sky_near`:
    `sky_line_weights` (window 0: the inverse variance as it is)."""
    flux = np.asarray(flux, np.float64)
    ivar = np.asarray(ivar, np.float64)
    good = ~np.asarray(mask, bool) & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    f = np.where(good, flux, 0.0)
    w = sky_line_weights(np.where(good, ivar, 0.0), sky_window, sky_grow, sky_near)
    masked = np.where(good, np.abs(f), np.nan)
    with np.errstate(all="ignore"):
        scale = np.nanmedian(np.where(np.isfinite(masked).any(axis=1, keepdims=True), masked, 1.0), axis=1)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return f / scale[:, None], w * scale[:, None] ** 2, scale


def sky_line_pixels(grid, halfwidth: int) -> np.ndarray:
    """(n_pix,) bool: the store's pixels within `halfwidth` of a bright night-sky line (the lines
    of `simulate.realism.SKY_LINES`: Osterbrock et al. 1996, 1997, in vacuum), where
    `sky_line_weights` may lower the weights."""
    from ..simulate.realism import sky_line_centres

    near = np.zeros(grid.n_pix, bool)
    for centre in np.rint(sky_line_centres(grid)).astype(int):
        near[max(centre - halfwidth, 0):max(centre + halfwidth + 1, 0)] = True
    return near
