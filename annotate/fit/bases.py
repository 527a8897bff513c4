"""Template bases of the redshift fit: per class (and star group) a few rest-frame basis spectra.

Stored in `annotate/fit/data/bases.npz`, built by `python -m annotate.fit.build` from the
project's template library only (`annotate/simulate/data/templates.npz` and the quasar model of
`annotate/simulate/spectra.py`); sources and steps in `annotate/fit/data/SOURCES.md`.

Every basis lives on a rest-frame vacuum log-λ grid with the store's 1e-4 dex step and pixel
centres on multiples of the step, so that a redshift is a whole or fractional pixel shift:
log10(1 + z) = shift · step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from ..digest import file_sha256
from ..errors import ConfigError

BASES_PATH = Path(__file__).resolve().parent / "data" / "bases.npz"
OVERSAMPLE = 4  # sub-pixel shifts are taken on a grid 4× finer than the basis


@dataclass(frozen=True)
class Basis:
    """One set of basis spectra.

    spectype: GALAXY, QSO or STAR; subtype: '' or the star group (e.g. 'A');
    loglam_start: log10 Å of the first rest pixel; step: dex per pixel;
    flux: (k, m) float64 basis vectors (dimensionless, 0 where `coverage` is False);
    coverage: (m,) bool, rest pixels where the basis has data (continuum templates);
    z_range: (z_min, z_max) scanned for this basis."""

    spectype: str
    subtype: str
    loglam_start: float
    step: float
    flux: np.ndarray
    coverage: np.ndarray
    z_range: tuple
    names: tuple = field(default=())

    @property
    def name(self) -> str:
        return f"{self.spectype}:{self.subtype}" if self.subtype else self.spectype

    @property
    def n_basis(self) -> int:
        return self.flux.shape[0]

    @property
    def n_pix(self) -> int:
        return self.flux.shape[1]

    def leading(self, n_pca: int) -> "Basis":
        """The same basis with only its first n_pca PCA vectors (templates not named 'pca…',
        such as emission lines, all kept)."""
        rows = [i for i, name in enumerate(self.names) if not name.startswith("pca") or int(name[3:]) < n_pca]
        if len(rows) == self.n_basis:
            return self
        return Basis(self.spectype, self.subtype, self.loglam_start, self.step, self.flux[rows], self.coverage,
                     self.z_range, tuple(self.names[i] for i in rows))

    def offset(self, grid_loglam_start: float) -> int:
        """Rest pixel index of observed pixel 0 at zero shift (grids on multiples of the step)."""
        return int(round((grid_loglam_start - self.loglam_start) / self.step))

    def shift_range(self) -> tuple[float, float]:
        """(min, max) shift in pixels for z_range."""
        lo, hi = self.z_range
        return float(np.log10(1.0 + lo) / self.step), float(np.log10(1.0 + hi) / self.step)

    @cached_property
    def fine(self) -> np.ndarray:
        """(k, m · OVERSAMPLE) the basis shifted by q/OVERSAMPLE pixel at index OVERSAMPLE·j + q:
        linear interpolation between rest pixels j and j + 1, which is exactly what integrating
        a pixelised spectrum over a pixel offset by that fraction gives (the flux-conserving
        resampling of the store)."""
        frac = np.arange(OVERSAMPLE) / OVERSAMPLE
        nxt = np.concatenate([self.flux[:, 1:], np.zeros((self.n_basis, 1))], axis=1)
        fine = (1.0 - frac)[None, None, :] * self.flux[:, :, None] + frac[None, None, :] * nxt[:, :, None]
        return fine.reshape(self.n_basis, -1)

    phase_pad: int = 6000  # zero pixels on both sides of `phases`: any store grid's shift stays inside

    @cached_property
    def phases(self) -> np.ndarray:
        """(OVERSAMPLE, k, m + 2·phase_pad): `fine` split by phase, zero-padded; the basis shifted
        by −q/OVERSAMPLE pixel is phases[q] (contiguous, so any shift is a slice)."""
        fine = self.fine.reshape(self.n_basis, self.n_pix, OVERSAMPLE)
        out = np.zeros((OVERSAMPLE, self.n_basis, self.n_pix + 2 * self.phase_pad))
        for q in range(OVERSAMPLE):
            out[q, :, self.phase_pad:self.phase_pad + self.n_pix] = fine[:, :, q]
        return out


@dataclass(frozen=True)
class BasisSet:
    """All bases of the fit, the star templates for spectral types, and the set's sha256."""

    bases: tuple
    star_flux: np.ndarray          # (n_star, m_star) individual training stars, 0 where no data
    star_coverage: np.ndarray      # (n_star, m_star) bool
    star_loglam_start: float
    star_sptype: np.ndarray        # (n_star,) str
    star_name: np.ndarray          # (n_star,) str
    star_group: np.ndarray         # (n_star,) str: the STAR basis (subtype) each star went into, '' none
    held_out_stars: np.ndarray     # MILES indices never used in any basis
    held_out_populations: np.ndarray  # population indices never used in the galaxy basis
    qso_seed: int                  # seed of the quasar-model draws the QSO basis was made from
    sha256: str
    path: Path

    def star_group_binned(self, group: str, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices into star_*, binned (factor, S, m // factor − 1)) of the training stars of one
        group ('' = all): binned[r][:, j] is their mean flux over rest pixels r + factor·j …
        r + factor·j + factor − 1, so a shifted, binned copy is a slice of one phase."""
        cached = self.__dict__.setdefault("_group_binned", {})
        if (group, factor) not in cached:
            chosen = np.flatnonzero(self.star_group == group) if group else np.arange(len(self.star_name))
            flux = self.star_flux[chosen]
            n_bins = flux.shape[1] // factor - 1
            binned = np.empty((factor, len(chosen), n_bins))
            for r in range(factor):  # the mean of each bin's pixels, summed in order: 3× faster than reshape-mean
                total = flux[:, r:r + n_bins * factor:factor].copy()
                for q in range(1, factor):
                    total += flux[:, r + q:r + q + n_bins * factor:factor]
                np.divide(total, factor, out=binned[r])
            cached[group, factor] = (chosen, binned)
        return cached[group, factor]

    def for_class(self, spectype: str) -> list:
        return [b for b in self.bases if b.spectype == spectype]

    @property
    def classes(self) -> tuple:
        return tuple(dict.fromkeys(b.spectype for b in self.bases))


@lru_cache(maxsize=4)
def load_bases(path: str | Path = BASES_PATH) -> BasisSet:
    """The basis set stored at `path` (an npz written by `python -m annotate.fit.build`; never
    unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"template bases not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        return basis_set_from_arrays(data, path, file_sha256(path))


def basis_set_from_arrays(data, path: Path, sha256: str) -> BasisSet:
    """A BasisSet from the arrays of a bases file (name -> array: an open npz or a dict)."""
    bases = []
    for name in (str(n) for n in data["basis_names"]):
        key = name.replace(":", "_")
        bases.append(Basis(
            spectype=str(data[f"{key}__spectype"]), subtype=str(data[f"{key}__subtype"]),
            loglam_start=float(data[f"{key}__loglam_start"]), step=float(data["step"]),
            flux=np.asarray(data[f"{key}__flux"], np.float64), coverage=np.asarray(data[f"{key}__coverage"], bool),
            z_range=tuple(float(v) for v in data[f"{key}__z_range"]),
            names=tuple(str(v) for v in data[f"{key}__names"])))
    held_out = np.asarray(data["held_out_stars"], int)
    # the individual training stars (for the spectral type) come from the template library itself
    from ..simulate.templates import LIBRARY_PATH, load_library

    if file_sha256(LIBRARY_PATH) != str(data["library_sha256"]):
        raise ConfigError(f"{path} was built from another template library than {LIBRARY_PATH}; "
                          "rebuild it with python -m annotate.fit.build")
    lib = load_library()
    train = np.setdiff1d(np.arange(lib.n_star), held_out)
    star_flux = lib.star_flux[train].astype(np.float64)
    star_coverage = np.isfinite(star_flux)
    return BasisSet(
        bases=tuple(bases), star_flux=np.where(star_coverage, star_flux, 0.0), star_coverage=star_coverage,
        star_loglam_start=float(lib.star_loglam[0]), star_sptype=lib.star_sptype[train].astype(str),
        star_name=lib.star_name[train].astype(str), star_group=np.asarray(data["star_group"]).astype(str),
        held_out_stars=held_out, held_out_populations=np.asarray(data["held_out_populations"], int),
        qso_seed=int(data["qso_seed"]), sha256=sha256, path=path)
