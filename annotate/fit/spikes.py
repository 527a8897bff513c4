"""Spikes narrower than any line the instrument can record: cosmic-ray hits that a survey's
pipeline left in a spectrum, its inverse variance unchanged. A template fit explains such a spike
with an emission line and puts [O III] 5007 Å or [O II] 3727 Å on it, at a redshift it is sure of
(σ_z of a few km/s, Δχ² in the thousands). Light that passed the spectrograph is spread by its
line-spread function over at least a pixel or two of the store's grid; a hit on the detector is
not, so a pixel whose excess over its neighbours is too sharp to be a line is a hit.

`spike_pixels` first divides each row's weights by its own noise over what they say, where that
is above 1 (`noise_scale`). It then tests every sharp peak (`PEAK_SIGMA` above the mean of the
pixels two away) in a window of `2 * HALF + 1` pixels with two kinds of model over a straight
local level: a line, the pixel-integrated Gaussian of width σ ≥ `sigma_min` pixels (LINE_WIDTHS up
to 2.25 σ_min, centres in eighths of a pixel within CENTRE_REACH of the peak, the minimum between
them from a parabola), and a spike, one pixel free or two (the second not below the level: a hit
only adds charge). Where the spike beats every line by Δχ² > `delta_chi2`, fits its window (χ²
under `SPIKE_FIT_CHI2`, so blends and crowded absorption are left alone) and rises `PEAK_SIGMA`
above the level, its pixels and one on each side (a hit's faint edges) are left out of the fit. A
line of σ ≥ σ_min is fitted by the line model as well as the noise allows, so a line is left out
only when the data show it narrower than σ_min. σ_min 0.5 px (a FWHM of 1.2 px, 81 km/s on the 69
km/s grid) lies under the lines SDSS, BOSS and LAMOST give (about 2 px FWHM); DESI's z arm gives
unresolved lines of σ ≈ 0.4 px, as sharp as a two-pixel hit, so the run leaves the rule off for
DESI coadds, whose hits are rejected between exposures (`settings.fit_settings`). Not found: hits
of three pixels or more (as wide as a line), hits within two pixels of an unusable pixel or an
end of the spectrum (the test needs the pixels two away), and two hits within about three pixels
of each other (README, Reliability). Pure array code."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

HALF = 4                 # the test's window: the peak and HALF pixels on each side
PEAK_SIGMA = 6.0         # a peak's excess over the mean of the pixels two away, in σ of the peak pixel
SPIKE_FIT_CHI2 = 30.0    # the spike model must fit its window (9 pixels, 3-4 parameters) to this χ²
LINE_WIDTHS = (1.0, 1.5, 2.25)   # the line model's σ, in units of sigma_min
CENTRE_REACH = 0.75      # the line model's centres: within this many pixels of the peak
EXTRA_PIXEL_CHI2 = 9.0   # a spike's second pixel must lower its window's χ² by this much
CHUNK = 64               # rows at a time


@lru_cache(maxsize=4)
def _designs(sigma_min: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The models over the window's W pixels, each a straight level plus: a unit-area Gaussian
    integrated over each pixel (lines (M, W): LINE_WIDTHS × centres in eighths of a pixel within
    CENTRE_REACH of the peak), the peak pixel alone (one spike (1, W)), or the peak with its left
    or its right neighbour (two-pixel spikes, whole designs (2, W, 4) with the level's columns)."""
    from scipy.special import ndtr

    x = np.arange(-HALF, HALF + 1, dtype=float)
    lines = []
    for width in LINE_WIDTHS:
        sigma = width * sigma_min
        for centre in np.arange(-CENTRE_REACH, CENTRE_REACH + 1e-9, 0.125):
            lines.append(ndtr((x + 0.5 - centre) / sigma) - ndtr((x - 0.5 - centre) / sigma))
    delta = np.eye(len(x))
    level = np.stack([np.ones_like(x), x / HALF], axis=1)
    two = np.stack([np.column_stack([level, delta[HALF - 1], delta[HALF]]),
                    np.column_stack([level, delta[HALF], delta[HALF + 1]])])
    return np.array(lines), delta[HALF][None], two


