import numpy as np
import pytest

from annotate import stellarbaseline
from annotate.grid import WavelengthGrid
from annotate.simulate.templates import load_library

GRID = WavelengthGrid()


def test_nearest_template_finds_a_shifted_tilted_noisy_copy_of_a_training_star():
    lib = load_library()
    stars = np.arange(0, 300, 3)
    templates, usable, labels = stellarbaseline.template_stars(lib, stars, GRID)
    raw, _, _ = stellarbaseline.template_stars(lib, stars[[10, 40]], GRID)
    x = np.linspace(-1, 1, GRID.n_pix)
    rng = np.random.default_rng(0)
    flux = np.stack([np.roll(raw[0], 2), np.roll(raw[1], -1)]) * (3 + x) + rng.normal(0, 0.01, (2, GRID.n_pix))
    ivar = np.where(np.stack([np.roll(usable[10], 2), np.roll(usable[40], -1)]), 1e4, 0.0)
    found = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=1)
    np.testing.assert_array_equal(np.nan_to_num(found, nan=-99), np.nan_to_num(labels[[10, 40]], nan=-99))
    # the best mixture of the 5 nearest is mostly the star itself: within 32 K, 0.04 and 0.03 dex
    # of its labels here (S/N 100 per pixel), asserted within 60 K, 0.08 and 0.06 dex
    mixed = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=1, mix=5)
    assert (np.abs(mixed - labels[[10, 40]]) < [60.0, 0.08, 0.06]).all()


def test_spread_is_the_standard_deviation_of_the_k_neighbours_labels():
    """Five templates at growing distances from the spectrum (a copy of the first): the k = 3
    nearest are the first three, and the spread is their labels' standard deviation (ddof 1),
    over those that have the label; NaN where fewer than two have it."""
    n_pix = 800
    rng = np.random.default_rng(3)
    base = 1.0 + 0.2 * np.sin(np.arange(n_pix) / 7.0)
    templates = np.stack([base + d * rng.normal(size=n_pix) for d in (0.0, 0.01, 0.02, 0.2, 0.4)]).astype(np.float32)
    usable = np.ones_like(templates, bool)
    labels = np.array([[5000.0, 4.0, np.nan], [5200.0, 4.5, np.nan], [5600.0, np.nan, -0.5],
                       [9000.0, 1.0, 0.3], [3000.0, 0.5, 0.2]])
    flux, ivar = base[None, :], np.full((1, n_pix), 1e4)
    means, spread = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=3, max_shift=0,
                                                      spread=True)
    assert means[0] == pytest.approx([5266.667, 4.25, -0.5], abs=1e-3)
    assert spread[0, 0] == pytest.approx(np.std([5000.0, 5200.0, 5600.0], ddof=1))
    assert spread[0, 1] == pytest.approx(np.std([4.0, 4.5], ddof=1)) and np.isnan(spread[0, 2])
    alone = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=3, max_shift=0)
    np.testing.assert_array_equal(alone, means)


def test_mixture_labels_weigh_each_template_by_its_share_of_the_spectrum():
    """A spectrum made of 0.3 of template A and 0.7 of B, with C and D unlike it: the
    non-negative mixture puts ~0 on C and D, and each label is the share-weighted mean over the
    templates that have it, given where those hold at least half the mixture."""
    n_pix = 1000
    rng = np.random.default_rng(5)
    templates = 1.0 + 0.3 * rng.normal(size=(4, n_pix))
    labels = np.array([[4000.0, 1.0, -1.0], [6000.0, 4.0, -0.5], [9000.0, 2.0, 0.5], [3000.0, 5.0, 0.0]])
    weight = np.ones(n_pix)
    weight[:50] = 0.0   # unusable pixels of the spectrum do not enter
    flux = 0.3 * templates[0] + 0.7 * templates[1]
    flux[:50] = 99.0
    usable = np.ones((4, n_pix), bool)
    mixed = stellarbaseline.mixture_labels(flux, weight, templates, usable, labels)
    assert mixed == pytest.approx([0.3 * 4000 + 0.7 * 6000, 0.3 * 1.0 + 0.7 * 4.0, 0.3 * -1.0 + 0.7 * -0.5], rel=1e-6)
    # a pixel one template lacks is left out for all; no shared pixel: no mixture
    usable[2, 100:200] = False
    assert stellarbaseline.mixture_labels(flux, weight, templates, usable, labels) == pytest.approx(mixed, rel=1e-6)
    assert stellarbaseline.mixture_labels(flux, np.zeros(n_pix), templates, usable, labels) is None
    # a label held by templates of under half the mixture is not given: B (0.7) alone has [Fe/H]
    labels[:, 2] = [np.nan, -0.5, 0.5, 0.0]
    assert stellarbaseline.mixture_labels(flux, weight, templates, usable, labels)[2] == pytest.approx(-0.5)
    labels[:, 2] = [-1.0, np.nan, 0.5, 0.0]
    assert np.isnan(stellarbaseline.mixture_labels(flux, weight, templates, usable, labels)[2])


