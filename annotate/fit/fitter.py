"""The redshift fit of a batch of spectra, seeded by the ViT: coarse scans, refined minima, the
choice among them.

Steps per spectrum (redrock's split: scan, refine, choose):
1. `coarse_scan` of every basis the prior does not rule out (binned data, whole z range).
2. Candidates: the lowest local minima of each class (`n_candidates`), plus the minimum inside
   the ViT's own window (z_vit ± 5σ_vit, at least ±2,000 km/s) for its class, so the ViT's
   answer is always weighed.
3. Each candidate refined at full resolution with Legendre polynomials: whole-pixel shifts around
   it, then (unless it is far behind) quarter-pixel shifts around the best, a parabola through the
   lowest χ² points for the sub-pixel minimum and σ_z from its curvature (scaled by √χ²_ν when the
   fit is worse than the noise, then calibrated: data/calibration.json).
4. `decide.choose`: the lowest χ², Δχ² to the best other solution, the ViT rule for near-ties,
   the flags.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from .bases import OVERSAMPLE, Basis, BasisSet, load_bases
from .settings import TYPE_BIN, Candidate, FitSettings, calibration_terms, load_calibration, shift_to_z, z_to_shift
from .scan import Backend, ShiftProducts, binned_spectrum, coarse_scan, legendre, prepare_spectrum
from .spikes import spike_pixels
from .weights import sky_line_pixels, spectrum_arrays

LN10 = np.log(10.0)
class Fitter:
    """Fits batches of spectra on one wavelength grid (`grid_start`: log10 Å of pixel 0)."""

    def __init__(self, grid, settings: FitSettings = FitSettings(), bases: BasisSet | None = None):
        self.grid, self.settings = grid, settings
        self.bases = bases or load_bases()
        step = self.bases.bases[0].step
        if abs(grid.loglam_step - step) > 1e-12:
            from ..errors import ConfigError

            raise ConfigError(f"the fit's bases are on a {step} dex grid, the store on {grid.loglam_step}")
        self.backend = Backend(settings.backend, settings.device)
        self.poly = legendre(grid.n_pix, settings.n_poly)
        self.calibration = load_calibration() if settings.calibrated else None
        # σ of the stellar labels from the neighbours' spread (annotate.fit.stellar); the spread
        # itself when uncalibrated or before the calibration has a 'stellar' part
        self.stellar_calibration = (self.calibration or {}).get("stellar")
        # the coarse scan only finds candidates: the leading PCA vectors (and any line
        # templates) suffice there; refinement uses the whole basis
        self.coarse_bases = {b.name: b.leading(settings.coarse_pca) for b in self.bases.bases}
        self.sky_pixels = sky_line_pixels(grid, settings.sky_halfwidth) if settings.sky_window > 0 else None

    def arrays(self, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f, w, spiked): `weights.spectrum_arrays` with the weights at bright sky lines of the
        settings, and weight 0 at the pixels of spikes narrower than a line (`spikes.spike_pixels`,
        unless spike_sigma is 0); spiked (B,) bool: the rows that had such pixels."""
        f, w, _ = spectrum_arrays(flux, ivar, mask, self.settings.sky_window, self.settings.sky_grow, self.sky_pixels)
        spikes = spike_pixels(f, w, self.settings.spike_sigma, self.settings.spike_delta_chi2)
        spiked = spikes.any(axis=1)
        if spiked.any():
            w = np.where(spikes, 0.0, w)
        return f, w, spiked

    def classes_to_scan(self, prob: np.ndarray | None) -> list[str]:
        if prob is None or not self.settings.prior or not np.isfinite(prob).all():
            return list(CLASS_NAMES)
        if prob.max() < self.settings.confident:
            return list(CLASS_NAMES)
        return [c for c, p in zip(CLASS_NAMES, prob) if p >= self.settings.skip_below]

    def fit(self, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, vit: dict | None = None) -> list[list[Candidate]]:
        """Candidates per spectrum (refined, unsorted) for (B, n_pix) flux, ivar, mask; `vit`
        holds the ViT's 'prob' (B, 3), 'z' and 'z_err' (B,) when the prior is used."""
        f, w, _ = self.arrays(flux, ivar, mask)
        return self.fit_arrays(f, w, vit)

    def fit_arrays(self, f: np.ndarray, w: np.ndarray, vit: dict | None = None) -> list[list[Candidate]]:
        """`fit` for spectra already made into (f, w) by `arrays`."""
        n_spec = len(f)
        prob = vit["prob"] if vit is not None else None
        scan_classes = [self.classes_to_scan(None if prob is None else prob[i]) for i in range(n_spec)]
        candidates: list[list[Candidate]] = [[] for _ in range(n_spec)]
        coarse: dict = {}
        binned: dict = {}  # (factor, rows) -> binned spectra, shared by the bases that bin alike
        for basis in self.bases.bases:
            rows = np.array([i for i in range(n_spec) if basis.spectype in scan_classes[i]], dtype=int)
            if len(rows) == 0:
                continue
            factor = self.settings.bin_for(basis.spectype)
            key = (factor, rows.tobytes())
            every = len(rows) == n_spec  # all rows (the default): no copies of the spectra
            if key not in binned:
                binned[key] = binned_spectrum(f if every else f[rows], w if every else w[rows], factor)
            chi2, shifts = coarse_scan(self.coarse_bases[basis.name], f if every else f[rows], w if every else w[rows],
                                       self.grid.loglam_start, factor, self.backend, n_poly=self.settings.n_poly_coarse,
                                       binned=binned[key])
            coarse[basis.name] = self._coarse_summary(basis.spectype, rows, chi2, shifts, vit)
        for i in range(n_spec):
            found = []
            for spectype in scan_classes[i]:
                found.extend(self._coarse_candidates(i, spectype, coarse))
            candidates[i] = self._refine_candidates(found, f[i], w[i])
        return candidates

    def _coarse_summary(self, spectype: str, rows: np.ndarray, chi2: np.ndarray, shifts: np.ndarray, vit: dict | None) -> dict:
        """Per scanned row of one basis: the n_candidates lowest local minima (index, coarse χ²,
        vertex shift) and, for rows whose ViT class is the basis' class, the ViT window's
        minimum (index −1 where there is none). Whole arrays at once."""
        n = self.settings.n_candidates
        left = np.concatenate([np.full((len(rows), 1), np.inf), chi2[:, :-1]], axis=1)
        right = np.concatenate([chi2[:, 1:], np.full((len(rows), 1), np.inf)], axis=1)
        at_minimum = (chi2 <= left) & (chi2 <= right)
        order = np.argsort(np.where(at_minimum, chi2, np.inf), axis=1, kind="stable")[:, :n]
        valid = np.take_along_axis(at_minimum, order, axis=1)
        summary = {"rows": rows, "last": chi2.shape[1] - 1, "scan": (order, valid,
                   np.take_along_axis(chi2, order, axis=1), _vertices(chi2, shifts, order))}
        vit_index = np.full(len(rows), -1)
        if vit is not None and self.settings.prior:
            prob, z, z_err = vit["prob"][rows], vit["z"][rows], vit["z_err"][rows]
            ok = np.isfinite(prob).all(axis=1) & np.isfinite(z)
            ok &= np.array(CLASS_NAMES)[np.nan_to_num(prob, nan=0.0).argmax(axis=1)] == spectype
            for r in np.flatnonzero(ok):
                lo, hi = self._vit_window(z[r], z_err[r])
                inside = (shifts >= lo) & (shifts <= hi)
                if inside.any():
                    vit_index[r] = np.flatnonzero(inside)[np.argmin(chi2[r, inside])]
        safe = np.maximum(vit_index, 0)[:, None]
        summary["vit"] = (vit_index, chi2[np.arange(len(rows)), safe[:, 0]], _vertices(chi2, shifts, safe)[:, 0])
        return summary

    def _coarse_candidates(self, i: int, spectype: str, coarse: dict) -> list:
        """(coarse χ², basis, shift, at_edge, source) of one class for spectrum i: its lowest
        minima at distinct shifts, and the ViT window's minimum for the ViT's class."""
        found = []
        for basis in self.bases.for_class(spectype):
            if basis.name not in coarse:
                continue
            summary = coarse[basis.name]
            r = int(np.searchsorted(summary["rows"], i))
            last = summary["last"]
            order, valid, values, vertex = (a[r] for a in summary["scan"])
            for j, ok, value, shift in zip(order, valid, values, vertex):
                if ok:
                    found.append((value, basis, float(shift), int(j) in (0, last), "scan"))
            j = int(summary["vit"][0][r])
            if j >= 0:
                found.append((summary["vit"][1][r], basis, float(summary["vit"][2][r]), j in (0, last), "vit"))
        # one per distinct shift (star groups share theirs), the ViT window's first: a scan minimum
        # at the same shift is the same candidate, refined once
        found.sort(key=lambda item: (item[4] != "vit", item[0]))
        kept, seen = [], []
        for item in found:
            if all(abs(item[2] - s) > 2 * self.settings.bin_for(spectype) for s in seen):
                kept.append(item)
                seen.append(item[2])
        scanned = sorted((item for item in kept if item[4] == "scan"), key=lambda item: item[0])
        return scanned[: self.settings.n_candidates] + [item for item in kept if item[4] == "vit"]

    def _refine_candidates(self, found: list, f: np.ndarray, w: np.ndarray) -> list[Candidate]:
        """Refine the coarse candidates within `refine_margin` of the lowest (at most
        `max_refine`, the ViT's among them); the others keep their coarse χ², offset by the best
        one's change on refinement, so that Δχ² to them is still defined, and are refined after all
        where that estimate would be the lowest χ²."""
        if not found:
            return []
        found = sorted(found, key=lambda item: item[0])
        refined, rest = [], []
        class_best = {}
        for item in found:
            class_best.setdefault(item[1].spectype, item[0])
        staged = []  # (item, products, {whole-pixel shift: χ²})
        spectrum = prepare_spectrum(f, w, self.poly)
        products: dict = {}  # one per basis: its whole-pixel products serve every candidate of it

        def products_for(basis: Basis) -> ShiftProducts:
            if basis.name not in products:
                products[basis.name] = ShiftProducts(basis, spectrum, self.grid.loglam_start, self.backend)
            return products[basis.name]

        for item in found:
            chi2, basis, shift, at_edge, source = item
            first_of_class = all(it[1].spectype != basis.spectype for it, *_ in staged)
            # coarse χ² of different classes come from different binnings: the best of each class
            # is always refined, the others when close to it
            if first_of_class or source == "vit" or (
                    len(staged) < self.settings.max_refine and chi2 - class_best[basis.spectype] <= self.settings.refine_margin):
                points = self._whole_pixels(products_for(basis), shift, 0)
                if not any(np.isfinite(value) for value in points.values()):  # walk on before giving up
                    self._whole_pixels(products_for(basis), shift, self.settings.bin_for(basis.spectype) + 1, points)
                if any(np.isfinite(value) for value in points.values()):
                    staged.append((item, products_for(basis), points))
                    continue
            rest.append(item)
        # the walk downhill, for the candidates within walk_margin of the best after three whole
        # pixels each: the others are solutions of no consequence, whose χ² only bounds a Δχ²
        # already far above the doubt limit (on held-out samples no choice, z or σ_z changed)
        if staged:
            best_points = min(min(points.values()) for *_, points in staged)
            for item, shift_products, points in staged:
                if min(points.values()) - best_points <= self.settings.walk_margin:
                    self._whole_pixels(shift_products, item[2], self.settings.bin_for(item[1].spectype) + 1, points)
        staged = [(item, shift_products, *whole) for item, shift_products, points in staged
                  if (whole := _whole_arrays(points)) is not None]
        if staged:
            best_whole = min(float(np.nanmin(chi2)) for *_, chi2 in staged)
        for (coarse_chi2, basis, _, at_edge, source), shift_products, whole, chi2 in staged:
            # quarter pixels only where the solution could matter; the others' χ² and z come from
            # the whole-pixel points, enough for a Δχ² far above the doubt limit
            sub_pixel = float(np.nanmin(chi2)) - best_whole <= self.settings.sub_pixel_margin
            cand = self._finish(shift_products, whole, chi2, sub_pixel)
            cand.at_edge = cand.at_edge or at_edge
            cand.source = source
            cand.coarse_chi2 = coarse_chi2
            refined.append(cand)
        if not refined:
            return []
        unrefined = {}
        for item in rest:
            chi2, basis, shift, at_edge, _ = item
            same = [c for c in refined if c.spectype == basis.spectype]
            if not same or any(abs(shift - c.shift) < 2 * self.settings.bin_for(basis.spectype) for c in same):
                continue
            top = min(same, key=lambda c: c.chi2)  # offset by the class's own change on refinement
            cand = Candidate(basis.spectype, basis.subtype, float(shift_to_z(shift, basis.step)), np.nan,
                             float(chi2 + top.chi2 - top.coarse_chi2), np.nan, bool(at_edge), "coarse", shift, chi2)
            refined.append(cand)
            unrefined[id(cand)] = item
        # an estimate is never the answer: the offset is the best candidate's change on refinement,
        # which can be far larger than another's (5 Legendre terms at the right z take up much of
        # a strong calibration error), so while the lowest χ² is an unrefined candidate's, refine it
        while unrefined:
            lowest = min(refined, key=lambda c: c.chi2)
            if lowest.source != "coarse":
                break
            refined = [c for c in refined if c is not lowest]  # by identity: Candidates compare by value
            coarse_chi2, basis, shift, at_edge, source = unrefined.pop(id(lowest))
            cand = self._refined(products_for(basis), shift, self.settings.bin_for(basis.spectype))
            if cand is None:
                continue
            cand.at_edge = cand.at_edge or at_edge
            cand.source, cand.coarse_chi2 = source, coarse_chi2
            refined.append(cand)
        return refined

    def _vit_window(self, z: float, z_err: float) -> tuple[float, float]:
        c = SPEED_OF_LIGHT_KMS
        half_z = max(self.settings.vit_window_sigma * (z_err if np.isfinite(z_err) else 0.0),
                     self.settings.vit_window_min_kms / c * (1.0 + z))
        lo, hi = max(z - half_z, -0.99), z + half_z
        return float(z_to_shift(lo)), float(z_to_shift(hi))

    def refine(self, basis: Basis, f: np.ndarray, w: np.ndarray, shift: float, factor: int) -> Candidate | None:
        """The full-resolution minimum near `shift` (pixels): whole pixels downhill from it (at
        most ±factor + 1), then quarter pixels within ±3/4 pixel of the best, a parabola through
        the five around the lowest."""
        return self._refined(ShiftProducts(basis, prepare_spectrum(f, w, self.poly), self.grid.loglam_start, self.backend),
                             shift, factor)

    def _refined(self, products: ShiftProducts, shift: float, factor: int) -> Candidate | None:
        """`refine` with the spectrum's products against the basis already made."""
        whole = _whole_arrays(self._whole_pixels(products, shift, factor + 1))
        return None if whole is None else self._finish(products, *whole, sub_pixel=True)

    def _whole_pixels(self, products: ShiftProducts, shift: float, steps: int, points: dict | None = None) -> dict:
        """χ² at whole pixels around `shift` (pixel -> χ², inf where undefined), inside the
        basis' range: the nearest pixel and its two neighbours (unless `points` has them), then one
        pixel at a time downhill until the lowest point has both neighbours, at most `steps` times
        (the coarse scan's spacing and one more)."""
        lo_shift, hi_shift = products.basis.shift_range()
        first, last = int(np.floor(lo_shift)), int(np.ceil(hi_shift))
        points = {} if points is None else points

        def evaluate(shifts) -> None:
            shifts = sorted({int(s) for s in shifts if first <= s <= last and s not in points})
            if shifts:
                chi2 = products.chi2(OVERSAMPLE * np.array(shifts))["chi2"]
                points.update((s, float(c) if np.isfinite(c) else np.inf) for s, c in zip(shifts, chi2))

        if not points:
            centre = int(np.clip(round(shift), first, last))
            evaluate([centre - 1, centre, centre + 1])
        for _ in range(steps):
            best = min(points, key=points.get)
            missing = [s for s in (best - 1, best + 1) if first <= s <= last and s not in points]
            if not missing:
                break
            evaluate(missing)
        return points

    def _finish(self, products: ShiftProducts, whole: np.ndarray, whole_chi2: np.ndarray, sub_pixel: bool) -> Candidate:
        """The candidate from the whole-pixel points, through quarter pixels when `sub_pixel`."""
        basis = products.basis
        lo_shift, hi_shift = basis.shift_range()
        best = int(whole[np.nanargmin(whole_chi2)])
        if sub_pixel:
            quarters = OVERSAMPLE * best + np.arange(-3, 4)
            chi2 = products.chi2(quarters)["chi2"]
        else:
            quarters, chi2 = OVERSAMPLE * whole, whole_chi2
        j = int(np.nanargmin(chi2))
        at_edge = bool(best <= np.ceil(lo_shift) or best >= np.floor(hi_shift))
        u_hat, sigma_u, chi2_min = _parabola(quarters, chi2, j)
        shift_hat = u_hat / OVERSAMPLE
        n_free = basis.n_basis + len(self.poly)
        rchi2 = float(chi2[j] / max(products.spectrum["n_good"] - n_free, 1.0))
        sigma_shift = sigma_u / OVERSAMPLE * np.sqrt(max(rchi2, 1.0))
        z = float(shift_to_z(shift_hat, basis.step))
        z_err = float((1.0 + z) * LN10 * basis.step * sigma_shift)
        if self.calibration is not None:
            scale, floor_kms = calibration_terms(self.calibration, basis.spectype, z)
            z_err = float(np.hypot(scale * z_err, floor_kms / SPEED_OF_LIGHT_KMS * (1.0 + z)))
        return Candidate(basis.spectype, basis.subtype, z, z_err, chi2_min, rchi2, at_edge, "scan", float(shift_hat))

    def spectral_type(self, f: np.ndarray, w: np.ndarray, shift: float, group: str = "") -> tuple[str, str]:
        """(MILES spectral type, star name) of the training star (of `group`, when given: the
        star basis that fitted) that, with the polynomials, fits best at `shift` pixels. Compared
        on bins of TYPE_BIN pixels (about 2 Å, MILES's resolution): a type is read from line
        depths and the continuum's shape, which binning keeps."""
        chosen, chi2 = self.type_chi2(f, w, shift, group)
        best = chosen[int(np.argmin(chi2))]
        return str(self.bases.star_sptype[best]).strip(), str(self.bases.star_name[best]).strip()

    def type_chi2(self, f: np.ndarray, w: np.ndarray, shift: float, group: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(indices into the basis set's stars, χ² of each) for `spectral_type`: each training
        star of `group` ('' = all) times a free amplitude, plus the fit's Legendre polynomials,
        against the spectrum (f, w) binned by TYPE_BIN at `shift` pixels."""
        stars = self.bases
        factor = TYPE_BIN
        chosen, binned = stars.star_group_binned(group, factor)
        offset = int(round((self.grid.loglam_start - stars.star_loglam_start) / self.grid.loglam_step))
        start = offset - int(round(shift))           # rest pixel of observed pixel 0
        n_bins = len(f) // factor
        phase, first = start % factor, start // factor
        # the stars are 0 where they have no data: their terms need only the bins they cover
        lo = max(0, -first)
        hi = max(lo, min(n_bins, binned.shape[2] - first))
        t = binned[phase][:, first + lo:first + hi]   # (S, hi - lo), a view; empty where none overlap
        fb, wb = binned_spectrum(f, w, factor)
        poly = _legendre_cached(n_bins, len(self.poly))
        tw = t * wb[lo:hi]
        # each star's system is its one amplitude and the polynomials' P, which all stars share:
        # with the polynomials eliminated once (A = M_pp⁻¹), each star's χ² is a scalar division
        cross = tw @ np.vstack([poly[:, lo:hi], fb[lo:hi]]).T                  # (S, P + 1): Σ w t P, Σ w t f
        m_pp = (poly * wb) @ poly.T
        m_pp[np.diag_indices_from(m_pp)] += 1e-10 * np.trace(m_pp) / len(m_pp) + 1e-30
        a_pp = np.linalg.inv(m_pp)
        b_p = poly @ (wb * fb)
        q = a_pp @ b_p
        m_tp = cross[:, :-1]
        reduced = np.einsum("ij,ij->i", tw, t) - np.einsum("ij,jk,ik->i", m_tp, a_pp, m_tp)
        explained = (cross[:, -1] - m_tp @ q) ** 2 / np.where(reduced > 0, reduced, np.inf)
        return chosen, fb @ (wb * fb) - b_p @ q - explained


def _whole_arrays(points: dict):
    """(shifts, χ²) arrays of `Fitter._whole_pixels`'s points, NaN where undefined; None when
    none is defined."""
    whole = np.array(sorted(points))
    chi2 = np.array([points[s] for s in whole])
    chi2[~np.isfinite(chi2)] = np.nan
    return (whole, chi2) if np.isfinite(chi2).any() else None


@lru_cache(maxsize=8)
def _legendre_cached(n: int, n_poly: int) -> np.ndarray:
    return legendre(n, n_poly)


def _vertices(chi2: np.ndarray, shifts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The shifts of coarse minima `index` (R, n) of curves chi2 (R, n_shift), each refined by a
    parabola through it and its two neighbours (within one coarse step of its shift; the shift
    itself at the ends or where the three points are not convex): where the whole-pixel
    refinement starts."""
    n_shift = chi2.shape[1]
    inner = (index > 0) & (index < n_shift - 1)
    left = np.take_along_axis(chi2, np.clip(index - 1, 0, n_shift - 1), axis=1)
    centre = np.take_along_axis(chi2, index, axis=1)
    right = np.take_along_axis(chi2, np.clip(index + 1, 0, n_shift - 1), axis=1)
    curvature = left - 2.0 * centre + right
    step = float(shifts[1] - shifts[0]) if len(shifts) > 1 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.clip(0.5 * step * (left - right) / curvature, -step, step)
    usable = inner & np.isfinite(curvature) & (curvature > 0) & np.isfinite(offset)
    return shifts[index] + np.where(usable, offset, 0.0)


def _parabola(u: np.ndarray, chi2: np.ndarray, j: int) -> tuple[float, float, float]:
    """(minimum position, σ, minimum χ²) in the units of u from a quadratic through up to five
    points around index j; σ = 1/√a for χ² ≈ a(u − u₀)² + c. Where the points are not a
    parabola opening upwards with its vertex within two grid steps of j: the grid point, half the
    grid's span, its χ²."""
    lo, hi = max(0, j - 2), min(len(u), j + 3)
    x, y = u[lo:hi].astype(float) - u[j], chi2[lo:hi]
    spacing = float(u[1] - u[0]) if len(u) > 1 else 1.0
    if len(x) >= 3 and np.isfinite(y).all():
        a, b, c = _quadratic(x / spacing, y)
        a, b = a / spacing**2, b / spacing
        if a > 0 and abs(b / (2 * a)) <= 2.0 * spacing:
            centre = -b / (2 * a)
            return float(u[j] + centre), float(1.0 / np.sqrt(a)), float(min(c - b * b / (4 * a), chi2[j]))
    return float(u[j]), spacing * len(u) / 2, float(chi2[j])


def _quadratic(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) of the least-squares y ≈ a x² + b x + c through three to five points whose x
    are a few units from 0 (the fit's: whole numbers of grid steps, so the normal equations'
    sums of powers of x are exact), y taken relative to its lowest value: the 3×3 normal
    equations solved by Cramer's rule in Python floats, 3× faster than np.linalg.solve on the
    fit's hot path (np.polyfit's SVD was 7× slower still) and, with the offset removed, closer to
    the exact solution."""
    xs = [float(v) for v in x]
    y0 = float(min(y))
    ys = [float(v) - y0 for v in y]   # χ² sits far above 0: the offset would cost the solution digits
    s0 = float(len(xs))
    s1 = sum(xs)
    s2 = sum(v * v for v in xs)
    s3 = sum(v * v * v for v in xs)
    s4 = sum(v * v * v * v for v in xs)
    t0 = sum(ys)
    t1 = sum(u * v for u, v in zip(xs, ys))
    t2 = sum(u * u * v for u, v in zip(xs, ys))
    # [[s4, s3, s2], [s3, s2, s1], [s2, s1, s0]] (a, b, c) = (t2, t1, t0)
    minor0, minor1, minor2 = s2 * s0 - s1 * s1, s3 * s0 - s1 * s2, s3 * s1 - s2 * s2
    det = s4 * minor0 - s3 * minor1 + s2 * minor2
    a = (t2 * minor0 - s3 * (t1 * s0 - s1 * t0) + s2 * (t1 * s1 - s2 * t0)) / det
    b = (s4 * (t1 * s0 - s1 * t0) - t2 * minor1 + s2 * (s3 * t0 - t1 * s2)) / det
    c = (s4 * (s2 * t0 - t1 * s1) - s3 * (s3 * t0 - t1 * s2) + t2 * minor2) / det
    return a, b, c + y0