def _profile_chi2(profiles: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(χ² (K, M), amplitude (K, M)) of weighted least squares of windows y, w (K, W) on a straight
    level plus each one of the profiles (M, W): the level eliminated once per window (its 2 × 2
    normal equations in closed form), each profile's amplitude then one division."""
    x = np.arange(-HALF, HALF + 1, dtype=float) / HALF
    wx, wy = w * x, w * y
    s0, s1, s2 = (v.sum(axis=1)[:, None] for v in (w, wx, wx * x))
    det = s0 * s2 - s1 * s1

    def through_level(a0, a1, b0, b1):
        """(a0, a1) A⁻¹ (b0, b1)ᵀ, A = [[s0, s1], [s1, s2]] the level's normal matrix."""
        return (a0 * (s2 * b0 - s1 * b1) + a1 * (s0 * b1 - s1 * b0)) / det

    y0, y1 = wy.sum(axis=1)[:, None], (wy * x).sum(axis=1)[:, None]
    g0, g1 = w @ profiles.T, wx @ profiles.T
    with np.errstate(divide="ignore", invalid="ignore"):
        level_chi2 = (wy * y).sum(axis=1)[:, None] - through_level(y0, y1, y0, y1)
        gg = w @ (profiles * profiles).T - through_level(g0, g1, g0, g1)
        gy = wy @ profiles.T - through_level(g0, g1, y0, y1)
        amplitude = np.where(gg > 0, gy / gg, 0.0)
    return np.maximum(level_chi2 - amplitude * gy, 0.0), amplitude


def _chi2(designs: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(χ² (K, M), coefficients (K, M, p)) of weighted least squares of windows y, w (K, W) on each
    of the designs (M, W, p), from their normal equations."""
    a = np.einsum("mwi,kw,mwj->kmij", designs, w, designs)
    b = np.einsum("mwi,kw->kmi", designs, w * y)
    p = a.shape[-1]
    a += np.eye(p) * (1e-12 * np.trace(a, axis1=-2, axis2=-1)[..., None, None] + 1e-300)
    coefficients = np.linalg.solve(a, b[..., None])[..., 0]
    chi2 = np.einsum("kw,kw->k", w, y * y)[:, None] - np.einsum("kmi,kmi->km", b, coefficients)
    return np.maximum(chi2, 0.0), coefficients


def _line_minimum(chi2: np.ndarray) -> np.ndarray:
    """(K,) the lowest χ² of the lines (K, widths, centres): per width, a parabola through the
    lowest centre and its two neighbours gives the minimum between the grid's centres (an eighth
    of a pixel off a line of σ 0.5 px at 100σ is a Δχ² of tens); the lowest over the widths."""
    k, n_w, n_c = chi2.shape
    j = np.clip(chi2.argmin(axis=2), 1, n_c - 2)
    at = lambda d: np.take_along_axis(chi2, (j + d)[..., None], axis=2)[..., 0]
    left, mid, right = at(-1), at(0), at(1)
    curvature = left - 2.0 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(curvature > 0, mid - (right - left) ** 2 / (8.0 * curvature), mid)
    return np.maximum(np.minimum(vertex, chi2.min(axis=2)), 0.0).min(axis=1)


def spike_pixels(f: np.ndarray, w: np.ndarray, sigma_min: float = 0.5, delta_chi2: float = 25.0) -> np.ndarray:
    """(B, n) bool: the pixels of spikes narrower than a line of σ `sigma_min` pixels (module
    docstring) in spectra f with weights w (B, n; weight 0: unusable), with their neighbours."""
    f = np.asarray(f, np.float64)
    w = np.asarray(w, np.float64)
    out = np.zeros(f.shape, bool)
    if sigma_min <= 0 or f.shape[-1] < 2 * HALF + 1:
        return out
    for start in range(0, len(f), CHUNK):
        out[start:start + CHUNK] = _spikes(f[start:start + CHUNK], w[start:start + CHUNK], sigma_min, delta_chi2)
    return out


def _peaks(f: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, pixels) of the sharp peaks: usable with the pixels two away, the excess over their
    mean at least PEAK_SIGMA σ of the pixel, and no lower than either neighbour's excess."""
    n = f.shape[-1]
    valid = w > 0
    excess = np.full(f.shape, -np.inf)
    core = slice(2, n - 2)
    ok = valid[:, core] & valid[:, :-4] & valid[:, 4:]
    with np.errstate(invalid="ignore"):
        excess[:, core] = np.where(ok, (f[:, core] - 0.5 * (f[:, :-4] + f[:, 4:])) * np.sqrt(w[:, core]), -np.inf)
    left = np.concatenate([np.full((len(f), 1), -np.inf), excess[:, :-1]], axis=1)
    right = np.concatenate([excess[:, 1:], np.full((len(f), 1), -np.inf)], axis=1)
    peak = (excess >= PEAK_SIGMA) & (excess >= left) & (excess > right)
    peak[:, :HALF] = peak[:, n - HALF:] = False
    return np.nonzero(peak)


def noise_scale(f: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) each row's noise over what its weights say, squared, at least 1: the square of the
    robust spread (1.4826 × the median |excess|) of the excess over the mean of the pixels two
    away, in units of its σ from the weights, at every third pixel. A row whose ivar is too large
    (noise ten times its stated variance) would otherwise show noise peaks by the hundred as
    many-σ spikes."""
    n = f.shape[-1]
    scale = np.ones(len(f))
    if n < 5:
        return scale
    core = slice(2, n - 2, 3)
    lo, hi = slice(0, n - 4, 3), slice(4, n, 3)
    ok = (w[:, core] > 0) & (w[:, lo] > 0) & (w[:, hi] > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = 1.0 / w[:, core] + 0.25 / w[:, lo] + 0.25 / w[:, hi]
        excess = np.abs(f[:, core] - 0.5 * (f[:, lo] + f[:, hi])) / np.sqrt(variance)
    for i in range(len(f)):
        values = excess[i][ok[i]]
        if len(values) >= 30:
            scale[i] = (1.4826 * np.median(values)) ** 2
    return np.maximum(np.nan_to_num(scale, nan=1.0), 1.0)


def _spikes(f: np.ndarray, w: np.ndarray, sigma_min: float, delta_chi2: float) -> np.ndarray:
    out = np.zeros(f.shape, bool)
    w = w / noise_scale(f, w)[:, None]
    rows, pixels = _peaks(f, w)
    if len(rows) == 0:
        return out
    offsets = np.arange(-HALF, HALF + 1)
    window = pixels[:, None] + offsets
    y, wy = f[rows[:, None], window], w[rows[:, None], window]
    usable = wy > 0
    keep = usable[:, HALF - 2:HALF + 3].all(axis=1) & (usable.sum(axis=1) >= 2 * HALF - 1)
    if not keep.any():
        return out
    rows, pixels, y, wy = rows[keep], pixels[keep], y[keep], wy[keep]
    lines, one, two = _designs(float(sigma_min))
    best_line = _line_minimum(_profile_chi2(lines, y, wy)[0].reshape(len(y), len(LINE_WIDTHS), -1))
    one_chi2, one_height = _profile_chi2(one, y, wy)
    two_chi2, two_coefficients = _chi2(two, y, wy)
    # a hit only adds charge: a second pixel below the level (a noise peak beside a dip) is no spike's
    two_chi2 = np.where(two_coefficients[:, [0, 1], [2, 3]] >= 0.0, two_chi2, np.inf)
    # a spike's second pixel only where it is significant (the models are nested)
    spike_chi2 = np.concatenate([one_chi2, two_chi2 + EXTRA_PIXEL_CHI2], axis=1)
    which = spike_chi2.argmin(axis=1)    # 0: one pixel; 1, 2: with the left, right neighbour
    k = np.arange(len(y))
    best_spike = spike_chi2[k, which]   # with the second pixel's cost, against the lines
    fit_chi2 = best_spike - np.where(which > 0, EXTRA_PIXEL_CHI2, 0.0)
    # the spike's height over the level at the peak (the peak pixel's coefficient)
    height = np.choose(which, [one_height[:, 0], two_coefficients[k, 0, 3], two_coefficients[k, 1, 2]])
    sharp = ((best_line - best_spike > delta_chi2) & (fit_chi2 < SPIKE_FIT_CHI2)
             & (height * np.sqrt(wy[:, HALF]) >= PEAK_SIGMA))
    # the hit's pixels (the peak, and its neighbour for a two-pixel spike) and one more on each side
    lo = pixels - 1 - (which == 1)
    hi = pixels + 1 + (which == 2)
    for r, a, b in zip(rows[sharp], lo[sharp], hi[sharp]):
        out[r, max(a, 0):b + 1] = True
    return out
