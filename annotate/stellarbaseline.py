"""Stellar parameters from the k nearest template stars by χ²: the baseline a survey scientist
would reach for instead of the ViT, and the template fit's stellar parameters (annotate.fit.stellar
calls it at the fitted velocity for rows the fit classes STAR).

Each spectrum and each training star (a MILES template broadened to the instrument's resolution
and put on the store grid at rest) is divided by its own smooth continuum (a weighted running mean
of CONTINUUM_PIX pixels), so that flux calibration and reddening do not enter; χ² with a free scale
is computed against every template at whole-pixel shifts within ±MAX_SHIFT (the radial velocity),
and the labels are the mean of the K templates with the lowest χ² — the baseline. The template fit
instead takes the labels of the best non-negative mixture of the 15 nearest (`mix`,
`mixture_labels`). It is trained on exactly the stars the ViT is trained on, and both are scored on
the same held-out stars.

Also: RMSE and R² of predictions by S/N bin, the form in which the model card reports both.
"""

from __future__ import annotations

import warnings

import numpy as np

from .grid import WavelengthGrid, resample
from .metrics import r2_score

K = 5
MAX_SHIFT = 3           # pixels (±207 km/s on the SDSS grid: 2.6 σ of the simulated radial velocities)
MIN_PIXELS = 100        # shared usable pixels below which a template is not compared (χ² infinite)
CONTINUUM_PIX = 151
MIXTURE_PIVOT = 1e-4    # mixture_labels: below this ratio of R's pivots, the NNLS runs on the pixels
SNR_BINS = (0.0, 10.0, 20.0, 50.0, np.inf)
LABELS = ("teff", "logg", "feh")


def _running_sum(values: np.ndarray, width: int) -> np.ndarray:
    """Sum over a centred window of `width` (odd) pixels along the last axis, zeros beyond the
    edges: np.convolve(row, ones(width), 'same') for every row, from cumulative sums."""
    half = width // 2
    n = values.shape[-1]
    total = np.empty(values.shape[:-1] + (n + 2 * half + 1,))
    total[..., :half + 1] = 0.0
    np.cumsum(values, axis=-1, out=total[..., half + 1:half + 1 + n])
    total[..., half + 1 + n:] = total[..., half + n:half + 1 + n]  # the sum of the whole row
    return total[..., width:width + n] - total[..., :n]