def test_mixture_amounts_are_the_pixels_nnls_also_for_templates_that_are_not_independent(monkeypatch):
    """mixture_labels solves its NNLS on the Cholesky triangle of the normal equations; the
    labels are those of the NNLS over the weighted pixels, and a template given twice (a
    singular system, whose Cholesky may still pass on rounding) sends it to the pixels themselves.
    On 324 fitted stars the triangle's pivots were at least 2e-3 of its largest, far from
    MIXTURE_PIVOT."""
    from scipy.optimize import nnls as scipy_nnls

    rng = np.random.default_rng(11)
    n_pix = 800
    templates = 1.0 + 0.3 * rng.normal(size=(6, n_pix))
    flux = templates.T @ np.array([0.2, 0.0, 0.5, 0.0, 0.3, 0.0]) + rng.normal(0, 0.01, n_pix)
    weight = rng.uniform(0.5, 2.0, n_pix)
    labels = np.column_stack([np.linspace(4000, 6500, 6), np.linspace(1, 5, 6), np.linspace(-2, 0.5, 6)])
    seen = []

    def recording(a, b):
        seen.append(a.shape)
        return scipy_nnls(a, b)

    import scipy.optimize

    monkeypatch.setattr(scipy.optimize, "nnls", recording)
    root = np.sqrt(weight)
    direct, _ = scipy_nnls(templates.T * root[:, None], flux * root)
    expected = (direct[:, None] * labels).sum(0) / direct.sum()
    usable = np.ones(templates.shape, bool)
    mixed = stellarbaseline.mixture_labels(flux, weight, templates, usable, labels)
    np.testing.assert_allclose(mixed, expected, rtol=1e-9)
    assert seen[-1] == (6, 6)  # the triangle, not the pixels
    twice = np.vstack([templates, templates[:1]])
    mixed_twice = stellarbaseline.mixture_labels(flux, weight, twice, np.ones(twice.shape, bool),
                                                 np.vstack([labels, labels[:1]]))
    np.testing.assert_allclose(mixed_twice, expected, rtol=1e-6)
    assert seen[-1] == (n_pix, 7)  # the pixels


def test_nearest_templates_with_mix_give_the_mixture_and_keep_the_k_spread():
    """Four templates, a common shape and each its own pattern; the spectrum is 0.6 of the first
    and 0.4 of the second, one pixel off rest. The k = 2 nearest are that pair: without mix their
    plain mean stands; with mix the labels are within 2 % of the range of the shares' mean (the
    spectrum is re-normalised, so the shares come out near, not at, 0.6 / 0.4). The spread is the
    k nearest's either way, and rows taken one at a time get the same labels."""
    n_pix = 800
    rng = np.random.default_rng(11)
    base = 1.0 + 0.2 * np.sin(np.arange(n_pix) / 7.0)
    templates = (base + 0.1 * rng.normal(size=(4, n_pix))).astype(np.float32)
    usable = np.ones_like(templates, bool)
    labels = np.array([[5000.0, 4.5, -1.0], [6000.0, 3.0, 0.2], [8000.0, 1.0, 0.5], [3500.0, 5.0, -2.0]])
    flux = np.roll(0.6 * templates[0] + 0.4 * templates[1], 1)[None, :].astype(np.float64)
    ivar = np.full((1, n_pix), 1e4)
    ivar[:, :1] = 0.0
    plain, spread = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=2, spread=True)
    mixed, same_spread = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=2, spread=True,
                                                           mix=4)
    np.testing.assert_array_equal(spread, same_spread)
    np.testing.assert_allclose(plain[0], labels[:2].mean(axis=0), rtol=1e-6)
    expected, span = 0.6 * labels[0] + 0.4 * labels[1], np.abs(labels[0] - labels[1])
    assert (np.abs(mixed[0] - expected) < 0.02 * span).all(), (mixed[0], expected)
    # row by row (chunk 1, the pair's spectrum second) the same labels land on the same row
    two = np.concatenate([np.roll(templates[[3]], 1).astype(np.float64), flux])
    rows = stellarbaseline.nearest_templates(two, np.concatenate([ivar, ivar]), templates, usable, labels, k=2,
                                             mix=4, chunk=1)
    np.testing.assert_array_equal(rows[1], mixed[0])
    assert abs(rows[0, 0] - 3500.0) < 0.02 * 4500
    # the half-share rule overrides the k-mean: [Fe/H] only on the 0.4 star, so none, where the
    # mean of the 2 nearest gives that star's
    half = labels.copy()
    half[0, 2] = np.nan
    plain_half = stellarbaseline.nearest_templates(flux, ivar, templates, usable, half, k=2)
    mixed_half = stellarbaseline.nearest_templates(flux, ivar, templates, usable, half, k=2, mix=4)
    assert plain_half[0, 2] == pytest.approx(0.2) and np.isnan(mixed_half[0, 2])


