"""The simulator: redshifting, noise, line positions, class mixes and masks."""

import numpy as np
import pytest

from annotate import CLASS_NAMES
from annotate.grid import WavelengthGrid
from annotate.simulate.spectra import (
    SimulationSettings, add_lines, broaden, draw_sample, galaxy_rest, lyman_transmission, observe, quasar_rest, star_neighbours,
)
from annotate.simulate.templates import load_library

GRID = WavelengthGrid()


def test_observe_puts_a_rest_line_at_its_redshifted_wavelength():
    rest_loglam = np.arange(np.log10(2000), np.log10(8000), 1e-4)
    flux = add_lines(rest_loglam, np.ones_like(rest_loglam), [("line", 5000.0, 0)], [200.0], 100.0)
    observed, ivar, mask = observe(rest_loglam, flux, 0.5, GRID, snr=1e6, flux_level=10.0,
                                   rng=np.random.default_rng(0))
    peak = GRID.wavelength[np.argmax(observed)]
    assert peak == pytest.approx(7500.0, rel=2e-4)
    assert not mask[(GRID.wavelength > 3700) & (GRID.wavelength < 11900)].any()


def test_observe_noise_matches_the_requested_snr():
    rest_loglam = np.arange(np.log10(3000), np.log10(11000), 1e-4)
    flux = np.ones_like(rest_loglam)
    observed, ivar, mask = observe(rest_loglam, flux, 0.0, GRID, snr=10.0, flux_level=5.0, rng=np.random.default_rng(1))
    good = ~mask
    assert np.median(observed[good]) == pytest.approx(5.0, rel=0.02)
    assert np.median(observed[good] * np.sqrt(ivar[good])) == pytest.approx(10.0, rel=0.05)
    # the scatter agrees with the stated ivar
    pull = (observed[good] - 5.0) * np.sqrt(ivar[good])
    assert np.std(pull) == pytest.approx(1.0, rel=0.05)


def test_lyman_forest_absorbs_more_at_higher_redshift():
    rest = np.linspace(1050, 1300, 2000)
    low = lyman_transmission(rest, 2.0, np.random.default_rng(0))
    high = lyman_transmission(rest, 4.0, np.random.default_rng(0))
    forest = rest < 1215.67
    assert (low[~forest] == 1).all()
    # mean τ_eff(z=3) = 0.0018·4^3.92 ≈ 0.41 → <T> ≈ 0.67 near 1200 Å for a z=2 source: between 0.5 and 0.95
    assert 0.5 < low[forest].mean() < 0.95
    assert high[forest].mean() < low[forest].mean() - 0.2


def test_quasar_has_its_broad_lines_in_the_rest_frame():
    loglam, flux, z, labels = quasar_rest(np.random.default_rng(3), SimulationSettings(), z=2.5)
    wave = 10**loglam
    for centre in (1549.06, 2798.75, 4862.68):
        near = np.abs(wave - centre) < 20
        side = (np.abs(wave - centre) > 150) & (np.abs(wave - centre) < 200)
        assert flux[near].max() > 1.1 * np.median(flux[side])
    assert z == 2.5 and labels["template"] == "powerlaw+lines"


def test_galaxy_uses_populations_that_cover_its_blue_end():
    lib = load_library()
    low_z = SimulationSettings(z_galaxy=(0.15, 0.15))
    for seed in range(5):
        _, _, z, labels = galaxy_rest(lib, np.random.default_rng(seed), low_z)
        # rest blue end 3600/1.15 = 3130 Å: only the M11 MARCS set (from 3000 Å) reaches it
        assert labels["template"].split("+") == ["m11_marcs", "m11_marcs"]
    # at z = 0.02 the observed 3600-10400 Å is rest 3529-10196 Å: M11 (3000-12000 Å) covers it all,
    # MaStar SSPs (from 3622 Å) miss 110 blue pixels and BC03 (to 9294 Å) 400 red ones
    for seed in range(5):
        _, flux, _, labels = galaxy_rest(lib, np.random.default_rng(seed), SimulationSettings(z_galaxy=(0.02, 0.02)))
        assert "bc03_mpajhu" not in labels["template"]
        rest = (lib.gal_loglam >= np.log10(3650 / 1.02)) & (lib.gal_loglam <= np.log10(10300 / 1.02))
        assert np.isfinite(flux[rest]).all()


def test_sample_classes_labels_and_masks():
    lib = load_library()
    sample = draw_sample(300, lib, GRID, seed=5)
    classes = sample["class"]
    counts = {name: int((classes == name).sum()) for name in CLASS_NAMES}
    assert sum(counts.values()) == 300 and min(counts.values()) > 50
    stars = classes == "STAR"
    assert np.isfinite(sample["teff"][stars]).mean() > 0.95 and np.isnan(sample["teff"][~stars]).all()
    assert np.abs(sample["z"][stars]).max() < 0.002  # radial velocities of a few hundred km/s
    assert sample["z"][classes == "QSO"].max() > 1.5
    assert (sample["flux"][sample["mask"]] == 0).all() and (sample["ivar"][sample["mask"]] == 0).all()
    assert (sample["ivar"][~sample["mask"]] > 0).all()
    # galaxies lose their blue end more often than the other classes, but not always
    blue_masked = sample["mask"][:, :300].all(axis=1)
    for name in CLASS_NAMES:
        assert 0.1 < blue_masked[classes == name].mean() < 0.9


