"""Effects of real observations that the templates do not carry, for the simulator.

`Realism` switches them on in `draw_sample` (`SimulationSettings.realism`); every amplitude is
scaled by `strength` (1: the training set; above 1: a harder set for robustness tests), or, with
`strength_max`, by a strength drawn for each object uniformly between the two, so that one
training set holds clean and strongly affected spectra alike. Its random
draws come from their own stream, so a sample with and without them holds the same objects at the
same redshifts and S/N.

Instrument and sky (observed frame):
- spectrophotometric calibration error: a smooth multiplicative factor, exp of a Legendre series
  in log λ (orders 1-4), of RMS a few to ~20 % (SDSS: a few per cent, worse at the ends);
- sky: a continuum rising to the red plus the strong night-sky lines of SKY_LINES; it adds Poisson
  noise (so the noise is raised at the sky lines) and a subtraction residual at each line, a
  fraction of its flux plus a P Cygni-like term from a sub-pixel wavelength error;
- noise whose variance grows with object flux and sky, divided by a spectrograph throughput that
  falls at both ends (the blue below ~4000 Å, the CCDs' red cut-off) and dips at the dichroics
  where arms meet (SDSS/BOSS near 6000 Å, DESI near 5800 and 7570 Å), plus a read-noise floor;
- bad columns: masked stretches of 1 to 30 pixels inside the spectrum;
- another instrument's range: the blue start or the red end of the store grid not covered (SDSS-I/II
  3800-9200 Å, DESI 3600-9824 Å);
- cosmic-ray hits that the survey's pipeline left in the spectrum, its ivar unchanged
  (`cosmic_ray_probability`; 0 by default, so that training sets and the evaluations' figures
  stay as they were; `cosmic_rays`): 1-3 hits of 1-3 pixels each, peaks log-uniform over the
  spectrum's median noise.
Astrophysics (rest frame):
- dust: Calzetti et al. (2000, ApJ 533, 682) attenuation for galaxies (nebular lines attenuated
  by E(B-V)_gas = E(B-V)_stars / 0.44), the SMC-like curve A_λ / E(B-V) = 1.39 λ_µm^-1.2 for
  quasars (Hopkins et al. 2004, AJ 128, 1112);
- star-formation histories: light fractions of a delayed-τ history over the populations' ages with
  a random τ and start, and sometimes a recent burst, instead of a mix of two populations;
- star-forming continua (`star_forming_continuum`): a galaxy given nebular lines of EW(Hα) ≥ 3 Å
  (SF_EW_MIN_AA: the divide between galaxies ionised by young stars or an AGN and the retired ones
  that old stars ionise, Cid Fernandes et al. 2011, MNRAS 413, 1687) gets a history whose star
  formation goes on (delayed-τ with τ of 1-10 Gyr, SF_TAU_GYR, and no burst), over the populations
  of the set with ages below 1 Gyr that covers most of the observed range (what it lacks is
  masked), instead of a continuum drawn apart from its lines. Without it the galaxies' populations
  came from the set that covers the whole range, Maraston's, whose youngest are 3 Gyr old: 95 % of
  simulated galaxies had f_λ(4000-4500 Å) / f_λ(6500-7000 Å) below 1.1, while flux-limited
  surveys hold star-forming galaxies, the blue cloud, in numbers (Strateva et al. 2001, AJ 122,
  1861); the default model's eighth stage, trained so, classed 22 % of star-forming galaxies
  QSO (REALISM.md, README). Off by default, so that the recipes and model cards written before it
  simulate what they did;
- starbursts (`starburst_share`): that share of the galaxies given nebular lines have EW(Hα)
  drawn log-uniform in 150-1,000 Å (STARBURST_EW_AA) instead of 2-150 Å. Galaxies forming stars
  at that rate are rare but real: H II galaxies and blue compact dwarfs reach EW(Hα) of several
  hundred Å (Terlevich et al. 1991, A&AS 91, 285), the "green peas" 1,000 Å in [O III] 5007
  (Cardamone et al. 2009, MNRAS 399, 1191), and emission-line targets of the deep surveys (DESI's
  BGS and ELG samples) are chosen for such lines. Lines that strong come from stars a few Myr
  old: an instantaneous burst's EW(Hα) is about 1,000 Å at 3-5 Myr and falls below 100 Å by
  10 Myr (Leitherer et al. 1999, ApJS 123, 3, Starburst99). So with `star_forming_continuum` a
  starburst's continuum also holds a population of its young set at most 10 Myr old
  (STARBURST_AGE_GYR), whose share of the continuum at Hα is EW(Hα) / 1,000 Å
  (STARBURST_YOUNG_EW_AA), at most 0.9: a blue, nearly flat f_ν continuum. Drawn from a stream
  of its own (which, with the star-forming continua on, still shifts the other galaxies'
  histories: `starburst_rng`); off (0) by default, so that the recipes and model cards written
  before it simulate what they did;
- weak nebular lines (`weak_nebular_lines`): a galaxy given nebular lines also shows the weaker
  ones of star-forming galaxies that the simulator's line list lacked (spectra.WEAK_GALAXY_LINES:
  H8-H9 and Hε, He I 5876 and 6678, [Ne III] 3869 and 3968, [O I] 6300 and 6363, [Ar III] 7136,
  [O II] 7320 and 7330, [S III] 9069 and 9531), each at a typical ratio to Hα times the ratio draw
  of a stronger line (the high Balmer lines Hδ's, [Ne III] and [Ar III] [O III]'s, ...), so no
  random draw is added. A real blue star-forming
  galaxy (DESI tile 80613, REALISM.md section 4c) shows He I 5876 at 23σ and [Ne III] 3869 at 16σ;
  quasars' simulated narrow lines hold none of them either. Off by default, so that the recipes and
  model cards written before it simulate what they did;
- quasar diversity: a wider continuum slope, a width per broad line, and blueshifts of the
  high-ionisation lines (C IV and the lines near Lyα; Richards et al. 2011, AJ 141, 167 find
  C IV blueshifts from 0 to a few 1000 km/s);
- quasar line offsets (`qso_line_scatter`; `line_offsets`): each line family's peak moved from
  the systemic velocity by a zero-mean Gaussian of the intrinsic scatter Shen et al. (2016, ApJ
  831, 7) measured for it against host-galaxy absorption in 849 SDSS-RM quasars
  (QSO_LINE_SCATTER_KMS: broad Hβ 400 km/s, which Hα and Hγ share here, one draw for the three;
  C III] 233, Mg II 205, [O III] 56, [O II] 46), drawn from a stream of their own. Without them
  every line but the blueshifted high-ionisation ones sat at the systemic velocity, and the
  template fit's σ_z, calibrated on such quasars, claimed tens of km/s where broad-line redshifts
  are uncertain by hundreds. Off by default (0), as the cosmic rays are, so that the recipes and
  model cards written before them simulate what they did; the fit's σ_z calibration and
  evaluation switch them on (`annotate.fit.calibrate.QSO_LINE_SCATTER`), and a recipe may with
  `realism: {qso_line_scatter: 1}`.

Night-sky lines: the strongest lines of the Kitt Peak / Lick night sky (Osterbrock et al. 1996,
PASP 108, 277; 1997, PASP 109, 614), air wavelengths, with rough relative intensities; the OH
bands red of 6800 Å are thinned to their strongest lines and a rising pseudo-continuum stands
for the rest. Mercury lines (4358, 5461 Å) are street-light lines present at most sites.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from numpy.polynomial import legendre

from .. import SPEED_OF_LIGHT_KMS
from ..errors import ConfigError
from ..grid import WavelengthGrid, air_to_vacuum

# (air wavelength Å, relative intensity)
SKY_LINES = (
    (4358.34, 0.3), (5460.74, 0.4), (5577.34, 3.0), (5889.95, 1.0), (5895.92, 0.8), (6300.30, 1.5),
    (6363.78, 0.5), (6863.96, 0.6), (7276.41, 0.4), (7316.28, 0.9), (7340.89, 0.9), (7750.64, 0.8),
    (7794.11, 0.8), (7821.50, 0.6), (7913.71, 0.9), (7993.33, 1.0), (8344.60, 1.5), (8399.17, 1.2),
    (8430.17, 1.2), (8465.36, 1.0), (8827.10, 1.8), (8885.85, 1.6), (8919.63, 1.2), (8958.09, 1.6),
    (9001.11, 1.4), (9375.96, 1.5), (9439.67, 1.5), (9872.10, 1.2), (10013.0, 1.2), (10124.0, 1.0),
)
CALZETTI_RV = 4.05
GAS_TO_STARS_EBV = 1.0 / 0.44  # Calzetti et al. 2000: E(B-V)_stars = 0.44 E(B-V)_gas
HIGH_IONISATION = ("Lya", "NV", "SiIV+OIV]", "CIV")
# Shen et al. 2016, ApJ 831, 7 (abstract and Table 3): the intrinsic scatter (km/s) of each line's
# peak velocity about the systemic one once its mean shift is removed (for the Balmer lines, that
# of broad Hβ; Hα and Hγ sharing its draw is this model's assumption); the lines of a family share
# one draw. The high-ionisation lines keep their blueshift model (civ_blueshift_kms) instead.
QSO_LINE_SCATTER_KMS = {"CIII]": 233.0, "MgII": 205.0, "Balmer": 400.0, "[OIII]": 56.0, "[OII]": 46.0}
QSO_LINE_FAMILY = {"CIII]": "CIII]", "MgII": "MgII", "Hgamma": "Balmer", "Hbeta": "Balmer", "Halpha": "Balmer",
                   "[OIII]4959": "[OIII]", "[OIII]5007": "[OIII]", "[OII]3727": "[OII]"}
SF_EW_MIN_AA = 3.0          # EW(Hα) from which a galaxy's lines come from young stars or an AGN (WHAN, Cid Fernandes et al. 2011)
SF_TAU_GYR = (1.0, 10.0)    # τ of a star-forming galaxy's delayed-τ history (no burst): star formation that goes on today
SF_YOUNG_GYR = 1.0          # a star-forming galaxy's populations come from a set that holds ages below this
STARBURST_EW_AA = (150.0, 1000.0)  # log-uniform EW(Hα) of a starburst (`starburst_share`), above the 2-150 Å of the others
STARBURST_AGE_GYR = 0.01    # a starburst's continuum holds a population at most this old (with `star_forming_continuum`) ...
STARBURST_YOUNG_EW_AA = 1000.0  # ... whose share of the continuum at Hα is EW(Hα) / this, the EW(Hα) of such a population alone
STARBURST_MAX_SHARE = 0.9   # ... and at most this
DICHROICS_AA = ((5750.0, 6050.0), (7500.0, 7650.0))  # where blue/red (and red/near-IR) arms meet


# the effects whose amplitudes the strength multiplies, by group (`Realism.holding`): each field
# is such an amplitude, a number or the ends of the range it is drawn from
HOLD_GROUPS = {
    "calibration": ("calibration_rms",),
    "throughput": ("blue_throughput_loss", "red_throughput_loss", "dichroic_depth", "range_probability"),
    "sky": ("sky_to_object", "sky_residual", "sky_shift_pix"),
    "bad_columns": ("bad_column_probability",),
    "galaxy_dust": ("galaxy_ebv_mean",),
    "qso_dust": ("qso_ebv_mean",),
    "qso_lines": ("qso_width_scatter_dex", "civ_blueshift_kms", "qso_line_scatter"),
}


@dataclass(frozen=True)
class Realism:
    """Ranges of the effects (see the module docstring); all amplitudes times `strength`."""

    strength: float = 1.0
    strength_max: float | None = None      # each object's strength uniform in [strength, strength_max]
    calibration_rms: tuple = (0.02, 0.2)   # log-uniform RMS of the multiplicative calibration error
    sky_to_object: tuple = (0.01, 3.0)     # log-uniform sky continuum at 7000 Å / object median flux
    sky_line_scale: tuple = (8.0, 80.0)    # log-uniform flux of a line of intensity 1 / sky continuum per Å, × Å
    blue_throughput_loss: tuple = (0.3, 0.92)  # uniform loss at 3600 Å, fading over blue_scale_aa
    blue_scale_aa: tuple = (250.0, 900.0)
    red_throughput_loss: tuple = (0.2, 0.8)    # uniform loss at 10400 Å, fading over red_scale_aa
    red_scale_aa: tuple = (300.0, 1200.0)
    dichroic_depth: tuple = (0.0, 0.6)     # uniform depth of each throughput dip where arms meet
    range_probability: float = 0.3         # chance each of a blue start in 3600-3900 Å / a red end in 9200-10400 Å
    sky_residual: float = 0.02             # σ of the fractional residual left at each sky line
    sky_shift_pix: float = 0.1             # σ of the wavelength error of the sky model, pixels
    read_noise: float = 0.1                # noise floor, as a fraction of the object's median noise
    bad_column_probability: float = 0.3    # chance of 1-3 interior masked stretches (1-30 px, log-uniform)
    galaxy_ebv_mean: float = 0.15          # mean of the exponential E(B-V) of galaxies (stars)
    qso_ebv_mean: float = 0.03             # mean of the exponential E(B-V) of quasars
    sfh_probability: float = 0.7           # chance of a delayed-τ history instead of two populations
    burst_probability: float = 0.5         # chance of a recent burst on top of the history
    burst_light: tuple = (0.05, 5.0)       # log-uniform light of the burst / light of the history
    qso_slope_sigma: float = 0.5           # σ of α_ν (mean -0.5)
    qso_width_scatter_dex: float = 0.1     # scatter of each broad line's FWHM around the object's
    civ_blueshift_kms: tuple = (0.0, 2500.0)  # uniform blueshift of C IV (the lines near Lyα: half)
    qso_line_scatter: float = 0.0          # × QSO_LINE_SCATTER_KMS × strength: σ of each line family's offset (0, the default: none)
    star_forming_continuum: bool = False   # galaxies with EW(Hα) ≥ SF_EW_MIN_AA get an ongoing history (False, the default: as before)
    starburst_share: float = 0.0           # share of the galaxies with lines whose EW(Hα) is a starburst's (STARBURST_EW_AA; not × strength; 0, the default: none)
    weak_nebular_lines: bool = False       # galaxies with lines also get spectra.WEAK_GALAXY_LINES (False, the default: as before)
    cosmic_ray_probability: float = 0.0    # chance of 1-3 cosmic-ray hits left in the spectrum (not × strength)
    cosmic_ray_sigma: tuple = (10.0, 1000.0)    # log-uniform peak of a hit / the spectrum's median noise σ
    cosmic_ray_widths: tuple = (0.5, 0.35, 0.15)  # chances of a hit covering 1, 2 and 3 pixels

    def __post_init__(self):
        checked = {"strength": self.strength} if self.strength_max is None else \
            {"strength": self.strength, "strength_max": self.strength_max}
        for key, value in checked.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"realism {key} must be a number, got {value!r}")
        if not np.isfinite(self.strength) or self.strength < 0:
            raise ConfigError(f"realism strength must be >= 0, got {self.strength}")
        if self.strength_max is not None and not (np.isfinite(self.strength_max) and self.strength_max >= self.strength):
            raise ConfigError(f"realism strength_max must be a number >= strength ({self.strength:g}), "
                              f"got {self.strength_max}")
        if isinstance(self.qso_line_scatter, bool) or not isinstance(self.qso_line_scatter, numbers.Real) \
                or not 0.0 <= self.qso_line_scatter < np.inf:
            raise ConfigError(f"realism qso_line_scatter must be a number >= 0, got {self.qso_line_scatter!r}")
        if not isinstance(self.star_forming_continuum, bool):
            raise ConfigError(f"realism star_forming_continuum must be true or false, got {self.star_forming_continuum!r}")
        if not isinstance(self.weak_nebular_lines, bool):
            raise ConfigError(f"realism weak_nebular_lines must be true or false, got {self.weak_nebular_lines!r}")
        if isinstance(self.starburst_share, bool) or not isinstance(self.starburst_share, numbers.Real) \
                or not 0.0 <= self.starburst_share <= 1.0:
            raise ConfigError(f"realism starburst_share must be a number in [0, 1], got {self.starburst_share!r}")
        if not 0.0 <= self.cosmic_ray_probability <= 1.0:
            raise ConfigError(f"realism cosmic_ray_probability must lie in [0, 1], got {self.cosmic_ray_probability}")
        if len(self.cosmic_ray_sigma) != 2 or not 0 < self.cosmic_ray_sigma[0] <= self.cosmic_ray_sigma[1] < np.inf:
            raise ConfigError(f"realism cosmic_ray_sigma must be two numbers 0 < low <= high, got {self.cosmic_ray_sigma}")
        widths = np.asarray(self.cosmic_ray_widths, float)
        if widths.shape != (3,) or not (np.isfinite(widths).all() and (widths >= 0).all() and widths.sum() > 0):
            raise ConfigError("realism cosmic_ray_widths must be three chances >= 0 (of 1, 2 and 3 pixels), not all 0, "
                              f"got {self.cosmic_ray_widths}")

    @property
    def top(self) -> float:
        """The strongest strength any object gets."""
        return self.strength if self.strength_max is None else self.strength_max

    def strengths(self, n: int, seed: int) -> np.ndarray | None:
        """n objects' strengths for a sample drawn with `seed` (from a stream of their own, so the
        other draws are those of a fixed strength), or None where the strength is fixed."""
        if self.strength_max is None:
            return None
        return np.random.default_rng([seed, 0x57E4]).uniform(self.strength, self.strength_max, n)

    def holding(self, groups, strength: float) -> "Realism":
        """This realism (of a fixed strength) with the effects of `groups` (names of HOLD_GROUPS)
        as `strength` would give them and every other effect as before: which effects a harder
        set's losses come from (training/robustness_sets.py --hold)."""
        if self.strength_max is not None:
            raise ConfigError("only a realism of one strength can hold effects at another")
        unknown = sorted(set(groups) - set(HOLD_GROUPS))
        if unknown:
            raise ConfigError(f"unknown effect groups {unknown}; known: {sorted(HOLD_GROUPS)}")
        if self.strength <= 0 or not strength > 0:
            raise ConfigError(f"effects are held between strengths above 0, not {self.strength:g} and {strength:g}")
        factor = float(strength) / self.strength
        changes = {}
        for name in (field for group in groups for field in HOLD_GROUPS[group]):
            value = getattr(self, name)
            changes[name] = tuple(v * factor for v in value) if isinstance(value, tuple) else value * factor
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, spec: dict | float | None) -> "Realism | None":
        """A recipe's `realism:` value: a mapping of fields, a bare strength, or nothing."""
        if spec is None or spec is False:
            return None
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(strength=float(spec))
        if spec is True:
            return cls()
        if not isinstance(spec, dict):
            raise ConfigError(f"realism must be a mapping or a strength, got {spec!r}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown realism keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in spec.items()})


def realism_rng(seed: int) -> np.random.Generator:
    """The effects' own stream for a sample drawn with `seed`."""
    return np.random.default_rng([int(seed), 0x5EA1])


def calzetti_k(rest_wave_aa: np.ndarray) -> np.ndarray:
    """Calzetti et al. (2000) k(λ) = A_λ / E(B-V)_stars, eqs. 4 (0.12-0.63 µm) and 3 (0.63-2.2 µm),
    continued flat below 0.12 µm."""
    lam = np.clip(rest_wave_aa / 1e4, 0.12, 2.2)
    blue = 2.659 * (-2.156 + 1.509 / lam - 0.198 / lam**2 + 0.011 / lam**3) + CALZETTI_RV
    red = 2.659 * (-1.857 + 1.040 / lam) + CALZETTI_RV
    return np.where(lam < 0.63, blue, red)


def smc_k(rest_wave_aa: np.ndarray) -> np.ndarray:
    """SMC-like A_λ / E(B-V) = 1.39 λ_µm^-1.2 (Hopkins et al. 2004)."""
    return 1.39 * (np.clip(rest_wave_aa, 900.0, None) / 1e4) ** -1.2


def attenuate(rest_wave_aa: np.ndarray, flux: np.ndarray, ebv: float, curve) -> np.ndarray:
    return flux * 10.0 ** (-0.4 * ebv * curve(rest_wave_aa))


def delayed_tau_weights(age_gyr: np.ndarray, rng: np.random.Generator, burst_probability: float = 0.5,
                        burst_light: tuple = (0.05, 5.0), tau_gyr: tuple = (0.2, 10.0)) -> np.ndarray:
    """Light fractions (n,) over populations of ages `age_gyr`: a delayed-τ star-formation rate
    t exp(-t/τ) since a random start, τ log-uniform in `tau_gyr`, integrated over each
    population's age bin, and with `burst_probability` a burst in the youngest quarter of the ages
    whose light is a log-uniform `burst_light` times the history's. Ages need not be sorted."""
    ages = np.asarray(age_gyr, float)
    order = np.argsort(ages)
    sorted_ages = ages[order]
    edges = np.concatenate([[0.0], 0.5 * (sorted_ages[1:] + sorted_ages[:-1]), [sorted_ages[-1] * 1.2 + 0.1]])
    start = rng.uniform(0.3, 1.0) * edges[-1]  # lookback time at which star formation began
    tau = np.exp(rng.uniform(*np.log(tau_gyr)))
    lookback = np.linspace(0.0, edges[-1], 400)
    t = np.clip(start - lookback, 0.0, None)
    sfr = t * np.exp(-t / tau)
    mass = np.array([sfr[(lookback >= lo) & (lookback < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    light = mass / np.maximum(sorted_ages, 0.01) ** 0.8  # young populations outshine old per unit mass
    if rng.random() < burst_probability:
        young = max(1, len(ages) // 4)
        light[rng.integers(0, young)] += np.exp(rng.uniform(*np.log(burst_light))) * max(light.sum(), 1e-12)
    if light.sum() <= 0:
        light[-1] = 1.0
    weights = np.empty_like(light)
    weights[order] = light / light.sum()
    return weights


def sky_line_centres(grid: WavelengthGrid) -> np.ndarray:
    """(len(SKY_LINES),) the fractional pixel of `grid` at each line's vacuum wavelength."""
    vacuum = air_to_vacuum(np.array([air for air, _ in SKY_LINES], dtype=np.float64))
    return (np.log10(vacuum) - grid.loglam_start) / grid.loglam_step


@lru_cache(maxsize=8)
def sky_model(grid: WavelengthGrid, resolution_sigma_kms: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(continuum, lines, d lines / d pixel) on `grid` for a sky continuum of 1 per Å at 7000 Å: a
    continuum rising to the red (the unresolved OH bands) and the lines of SKY_LINES at the
    instrument's resolution."""
    wave = grid.wavelength
    continuum = np.where(wave < 6800.0, (wave / 7000.0) ** 0.5,
                         (6800.0 / 7000.0) ** 0.5 * (1.0 + 1.5 * (np.clip(wave - 6800.0, 0.0, None) / 3600.0) ** 1.5))
    pixel = np.arange(grid.n_pix, dtype=float)
    lines = np.zeros(grid.n_pix)
    sigma_pix = resolution_sigma_kms / (SPEED_OF_LIGHT_KMS * np.log(10.0) * grid.loglam_step)
    for (air, intensity), centre in zip(SKY_LINES, sky_line_centres(grid)):
        if -5 * sigma_pix < centre < grid.n_pix + 5 * sigma_pix:
            sigma_aa = air * resolution_sigma_kms / SPEED_OF_LIGHT_KMS
            profile = np.exp(-0.5 * ((pixel - centre) / sigma_pix) ** 2) / (np.sqrt(2 * np.pi) * sigma_aa)
            lines += intensity * profile
    derivative = np.gradient(lines)
    for array in (continuum, lines, derivative):
        array.setflags(write=False)
    return continuum, lines, derivative


def calibration_error(grid: WavelengthGrid, rms: float, rng: np.random.Generator) -> np.ndarray:
    """(n_pix,) smooth factor exp(Σ a_k P_k(x)), k = 1..4, x = log λ mapped onto [-1, 1], with RMS of
    the exponent ≈ `rms` (power falling with order)."""
    x = np.linspace(-1.0, 1.0, grid.n_pix)
    coefficients = np.concatenate([[0.0], rng.normal(0.0, 1.0, 4) / np.arange(1, 5)])
    shape = legendre.legval(x, coefficients)
    spread = shape.std()
    return np.exp(shape * (rms / spread if spread > 0 else 0.0))


def bad_columns(n_pix: int, rng: np.random.Generator, probability: float) -> np.ndarray:
    """(n_pix,) bool: with `probability`, 1-3 masked stretches of 1-30 pixels (log-uniform) anywhere."""
    mask = np.zeros(n_pix, bool)
    if rng.random() < min(probability, 1.0):
        for _ in range(rng.integers(1, 4)):
            length = int(np.exp(rng.uniform(0.0, np.log(31.0))))
            start = int(rng.integers(0, max(1, n_pix - length)))
            mask[start:start + length] = True
    return mask


def star_forming_rng(seed: int) -> np.random.Generator:
    """The star-forming continua's own stream for a sample drawn with `seed` (`star_forming_continuum`):
    turning them on changes no other object's draws, save for the cosmic-ray hits where those are
    on too (`cosmic_rays` draws over each spectrum's usable pixels, and a star-forming galaxy's
    coverage is its young set's)."""
    return np.random.default_rng([int(seed), 0x5F0A])


def halpha_equivalent_width(rest_wave: np.ndarray, flux: np.ndarray) -> float:
    """Rest-frame EW (Å, emission positive) of the flux above the continuum within ±10 Å of Hα,
    the continuum the median of 6,460-6,530 and 6,600-6,680 Å (clear of [N II] and [S II]); NaN
    pixels are left out (within ±10 Å they add nothing, so a gap there lowers the EW); NaN where
    the continuum windows or the line window have no pixel, or the continuum is not above 0. How
    REALISM.md compares the simulated galaxies' lines with real ones."""
    rest_wave, flux = np.asarray(rest_wave, float), np.asarray(flux, float)
    side = ((rest_wave > 6460) & (rest_wave < 6530)) | ((rest_wave > 6600) & (rest_wave < 6680))
    window = np.abs(rest_wave - 6564.61) < 10.0
    if not (np.isfinite(flux[side]).any() and np.isfinite(flux[window]).any()):
        return float("nan")
    continuum = np.nanmedian(flux[side])
    if not continuum > 0:
        return float("nan")
    return float(np.nansum(((flux - continuum) / continuum * np.gradient(rest_wave))[window]))


def starburst_rng(seed: int) -> np.random.Generator:
    """The starbursts' own stream for a sample drawn with `seed` (`starburst_share`): drawn from
    only where the share is above 0, so that with it at 0 every draw is as before. With
    `star_forming_continuum` on as well, the share also changes other galaxies' continua (not
    their class, z or lines): a starburst drawn from a galaxy whose EW(Hα) was below SF_EW_MIN_AA
    becomes star-forming and draws from `star_forming_rng`, so every later star-forming galaxy's
    history is drawn anew; and a starburst's young population is drawn from this stream, so which
    galaxies become starbursts then depends on that setting too."""
    return np.random.default_rng([int(seed), 0x5B5A])


def line_offset_rng(seed: int) -> np.random.Generator:
    """The quasar line offsets' own stream for a sample drawn with `seed` (the other draws stay as
    they are)."""
    return np.random.default_rng([int(seed), 0x0FF5E7])


def line_offsets(realism: Realism, rng: np.random.Generator) -> dict:
    """Line name -> velocity offset (km/s, positive: redshifted) of one quasar's lines: one
    zero-mean Gaussian draw per family of QSO_LINE_FAMILY, σ = QSO_LINE_SCATTER_KMS ×
    `qso_line_scatter` × strength. Lines of no family are not in it."""
    sigma = realism.qso_line_scatter * realism.strength
    family = {name: rng.normal(0.0, QSO_LINE_SCATTER_KMS[name] * sigma) for name in QSO_LINE_SCATTER_KMS}
    return {line: float(family[name]) for line, name in QSO_LINE_FAMILY.items()}


def cosmic_ray_rng(seed: int) -> np.random.Generator:
    """The cosmic rays' own stream for a sample drawn with `seed` (the other draws stay as they are)."""
    return np.random.default_rng([int(seed), 0xC05A1C])


def cosmic_rays(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, realism: Realism,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hits added to `flux` at usable pixels (`good`), ivar untouched: with
    `cosmic_ray_probability`, 1-3 hits, each covering 1, 2 or 3 adjacent pixels
    (`cosmic_ray_widths`) with a peak of `cosmic_ray_sigma` (log-uniform) times the spectrum's
    median noise σ on one of its pixels and 0.3-1 times that on the others.

    Returns (flux, hits): a new array and (n_pix,) bool, the pixels hit."""
    hits = np.zeros(flux.shape, bool)
    if realism.cosmic_ray_probability <= 0 or rng.random() >= realism.cosmic_ray_probability:
        return flux, hits
    usable = np.flatnonzero(good & (ivar > 0))
    if len(usable) < 10:
        return flux, hits
    sigma = float(np.median(1.0 / np.sqrt(ivar[usable])))
    flux = np.array(flux, copy=True)
    widths = np.asarray(realism.cosmic_ray_widths, float)
    for _ in range(rng.integers(1, 4)):
        width = int(rng.choice(len(widths), p=widths / widths.sum())) + 1
        start = int(rng.choice(usable))
        pixels = np.arange(start, min(start + width, len(flux)))
        pixels = pixels[good[pixels]]          # a hit running into a masked pixel is lost there
        peak = np.exp(rng.uniform(*np.log(realism.cosmic_ray_sigma))) * sigma
        share = rng.uniform(0.3, 1.0, len(pixels))
        share[rng.integers(len(pixels))] = 1.0
        flux[pixels] += peak * share
        hits[pixels] = True
    return flux, hits


def throughput(grid: WavelengthGrid, realism: Realism, rng: np.random.Generator) -> np.ndarray:
    """(n_pix,) relative spectrograph throughput in (0, 1]: losses at the blue and red ends that
    fade over a few hundred Å, and a Gaussian dip at each dichroic; all amplitudes × strength."""
    wave = grid.wavelength
    s = realism.strength
    blue = min(rng.uniform(*realism.blue_throughput_loss) * s, 0.97)
    red = min(rng.uniform(*realism.red_throughput_loss) * s, 0.97)
    t = (1.0 - blue * np.exp(-(wave - wave[0]) / rng.uniform(*realism.blue_scale_aa)))
    t *= (1.0 - red * np.exp(-(wave[-1] - wave) / rng.uniform(*realism.red_scale_aa)))
    for lo, hi in DICHROICS_AA:
        depth = min(rng.uniform(*realism.dichroic_depth) * s, 0.9)
        t *= 1.0 - depth * np.exp(-0.5 * ((wave - rng.uniform(lo, hi)) / rng.uniform(20.0, 60.0)) ** 2)
    return np.clip(t, 0.02, 1.0)


def instrument_range(grid: WavelengthGrid, realism: Realism, rng: np.random.Generator) -> np.ndarray:
    """(n_pix,) bool, True outside another instrument's range: with `range_probability` each, a
    blue start uniform in 3600-3900 Å and a red end uniform in 9200-10400 Å."""
    wave = grid.wavelength
    outside = np.zeros(grid.n_pix, bool)
    p = min(realism.range_probability * realism.strength, 1.0)
    if rng.random() < p:
        outside |= wave < rng.uniform(3600.0, 3900.0)
    if rng.random() < p:
        outside |= wave > rng.uniform(9200.0, 10400.0)
    return outside


def observe_with_sky(flux: np.ndarray, good: np.ndarray, grid: WavelengthGrid, snr: float, flux_level: float,
                     realism: Realism, resolution_sigma_kms: float, rng: np.random.Generator,
                     noise_rng: np.random.Generator):
    """Calibration error, sky, sky residuals and flux- and sky-dependent noise for a spectrum
    already on `grid` and scaled to median `flux_level` (`good`: pixels with template data).
    The noise is scaled so that the median S/N per pixel over the good pixels is `snr`.

    Returns (noisy flux, ivar) as float64 on the grid (zero where not good)."""
    s = realism.strength
    rms = np.exp(rng.uniform(*np.log(realism.calibration_rms))) * s
    flux = flux * calibration_error(grid, rms, rng)
    continuum, lines, derivative = sky_model(grid, resolution_sigma_kms)
    sky_level = flux_level * np.exp(rng.uniform(*np.log(realism.sky_to_object))) * max(s, 1e-3)
    line_scale = np.exp(rng.uniform(*np.log(realism.sky_line_scale)))
    sky = sky_level * (continuum + line_scale * lines)
    # counts-like variance: (object + sky) / throughput + a read-noise floor, in units fixed by the
    # target S/N (counts are flux × throughput; their Poisson σ in flux units is √(counts) / throughput)
    shape = (np.abs(flux) + sky) / throughput(grid, realism, rng)
    reference = np.median(shape[good]) if good.any() else 1.0
    variance_shape = shape + (realism.read_noise * reference)
    relative_sigma = np.sqrt(variance_shape)
    ratio = np.abs(flux[good]) / relative_sigma[good]
    scale = np.median(ratio) / snr if good.any() and np.median(ratio) > 0 else flux_level / snr
    sigma = relative_sigma * scale
    line_flux = sky_level * line_scale
    residual = line_flux * (rng.normal(0.0, realism.sky_residual * s) * lines
                            + rng.normal(0.0, realism.sky_shift_pix * s) * derivative)
    noisy = flux + residual + noise_rng.normal(0.0, 1.0, flux.shape) * sigma
    ivar = np.where(good, 1.0 / sigma**2, 0.0)
    return np.where(good, noisy, 0.0), ivar
