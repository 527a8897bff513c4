"""Observed spectra from rest-frame templates: redshift, broaden, resample, add noise.

Pure numpy. Stars are MILES stars (Doppler-shifted by a radial velocity); galaxies are mixtures
of two stellar-population templates plus nebular emission lines; quasars are a power law with broad
emission lines and Lyman-alpha forest absorption (no quasar template is used; see QSO_LINES).

Line lists (vacuum rest wavelengths, Å):
- QSO_LINES: Vanden Berk et al. 2001, AJ 122, 549, Table 2 (composite SDSS quasar): rest
  equivalent widths of the strongest broad lines, rounded.
- GALAXY_LINES: the SDSS spectro1d line list (vacuum), with typical H II region line ratios.
- WEAK_GALAXY_LINES: the weaker nebular lines of star-forming galaxies that list lacks
  (`Realism.weak_nebular_lines`; see there).
Lyman-alpha forest mean optical depth: τ_eff(z) = 0.0018 (1 + z)^3.92, Faucher-Giguère et al.
2008, ApJ 681, 831; fluctuations are log-normal per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from ..grid import WavelengthGrid, air_to_vacuum, resample
from .realism import (HIGH_IONISATION, GAS_TO_STARS_EBV, Realism, attenuate, bad_columns, calzetti_k,
                      cosmic_ray_rng, cosmic_rays, delayed_tau_weights, instrument_range, line_offset_rng,
                      SF_EW_MIN_AA, SF_TAU_GYR, SF_YOUNG_GYR, STARBURST_AGE_GYR, STARBURST_EW_AA, STARBURST_MAX_SHARE,
                      STARBURST_YOUNG_EW_AA, star_forming_rng, starburst_rng,
                      line_offsets, observe_with_sky, realism_rng, smc_k)
from .templates import TemplateLibrary

LN10 = np.log(10.0)
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

# (name, rest wavelength Å, rest equivalent width Å)
QSO_LINES = (
    ("Lya", 1215.67, 93.0), ("NV", 1240.81, 10.0), ("SiIV+OIV]", 1399.8, 8.1),
    ("CIV", 1549.06, 23.8), ("CIII]", 1908.73, 21.2), ("MgII", 2798.75, 32.3),
    ("Hgamma", 4341.68, 12.6), ("Hbeta", 4862.68, 46.2), ("Halpha", 6564.61, 194.5),
)
QSO_NARROW = (("[OIII]4959", 4960.30, 3.5), ("[OIII]5007", 5008.24, 13.8), ("[OII]3727", 3728.48, 1.6))
# (name, rest wavelength Å, flux relative to H-alpha)
GALAXY_LINES = (
    ("[OII]3726", 3727.09, 0.35), ("[OII]3729", 3729.88, 0.45), ("Hdelta", 4102.89, 0.09),
    ("Hgamma", 4341.68, 0.16), ("Hbeta", 4862.68, 0.35), ("[OIII]4959", 4960.30, 0.12),
    ("[OIII]5007", 5008.24, 0.36), ("[NII]6548", 6549.86, 0.12), ("Halpha", 6564.61, 1.0),
    ("[NII]6584", 6585.27, 0.35), ("[SII]6717", 6718.29, 0.2), ("[SII]6731", 6732.67, 0.15),
)
# (name, vacuum rest wavelength Å, flux relative to H-alpha, the GALAXY_LINES line whose ratio
# draw it shares): the weaker lines a star-forming galaxy's spectrum shows beside GALAXY_LINES
# (`Realism.weak_nebular_lines`). Hydrogen at Case B (T 10^4 K: H9, H8, Hε 0.073, 0.105, 0.159
# of Hβ; Osterbrock & Ferland 2006, Astrophysics of Gaseous Nebulae, Table 4.4), He I 5876 and
# 6678 at about 0.11 and 0.03 of Hβ (He I 3889 adds about 0.1 of Hβ to H8), the forbidden lines
# at ratios typical of H II regions: [Ne III] 3869 a tenth of [O III] 5007 (its ionisation
# follows O++), [Ar III] 7136 about 0.08 of Hβ, [O I] 6300 3 % of Hα, [O II] 7320+7330 about
# 0.04 of Hβ, [S III] 9069 8 % of Hα; the doublets' second members at their atomic ratios
# ([Ne III] 3968 / 3869 0.31, [O I] 6363 / 6300 0.32, [S III] 9531 / 9069 2.5). Each takes the
# ratio draw of the GALAXY_LINES line named beside it: the high Balmer lines Hδ's (the series stays
# smooth), He I Hα's (1), [Ne III] and [Ar III] [O III]'s (both doubly ionised), [O I] and [S III]
# those of [S II] (the neutral and the sulphur lines), [O II] 7320-7330 that of [O II] 3729.
WEAK_GALAXY_LINES = tuple((name, round(float(air_to_vacuum(np.float64(air))), 2), ratio, tied) for name, air, ratio, tied in (
    ("H9", 3835.38, 0.026, "Hdelta"), ("[NeIII]3869", 3868.76, 0.036, "[OIII]5007"),
    ("H8+HeI3889", 3889.05, 0.07, "Hdelta"), ("[NeIII]3968", 3967.47, 0.011, "[OIII]5007"),
    ("Hepsilon", 3970.07, 0.056, "Hdelta"), ("HeI5876", 5875.62, 0.038, "Halpha"),
    ("[OI]6300", 6300.30, 0.03, "[SII]6717"), ("[OI]6363", 6363.78, 0.0096, "[SII]6717"),
    ("HeI6678", 6678.15, 0.0105, "Halpha"), ("[ArIII]7136", 7135.79, 0.028, "[OIII]5007"),
    ("[OII]7320", 7319.99, 0.008, "[OII]3729"), ("[OII]7330", 7330.73, 0.007, "[OII]3729"),
    ("[SIII]9069", 9068.6, 0.08, "[SII]6731"), ("[SIII]9531", 9530.6, 0.2, "[SII]6731"),
))
GALAXY_LINE_INDEX = {name: i for i, (name, _, _) in enumerate(GALAXY_LINES)}
LYA = 1215.67
BLEND_NEIGHBOURS = 5
LYMAN_LIMIT = 911.75


@dataclass(frozen=True)
class SimulationSettings:
    """Distributions of the synthetic sample. Redshifts are uniform in the ranges; S/N (median per
    pixel) and flux level (median, 1e-17 erg/s/cm²/Å) log-uniform; instrument resolution as a
    Gaussian σ in km/s (SDSS/BOSS: about one 69 km/s pixel).

    low_z_fraction: the share of galaxies whose z is drawn from `z_galaxy_low` instead of
    `z_galaxy` (0: none; the draws of a sample without it are unchanged). Uniform z over 0-0.7
    puts 0.7 % of galaxies below z 0.005, where an absorption-line galaxy differs from a G/K star
    at rest only by its velocity dispersion and its few hundred km/s of recession.

    star_blend_probability: the share of stars that are a blend of the drawn MILES star and one of
    its BLEND_NEIGHBOURS nearest stars of the sample (`star_neighbours`), weight up to
    `star_blend_max` on the neighbour, labels blended alike (0: none; the draws of a sample
    without it are unchanged). The library has one spectrum per star; blends fill the label space
    between neighbouring stars, as the local interpolation of empirical libraries does (e.g.
    Vazdekis et al. 2010's MILES interpolator), so that a model learns Teff, log g and [Fe/H]
    as continuous quantities and not as the ~840 label triples of the training stars."""

    class_fractions: tuple = (0.4, 0.25, 0.35)
    z_galaxy: tuple = (0.0, 0.7)
    low_z_fraction: float = 0.0
    z_galaxy_low: tuple = (0.0, 0.02)
    z_qso: tuple = (0.1, 4.0)
    star_rv_sigma_kms: float = 80.0
    snr: tuple = (1.5, 60.0)
    flux_level: tuple = (1.0, 50.0)
    resolution_sigma_kms: float = 69.0
    edge_mask_probability: float = 0.15
    blue_mask_probability: float = 0.4
    observed_range_aa: tuple = (3600.0, 10400.0)
    star_blend_probability: float = 0.0
    star_blend_max: float = 0.5
    realism: Realism | None = None  # sky, calibration, dust, histories, quasar diversity (realism.py)


def loguniform(rng: np.random.Generator, low: float, high: float, size=None):
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def gaussian_kernel(sigma_pix: float) -> np.ndarray:
    half = max(1, int(np.ceil(4.0 * sigma_pix)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma_pix) ** 2)
    return kernel / kernel.sum()


def broaden(flux: np.ndarray, sigma_kms: float, loglam_step: float) -> np.ndarray:
    """Convolve a log-linear spectrum (n,), or each row of (rows, n), with a Gaussian of
    σ = sigma_kms; NaN pixels stay NaN (they are filled with the nearest valid value for the
    convolution only). Rows are broadened one by one."""
    if flux.ndim == 2:
        return np.array([broaden(row, sigma_kms, loglam_step) for row in flux]).reshape(flux.shape)
    if sigma_kms <= 0:
        return flux
    sigma_pix = sigma_kms / (SPEED_OF_LIGHT_KMS * LN10 * loglam_step)
    if sigma_pix < 0.3:
        return flux
    valid = np.isfinite(flux)
    if not valid.any():
        return flux
    idx = np.where(valid, np.arange(flux.size), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = flux[idx]
    first = np.argmax(valid)
    filled[:first] = flux[first]
    kernel = gaussian_kernel(sigma_pix)
    padded = np.pad(filled, len(kernel) // 2, mode="edge")
    out = np.convolve(padded, kernel, mode="valid")
    out[~valid] = np.nan
    return out


def add_lines(loglam: np.ndarray, flux: np.ndarray, lines, amplitudes, sigma_kms: float) -> np.ndarray:
    """Add Gaussian lines (integrated flux `amplitudes`, same unit × Å) at rest wavelengths."""
    wave = 10.0**loglam
    out = flux.copy()
    for (_, centre, _), amplitude in zip(lines, amplitudes):
        sigma_aa = centre * sigma_kms / SPEED_OF_LIGHT_KMS
        near = np.abs(wave - centre) < 6 * sigma_aa
        if near.any():
            out[near] += amplitude / (np.sqrt(2 * np.pi) * sigma_aa) * np.exp(-0.5 * ((wave[near] - centre) / sigma_aa) ** 2)
    return out


def star_rest(lib: TemplateLibrary, index: int, rng: np.random.Generator, settings: SimulationSettings,
              blend: tuple[int, float] | None = None):
    """(rest loglam, rest flux, z, labels) for MILES star `index` with a random radial velocity.
    blend: (another star, its weight w): the spectrum is (1 - w) × this star's plus w × the
    other's, each scaled to a median of 1, and Teff, log g and [Fe/H] are blended alike; its template
    name is both names joined by ' & '."""
    velocity = rng.normal(0.0, settings.star_rv_sigma_kms)
    z = np.sqrt((1 + velocity / SPEED_OF_LIGHT_KMS) / (1 - velocity / SPEED_OF_LIGHT_KMS)) - 1
    flux = lib.star_flux[index].astype(np.float64)
    teff, logg, feh = lib.star_teff[index], lib.star_logg[index], lib.star_feh[index]
    name = str(lib.star_name[index])
    if blend is not None:
        other, weight = blend
        second = lib.star_flux[other].astype(np.float64)
        flux = (1.0 - weight) * flux / np.nanmedian(flux) + weight * second / np.nanmedian(second)
        teff = (1.0 - weight) * teff + weight * lib.star_teff[other]
        logg = (1.0 - weight) * logg + weight * lib.star_logg[other]
        feh = (1.0 - weight) * feh + weight * lib.star_feh[other]
        name = f"{name} & {lib.star_name[other]}"
    template_sigma = lib.star_fwhm_aa * FWHM_TO_SIGMA / 5000.0 * SPEED_OF_LIGHT_KMS
    extra = np.sqrt(max(settings.resolution_sigma_kms**2 - template_sigma**2, 0.0))
    flux = broaden(flux, extra, lib.star_loglam[1] - lib.star_loglam[0])
    labels = {"teff": teff, "logg": logg, "feh": feh, "template": name}
    return lib.star_loglam, flux, z, labels


def star_neighbours(lib: TemplateLibrary, indices: np.ndarray, k: int = BLEND_NEIGHBOURS) -> dict:
    """{star: its k nearest other stars} among `indices`, for the stars with all three labels, in
    (log10 Teff, log g, [Fe/H]) each divided by its spread over those stars. Stars of `indices`
    only: a sample's blends never reach a star it may not use (the held-out ones)."""
    indices = np.asarray(indices)
    labelled = indices[np.isfinite(lib.star_teff[indices]) & np.isfinite(lib.star_logg[indices])
                       & np.isfinite(lib.star_feh[indices])]
    if len(labelled) <= k:
        return {}
    x = np.stack([np.log10(lib.star_teff[labelled]), lib.star_logg[labelled], lib.star_feh[labelled]], axis=1)
    x = x / x.std(axis=0)
    distance = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, :k]
    return {int(star): labelled[row] for star, row in zip(labelled, nearest)}