def normalise(flux: np.ndarray, ivar: np.ndarray, chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(flux / continuum, ivar × continuum²), 0 where unusable; (n, n_pix) in and out. The
    continuum is the running mean of the usable pixels over CONTINUUM_PIX pixels (edges use what
    they have); rows are taken `chunk` at a time, which keeps the temporaries in cache."""
    out_flux, out_ivar = np.zeros(flux.shape), np.zeros(ivar.shape)
    for start in range(0, len(flux), chunk):
        rows = slice(start, start + chunk)
        f, w = flux[rows], ivar[rows]
        good = w > 0
        count = _running_sum(good.astype(np.float64), CONTINUUM_PIX)  # whole numbers: 0 means no pixel
        total = _running_sum(np.where(good, f, 0.0), CONTINUUM_PIX)
        continuum = total / np.maximum(count, 0.5)
        usable = good & (count > 0.5) & (continuum > 0)
        safe = np.where(usable, continuum, 1.0)
        out_flux[rows] = np.where(usable, f / safe, 0.0)
        out_ivar[rows] = np.where(usable, w * safe**2, 0.0)
    return out_flux, out_ivar


def template_stars(lib, indices: np.ndarray, grid: WavelengthGrid, resolution_sigma_kms: float = 69.0,
                   chunk: int = 128):
    """(normalised templates (k, n_pix) float32, usable (k, n_pix) bool, labels (k, 3)) for the
    library's stars `indices` on `grid` at rest. Made `chunk` stars at a time: the float64
    intermediates of all ~800 stars at once would be ~150 MB of new memory, whose first use
    costs more than the arithmetic."""
    from .simulate.spectra import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, broaden

    indices = np.asarray(indices)
    step = lib.star_loglam[1] - lib.star_loglam[0]
    template_sigma = lib.star_fwhm_aa * FWHM_TO_SIGMA / 5000.0 * SPEED_OF_LIGHT_KMS
    extra = np.sqrt(max(resolution_sigma_kms**2 - template_sigma**2, 0.0))
    wave = 10.0**lib.star_loglam
    offset = (grid.loglam_start - lib.star_loglam[0]) / step
    aligned = np.isclose(grid.loglam_step, step, rtol=1e-9) and abs(offset - round(offset)) < 1e-6
    templates = np.empty((len(indices), grid.n_pix), np.float32)
    usable = np.empty((len(indices), grid.n_pix), bool)
    for start in range(0, len(indices), chunk):
        broadened = broaden(lib.star_flux[indices[start:start + chunk]].astype(np.float64), extra, step)
        bad = ~np.isfinite(broadened)
        if aligned:  # the grids share their pixels: a slice is the flux-conserving resampling
            f, mask = _slice_onto(broadened, bad, int(round(offset)), grid.n_pix)
        else:
            f, mask = np.empty((len(broadened), grid.n_pix)), np.empty((len(broadened), grid.n_pix), bool)
            for row, (flux, flux_bad) in enumerate(zip(broadened, bad)):
                f[row], _, mask[row] = resample(wave, np.where(flux_bad, 0.0, flux), np.ones_like(flux), flux_bad, grid)
        flux, weight = normalise(np.where(mask, 0.0, f), (~mask).astype(np.float64))
        templates[start:start + chunk] = flux
        usable[start:start + chunk] = weight > 0
    labels = np.stack([lib.star_teff[indices], lib.star_logg[indices], lib.star_feh[indices]], axis=1)
    return templates, usable, labels


def _slice_onto(flux: np.ndarray, bad: np.ndarray, offset: int, n_pix: int) -> tuple[np.ndarray, np.ndarray]:
    """(flux (..., n_pix), mask (..., n_pix) True = no data) of spectra (..., m) whose pixel
    `offset` is the grid's pixel 0 (same step), masked where they have no pixel or a bad one."""
    out = np.zeros(flux.shape[:-1] + (n_pix,))
    mask = np.ones(flux.shape[:-1] + (n_pix,), bool)
    lo, hi = max(0, -offset), min(n_pix, flux.shape[-1] - offset)
    if hi > lo:
        out[..., lo:hi] = flux[..., offset + lo:offset + hi]
        mask[..., lo:hi] = bad[..., offset + lo:offset + hi]
    return out, mask


def at_rest(flux: np.ndarray, ivar: np.ndarray, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spectra (n, n_pix) moved to rest by their whole-pixel shifts (n,) (log10(1 + z) / step,
    rounded): pixel p of the result is observed pixel p + shift; pixels with no observed pixel
    get ivar 0."""
    flux, ivar = np.asarray(flux, np.float64), np.asarray(ivar, np.float64)
    rest_flux, rest_ivar = np.zeros_like(flux), np.zeros_like(ivar)
    n_pix = flux.shape[1]
    for i, shift in enumerate(np.rint(np.asarray(shifts, float)).astype(int)):
        lo, hi = max(0, -shift), min(n_pix, n_pix - shift)
        if hi > lo:
            rest_flux[i, lo:hi] = flux[i, lo + shift:hi + shift]
            rest_ivar[i, lo:hi] = ivar[i, lo + shift:hi + shift]
    return rest_flux, rest_ivar


def nearest_templates(flux: np.ndarray, ivar: np.ndarray, templates: np.ndarray, usable: np.ndarray,
                      labels: np.ndarray, k: int = K, max_shift: int = MAX_SHIFT, chunk: int = 256,
                      shifts: np.ndarray | None = None, spread: bool = False, mix: int = 0,
                      found: dict | None = None):
    """(n, 3) Teff, log g, [Fe/H]: the mean over the k lowest-χ² templates (each label over those
    of the k that have it). flux, ivar: (n, n_pix) on the templates' grid; `shifts` (n,), when
    given: each spectrum's velocity in pixels (the fit's), by which it is moved to rest first,
    the search then being within ±max_shift of it. With `spread`: (means, spreads), the spread
    being the standard deviation (ddof 1) of each label over those of the k that have it (NaN
    where fewer than two have it) — the scatter of the neighbours' labels, from which the fit's
    stellar σ is calibrated (annotate.fit.calibrate). With `mix` > 0 the labels are instead those
    of the `mix` lowest-χ² templates weighted by their mixture (`mixture_labels`; the k
    nearest's mean where none can be made); the spread stays that of the k nearest. `found`, a
    dict, receives 'order' (n, k), the k nearest templates, 'shift' (n, k), the whole-pixel
    shift at which each matched best, and 'flux', 'ivar' (n, n_pix), the spectra at rest and
    normalised as they were compared."""
    if shifts is not None:
        flux, ivar = at_rest(flux, ivar, shifts)
    norm_flux, norm_ivar = normalise(np.asarray(flux, np.float64), np.asarray(ivar, np.float64))
    if found is not None:
        found["flux"], found["ivar"] = norm_flux, norm_ivar
    out = np.full((len(flux), labels.shape[1]), np.nan)
    scatter = np.full((len(flux), labels.shape[1]), np.nan)
    # the template side is fixed (0 where unusable); each shift moves the spectra instead, whose
    # pixels moved past an edge get weight 0: the same pixel pairs as moving the templates
    t = np.asarray(templates, np.float32)
    t2 = t * t
    # the templates share a few coverage patterns (the library's wavelength ranges): sums over a
    # template's pixels are taken once per pattern
    valid, pattern_of = _coverage_patterns(usable)
    for start in range(0, len(flux), chunk):
        f0 = norm_flux[start:start + chunk].astype(np.float32)
        w0 = norm_ivar[start:start + chunk].astype(np.float32)
        best = np.full((len(f0), len(t)), np.inf)
        best_shift = np.zeros((len(f0), len(t)), np.int8)
        for shift in range(-max_shift, max_shift + 1):
            f, w = _shifted(f0, w0, shift)
            wf = w * f
            ft = wf @ t.T                         # Σ w f t
            tt = w @ t2.T                         # Σ w t²
            ff = ((wf * f) @ valid.T)[:, pattern_of]   # Σ w f² over the template's pixels
            n_used = ((w > 0).astype(np.float32) @ valid.T)[:, pattern_of]
            chi2 = (ff - np.where(tt > 0, ft**2 / np.maximum(tt, 1e-30), 0.0)) / np.maximum(n_used, 1.0)
            chi2 = np.where(n_used > MIN_PIXELS, chi2, np.inf)
            best_shift[chi2 < best] = shift
            best = np.minimum(best, chi2)
        ranked = np.argsort(best, axis=1)
        order = ranked[:, :k]
        if found is not None:
            found.setdefault("order", []).append(np.where(np.isfinite(np.take_along_axis(best, order, axis=1)), order, -1))
            found.setdefault("shift", []).append(np.take_along_axis(best_shift, order, axis=1))
        with warnings.catch_warnings():  # none of the k has the label: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            # a template too far from the spectrum's pixels to compare is no neighbour
            near = np.where(np.isfinite(np.take_along_axis(best, order, axis=1))[:, :, None], labels[order], np.nan)
            out[start:start + len(f0)] = np.nanmean(near, axis=1)
            if spread:
                enough = np.sum(np.isfinite(near), axis=1) >= 2
                scatter[start:start + len(f0)] = np.where(enough, np.nanstd(near, axis=1, ddof=1), np.nan)
        if mix > 0:
            for i in range(len(f0)):
                chosen = ranked[i, :mix][np.isfinite(best[i, ranked[i, :mix]])]
                if len(chosen) == 0:
                    continue
                # at the shift of the nearest, the spectrum's own
                moved_f, moved_w = _shifted(f0[i:i + 1], w0[i:i + 1], int(best_shift[i, chosen[0]]))
                mixed = mixture_labels(moved_f[0], moved_w[0], t[chosen], usable[chosen], labels[chosen])
                if mixed is not None:
                    out[start + i] = mixed
    if found is not None:
        for key in ("order", "shift"):
            found[key] = np.concatenate(found[key]) if found.get(key) else np.zeros((0, k), int)
    return (out, scatter) if spread else out


def dilution(flux: np.ndarray, ivar: np.ndarray, templates: np.ndarray, usable: np.ndarray, order: np.ndarray,
             shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(veil, scale, offset, gain), each (n,): how much shallower a normalised spectrum's lines are than
    its nearest templates' (`order`, `shift` from `nearest_templates(..., found=)`; -1: none). Each
    template t is fitted as a·t + b; veil is the median over the templates of b / (a + b), the
    share of the continuum that carries no line (0: as deep as the template's; 0.5: half as deep,
    as a constant of the continuum's level added to the flux makes them; negative: deeper), scale
    and offset the median a and b, and gain the median χ² the b term removes. NaN (gain 0) where
    no template fits."""
    veil, scale, offset = (np.full(len(flux), np.nan) for _ in range(3))
    gain = np.zeros(len(flux))
    for i in range(len(flux)):
        values = []
        for d in np.unique(shift[i][order[i] >= 0]):
            chosen = order[i][(order[i] >= 0) & (shift[i] == d)]
            f, w = _shifted(flux[i:i + 1], ivar[i:i + 1], int(d))
            w = np.where(w[0] > 0, w[0], 0.0)
            wy = w * f[0]
            u = usable[chosen].astype(np.float64)              # (m, n_pix)
            t = np.asarray(templates[chosen], np.float64) * u
            sw, sy = u @ w, u @ wy
            st, sty, stt = t @ w, t @ wy, (t * t) @ w
            n_used = (u * (w > 0)).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                det = stt * sw - st * st
                a, b = (sty * sw - st * sy) / det, (stt * sy - st * sty) / det
                removed = a * sty + b * sy - sty * sty / stt    # χ²(a t) − χ²(a t + b)
                share = b / (a + b)
            ok = (n_used > MIN_PIXELS) & (det > 0) & (stt > 0) & np.isfinite(share)
            values.extend(zip(share[ok], a[ok], b[ok], removed[ok]))
        if values:
            veil[i], scale[i], offset[i], gain[i] = np.median(np.array(values), axis=0)
    return veil, scale, offset, gain


def _coverage_patterns(usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patterns (P, n_pix) float32, index (S,) of each template's pattern) of the distinct rows
    of `usable` (S, n_pix): a template's pixel sums are its pattern's."""
    rows = np.ascontiguousarray(usable, dtype=bool)
    first: dict = {}
    index = np.array([first.setdefault(row.tobytes(), len(first)) for row in rows], dtype=np.intp)
    starts = np.unique(index, return_index=True)[1]
    return rows[starts].astype(np.float32), index


def _shifted(flux: np.ndarray, weight: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectra (n, n_pix) and weights moved by `shift` pixels (pixel p takes pixel p + shift),
    weight 0 on the pixels moved in past an edge."""
    f, w = np.roll(flux, -shift, axis=1), np.roll(weight, -shift, axis=1)
    if shift > 0:
        w[:, -shift:] = 0
    elif shift < 0:
        w[:, :-shift] = 0
    return f, w


def mixture_labels(flux: np.ndarray, weight: np.ndarray, templates: np.ndarray, usable: np.ndarray,
                   labels: np.ndarray) -> np.ndarray | None:
    """(3,) labels of one normalised spectrum (n_pix,) with weights (n_pix,) from a few nearby
    templates (m, n_pix): the non-negative mixture of the templates that best matches the
    spectrum (least squares over the pixels every template covers), each label being the
    mixture-weighted mean over the templates that have it. A star between two library stars
    draws on both in proportion, where the mean of the nearest treats a far neighbour like a near
    one; on held-out stars it is the better estimate of all three labels (README, "The template
    fit"). NaN for a label held by templates of under half the mixture (else a minor template's
    label would stand for the star: a held-out 9,300 K supergiant was read [Fe/H] −2.6 when the
    plain mean had none). None where the mixture cannot be made (MIN_PIXELS shared pixels or
    fewer, or nothing matches)."""
    from scipy.optimize import nnls

    use = (weight > 0) & usable.all(axis=0)
    if use.sum() <= max(MIN_PIXELS, len(templates)):
        return None
    # pixels left out weigh 0 (selecting the others cost more than the products it saves)
    root = np.where(use, np.sqrt(np.where(use, weight, 0.0), dtype=np.float64), 0.0)
    design = templates * root                                    # (m, pixels), float64
    target = flux * root
    # the same problem on the m × m triangle R of the normal equations (RᵀR = AᵀA): 3× faster, and
    # as exact while R is well conditioned; templates near dependence (a pivot under
    # MIXTURE_PIVOT of the largest, cond(AᵀA) over its inverse square) go to the pixels themselves
    try:
        upper = np.linalg.cholesky(design @ design.T).T
    except np.linalg.LinAlgError:
        upper = None
    pivots = None if upper is None else np.abs(np.diag(upper))
    if pivots is None or pivots.min() < MIXTURE_PIVOT * pivots.max():
        amounts, _ = nnls(design.T, target)
    else:
        amounts, _ = nnls(upper, np.linalg.solve(upper.T, design @ target))
    if not np.sum(amounts) > 0:
        return None
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        has = np.isfinite(labels[:, j]) & (amounts > 0)
        if np.sum(amounts[has]) >= 0.5 * np.sum(amounts):
            out[j] = float(np.sum(amounts[has] * labels[has, j]) / np.sum(amounts[has]))
    return out


def by_snr(true: np.ndarray, pred: np.ndarray, snr: np.ndarray, bins=SNR_BINS, sigma: np.ndarray | None = None) -> list[dict]:
    """[{'snr': [lo, hi], 'n', 'rmse', 'r2'}] over rows where both are finite; with `sigma` (the
    predictions' 1σ), also 'within_1sigma': the share of those rows with |pred − true| ≤ σ."""
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        inside = (snr >= lo) & (snr < hi) & np.isfinite(true) & np.isfinite(pred)
        rmse = float(np.sqrt(np.mean((pred[inside] - true[inside]) ** 2))) if inside.any() else float("nan")
        row = {"snr": [lo, None if np.isinf(hi) else hi], "n": int(inside.sum()), "rmse": rmse,
               "r2": r2_score(true[inside], pred[inside])}
        if sigma is not None:
            row["within_1sigma"] = share_within(true[inside], pred[inside], sigma[inside])
        rows.append(row)
    return rows


def share_within(true: np.ndarray, pred: np.ndarray, sigma: np.ndarray) -> float:
    """The share of rows with |pred − true| ≤ σ (NaN for none). Unlike `metrics.within_sigma`,
    which leaves such rows out, a row without a σ counts as outside: a star the fit gave no σ is
    not one its σ covered."""
    return float(np.mean(np.abs(pred - true) <= sigma)) if len(true) else float("nan")


def stellar_report(true: np.ndarray, pred: np.ndarray, snr: np.ndarray, min_snr: float = 20.0,
                   sigma: np.ndarray | None = None) -> dict:
    """Per label: RMSE/R² by S/N bin and R² at S/N ≥ `min_snr`. true, pred: (n, 3); with `sigma`
    (n, 3), the predictions' 1σ: also the share within 1σ by S/N bin and over all rows."""
    report = {}
    for j, key in enumerate(LABELS):
        high = snr >= min_snr
        report[key] = {"by_snr": by_snr(true[:, j], pred[:, j], snr, sigma=None if sigma is None else sigma[:, j]),
                       f"r2_snr_ge_{min_snr:g}": r2_score(true[high, j], pred[high, j])}
        if sigma is not None:
            both = np.isfinite(true[:, j]) & np.isfinite(pred[:, j])
            report[key]["within_1sigma"] = share_within(true[both, j], pred[both, j], sigma[both, j])
    return report