def test_nearest_templates_keep_the_k_mean_where_no_mixture_can_be_made_and_none_where_nothing_compares():
    """Two templates covering overlapping halves: both compare with the spectrum (over 100 shared
    pixels each) but share only 100 pixels with each other, too few for a mixture, so the mean of
    the k = 2 stands. A spectrum with 50 usable pixels compares with no template: NaN."""
    n_pix = 800
    rng = np.random.default_rng(2)
    templates = (1.0 + 0.1 * rng.normal(size=(2, n_pix))).astype(np.float32)
    usable = np.zeros((2, n_pix), bool)
    usable[0, :400], usable[1, 300:] = True, True
    templates[~usable] = 0.0
    labels = np.array([[5000.0, 4.0, 0.0], [6000.0, 3.0, -1.0]])
    flux = np.where(usable[0], templates[0], templates[1])[None, :].astype(np.float64)
    ivar = np.full((1, n_pix), 1e4)
    mixed = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=2, max_shift=0, mix=2)
    np.testing.assert_allclose(mixed[0], labels.mean(axis=0), rtol=1e-6)
    ivar[:, 50:] = 0.0
    assert np.isnan(stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=2, mix=2)).all()


def test_share_within_sigma_by_snr_bin():
    true, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 5.0, 4.2])
    sigma = np.array([1.0, np.nan, 1.0, 0.1])   # within, NaN σ (outside), outside, outside
    rows = stellarbaseline.by_snr(true, pred, np.array([5.0, 5.0, 30.0, 30.0]), sigma=sigma)
    assert [r["within_1sigma"] for r in rows[:1] + rows[2:3]] == [0.5, 0.0] and np.isnan(rows[1]["within_1sigma"])
    report = stellarbaseline.stellar_report(np.tile(true[:, None], 3), np.tile(pred[:, None], 3), np.full(4, 30.0),
                                            sigma=np.tile(sigma[:, None], 3))
    assert report["feh"]["within_1sigma"] == 0.25


def test_rmse_and_r2_by_snr_bin():
    true = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan])
    pred = np.array([1.0, 2.0, 4.0, 4.0, 7.0, 1.0])
    snr = np.array([5.0, 5.0, 15.0, 30.0, 60.0, 60.0])
    rows = stellarbaseline.by_snr(true, pred, snr)
    assert [r["n"] for r in rows] == [2, 1, 1, 1]
    assert [r["rmse"] for r in rows] == pytest.approx([0.0, 1.0, 0.0, 2.0])
    assert rows[0]["r2"] == pytest.approx(1.0) and rows[-1]["snr"] == [50.0, None]
    report = stellarbaseline.stellar_report(np.tile(true[:, None], 3), np.tile(pred[:, None], 3), snr)
    # S/N >= 20: true (4, 5), pred (4, 7): R² = 1 - 4 / 0.5
    assert report["logg"]["r2_snr_ge_20"] == pytest.approx(1 - 4 / 0.5)


def test_running_sum_is_the_convolution_with_a_box():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(3, 500))
    values[1, 100:300] = 0.0
    expected = np.stack([np.convolve(row, np.ones(151), mode="same") for row in values])
    np.testing.assert_allclose(stellarbaseline._running_sum(values, 151), expected, atol=1e-12)


