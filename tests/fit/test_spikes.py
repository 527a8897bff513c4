"""Spikes narrower than any line (cosmic-ray hits left in a spectrum) are left out of the fit;
lines, however narrow the store's surveys make them, are not."""

import numpy as np
import pytest
from scipy.special import ndtr

from annotate.fit.spikes import spike_pixels

N_PIX = 300
X = np.arange(N_PIX)


def _line(centre: float, sigma: float, peak: float) -> np.ndarray:
    """A Gaussian line integrated over each pixel, scaled to `peak` at its highest point."""
    profile = ndtr((X + 0.5 - centre) / sigma) - ndtr((X - 0.5 - centre) / sigma)
    return peak * profile / profile.max()


def _noisy(rng) -> tuple[np.ndarray, np.ndarray]:
    """A flat continuum of 10 with unit noise, and its weights."""
    return 10.0 + rng.normal(0.0, 1.0, N_PIX), np.ones(N_PIX)


@pytest.mark.parametrize("peak", [40.0, 300.0, 1e4])
def test_a_one_pixel_spike_is_left_out_with_its_neighbours(peak):
    rng = np.random.default_rng(3)
    f, w = _noisy(rng)
    f[150] += peak
    out = spike_pixels(f[None], w[None])[0]
    assert np.flatnonzero(out).tolist() == [149, 150, 151]


@pytest.mark.parametrize("peak", [300.0, 1e4])
def test_a_two_pixel_spike_is_left_out(peak):
    rng = np.random.default_rng(4)
    f, w = _noisy(rng)
    f[150] += peak
    f[151] += 0.6 * peak
    out = spike_pixels(f[None], w[None])[0]
    assert np.flatnonzero(out).tolist() == [149, 150, 151, 152]


@pytest.mark.parametrize("sigma", [0.5, 0.6, 0.9, 1.5, 3.0])
def test_lines_at_least_sigma_min_wide_are_kept_at_any_height(sigma):
    """σ 0.5 px is about the narrowest line DESI's red arm gives on the grid; SDSS and LAMOST
    lines are twice as wide. 30 lines of random sub-pixel centre at each of five heights."""
    rng = np.random.default_rng(5)
    rows_f, rows_w = [], []
    for peak in (10.0, 30.0, 100.0, 1e3, 1e4):
        for _ in range(30):
            f, w = _noisy(rng)
            rows_f.append(f + _line(150 + rng.uniform(-0.5, 0.5), sigma, peak))
            rows_w.append(w)
    out = spike_pixels(np.array(rows_f), np.array(rows_w), sigma_min=0.5)
    assert not out.any()


def test_a_doublet_of_narrow_lines_is_kept():
    """[O II] 3726, 3729 Å at z ≈ 1.2: two lines 3.4 px apart."""
    rng = np.random.default_rng(6)
    rows = []
    for peak in (30.0, 300.0, 3e3):
        for _ in range(20):
            f, _ = _noisy(rng)
            centre = 150 + rng.uniform(-0.5, 0.5)
            rows.append(f + _line(centre, 0.55, peak) + _line(centre + 3.4, 0.55, 1.3 * peak))
    assert not spike_pixels(np.array(rows), np.ones((len(rows), N_PIX))).any()


def test_pure_noise_gives_no_spikes():
    rng = np.random.default_rng(7)
    f = 10.0 + rng.normal(0.0, 1.0, (200, N_PIX))
    assert not spike_pixels(f, np.ones_like(f)).any()


def test_unusable_pixels_and_switching_it_off():
    rng = np.random.default_rng(8)
    f, w = _noisy(rng)
    f[150] += 1e3
    assert not spike_pixels(f[None], w[None], sigma_min=0.0).any()
    w[149] = 0.0   # a hit next to an unusable pixel cannot be told from a line's edge: left alone
    assert not spike_pixels(f[None], w[None]).any()
    f[0] += 1e3    # too near the end for a window
    assert not spike_pixels(f[None], np.ones((1, N_PIX))).any(axis=0)[:4].any()


def test_real_sdss_spectra_lose_no_pixel(ppxf_spectra):
    """NGC 3073's narrow emission lines and NGC 3522's absorption lines, at their own ivar and at
    ten times it, keep every pixel."""
    from annotate.fit.weights import spectrum_arrays
    from annotate.grid import WavelengthGrid, resample
    from annotate.readers import read_spectrum

    grid = WavelengthGrid()
    for name in ("NGC3073_SDSS_DR18.fits", "NGC3522_SDSS_DR18.fits"):
        spectrum = read_spectrum(ppxf_spectra / name)
        flux, ivar, mask = resample(spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.bad, grid)
        f, w, _ = spectrum_arrays(flux[None], ivar[None], mask[None])
        for scale in (1.0, 10.0):
            assert not spike_pixels(f, w * scale).any(), (name, scale)