def galaxy_rest(lib: TemplateLibrary, rng: np.random.Generator, settings: SimulationSettings,
                extra_rng: np.random.Generator | None = None, sf_rng: np.random.Generator | None = None,
                burst_rng: np.random.Generator | None = None):
    """(rest loglam, rest flux, z, labels): two SSPs, velocity dispersion, nebular lines. With
    `settings.realism` (and `extra_rng`, its stream) often a delayed-τ history over one set's
    populations instead, and Calzetti dust on the stars and, more strongly, on the lines; with its
    `star_forming_continuum` (and `sf_rng`, its stream), a galaxy whose lines reach EW(Hα) ≥
    SF_EW_MIN_AA gets a history of ongoing star formation instead (`rng`'s and `extra_rng`'s draws
    are the same either way); with its `starburst_share` (and `burst_rng`, its stream), that share
    of the galaxies with lines get a starburst's EW(Hα) (STARBURST_EW_AA) before that choice."""
    low = settings.low_z_fraction > 0 and rng.random() < settings.low_z_fraction
    z = rng.uniform(*(settings.z_galaxy_low if low else settings.z_galaxy))
    # populations that cover the rest-frame range observed at this z, as far as any does (the
    # MaNGA sets start at 3000-3622 Å, so at higher z the blue end stays masked)
    blue_end = np.log10(settings.observed_range_aa[0] / (1.0 + z))
    red_end = np.log10(settings.observed_range_aa[1] / (1.0 + z))
    missing = (np.clip(lib.gal_first_loglam - blue_end, 0, None) + np.clip(red_end - lib.gal_last_loglam, 0, None))
    usable = np.flatnonzero(missing <= missing.min() + 0.005)  # within 50 pixels of the best
    old, young = rng.choice(usable, size=2)
    weight = rng.uniform(0.0, 0.6) if rng.random() < 0.6 else 0.0
    flux = (1 - weight) * lib.gal_flux[old].astype(np.float64) + weight * lib.gal_flux[young]
    used = [old, young]
    label = f"{lib.gal_set[old]}+{lib.gal_set[young]}"
    realism = settings.realism if extra_rng is not None else None
    if realism is not None and extra_rng.random() < realism.sfh_probability:
        members = usable[lib.gal_set[usable] == lib.gal_set[old]]
        weights = delayed_tau_weights(lib.gal_age_gyr[members], extra_rng, realism.burst_probability,
                                      realism.burst_light)
        flux = weights @ lib.gal_flux[members].astype(np.float64)
        used = list(members[weights > 0])
        label = f"{lib.gal_set[old]}:tau"
    step = lib.gal_loglam[1] - lib.gal_loglam[0]
    dispersion = rng.uniform(60.0, 300.0)
    wave = 10.0**lib.gal_loglam
    near_ha = np.abs(wave - 6564.61) < 50   # where a continuum at Hα is read
    ebv = extra_rng.exponential(realism.galaxy_ebv_mean * realism.strength) if realism is not None else 0.0
    star_forming = rng.random() < 0.55  # emission lines scaled to a random H-alpha EW
    ew_halpha = loguniform(rng, 2.0, 150.0) if star_forming else 0.0
    starburst = False
    if (star_forming and realism is not None and burst_rng is not None and realism.starburst_share > 0
            and burst_rng.random() < realism.starburst_share):
        ew_halpha = float(loguniform(burst_rng, *STARBURST_EW_AA))
        starburst = True
    if (star_forming and realism is not None and sf_rng is not None and realism.star_forming_continuum
            and ew_halpha >= SF_EW_MIN_AA):
        # the set with young populations that covers most of the range (the best-covering set,
        # Maraston's, starts at 3 Gyr): what it lacks stays without data, masked when observed
        young_sets = [name for name in np.unique(lib.gal_set) if lib.gal_age_gyr[lib.gal_set == name].min() < SF_YOUNG_GYR]
        if young_sets:
            sf_set = min(young_sets, key=lambda name: missing[lib.gal_set == name].min())
            members_sf = np.flatnonzero(lib.gal_set == sf_set)
            weights = delayed_tau_weights(lib.gal_age_gyr[members_sf], sf_rng, 0.0, realism.burst_light, SF_TAU_GYR)
            flux, used = weights @ lib.gal_flux[members_sf].astype(np.float64), list(members_sf[weights > 0])
            label = f"{sf_set}:sf"
            young = members_sf[lib.gal_age_gyr[members_sf] <= STARBURST_AGE_GYR] if starburst else []
            if len(young):
                # lines this strong come from stars a few Myr old: a population of the set at most
                # STARBURST_AGE_GYR old gives the share of the continuum at Hα the EW asks for
                chosen = int(burst_rng.choice(young))
                burst = lib.gal_flux[chosen].astype(np.float64)
                share = min(ew_halpha / STARBURST_YOUNG_EW_AA, STARBURST_MAX_SHARE)
                flux = (1 - share) * flux / np.nanmedian(flux[near_ha]) + share * burst / np.nanmedian(burst[near_ha])
                used.append(chosen)
    template_sigma = float(np.max(lib.gal_sigma_kms[used]))
    extra = np.sqrt(max(dispersion**2 + settings.resolution_sigma_kms**2 - template_sigma**2, 0.0))
    flux = broaden(flux, extra, step)
    if ebv > 0:
        flux = attenuate(wave, flux, ebv, calzetti_k)
    if star_forming:
        continuum = np.nanmedian(flux[near_ha]) if np.isfinite(flux[near_ha]).any() else np.nanmedian(flux)
        scatter = loguniform(rng, 0.5, 2.0, len(GALAXY_LINES))
        scatter[GALAXY_LINE_INDEX["Halpha"]] = 1.0   # the lines are scaled to Hα's EW
        ratios = np.array([ratio for _, _, ratio in GALAXY_LINES]) * scatter
        lines = GALAXY_LINES
        if realism is not None and realism.weak_nebular_lines:  # no draws of their own: each follows a line's
            lines = GALAXY_LINES + tuple((name, centre, ratio) for name, centre, ratio, _ in WEAK_GALAXY_LINES)
            ratios = np.concatenate([ratios, [ratio * scatter[GALAXY_LINE_INDEX[tied]] for _, _, ratio, tied in WEAK_GALAXY_LINES]])
        if ebv > 0:  # the lines see E(B-V)_gas = E(B-V)_stars / 0.44; relative to H-alpha
            centres = np.array([c for _, c, _ in lines])
            extra_ebv = ebv * (GAS_TO_STARS_EBV - 1.0)
            ratios = ratios * 10.0 ** (-0.4 * extra_ebv * (calzetti_k(centres) - calzetti_k(np.float64(6564.61))))
        sigma_gas = np.sqrt(rng.uniform(40.0, 150.0) ** 2 + settings.resolution_sigma_kms**2)
        flux = add_lines(lib.gal_loglam, flux, lines, ew_halpha * continuum * ratios, sigma_gas)
    return lib.gal_loglam, flux, z, {"template": f"starburst:{label}" if starburst else label}