def test_a_star_far_off_rest_is_found_once_moved_by_its_velocity():
    """A training star observed 40 pixels (≈ 9,200 km/s) off rest: with its shift given, the nearest
    template is itself; at rest (±3 pixels searched) it is not."""
    lib = load_library()
    stars = np.arange(0, 300, 3)
    templates, usable, labels = stellarbaseline.template_stars(lib, stars, GRID)
    flux = np.roll(templates[[25]], 40, axis=1).astype(np.float64)
    ivar = np.where(np.roll(usable[[25]], 40, axis=1), 1e4, 0.0)
    ivar[:, :40] = 0.0
    moved = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=1, max_shift=1, shifts=[40.2])
    np.testing.assert_array_equal(np.nan_to_num(moved, nan=-99), np.nan_to_num(labels[[25]], nan=-99))
    rest_flux, rest_ivar = stellarbaseline.at_rest(flux, ivar, [40.2])
    np.testing.assert_array_equal(rest_flux[0, :-40], flux[0, 40:])
    assert (rest_ivar[0, -40:] == 0).all()
    unmoved = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=1)
    assert not np.array_equal(np.nan_to_num(unmoved, nan=-99), np.nan_to_num(labels[[25]], nan=-99))


def test_templates_of_different_coverage_are_ranked_by_their_own_pixels():
    """χ² per template is taken over the pixels it covers (sums shared by the templates of one
    coverage pattern): the ranking equals a direct per-template computation."""
    rng = np.random.default_rng(3)
    n_pix, n_templates = 400, 12
    templates = (1 + 0.2 * rng.normal(size=(n_templates, n_pix))).astype(np.float32)
    usable = np.ones((n_templates, n_pix), bool)
    usable[3:6, 300:] = False   # three patterns: full, red end missing, blue end missing
    usable[6:9, :120] = False
    templates[~usable] = 0.0
    labels = np.column_stack([np.arange(n_templates) * 100.0 + 4000, np.zeros(n_templates), np.zeros(n_templates)])
    valid, index = stellarbaseline._coverage_patterns(usable)
    assert len(valid) == 3 and np.array_equal(valid[index].astype(bool), usable)
    flux = 1 + 0.2 * rng.normal(size=(5, n_pix))
    ivar = rng.uniform(0.5, 2.0, (5, n_pix))
    ivar[:, 50:60] = 0.0
    norm_flux, norm_ivar = stellarbaseline.normalise(flux, ivar)
    direct = np.empty((5, n_templates))
    for j in range(n_templates):
        w = norm_ivar * usable[j]
        ft, tt, ff = (w * norm_flux) @ templates[j], w @ templates[j] ** 2, (w * norm_flux**2).sum(1)
        direct[:, j] = (ff - ft**2 / tt) / (w > 0).sum(1)
    nearest = stellarbaseline.nearest_templates(flux, ivar, templates, usable, labels, k=1, max_shift=0)
    np.testing.assert_array_equal(nearest[:, 0], labels[np.argmin(direct, axis=1), 0])


def test_template_stars_made_a_few_at_a_time_equal_all_at_once():
    """template_stars works `chunk` stars at a time; each star's normalisation is its own."""
    lib = load_library()
    stars = np.arange(0, 60, 2)
    whole = stellarbaseline.template_stars(lib, stars, GRID, chunk=len(stars))
    chunked = stellarbaseline.template_stars(lib, stars, GRID, chunk=7)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    assert whole[0].dtype == np.float32 and whole[1].dtype == bool and whole[1].any()


def test_template_stars_on_a_grid_that_does_not_share_the_library_pixels_are_resampled():
    """On a grid half a pixel off the library's, each training star is its broadened spectrum
    resampled onto the grid (flux-conserving) and then normalised, as one star alone gives."""
    from annotate.grid import resample
    from annotate.simulate.spectra import FWHM_TO_SIGMA, SPEED_OF_LIGHT_KMS, broaden

    lib = load_library()
    grid = WavelengthGrid(loglam_start=GRID.loglam_start + 0.5 * GRID.loglam_step, n_pix=3000)
    stars = np.array([3, 50, 400])
    templates, usable, _ = stellarbaseline.template_stars(lib, stars, grid)
    extra = np.sqrt(69.0**2 - (lib.star_fwhm_aa * FWHM_TO_SIGMA / 5000.0 * SPEED_OF_LIGHT_KMS) ** 2)
    step = lib.star_loglam[1] - lib.star_loglam[0]
    for row, star in enumerate(stars):
        flux = broaden(lib.star_flux[star].astype(np.float64), extra, step)
        bad = ~np.isfinite(flux)
        f, _, mask = resample(10.0**lib.star_loglam, np.where(bad, 0.0, flux), np.ones_like(flux), bad, grid)
        norm, weight = stellarbaseline.normalise(np.where(mask, 0.0, f)[None], (~mask).astype(np.float64)[None])
        np.testing.assert_array_equal(templates[row], norm[0].astype(np.float32))
        np.testing.assert_array_equal(usable[row], weight[0] > 0)
    assert usable.any(axis=1).all()
