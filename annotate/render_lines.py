"""Simple and Overlap encodings: spectra drawn as line plots, rasterised with numpy (no matplotlib).

Simple: the whole spectrum as one line across the image width, white on black.
Overlap: the spectrum cut into three segments of equal length (the last one takes the remainder);
segment i is drawn across the full width into colour channel i (red, green, blue), so each
channel holds one clean segment and the channels never blend.

Geometry, shared by both (and by the torch version in render_torch.py):
- flux is normalised per spectrum as for the 2D Map (divided by its median over usable pixels),
  scaled between `flux_min` (bottom row) and `flux_max` (top row) and clipped, so a flux outside
  the range runs along the image edge;
- sample k of a segment of n samples lies in column floor(k · S / n) (S = image size) and row
  round((1 − y) · (S − 1)) with y the scaled flux in [0, 1];
- each column is filled between the lowest and highest row of its samples, joined to the first
  sample of the next column (the segment between them), which is exactly the 1-px polyline;
- a masked or non-finite sample is a gap: it is not drawn and the line is not joined across it,
  and a column with no usable sample stays black;
- the line is then thickened to `line_width` pixels (rows below and columns to the right).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import ConfigError
from .normalise import normalise_flux


def segment_bounds(n_pix: int, n_segments: int) -> list[tuple[int, int]]:
    """[start, stop) of `n_segments` equal segments of n_pix samples (the last takes the remainder)."""
    length = n_pix // n_segments
    return [(i * length, n_pix if i == n_segments - 1 else (i + 1) * length) for i in range(n_segments)]


@lru_cache(maxsize=32)
def column_starts(n: int, width: int) -> np.ndarray:
    """(width,) index of the first sample in each column for n samples (n >= width)."""
    if n < width:
        raise ConfigError(f"a line plot {width} px wide needs at least {width} samples per line, got {n}")
    columns = (np.arange(n) * width) // n
    return np.searchsorted(columns, np.arange(width)).astype(np.intp)


def sample_rows(scaled: np.ndarray, size: int) -> np.ndarray:
    """(B, n) int32 image row of each sample from its flux scaled to [0, 1] (1 = top row)."""
    return np.rint((1.0 - scaled) * (size - 1)).astype(np.int32)


def column_extents(rows: np.ndarray, good: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, size) lowest and highest row drawn in each column; lo > hi where nothing is drawn."""
    starts = column_starts(rows.shape[1], size)
    low = np.minimum.reduceat(np.where(good, rows, size), starts, axis=1)
    high = np.maximum.reduceat(np.where(good, rows, -1), starts, axis=1)
    # join each column to the first sample of the next one when both ends of that step are usable
    last = starts[1:] - 1
    first_next = starts[1:]
    joined = good[:, last] & good[:, first_next]
    low[:, :-1] = np.where(joined, np.minimum(low[:, :-1], rows[:, first_next]), low[:, :-1])
    high[:, :-1] = np.where(joined, np.maximum(high[:, :-1], rows[:, first_next]), high[:, :-1])
    return low, high


def thicken(low: np.ndarray, high: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Extend each column's extent `width - 1` rows down and into `width - 1` columns to the right."""
    if width <= 1:
        return low, high
    empty = low > high
    low = np.where(empty, np.iinfo(np.int32).max, low)
    high = np.where(empty, -1, high + (width - 1))
    out_low, out_high = low.copy(), high.copy()
    for shift in range(1, width):
        out_low[:, shift:] = np.minimum(out_low[:, shift:], low[:, :-shift])
        out_high[:, shift:] = np.maximum(out_high[:, shift:], high[:, :-shift])
    return out_low, out_high


def line_mask(flux_scaled: np.ndarray, good: np.ndarray, size: int, width: int) -> np.ndarray:
    """(B, size, size) bool: the pixels a line plot of each row of `flux_scaled` covers."""
    rows = sample_rows(flux_scaled, size)
    low, high = thicken(*column_extents(rows, good, size), width)
    if size <= 255:
        # one uint8 comparison: (r - low) mod 256 <= high - low holds exactly for low <= r <= high;
        # an empty column gets low 255 and span 0, which no row r < 255 meets
        empty = low > high
        low8 = np.where(empty, 255, low).astype(np.uint8)
        span8 = np.where(empty, 0, np.minimum(high, size - 1) - low).astype(np.uint8)
        r8 = np.arange(size, dtype=np.uint8)[None, :, None]
        return (r8 - low8[:, None, :]) <= span8[:, None, :]
    r = np.arange(size, dtype=np.int32)[None, :, None]
    return (r >= low[:, None, :]) & (r <= high[:, None, :])


def scaled_flux(flux: np.ndarray, mask: np.ndarray, settings) -> tuple[np.ndarray, np.ndarray]:
    """(B, n) flux normalised and scaled to [0, 1] between the thresholds, and the usable pixels."""
    good = ~mask & np.isfinite(flux)
    norm = normalise_flux(flux, mask, settings.normalise)
    span = np.float32(settings.flux_max - settings.flux_min)
    scaled = np.clip((norm - np.float32(settings.flux_min)) / span, 0.0, 1.0)
    return scaled.astype(np.float32), good


def _rgba_word(red: int, green: int, blue: int) -> np.uint32:
    """One RGBA pixel as a uint32 (built through a byte view, so any byte order works)."""
    return np.array([red, green, blue, 0], np.uint8).view(np.uint32)[0]


def _rgb_view(words: np.ndarray) -> np.ndarray:
    """(B, S, S) uint32 RGBA words -> (B, S, S, 3) uint8 view (one pass to write, as the 2D Map)."""
    return words.view(np.uint8).reshape(*words.shape, 4)[..., :3]


@lru_cache(maxsize=1)
def _overlap_words() -> np.ndarray:
    """(8,) uint32: RGBA word for each combination of drawn segments (bit c = channel c)."""
    return np.array([_rgba_word(*(255 * ((code >> c) & 1) for c in range(3))) for code in range(8)], np.uint32)


def render_simple(flux: np.ndarray, mask: np.ndarray, settings) -> np.ndarray:
    """(B, S, S, 3) uint8: each spectrum as one white line on black."""
    flux, mask = np.atleast_2d(flux), np.atleast_2d(mask).astype(bool)
    settings.check_grid(flux.shape[1])
    scaled, good = scaled_flux(flux, mask, settings)
    drawn = line_mask(scaled, good, settings.image_size, settings.line_width)
    return _rgb_view(drawn * _rgba_word(255, 255, 255))


def render_overlap(flux: np.ndarray, mask: np.ndarray, settings) -> np.ndarray:
    """(B, S, S, 3) uint8: the three thirds of each spectrum in the red, green and blue channels."""
    flux, mask = np.atleast_2d(flux), np.atleast_2d(mask).astype(bool)
    settings.check_grid(flux.shape[1])
    scaled, good = scaled_flux(flux, mask, settings)  # one normalisation for the whole spectrum
    size = settings.image_size
    code = np.zeros((flux.shape[0], size, size), np.uint8)  # bit c set where segment c is drawn
    for bit, (start, stop) in enumerate(segment_bounds(flux.shape[1], 3)):
        drawn = line_mask(scaled[:, start:stop], good[:, start:stop], size, settings.line_width)
        code |= drawn.view(np.uint8) << bit
    return _rgb_view(_overlap_words()[code])
