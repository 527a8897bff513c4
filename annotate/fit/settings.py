"""The fit's settings, its candidate solutions, the σ_z calibration it applies, and the
conversion between redshift and pixel shifts on the log-linear grid."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CALIBRATION_PATH = Path(__file__).resolve().parent / "data" / "calibration.json"
# the simulated quasars of the σ_z calibration and of the evaluation have their lines off the
# systemic velocity by this times Shen et al.'s scatter (simulate.realism.QSO_LINE_SCATTER_KMS), as
# real quasars' are; the simulator's own default leaves them at it
QSO_LINE_SCATTER = 1.0
TYPE_BIN = 4  # pixels per bin when the spectral type is read


@dataclass(frozen=True)
class FitSettings:
    """How the fit runs (validated by the dataclass; the run passes the defaults).

    bin_galaxy/bin_qso/bin_star: pixels per bin of each class's coarse scan; n_poly (refined) and
    n_poly_coarse: Legendre terms for calibration errors; coarse_pca: leading PCA vectors in the
    coarse scan; n_candidates: minima kept per class; max_refine, refine_margin: refinements
    beyond each class's best while fewer than max_refine, within refine_margin (coarse Δχ²);
    sub_pixel_margin: candidates further behind after the whole-pixel step skip quarter pixels;
    walk_margin: candidates further behind the best than this after their first three whole
    pixels are not walked downhill (their χ² stays an upper bound of their minimum there, so a Δχ²
    to them can only be overstated, and only where it is above walk_margin);
    prior: use the ViT's output (skip classes it rules out, add its window, break near-ties);
    skip_below, confident: a class whose ViT probability is under skip_below is not scanned when
    the ViT's top class has at least `confident`; small_deltachi2: Δχ² under which a solution is
    doubtful (redrock's ZWARN uses 9); vit_window_sigma, vit_window_min_kms: the ViT's window;
    backend, device: numpy or torch (on `device`); calibrated: apply data/calibration.json;
    stellar_k: training stars whose mean labels are a fitted star's Teff, log g and [Fe/H]
    (annotate.fit.stellar; 0: none, the ViT's stand), and whose labels' spread its σ is made
    from; stellar_mix: the nearest training stars whose best non-negative mixture gives the
    labels instead (0: the mean of the stellar_k stands); sky_window, sky_grow: the weights of
    pixels whose variance rises above its local level (medians of sky_window-pixel blocks; bright sky
    lines) are divided by the square of that excess, spread over sky_grow pixels, within
    sky_halfwidth pixels of a known night-sky line (`weights.sky_line_weights`; sky_window 0: the
    inverse variance as given); spike_sigma, spike_delta_chi2: pixels of a spike that fits its
    window better than a line of σ ≥ spike_sigma pixels by Δχ² > spike_delta_chi2 (cosmic-ray
    hits; `spikes.spike_pixels`) are left out (spike_sigma 0: none are)."""

    bin_galaxy: int = 4      # with n_poly_coarse 5: as robust as 3-pixel bins on the training folds, and faster (README)
    bin_qso: int = 6
    bin_star: int = 3
    n_poly: int = 5          # flux-calibration errors and dust: a quadratic is too stiff (evaluate.py)
    n_poly_coarse: int = 5    # strong calibration errors: 3 lost galaxies and quasars at realism 2-2.8 on the training folds (README)
    coarse_pca: int = 4
    n_candidates: int = 3
    max_refine: int = 3
    refine_margin: float = 50.0
    sub_pixel_margin: float = 100.0
    walk_margin: float = 100.0
    prior: bool = True
    skip_below: float = 0.0  # scan every class: a confident ViT can be wrong on real spectra
    confident: float = 0.99
    small_deltachi2: float = 9.0
    vit_window_sigma: float = 5.0
    vit_window_min_kms: float = 2000.0
    backend: str = "numpy"
    device: str = "cpu"
    calibrated: bool = True  # σ_z scale and floors of data/calibration.json (annotate.fit.calibrate)
    stellar_k: int = 5
    stellar_mix: int = 15    # chosen on the training stars in 4 folds (README, "The template fit")
    sky_window: int = 51     # weights.sky_line_weights: blocks of the variance's local level (0: the ivar as given)
    sky_grow: int = 5        # ... its excess spread over this many pixels (a line's wings)
    sky_halfwidth: int = 8   # ... only within this many pixels of a known night-sky line
    spike_sigma: float = 0.5          # spikes.spike_pixels: spikes narrower than a line of this σ (pixels) left out (0: none)
    spike_delta_chi2: float = 25.0    # ... where the spike model beats every line by this Δχ²

    def bin_for(self, spectype: str) -> int:
        return {"GALAXY": self.bin_galaxy, "QSO": self.bin_qso, "STAR": self.bin_star}[spectype]

    def describe(self) -> str:
        """A short text for the output header (ANNFITS)."""
        return (f"bin={self.bin_galaxy}/{self.bin_qso}/{self.bin_star} poly={self.n_poly}/{self.n_poly_coarse} pca={self.coarse_pca} "
                f"cand={self.n_candidates} walk<{self.walk_margin:g} prior={'on' if self.prior else 'off'} skip<{self.skip_below:g} "
                f"dchi2<{self.small_deltachi2:g}" + (" cal" if self.calibrated else "")
                + (f" stars=knn{self.stellar_k}" if self.stellar_k > 0 else "")
                + (f"+mix{self.stellar_mix}" if self.stellar_k > 0 and self.stellar_mix > 0 else "")
                + (f" sky={self.sky_window}/{self.sky_grow}/{self.sky_halfwidth}" if self.sky_window > 0 else "")
                + (f" spikes={self.spike_sigma:g}/{self.spike_delta_chi2:g}" if self.spike_sigma > 0 else ""))


# readers whose spectra are coadds of several exposures with cosmic rays rejected between them, and
# whose narrowest lines on the grid (DESI's z arm, R ≈ 4,100-5,100: σ ≈ 0.4 px unresolved) are as
# sharp as a two-pixel spike: the spike rule is off for them
NO_SPIKE_READERS = ("desi_coadd",)


def fit_settings(reader: str = "") -> FitSettings:
    """The fit's settings for spectra of a survey's `reader` (the store records it): the defaults,
    the spike rule off for NO_SPIKE_READERS."""
    return FitSettings(spike_sigma=0.0) if reader in NO_SPIKE_READERS else FitSettings()


@dataclass
class Candidate:
    spectype: str
    subtype: str
    z: float
    z_err: float
    chi2: float        # χ² at the refined minimum
    rchi2: float       # χ² per degree of freedom over the usable pixels
    at_edge: bool      # the minimum lies at the edge of the scanned range
    source: str        # 'scan', 'vit' (the ViT window's minimum) or 'coarse' (not refined)
    shift: float       # pixels
    coarse_chi2: float = np.nan


@lru_cache(maxsize=1)
def load_calibration(path: Path = CALIBRATION_PATH) -> dict:
    """{'scale': {class: [factor per z bin]}, 'floor_kms': {class: [km/s per z bin]},
    'z_edges': {class: [bin edges in fitted z]}, ...} from `annotate.fit.calibrate`."""
    return json.loads(Path(path).read_text())


def calibration_terms(calibration: dict, spectype: str, z: float) -> tuple[float, float]:
    """(scale, floor in km/s) of σ_z for a `spectype` solution at redshift z."""
    k = int(np.searchsorted(calibration["z_edges"][spectype], z, side="right"))
    return float(calibration["scale"][spectype][k]), float(calibration["floor_kms"][spectype][k])


def shift_to_z(shift, step: float = 1e-4):
    return 10.0 ** (np.asarray(shift, float) * step) - 1.0


def z_to_shift(z, step: float = 1e-4):
    return np.log10(1.0 + np.asarray(z, float)) / step