def quasar_rest(rng: np.random.Generator, settings: SimulationSettings, z: float | None = None,
                loglam_step: float = 1e-4, forest_fluctuations: bool = True,
                extra_rng: np.random.Generator | None = None, offset_rng: np.random.Generator | None = None):
    """(rest loglam, rest flux, z, labels): power law, broad lines, Lyα forest at the object's z
    (its mean transmission only when `forest_fluctuations` is False). With `settings.realism` (and
    `extra_rng`, its stream): a wider slope, a width per broad line, blueshifted high-ionisation
    lines and SMC-like reddening; with `offset_rng` too, the other lines' peaks moved by
    `realism.line_offsets`. z stays the systemic redshift."""
    z = rng.uniform(*settings.z_qso) if z is None else z
    loglam = np.arange(np.log10(650.0), np.log10(11000.0), loglam_step)
    wave = 10.0**loglam
    alpha_nu = rng.normal(-0.5, 0.3)
    fwhm_kms = rng.uniform(2500.0, 8000.0)
    ew = np.array([e for _, _, e in QSO_LINES]) * loguniform(rng, 0.5, 2.0, len(QSO_LINES))
    realism = settings.realism if extra_rng is not None else None
    lines, widths = QSO_LINES, np.full(len(QSO_LINES), fwhm_kms)
    if realism is not None:
        alpha_nu = extra_rng.normal(-0.5, realism.qso_slope_sigma)
        widths = fwhm_kms * 10.0 ** extra_rng.normal(0.0, realism.qso_width_scatter_dex * realism.strength, len(lines))
        blueshift = extra_rng.uniform(*realism.civ_blueshift_kms) * realism.strength
        shift = {name: (blueshift if name == "CIV" else 0.5 * blueshift) for name in HIGH_IONISATION}
        lines = tuple((name, centre * (1.0 - shift.get(name, 0.0) / SPEED_OF_LIGHT_KMS), e)
                      for name, centre, e in QSO_LINES)
    narrow = QSO_NARROW
    if realism is not None and offset_rng is not None and realism.qso_line_scatter > 0:
        offset = line_offsets(realism, offset_rng)
        lines, narrow = ([(name, centre * (1.0 + offset.get(name, 0.0) / SPEED_OF_LIGHT_KMS), e) for name, centre, e in group]
                         for group in (lines, QSO_NARROW))
    flux = (wave / 3000.0) ** (-(2.0 + alpha_nu))
    continuum_at = (np.array([c for _, c, _ in QSO_LINES]) / 3000.0) ** (-(2.0 + alpha_nu))
    for line, amplitude, width in zip(lines, ew * continuum_at, widths):
        flux = add_lines(loglam, flux, (line,), (amplitude,), width * FWHM_TO_SIGMA)
    ew_narrow = np.array([e for _, _, e in QSO_NARROW]) * loguniform(rng, 0.3, 3.0)
    continuum_narrow = (np.array([c for _, c, _ in QSO_NARROW]) / 3000.0) ** (-(2.0 + alpha_nu))
    flux = add_lines(loglam, flux, narrow, ew_narrow * continuum_narrow,
                     np.hypot(rng.uniform(150.0, 400.0), settings.resolution_sigma_kms))
    flux = flux * lyman_transmission(wave, z, rng, fluctuations=forest_fluctuations)
    if realism is not None:
        flux = attenuate(wave, flux, extra_rng.exponential(realism.qso_ebv_mean * realism.strength), smc_k)
    return loglam, flux, z, {"template": "powerlaw+lines"}


