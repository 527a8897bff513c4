"""The committed template library: contents, labels, vacuum wavelengths, the MILES red-end splice."""

import numpy as np
import pytest

from annotate.simulate.templates import LIBRARY_PATH, load_library


@pytest.fixture(scope="module")
def lib():
    return load_library()


@pytest.fixture(scope="module")
def raw():
    with np.load(LIBRARY_PATH, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def test_library_is_compact_and_pickle_free(raw):
    assert LIBRARY_PATH.stat().st_size < 10e6
    assert all(value.dtype != object for value in raw.values())
    assert "sdss-mangadap==4.5.0" in str(raw["built_with"])


def test_every_miles_star_with_its_published_labels(lib, raw):
    assert lib.n_star == 984
    names = list(lib.star_name)
    # paramsMILES_v9.1.txt: BD+002058A (MILES 0272) sd:F, Teff 6024, log g 4.50, [Fe/H] -1.44
    i = names.index("m0272 BD+002058A")
    assert (lib.star_teff[i], lib.star_logg[i], lib.star_feh[i]) == pytest.approx((6024, 4.50, -1.44), abs=1e-3)
    assert raw["star_sptype"][i] == "sd:F"
    # G156-031 (MILES 0838) has no [Fe/H] in MILES: NaN, not a made-up value
    j = names.index("m0838 G156-031")
    assert lib.star_teff[j] == pytest.approx(2748) and np.isnan(lib.star_feh[j])
    # 39 [Fe/H] and 3 Teff are '--' in MILES; m0221 has a spectrum but no row at all
    assert np.isnan(lib.star_feh).sum() == 40 and np.isnan(lib.star_teff).sum() == 4
    assert np.isnan(lib.star_teff[names.index("m0221")])


def test_star_grid_is_vacuum_log_linear_and_spans_the_sdss_range(lib):
    step = np.diff(lib.star_loglam)
    assert np.allclose(step, 1e-4)
    wave = 10**lib.star_loglam
    assert wave[0] < 3600 and wave[-1] > 10300


def test_balmer_lines_sit_at_vacuum_wavelengths(lib):
    """MILES is in air; after conversion the H-alpha core of hot stars lies at 6564.6 Å (vacuum),
    not 6562.8 Å (air)."""
    wave = 10**lib.star_loglam
    window = (wave > 6540) & (wave < 6590)
    hot = np.flatnonzero((lib.star_teff > 7500) & (lib.star_teff < 10000) & (lib.star_logg > 3.5))
    assert len(hot) > 10
    minima = [wave[window][np.nanargmin(lib.star_flux[i][window])] for i in hot]
    assert np.median(minima) == pytest.approx(6564.6, abs=0.5)


def test_red_end_is_spliced_smoothly_and_masked_past_mastar(lib, raw):
    wave = 10**lib.star_loglam
    join = np.searchsorted(wave, float(raw["star_red_join_aa"]))
    before = np.nanmedian(lib.star_flux[:, join - 20:join], axis=1)
    after = np.nanmedian(lib.star_flux[:, join + 1:join + 21], axis=1)
    ratio = after / before
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    assert np.percentile(ratio, 99) < 1.2
    # every star has data up to 10300 Å and none past the MaStar end (10323 Å)
    assert np.isfinite(lib.star_flux[:, wave < 10300]).mean() > 0.999
    assert np.isnan(lib.star_flux[:, wave > 10330]).all()
    assert set(raw["star_red_source"]) <= {f"MaStarHC_{k:02d}" for k in range(100)}


def test_populations_cover_three_sets_with_ages_and_no_extrapolation(lib, raw):
    sets, counts = np.unique(lib.gal_set, return_counts=True)
    assert dict(zip(sets, counts)) == {"bc03_mpajhu": 40, "m11_marcs": 22, "mastar_ssp_v1.0": 54}
    assert lib.gal_age_gyr.min() < 0.01 and lib.gal_age_gyr.max() >= 13
    first = 10**lib.gal_first_loglam
    # blue ends where each set's data start (vacuum): nothing invented blueward
    for name, start in (("m11_marcs", 3000.9), ("bc03_mpajhu", 3327.0), ("mastar_ssp_v1.0", 3622.0)):
        assert first[lib.gal_set == name] == pytest.approx(start, abs=1.5)
    finite = np.isfinite(lib.gal_flux)
    assert np.nanmedian(np.where(finite, lib.gal_flux, np.nan), axis=1) == pytest.approx(1.0, abs=0.01)
