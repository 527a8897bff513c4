"""The compact template library (rest-frame vacuum, log-linear 1e-4 dex, median-normalised)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

LIBRARY_PATH = Path(__file__).resolve().parent / "data" / "templates.npz"


@dataclass(frozen=True)
class TemplateLibrary:
    """star_flux: (n_star, n_star_pix) on star_loglam (log10 Å); gal_flux: (n_gal, n_gal_pix) on
    gal_loglam; NaN where a template has no data. Stellar labels NaN where unknown."""

    star_loglam: np.ndarray
    star_flux: np.ndarray
    star_teff: np.ndarray
    star_logg: np.ndarray
    star_feh: np.ndarray
    star_name: np.ndarray
    star_fwhm_aa: float
    gal_loglam: np.ndarray
    gal_flux: np.ndarray
    gal_age_gyr: np.ndarray
    gal_sigma_kms: np.ndarray
    gal_set: np.ndarray
    star_sptype: np.ndarray | None = None  # (n_star,) MILES spectral type, '' where none

    @cached_property
    def gal_first_loglam(self) -> np.ndarray:
        """(n_gal,) log10 of each population's first rest wavelength with data."""
        return self.gal_loglam[np.argmax(np.isfinite(self.gal_flux), axis=1)]

    @cached_property
    def gal_last_loglam(self) -> np.ndarray:
        """(n_gal,) log10 of each population's last rest wavelength with data."""
        return self.gal_loglam[-1 - np.argmax(np.isfinite(self.gal_flux[:, ::-1]), axis=1)]

    def with_populations(self, indices) -> "TemplateLibrary":
        """The same library with only the stellar populations `indices` (for samples made from
        populations a model or fit never saw)."""
        from dataclasses import replace

        return replace(self, gal_flux=self.gal_flux[indices], gal_age_gyr=self.gal_age_gyr[indices],
                       gal_sigma_kms=self.gal_sigma_kms[indices], gal_set=self.gal_set[indices])

    @property
    def n_star(self) -> int:
        return len(self.star_flux)

    @property
    def n_gal(self) -> int:
        return len(self.gal_flux)


@lru_cache(maxsize=2)
def load_library(path: str | Path = LIBRARY_PATH) -> TemplateLibrary:
    with np.load(path, allow_pickle=False) as data:
        return TemplateLibrary(
            star_loglam=data["star_loglam"], star_flux=data["star_flux"].astype(np.float32),
            star_teff=data["star_teff"].astype(np.float64), star_logg=data["star_logg"].astype(np.float64),
            star_feh=data["star_feh"].astype(np.float64), star_name=data["star_name"],
            star_fwhm_aa=float(data["star_fwhm_aa"]),
            gal_loglam=data["gal_loglam"], gal_flux=data["gal_flux"].astype(np.float32),
            gal_age_gyr=data["gal_age_gyr"].astype(np.float64),
            gal_sigma_kms=data["gal_sigma_kms"].astype(np.float64), gal_set=data["gal_set"],
            star_sptype=data["star_sptype"].astype(str),
        )