def lyman_transmission(rest_wave: np.ndarray, z: float, rng: np.random.Generator,
                       fluctuations: bool = True) -> np.ndarray:
    """Transmission (n,) of the intergalactic medium for a source at z: Lyα forest blueward of Lyα
    (mean τ from Faucher-Giguère et al. 2008, log-normal fluctuations per pixel, Lyβ adding 16 %
    of that depth below 1026 Å) and a Lyman-limit drop of random depth below 912 Å."""
    transmission = np.ones_like(rest_wave)
    forest = rest_wave < LYA
    if not forest.any():
        return transmission
    z_abs = rest_wave[forest] * (1.0 + z) / LYA - 1.0
    tau_mean = 0.0018 * (1.0 + np.clip(z_abs, 0.0, None)) ** 3.92
    tau_mean = np.where(rest_wave[forest] < 1025.72, tau_mean * 1.16, tau_mean)
    sigma = 1.0
    fluctuation = np.exp(rng.normal(-0.5 * sigma**2, sigma, forest.sum())) if fluctuations else 1.0
    transmission[forest] = np.exp(-tau_mean * fluctuation)
    transmission[rest_wave < LYMAN_LIMIT] *= np.exp(-rng.uniform(0.5, 4.0))
    return transmission


def observe(rest_loglam: np.ndarray, rest_flux: np.ndarray, z: float, grid: WavelengthGrid,
            snr: float, flux_level: float, rng: np.random.Generator, realism: Realism | None = None,
            extra_rng: np.random.Generator | None = None, resolution_sigma_kms: float = 69.0):
    """Redshift a rest-frame spectrum to z, resample onto `grid`, scale to `flux_level` and add
    Gaussian noise of median per-pixel S/N `snr` (variance grows with the source flux). With
    `realism` (and `extra_rng`, its stream): calibration error, sky noise and residuals
    (`realism.observe_with_sky`); the noise itself is drawn from `rng` in either case.

    Returns flux, ivar (float32, 1e-17 erg/s/cm²/Å units) and mask (bool) on the grid.
    """
    observed_wave = 10.0 ** (rest_loglam + np.log10(1.0 + z))
    bad = ~np.isfinite(rest_flux)
    # flux density per Å dilutes by (1 + z) when stretched; the overall level is set below anyway
    flux, _, mask = resample(observed_wave, np.where(bad, 0.0, rest_flux) / (1.0 + z),
                             np.ones_like(rest_flux), bad, grid)
    good = ~mask
    if good.sum() < 10:
        return flux, np.zeros_like(flux), np.ones_like(mask)
    median = np.median(np.abs(flux[good]))
    median = median if median > 0 else 1.0
    flux = flux * (flux_level / median)
    if realism is not None:
        noisy, ivar = observe_with_sky(flux, good, grid, snr, flux_level, realism, resolution_sigma_kms, extra_rng, rng)
        return noisy.astype(np.float32), ivar.astype(np.float32), mask
    sigma = (flux_level / snr) * np.sqrt(0.5 + 0.5 * np.abs(flux) / flux_level)
    noisy = flux + rng.normal(0.0, 1.0, flux.shape) * sigma
    ivar = np.where(good, 1.0 / sigma**2, 0.0)
    return np.where(good, noisy, 0.0).astype(np.float32), ivar.astype(np.float32), mask


