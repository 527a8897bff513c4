"""The redshift fit of a batch of spectra, seeded by the ViT: coarse scans, refined minima, the
choice among them.

Steps per spectrum (redrock's split: scan, refine, choose):
1. `coarse_scan` of every basis the prior does not rule out (binned data, whole z range).
2. Candidates: the lowest local minima of each class (`n_candidates`), plus the minimum inside
   the ViT's own window (z_vit ± 5σ_vit, at least ±2,000 km/s) for its class, so the ViT's
   answer is always weighed.
3. Each candidate refined at full resolution with Legendre polynomials: whole-pixel shifts around
   it, then quarter-pixel shifts around the best, a parabola through the lowest χ² points for the
   sub-pixel minimum and σ_z from its curvature (scaled by √χ²_ν when the fit is worse than the
   noise).
4. `decide.choose`: the lowest χ², Δχ² to the best other solution, the ViT rule for near-ties,
   the flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from .bases import OVERSAMPLE, Basis, BasisSet, load_bases
from .scan import Backend, chi2_at_shifts, coarse_scan, legendre, spectrum_arrays

LN10 = np.log(10.0)


@dataclass(frozen=True)
class FitSettings:
    """How the fit runs. bin_factor: pixels per bin of the coarse scan per class; n_poly: Legendre
    terms (calibration errors) in the refined fit; n_candidates: minima kept per class;
    prior: use the ViT's output (skip classes it rules out, add its window, break near-ties);
    skip_below: a class whose ViT probability is under this is not scanned, when the ViT's top
    class has at least `confident`; small_deltachi2: Δχ² under which a solution is doubtful
    (redrock's ZWARN uses 9); backend: numpy or torch."""

    bin_galaxy: int = 3
    bin_qso: int = 6
    bin_star: int = 3
    n_poly: int = 3
    n_poly_coarse: int = 2
    n_candidates: int = 3
    max_refine: int = 4
    refine_margin: float = 100.0
    prior: bool = True
    skip_below: float = 1e-3
    confident: float = 0.99
    small_deltachi2: float = 9.0
    vit_window_sigma: float = 5.0
    vit_window_min_kms: float = 2000.0
    backend: str = "numpy"
    device: str = "cpu"

    def bin_for(self, spectype: str) -> int:
        return {"GALAXY": self.bin_galaxy, "QSO": self.bin_qso, "STAR": self.bin_star}[spectype]

    def describe(self) -> str:
        """A short text for the output header (ANNFITS)."""
        return (f"bin={self.bin_galaxy}/{self.bin_qso}/{self.bin_star} poly={self.n_poly} "
                f"cand={self.n_candidates} prior={'on' if self.prior else 'off'} skip<{self.skip_below:g} "
                f"dchi2<{self.small_deltachi2:g}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    spectype: str
    subtype: str
    z: float
    z_err: float
    chi2: float        # χ²_eff at the refined minimum
    rchi2: float       # χ² per degree of freedom over the covered pixels
    at_edge: bool      # the minimum lies at the edge of the scanned range
    source: str        # 'scan', 'vit' (the ViT window's minimum) or 'coarse' (not refined)
    shift: float       # pixels
    coarse_chi2: float = np.nan


def shift_to_z(shift, step: float = 1e-4):
    return 10.0 ** (np.asarray(shift, float) * step) - 1.0


def z_to_shift(z, step: float = 1e-4):
    return np.log10(1.0 + np.asarray(z, float)) / step


def local_minima(chi2: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n lowest local minima of a 1-D curve (ends count when lower than their
    neighbour), lowest first."""
    if len(chi2) == 1:
        return np.array([0])
    left = np.concatenate([[np.inf], chi2[:-1]])
    right = np.concatenate([chi2[1:], [np.inf]])
    minima = np.flatnonzero((chi2 <= left) & (chi2 <= right) & (chi2 < 1e299))
    if len(minima) == 0:
        return np.array([int(np.argmin(chi2))])
    return minima[np.argsort(chi2[minima])][:n]


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

    def classes_to_scan(self, prob: np.ndarray | None) -> list[str]:
        if prob is None or not self.settings.prior or not np.isfinite(prob).all():
            return list(CLASS_NAMES)
        if prob.max() < self.settings.confident:
            return list(CLASS_NAMES)
        return [c for c, p in zip(CLASS_NAMES, prob) if p >= self.settings.skip_below]

    def fit(self, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, vit: dict | None = None) -> list[list[Candidate]]:
        """Candidates per spectrum (refined, unsorted) for (B, n_pix) flux, ivar, mask; `vit`
        holds the ViT's 'prob' (B, 3), 'z' and 'z_err' (B,) when the prior is used."""
        f, w, _ = spectrum_arrays(flux, ivar, mask)
        n_spec = len(f)
        prob = vit["prob"] if vit is not None else None
        scan_classes = [self.classes_to_scan(None if prob is None else prob[i]) for i in range(n_spec)]
        candidates: list[list[Candidate]] = [[] for _ in range(n_spec)]
        coarse: dict = {}
        for basis in self.bases.bases:
            rows = np.array([i for i in range(n_spec) if basis.spectype in scan_classes[i]], dtype=int)
            if len(rows) == 0:
                continue
            chi2, shifts = coarse_scan(basis, f[rows], w[rows], self.grid.loglam_start,
                                       self.settings.bin_for(basis.spectype), self.backend,
                                       n_poly=self.settings.n_poly_coarse)
            coarse[basis.name] = (rows, chi2, shifts)
        for i in range(n_spec):
            found = []
            for spectype in scan_classes[i]:
                found.extend(self._coarse_candidates(i, spectype, coarse, vit))
            candidates[i] = self._refine_candidates(found, f[i], w[i])
        return candidates

    def _coarse_candidates(self, i: int, spectype: str, coarse: dict, vit: dict | None) -> list:
        """(coarse χ², basis, shift, at_edge, source) of one class for spectrum i: its lowest
        minima at distinct shifts, and the ViT window's minimum for the ViT's class."""
        found = []
        for basis in self.bases.for_class(spectype):
            if basis.name not in coarse:
                continue
            rows, chi2, shifts = coarse[basis.name]
            curve = chi2[int(np.searchsorted(rows, i))]
            for j in local_minima(curve, self.settings.n_candidates):
                found.append((curve[j], basis, float(shifts[j]), j in (0, len(curve) - 1), "scan"))
            if vit is not None and self.settings.prior and np.isfinite(vit["prob"][i]).all() \
                    and CLASS_NAMES[int(np.argmax(vit["prob"][i]))] == spectype and np.isfinite(vit["z"][i]):
                window = self._vit_window(vit["z"][i], vit["z_err"][i])
                inside = (shifts >= window[0]) & (shifts <= window[1])
                if inside.any():
                    j = np.flatnonzero(inside)[np.argmin(curve[inside])]
                    found.append((curve[j], basis, float(shifts[j]), j in (0, len(curve) - 1), "vit"))
        found = [item for item in found if item[0] < 1e299]
        found.sort(key=lambda item: item[0])
        kept, seen = [], []
        for item in found:  # one per distinct shift (star groups share theirs); the ViT's always
            if item[4] == "vit" or all(abs(item[2] - s) > 2 * self.settings.bin_for(spectype) for s in seen):
                kept.append(item)
                seen.append(item[2])
        return kept[: self.settings.n_candidates + 1]

    def _refine_candidates(self, found: list, f: np.ndarray, w: np.ndarray) -> list[Candidate]:
        """Refine the coarse candidates within `refine_margin` of the lowest (at most
        `max_refine`, the ViT's among them); the others keep their coarse χ², offset by the best
        one's change on refinement, so that Δχ² to them is still defined."""
        if not found:
            return []
        found = sorted(found, key=lambda item: item[0])
        best_coarse = found[0][0]
        refined, rest = [], []
        class_best = {}
        for item in found:
            class_best.setdefault(item[1].spectype, item[0])
        for item in found:
            chi2, basis, shift, at_edge, source = item
            first_of_class = all(c.spectype != basis.spectype for c in refined)
            # coarse χ² of different classes come from different binnings: the best of each class
            # is always refined, the others when close to it
            if first_of_class or source == "vit" or (
                    len(refined) < self.settings.max_refine and chi2 - class_best[basis.spectype] <= self.settings.refine_margin):
                cand = self.refine(basis, f, w, shift, self.settings.bin_for(basis.spectype))
                if cand is not None:
                    cand.at_edge = cand.at_edge or at_edge
                    cand.source = source
                    cand.coarse_chi2 = chi2
                    refined.append(cand)
                    continue
            rest.append(item)
        if not refined:
            return []
        for chi2, basis, shift, at_edge, _ in rest:
            same = [c for c in refined if c.spectype == basis.spectype]
            if not same or any(abs(shift - c.shift) < 2 * self.settings.bin_for(basis.spectype) for c in same):
                continue
            top = min(same, key=lambda c: c.chi2)  # offset by the class's own change on refinement
            refined.append(Candidate(basis.spectype, basis.subtype, float(shift_to_z(shift, basis.step)), np.nan,
                                     float(chi2 + top.chi2 - top.coarse_chi2), np.nan, bool(at_edge), "coarse", shift,
                                     chi2))
        return refined

    def _vit_window(self, z: float, z_err: float) -> tuple[float, float]:
        c = SPEED_OF_LIGHT_KMS
        half_z = max(self.settings.vit_window_sigma * (z_err if np.isfinite(z_err) else 0.0),
                     self.settings.vit_window_min_kms / c * (1.0 + z))
        lo, hi = max(z - half_z, -0.99), z + half_z
        return float(z_to_shift(lo)), float(z_to_shift(hi))

    def refine(self, basis: Basis, f: np.ndarray, w: np.ndarray, shift: float, factor: int) -> Candidate | None:
        """The full-resolution minimum near `shift` (pixels): whole pixels within ±(factor + 1),
        then quarter pixels within ±1 of the best, a parabola through the lowest five."""
        lo_shift, hi_shift = basis.shift_range()
        whole = np.arange(int(np.floor(shift)) - factor, int(np.ceil(shift)) + factor + 1)
        whole = whole[(whole >= np.floor(lo_shift)) & (whole <= np.ceil(hi_shift))]
        if len(whole) == 0:
            return None
        first = chi2_at_shifts(basis, f, w, self.grid.loglam_start, OVERSAMPLE * whole, self.poly, self.backend)
        best = int(whole[np.argmin(first["chi2_eff"])])
        quarters = OVERSAMPLE * best + np.arange(-3, 4)
        second = chi2_at_shifts(basis, f, w, self.grid.loglam_start, quarters, self.poly, self.backend)
        chi2 = second["chi2_eff"]
        if not np.isfinite(chi2).any() or chi2.min() >= 1e299:
            return None
        j = int(np.argmin(chi2))
        at_edge = bool(best <= np.ceil(lo_shift) or best >= np.floor(hi_shift))
        u_hat, sigma_u = _parabola(quarters, chi2, j)
        shift_hat = u_hat / OVERSAMPLE
        n_free = basis.n_basis + len(self.poly)
        dof = max(second["n_good"] - n_free, 1.0)
        rchi2 = float(second["chi2"][j] / dof)
        sigma_shift = sigma_u / OVERSAMPLE * np.sqrt(max(rchi2, 1.0))
        z = float(shift_to_z(shift_hat, basis.step))
        z_err = float((1.0 + z) * LN10 * basis.step * sigma_shift)
        return Candidate(basis.spectype, basis.subtype, z, z_err, float(_parabola_min(quarters, chi2, j, u_hat)), rchi2,
                         bool(at_edge), "scan", float(shift_hat))

    def spectral_type(self, f: np.ndarray, w: np.ndarray, shift: float) -> tuple[str, str]:
        """(MILES spectral type, star name) of the training star that fits best at `shift`."""
        stars = self.bases
        n = len(f)
        offset = int(round((self.grid.loglam_start - stars.star_loglam_start) / self.grid.loglam_step))
        index = offset + np.arange(n) - int(round(shift))
        inside = (index >= 0) & (index < stars.star_flux.shape[1])
        index = np.clip(index, 0, stars.star_flux.shape[1] - 1)
        t = stars.star_flux[:, index] * inside
        cov = stars.star_coverage[:, index] & inside
        wc = w[None, :] * cov
        poly = self.poly
        tt = np.einsum("sn,sn->s", t * wc, t)
        tf = (t * wc) @ f
        tp = (t * wc) @ poly.T                         # (S, P)
        pp = np.einsum("pn,sn,qn->spq", poly, wc, poly)
        pf = wc @ (poly * f).T                         # (S, P)
        ff = wc @ (f * f)
        k = 1 + len(poly)
        mat = np.empty((len(t), k, k))
        mat[:, 0, 0], mat[:, 0, 1:], mat[:, 1:, 0], mat[:, 1:, 1:] = tt, tp, tp, pp
        vec = np.concatenate([tf[:, None], pf], axis=1)
        chi2 = ff - self.backend.chi2_reduction(mat, vec) if self.backend.name == "numpy" else \
            ff - Backend().chi2_reduction(mat, vec)
        n_cov = cov @ (w > 0)
        per_pixel = chi2 / np.maximum(n_cov, 1)
        best = int(np.argmin(per_pixel))
        return str(stars.star_sptype[best]).strip(), str(stars.star_name[best]).strip()


def _parabola(u: np.ndarray, chi2: np.ndarray, j: int) -> tuple[float, float]:
    """(minimum, σ) in the units of u from a quadratic through up to five points around index j;
    σ = 1/√a for χ² ≈ a(u − u₀)² + c. Falls back to the grid point and the grid's spacing."""
    lo, hi = max(0, j - 2), min(len(u), j + 3)
    x, y = u[lo:hi].astype(float), chi2[lo:hi]
    ok = y < 1e299
    if ok.sum() >= 3:
        a, b, _ = np.polyfit(x[ok] - u[j], y[ok], 2)
        if a > 0:
            centre = -b / (2 * a)
            if abs(centre) <= 2.0:
                return float(u[j] + centre), float(1.0 / np.sqrt(a))
    return float(u[j]), float(len(u) / 2)


def _parabola_min(u: np.ndarray, chi2: np.ndarray, j: int, u_hat: float) -> float:
    lo, hi = max(0, j - 2), min(len(u), j + 3)
    x, y = u[lo:hi].astype(float), chi2[lo:hi]
    ok = y < 1e299
    if ok.sum() >= 3:
        coeffs = np.polyfit(x[ok] - u[j], y[ok], 2)
        value = float(np.polyval(coeffs, u_hat - u[j]))
        return min(value, float(chi2[j]))
    return float(chi2[j])