def test_real_desi_coadds_lose_no_pixel(desi_data):
    """The two DESI coadds fastspecfit ships (a Lyα emitter and a blue galaxy; the red arm's lines are the
    narrowest on the grid), at their own ivar."""
    from annotate.fit.weights import spectrum_arrays
    from annotate.grid import WavelengthGrid, resample
    from annotate.readers import read_spectrum

    grid = WavelengthGrid()
    for name in ("coadd-special-dark-27247.fits", "coadd-4-80613-thru20210324.fits"):
        spectrum = read_spectrum(desi_data / name)
        flux, ivar, mask = resample(spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.bad, grid)
        f, w, _ = spectrum_arrays(flux[None], ivar[None], mask[None])
        assert not spike_pixels(f, w).any(), name


def test_the_fit_leaves_hits_out_and_flags_the_rows():
    """Held-out simulated objects, every one with cosmic-ray hits left in it: the fit finds the
    right answer far more often with the spikes left out, and flags the rows it left pixels out of."""
    from annotate.fit.evaluate import held_out_sample, ross_success
    from annotate.fit.fitter import Fitter, FitSettings
    from annotate.fit.stage import fit_rows
    from annotate.flags import PredFlag
    from annotate.grid import WavelengthGrid

    grid = WavelengthGrid()
    sample = held_out_sample(60, 71, grid, realism=1.0, cosmic_rays=1.0)
    assert (sample["cosmic_ray_pixels"] > 0).all()
    success = {}
    for sigma in (0.0, 0.5):
        fit = fit_rows(Fitter(grid, FitSettings(prior=False, spike_sigma=sigma)),
                       sample["flux"], sample["ivar"], sample["mask"], None)
        success[sigma] = ross_success(fit["fit_class"], fit["fit_z"], sample["class"], sample["z"]).mean()
        flagged = (fit["fit_flags"] & int(PredFlag.SPIKES_LEFT_OUT)) != 0
        if sigma == 0.0:
            assert not flagged.any()
        else:
            assert flagged.mean() >= 0.6
    assert success[0.5] >= success[0.0] + 0.25
    assert success[0.5] >= 0.7


def test_a_hit_on_a_real_galaxy_no_longer_moves_its_redshift(ppxf_spectra):
    """NGC 3522 (SDSS DR18, z 0.0040) with a two-pixel hit of 3,000σ at six places: without the
    spikes left out the fit puts a line on the hit at every place; with them it finds the galaxy
    and flags the row."""
    from annotate import SPEED_OF_LIGHT_KMS
    from annotate.fit.fitter import Fitter, FitSettings
    from annotate.fit.stage import fit_rows
    from annotate.flags import PredFlag
    from annotate.grid import WavelengthGrid, resample
    from annotate.readers import read_spectrum

    grid = WavelengthGrid()
    spectrum = read_spectrum(ppxf_spectra / "NGC3522_SDSS_DR18.fits")
    flux, ivar, mask = resample(spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.bad, grid)
    good = np.flatnonzero(~mask & (ivar > 0))
    sigma = np.median(1.0 / np.sqrt(ivar[good]))
    places = np.linspace(good[20], good[-20], 6).astype(int)
    hit = np.repeat(flux[None], len(places), axis=0)
    hit[np.arange(len(places)), places] += 3000.0 * sigma
    hit[np.arange(len(places)), places + 1] += 1800.0 * sigma
    rows = (hit, np.repeat(ivar[None], len(places), axis=0), np.repeat(mask[None], len(places), axis=0))
    for spike_sigma in (0.0, 0.5):
        fit = fit_rows(Fitter(grid, FitSettings(prior=False, spike_sigma=spike_sigma)), *rows, None)
        right = (fit["fit_class"] == "GALAXY") & (np.abs(fit["fit_z"] - 0.00402) * SPEED_OF_LIGHT_KMS < 1000.0)
        flagged = (fit["fit_flags"] & int(PredFlag.SPIKES_LEFT_OUT)) != 0
        if spike_sigma == 0.0:
            assert not right.any() and not flagged.any()
        else:
            assert right.all() and flagged.all()


def test_noise_whose_ivar_is_too_large_gives_no_spikes():
    """Pure noise with its ivar 4-100 times too large: the weights are scaled by each row's own
    noise first, and a second pixel below the level is no hit's, so no pixel is left out (before
    both, 98 % of such rows at ×10 lost pixels)."""
    rng = np.random.default_rng(9)
    for factor in (4.0, 10.0, 100.0):
        f = rng.normal(0.0, 1.0, (60, 4000))
        assert not spike_pixels(f, np.full_like(f, factor)).any(), factor


def test_the_rule_is_off_for_desi_coadds():
    """DESI's coadds reject hits between exposures, and their z arm's unresolved lines are as
    sharp as a two-pixel spike: the run's settings for them leave the rule out, and say so."""
    from annotate.fit.settings import fit_settings

    assert fit_settings("desi_coadd").spike_sigma == 0.0 and "spikes=" not in fit_settings("desi_coadd").describe()
    for reader in ("sdss_spec", "lamost_lrs", "lamost_lrs_image", ""):
        assert fit_settings(reader).spike_sigma == 0.5 and "spikes=0.5/25" in fit_settings(reader).describe()
