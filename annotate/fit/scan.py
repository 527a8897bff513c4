"""χ² of template bases against spectra over redshift, on the store's log-λ grid.

Pure array code. On a log-λ grid a redshift is a pixel shift (log10(1 + z) = shift · step), so
every shift-dependent term of the linear least-squares fit is a correlation of a data-side array
(w f, w, w·Pₘ with Pₘ the Legendre polynomials) with a template-side one (t_j, t_j t_l): computed
for a long range of shifts with FFTs, for a short one directly. `coarse_scan` does that for many spectra
at once on a binned copy of the data; `chi2_at_shifts` evaluates one spectrum at a handful of
whole or quarter-pixel shifts at full resolution, with Legendre polynomials for calibration
errors. Both run in numpy or torch (`Backend`); the results agree to float64 rounding.

Every pixel counts at every shift: a basis is zero where it has no data ("coverage"), and there
the Legendre polynomials that are part of every fit model the spectrum alone, so a solution that
leaves structure unexplained pays for it and no solution wins by covering less.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .bases import OVERSAMPLE, Basis

FFT_MIN_LAGS = 64  # fewer lags than this: correlate directly
FFT_THREADS = 1    # parallelism comes from the tasks (annotate.parallel), not inside one


class Backend:
    """The few array operations the scan needs, in numpy ('numpy') or torch ('torch', on `device`)."""

    def __init__(self, name: str = "numpy", device: str = "cpu"):
        if name not in ("numpy", "torch"):
            raise ValueError(f"unknown fit backend {name!r}; valid: numpy, torch")
        self.name, self.device = name, device
        if name == "torch":
            import torch

            self.torch = torch

    def asarray(self, values):
        if self.name == "numpy":
            return np.asarray(values, dtype=np.float64)
        return self.torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)

    def to_numpy(self, values) -> np.ndarray:
        return np.asarray(values) if self.name == "numpy" else values.cpu().numpy()

    def correlate(self, data, templates, d_lo: int, d_hi: int):
        """C[b, p, d] = Σ_i data[b, i] · templates[p, i + D] for D = d_lo … d_hi (templates zero
        outside their range). data (B, n), templates (P, m) -> (B, P, d_hi - d_lo + 1)."""
        n, m = data.shape[-1], templates.shape[-1]
        n_lags = d_hi - d_lo + 1
        if n_lags >= FFT_MIN_LAGS:
            length = sfft.next_fast_len(n + m, real=True)
            if self.name == "numpy":
                fd = sfft.rfft(data, length, axis=-1, workers=FFT_THREADS)
                ft = sfft.rfft(templates, length, axis=-1, workers=FFT_THREADS)
                full = sfft.irfft(np.conj(fd)[:, None, :] * ft[None, :, :], length, axis=-1, workers=FFT_THREADS)
            else:
                fft = self.torch.fft
                fd = fft.rfft(data, length, dim=-1)
                ft = fft.rfft(templates, length, dim=-1)
                full = fft.irfft(fd.conj()[:, None, :] * ft[None, :, :], length, dim=-1)
            if d_lo >= 0:
                return full[..., d_lo:d_hi + 1]
            if d_hi < 0:
                return full[..., length + d_lo:length + d_hi + 1]
            cat = np.concatenate if self.name == "numpy" else self.torch.cat
            return cat([full[..., length + d_lo:], full[..., :d_hi + 1]], -1)
        # direct: windows of the zero-padded templates, one matrix product
        pad_lo, pad_hi = max(0, -d_lo), max(0, d_hi + n - m)
        if self.name == "numpy":
            padded = np.pad(templates, ((0, 0), (pad_lo, pad_hi)))
            windows = np.lib.stride_tricks.sliding_window_view(padded, n, axis=-1)[:, d_lo + pad_lo:d_hi + pad_lo + 1]
            return (data @ windows.reshape(-1, n).T).reshape(len(data), len(templates), n_lags)
        padded = self.torch.nn.functional.pad(templates, (pad_lo, pad_hi))
        windows = padded.unfold(-1, n, 1)[:, d_lo + pad_lo:d_hi + pad_lo + 1]
        return (data @ windows.reshape(-1, n).T).reshape(len(data), len(templates), n_lags)

    def solve(self, matrix, vector):
        k = matrix.shape[-1]
        if self.name == "numpy":
            ridge = 1e-10 * np.einsum("...ii->...i", matrix).mean(axis=-1)[..., None, None] + 1e-30
            return np.linalg.solve(matrix + ridge * np.eye(k), vector[..., None])[..., 0]
        torch = self.torch
        ridge = 1e-10 * torch.diagonal(matrix, dim1=-2, dim2=-1).mean(dim=-1)[..., None, None] + 1e-30
        eye = torch.eye(k, dtype=matrix.dtype, device=matrix.device)
        return torch.linalg.solve(matrix + ridge * eye, vector[..., None])[..., 0]


def chi2_reduction_upper(upper_terms, vector_terms, k: int, ridge: float = 1e-10):
    """bᵀ M⁻¹ b for many small SPD systems given as their upper-triangle entries
    `upper_terms[p]` (p over np.triu_indices(k), each an array of any batch shape) and
    `vector_terms[i]` (i < k): a Cholesky factorisation written out entry by entry, so each step is
    one operation on whole batch arrays (numpy or torch alike) rather than one call per system."""
    index = {}
    for p, (i, j) in enumerate(zip(*np.triu_indices(k))):
        index[i, j] = p
    scale = sum(upper_terms[index[i, i]] for i in range(k)) / k * ridge + 1e-30
    lower = {}
    y = []
    total = 0.0
    for j in range(k):
        diag = upper_terms[index[j, j]] + scale
        for p in range(j):
            diag = diag - lower[j, p] * lower[j, p]
        diag = diag.clip(1e-300) ** 0.5
        lower[j, j] = diag
        for i in range(j + 1, k):
            value = upper_terms[index[j, i]]
            for p in range(j):
                value = value - lower[i, p] * lower[j, p]
            lower[i, j] = value / diag
        yj = vector_terms[j]
        for p in range(j):
            yj = yj - lower[j, p] * y[p]
        yj = yj / diag
        y.append(yj)
        total = total + yj * yj
    return total


def spectrum_arrays(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(f, w, scale): flux and weights (B, n) float64 with unusable pixels at weight 0, each
    spectrum divided by its median |flux| over usable pixels (`scale`, (B,)), which leaves χ²
    unchanged and keeps the sums well scaled."""
    flux = np.asarray(flux, np.float64)
    ivar = np.asarray(ivar, np.float64)
    good = ~np.asarray(mask, bool) & np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    f = np.where(good, flux, 0.0)
    w = np.where(good, ivar, 0.0)
    masked = np.where(good, np.abs(f), np.nan)
    with np.errstate(all="ignore"):
        scale = np.nanmedian(np.where(np.isfinite(masked).any(axis=1, keepdims=True), masked, 1.0), axis=1)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return f / scale[:, None], w * scale[:, None] ** 2, scale