def draw_sample(n: int, lib: TemplateLibrary, grid: WavelengthGrid, seed: int = 0,
                settings: SimulationSettings = SimulationSettings(), star_indices: np.ndarray | None = None):
    """Simulate n observed spectra on `grid`.

    star_indices: the MILES stars this sample may use (for star-level train/test splits);
    default all. Returns a dict of arrays: flux, ivar (n, n_pix) float32, mask (n, n_pix) bool,
    class (n,) str, z, teff, logg, feh, snr, flux_level (n,) float64, template (n,) str; with the
    realism's cosmic rays, cosmic_ray_pixels (n,) int, the pixels each spectrum's hits cover.
    """
    rng = np.random.default_rng(seed)
    realism = settings.realism
    extra_rng = realism_rng(seed) if realism is not None else None
    cosmic_rng = cosmic_ray_rng(seed) if realism is not None and realism.cosmic_ray_probability > 0 else None
    offset_rng = line_offset_rng(seed) if realism is not None else None
    sf_rng = star_forming_rng(seed) if realism is not None else None
    burst_rng = starburst_rng(seed) if realism is not None else None
    star_indices = np.arange(lib.n_star) if star_indices is None else np.asarray(star_indices)
    neighbours = star_neighbours(lib, star_indices) if settings.star_blend_probability > 0 else {}
    classes = rng.choice(len(CLASS_NAMES), size=n, p=np.asarray(settings.class_fractions) / sum(settings.class_fractions))
    out = {
        "flux": np.zeros((n, grid.n_pix), np.float32), "ivar": np.zeros((n, grid.n_pix), np.float32),
        "mask": np.ones((n, grid.n_pix), bool), "class": np.array([CLASS_NAMES[c] for c in classes]),
        "z": np.zeros(n), "teff": np.full(n, np.nan), "logg": np.full(n, np.nan), "feh": np.full(n, np.nan),
        "snr": loguniform(rng, *settings.snr, n), "flux_level": loguniform(rng, *settings.flux_level, n),
        "template": np.empty(n, dtype=object),
    }
    if cosmic_rng is not None:
        out["cosmic_ray_pixels"] = np.zeros(n, int)
    strengths = realism.strengths(n, seed) if realism is not None else None
    base = settings
    for i, cls in enumerate(classes):
        name = CLASS_NAMES[cls]
        if strengths is not None:   # this object's strength: the settings' realism at it
            realism = replace(base.realism, strength=float(strengths[i]), strength_max=None)
            settings = replace(base, realism=realism)
        if name == "STAR":
            index = int(rng.choice(star_indices))
            blend = None
            if settings.star_blend_probability > 0 and rng.random() < settings.star_blend_probability \
                    and index in neighbours:
                blend = (int(rng.choice(neighbours[index])), rng.uniform(0.0, settings.star_blend_max))
            loglam, flux, z, labels = star_rest(lib, index, rng, settings, blend)
            out["teff"][i], out["logg"][i], out["feh"][i] = labels["teff"], labels["logg"], labels["feh"]
        elif name == "GALAXY":
            loglam, flux, z, labels = galaxy_rest(lib, rng, settings, extra_rng, sf_rng, burst_rng)
        else:
            loglam, flux, z, labels = quasar_rest(rng, settings, extra_rng=extra_rng, offset_rng=offset_rng)
        out["z"][i], out["template"][i] = z, labels["template"]
        flux_obs, ivar, mask = observe(loglam, flux, z, grid, out["snr"][i], out["flux_level"][i], rng, realism,
                                       extra_rng, settings.resolution_sigma_kms)
        mask = mask | edge_mask(grid.n_pix, rng, settings.edge_mask_probability, settings.blue_mask_probability)
        if realism is not None:
            mask |= bad_columns(grid.n_pix, extra_rng, realism.bad_column_probability * realism.strength)
            mask |= instrument_range(grid, realism, extra_rng)
        if cosmic_rng is not None:
            flux_obs, hit = cosmic_rays(flux_obs, ivar, ~mask, realism, cosmic_rng)
            out["cosmic_ray_pixels"][i] = int(hit.sum())
        out["flux"][i], out["ivar"][i], out["mask"][i] = np.where(mask, 0, flux_obs), np.where(mask, 0, ivar), mask
    out["template"] = out["template"].astype(str)
    return out


def edge_mask(n_pix: int, rng: np.random.Generator, probability: float, blue_probability: float = 0.0) -> np.ndarray:
    """Random unusable stretches at either end (as real spectra have), so that a masked edge is
    never a give-away of the class or redshift: short ones at either end with `probability`, and
    with `blue_probability` a blue-end stretch of up to a third of the spectrum, as long as the
    stretch a galaxy at the top of its redshift range has no template for."""
    mask = np.zeros(n_pix, bool)
    if rng.random() < probability:
        mask[: rng.integers(1, n_pix // 8)] = True
    if rng.random() < probability:
        mask[n_pix - rng.integers(1, n_pix // 8):] = True
    if rng.random() < blue_probability:
        mask[: rng.integers(1, n_pix // 3)] = True
    return mask
