import numpy as np
import pytest

from annotate.errors import ConfigError
from annotate.grid import WavelengthGrid, pixel_edges, resample


def test_default_grid_is_sdss_sampling_3600_to_10400():
    grid = WavelengthGrid()
    assert grid.loglam_step == 1e-4
    assert grid.wavelength[0] == pytest.approx(3600.0, abs=0.1)
    assert grid.wavelength[-1] == pytest.approx(10400, rel=2e-4)
    assert grid.n_pix == 4608
    # pixel centres sit on multiples of 1e-4 dex, as SDSS coadds do
    assert np.allclose(np.round(grid.loglam / 1e-4) * 1e-4, grid.loglam, atol=1e-9)


def test_from_range_aligns_to_step():
    grid = WavelengthGrid.from_range(3600, 10400)
    assert grid.loglam_start == pytest.approx(3.5564)
    assert grid.wavelength[0] >= 3600
    assert grid.wavelength[-1] <= 10400


def test_invalid_grid_is_refused():
    with pytest.raises(ConfigError):
        WavelengthGrid(3.5, 1e-4, 1)


def test_pixel_edges_are_midpoints():
    edges = pixel_edges(np.array([1.0, 2.0, 4.0]))
    assert edges.tolist() == [0.5, 1.5, 3.0, 5.0]


def test_aligned_resample_is_identity():
    grid = WavelengthGrid(3.6, 1e-4, 50)
    src = WavelengthGrid(3.59, 1e-4, 300)
    rng = np.random.default_rng(0)
    flux = rng.normal(10, 1, 300)
    ivar = np.full(300, 4.0)
    out_flux, out_ivar, mask = resample(src.wavelength, flux, ivar, np.zeros(300, bool), grid)
    assert not mask.any()
    np.testing.assert_allclose(out_flux, flux[100:150], rtol=1e-4)
    np.testing.assert_allclose(out_ivar, 4.0, rtol=1e-4)


def test_resample_conserves_flux_when_binning_by_two():
    fine = WavelengthGrid(3.6, 0.5e-4, 400)
    coarse = WavelengthGrid(3.6 + 0.25e-4, 1e-4, 199)
    flux = np.linspace(1, 5, 400)
    out, ivar, mask = resample(fine.wavelength, flux, np.ones(400), np.zeros(400, bool), coarse)
    inner = ~mask
    integral_in = np.sum(flux * np.diff(pixel_edges(fine.wavelength)))
    integral_out = np.sum(out[inner] * np.diff(coarse.edges)[inner])
    # the coarse pixels pair up the fine ones exactly, except the last fine pixel
    assert integral_out == pytest.approx(integral_in, rel=0.01)
    # averaging two equal-variance pixels halves the variance
    assert np.median(ivar[inner]) == pytest.approx(2.0, rel=0.05)


def test_outside_source_and_bad_pixels_are_masked():
    grid = WavelengthGrid(3.6, 1e-4, 100)
    src = WavelengthGrid(3.605, 1e-4, 40)  # covers grid pixels 50..89
    bad = np.zeros(40, bool)
    bad[10:20] = True
    flux, ivar, mask = resample(src.wavelength, np.ones(40), np.ones(40), bad, grid)
    assert mask[:50].all() and mask[90:].all()
    assert mask[60:70].all()
    assert not mask[50:60].any() and not mask[70:89].any()
    assert (ivar[mask] == 0).all()


def test_nan_flux_and_zero_ivar_count_as_bad():
    grid = WavelengthGrid(3.6, 1e-4, 20)
    flux = np.full(20, np.nan)
    _, _, mask = resample(grid.wavelength, flux, np.ones(20), np.zeros(20, bool), grid)
    assert mask.all()
    _, _, mask = resample(grid.wavelength, np.ones(20), np.zeros(20), np.zeros(20, bool), grid)
    assert mask.all()