def _bin(values: np.ndarray, factor: int) -> np.ndarray:
    n = values.shape[-1] // factor * factor
    return values[..., :n].reshape(*values.shape[:-1], -1, factor).sum(axis=-1)


def coarse_scan(basis: Basis, f: np.ndarray, w: np.ndarray, grid_start: float, factor: int,
                backend: Backend, shift_range: tuple | None = None, n_poly: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """χ² of `basis` plus `n_poly` Legendre terms against spectra (f, w: (B, n)) binned by
    `factor` pixels, at every shift that is a multiple of `factor` pixels within the basis' z
    range (or `shift_range`, pixels). Templates are zero where they have no data, so there the
    polynomials alone model the spectrum.

    Returns chi2 (B, n_shift) float64 and the shifts (n_shift,) in full-resolution pixels."""
    fb_w = _bin(f * w, factor)          # Σ w f per bin
    wb = _bin(w, factor)                # Σ w per bin: the bin's inverse variance
    with np.errstate(invalid="ignore", divide="ignore"):
        fb = np.where(wb > 0, fb_w / np.where(wb > 0, wb, 1.0), 0.0)
    nb = wb.shape[-1]
    offset = basis.offset(grid_start)
    phase = offset % factor
    m = (basis.n_pix - phase) // factor
    tb = basis.flux[:, phase:phase + m * factor].reshape(basis.n_basis, m, factor).mean(axis=-1)
    cb = basis.coverage[phase:phase + m * factor].reshape(m, factor).all(axis=-1)
    tb = tb * cb
    k = basis.n_basis
    upper = np.triu_indices(k)
    lo, hi = shift_range if shift_range is not None else basis.shift_range()
    s_lo, s_hi = int(np.ceil(lo / factor)), int(np.floor(hi / factor))
    if s_hi < s_lo:
        s_hi = s_lo
    off_b = (offset - phase) // factor
    d_lo, d_hi = off_b - s_hi, off_b - s_lo  # D = off_b - S: rest bin of observed bin 0
    xp = backend
    poly = legendre(nb, n_poly)                                              # (P, nb)
    t_side = xp.asarray(tb)
    b_t = xp.correlate(xp.asarray(wb * fb), t_side, d_lo, d_hi)             # (B, k, nD)
    m_tt = xp.correlate(xp.asarray(wb), xp.asarray(tb[upper[0]] * tb[upper[1]]), d_lo, d_hi)
    m_tp = [xp.correlate(xp.asarray(wb * poly[p]), t_side, d_lo, d_hi) for p in range(n_poly)]
    zeros = 0.0 * m_tt[:, 0]
    ff = xp.asarray((wb * fb * fb).sum(-1))[:, None]
    b_p = [xp.asarray((wb * fb * poly[p]).sum(-1))[:, None] + zeros for p in range(n_poly)]
    m_pp = {(p, q): xp.asarray((wb * poly[p] * poly[q]).sum(-1))[:, None] + zeros
            for p in range(n_poly) for q in range(p, n_poly)}
    size = k + n_poly
    tt_index = {(int(i), int(j)): n for n, (i, j) in enumerate(zip(*upper))}
    terms = []
    for i, j in zip(*np.triu_indices(size)):
        i, j = int(i), int(j)
        if j < k:
            terms.append(m_tt[:, tt_index[i, j]])
        elif i < k:
            terms.append(m_tp[j - k][:, i])
        else:
            terms.append(m_pp[i - k, j - k])
    vector = [b_t[:, j] for j in range(k)] + b_p
    chi2 = xp.to_numpy(ff - chi2_reduction_upper(terms, vector, size))[:, ::-1]  # D descending = shift ascending
    shifts = factor * np.arange(s_lo, s_hi + 1)
    return chi2, shifts


def legendre(n_pix: int, n_poly: int) -> np.ndarray:
    """(n_poly, n_pix) Legendre polynomials P_0 … over the grid mapped to [-1, 1]."""
    x = np.linspace(-1.0, 1.0, n_pix)
    return np.array([np.polynomial.legendre.Legendre.basis(i)(x) for i in range(n_poly)])


def chi2_at_shifts(basis: Basis, f: np.ndarray, w: np.ndarray, grid_start: float, quarter_shifts: np.ndarray,
                   poly: np.ndarray, backend: Backend | None = None) -> dict:
    """χ² of one spectrum (f, w: (n,)) against `basis` plus the polynomials `poly` (P, n) at
    shifts given in units of 1/OVERSAMPLE pixel, at full resolution.

    The basis at a shift is a contiguous slice of one of its OVERSAMPLE phase arrays, so each
    shift costs one product of the weighted basis (k, n) with [basis, polynomials, flux].
    Returns chi2 (nU,), n_good (usable pixels) and the amplitudes (nU, k + P)."""
    xp = backend or Backend()
    n = len(f)
    k, n_p = basis.n_basis, len(poly)
    phases = basis.phases                                 # (OVERSAMPLE, k, n_pad + m + n_pad)
    pad = basis.phase_pad
    offset = basis.offset(grid_start)
    u = np.asarray(quarter_shifts, dtype=np.int64)
    whole = -((-u) // OVERSAMPLE)                          # ceil(u / OVERSAMPLE)
    phase = OVERSAMPLE * whole - u                        # index = OVERSAMPLE·(offset + i − whole) + phase
    starts = offset - whole + pad
    if np.any(starts < 0) or np.any(starts + n > phases.shape[-1]):
        raise ValueError("shift outside the basis' padded range")
    fw = f * w
    side = np.stack([*poly, f], axis=1)                   # (n, P + 1)
    pp = (poly * w) @ poly.T                              # (P, P)
    pf = poly @ fw                                        # (P,)
    ff = float(f @ fw)
    size = k + n_p
    mats = np.empty((len(u), size, size))
    vecs = np.empty((len(u), size))
    mats[:, k:, k:] = pp
    vecs[:, k:] = pf
    for row, (q, start) in enumerate(zip(phase, starts)):
        t = phases[q][:, start:start + n]                 # (k, n) view
        tw = t * w
        mats[row, :k, :k] = tw @ t.T
        cross = tw @ side                                 # (k, P + 1): polynomials, then the flux
        mats[row, :k, k:] = cross[:, :n_p]
        mats[row, k:, :k] = cross[:, :n_p].T
        vecs[row, :k] = cross[:, -1]
    amplitudes = xp.to_numpy(xp.solve(xp.asarray(mats), xp.asarray(vecs)))
    chi2 = ff - (amplitudes * vecs).sum(-1)
    return {"chi2": chi2, "n_good": float((w > 0).sum()), "amplitudes": amplitudes}