def test_sample_is_reproducible_and_star_indices_are_respected():
    lib = load_library()
    a = draw_sample(40, lib, GRID, seed=9, star_indices=np.array([10, 11]))
    b = draw_sample(40, lib, GRID, seed=9, star_indices=np.array([10, 11]))
    assert np.array_equal(a["flux"], b["flux"])
    stars = a["class"] == "STAR"
    assert set(a["template"][stars]) <= {str(lib.star_name[10]), str(lib.star_name[11])}


def test_low_z_fraction_draws_that_share_of_galaxies_from_the_low_range_and_leaves_the_plain_draws_alone():
    lib = load_library()
    plain = SimulationSettings()
    low = SimulationSettings(low_z_fraction=0.5)
    z_plain = np.array([galaxy_rest(lib, np.random.default_rng(i), plain)[2] for i in range(200)])
    z_low = np.array([galaxy_rest(lib, np.random.default_rng(i), low)[2] for i in range(200)])
    assert np.mean(z_plain < 0.02) < 0.06  # uniform over 0-0.7: 2.9 % expected
    assert 0.4 < np.mean(z_low < 0.02) < 0.62  # half from 0-0.02, plus 2.9 % of the other half
    assert (z_low >= 0).all() and (z_low < 0.7).all()
    # without it, z is still the stream's first draw: seeded samples are the objects they were
    assert np.array_equal(z_plain, [np.random.default_rng(i).uniform(0.0, 0.7) for i in range(200)])


def test_star_neighbours_are_the_nearest_labelled_stars_of_the_sample_only():
    lib = load_library()
    allowed = np.arange(0, lib.n_star, 2)
    neighbours = star_neighbours(lib, allowed, k=3)
    labelled = allowed[np.isfinite(lib.star_teff[allowed]) & np.isfinite(lib.star_logg[allowed])
                       & np.isfinite(lib.star_feh[allowed])]
    assert sorted(neighbours) == sorted(int(i) for i in labelled)
    x = np.stack([np.log10(lib.star_teff[labelled]), lib.star_logg[labelled], lib.star_feh[labelled]], 1)
    x = x / x.std(0)
    for star in labelled[::40]:
        near = neighbours[int(star)]
        assert len(near) == 3 and star not in near and set(near) <= set(labelled)
        d = ((x - x[labelled == star]) ** 2).sum(1)
        d[labelled == star] = np.inf
        assert np.sort(d[np.isin(labelled, near)]) == pytest.approx(np.sort(d)[:3])


def test_blended_stars_take_a_neighbour_and_labels_between_the_two_and_leave_the_plain_draws_alone():
    lib = load_library()
    allowed = np.arange(100, 400)
    plain = draw_sample(60, lib, GRID, seed=3, star_indices=allowed,
                        settings=SimulationSettings(class_fractions=(0, 0, 1)))
    unblended = draw_sample(60, lib, GRID, seed=3, star_indices=allowed,
                            settings=SimulationSettings(class_fractions=(0, 0, 1), star_blend_probability=0.0))
    assert np.array_equal(plain["flux"], unblended["flux"]) and " & " not in "".join(plain["template"])
    blended = draw_sample(60, lib, GRID, seed=3, star_indices=allowed,
                          settings=SimulationSettings(class_fractions=(0, 0, 1), star_blend_probability=1.0))
    names = {str(n): i for i, n in enumerate(lib.star_name)}
    neighbours = star_neighbours(lib, allowed)
    n_blends = 0
    for template, teff, logg, feh in zip(blended["template"], blended["teff"], blended["logg"], blended["feh"]):
        if " & " not in template:  # a star without all three labels is never blended
            assert not np.isfinite([lib.star_teff[names[template]], lib.star_logg[names[template]],
                                    lib.star_feh[names[template]]]).all()
            continue
        n_blends += 1
        first, second = (names[part] for part in template.split(" & "))
        assert second in neighbours[first] and 100 <= second < 400
        for value, labels in ((teff, lib.star_teff), (logg, lib.star_logg), (feh, lib.star_feh)):
            a, b = labels[first], labels[second]
            if a != b:  # the weight on the neighbour is between 0 and star_blend_max (0.5)
                assert 0.0 <= (value - a) / (b - a) <= 0.5
    assert n_blends > 50


def test_broaden_of_rows_is_broaden_of_each_row():
    """Rows broadened at once (the training stars of the fit are made so) equal each broadened
    alone to the bit, NaN stretches at the start, inside and at the end and a row of NaN
    included; a narrow line keeps its flux and takes the kernel's σ as its width."""
    lib = load_library()
    rows = lib.star_flux[:40].astype(np.float64)
    rows[3, :120] = np.nan
    rows[4, 2000:2090] = np.nan
    rows[5, -60:] = np.nan
    rows[6] = np.nan
    for sigma_kms in (26.0, 150.0):
        together = broaden(rows, sigma_kms, 1e-4)
        np.testing.assert_array_equal(together, np.array([broaden(row, sigma_kms, 1e-4) for row in rows]))
    line = np.zeros((2, 801))
    line[:, 400] = 1.0
    wide = broaden(line, 100.0, 1e-4)
    sigma_pix = 100.0 / (299792.458 * np.log(10) * 1e-4)
    x = np.arange(801) - 400.0
    assert wide.sum(axis=1) == pytest.approx([1.0, 1.0], rel=1e-12)
    assert np.sqrt((wide[0] * x**2).sum()) == pytest.approx(sigma_pix, rel=0.02)
