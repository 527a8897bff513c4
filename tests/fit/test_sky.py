"""The fit's weights at bright sky lines (`weights.sky_line_weights`) and what they change in the fit."""

from __future__ import annotations

import numpy as np
import pytest

from annotate.fit.settings import FitSettings
from annotate.fit.weights import sky_line_weights, spectrum_arrays


def _ivar_with_a_sky_line(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """One row of inverse variance: a variance rising smoothly by 2× over the row (throughput),
    with a sky line of 3 pixels at 10×, 20×, 10× the local variance at pixels 300-302."""
    index = np.arange(n)
    variance = 1.0 + index / n
    line = np.zeros(n)
    line[300:303] = (9.0, 19.0, 9.0)
    return 1.0 / (variance * (1.0 + line)), variance


def test_a_sky_lines_pixels_lose_the_square_of_their_variance_excess_and_the_rest_keep_theirs():
    ivar, _ = _ivar_with_a_sky_line()
    w = sky_line_weights(ivar[None], window=51, grow=5)[0]
    near = np.zeros(len(ivar), bool)
    near[292:311] = True        # the known line's pixels, ±9
    confined = sky_line_weights(ivar[None], window=51, grow=5, near=near)[0]
    # the line's centre: variance 20× its local level, weight / 20²
    assert w[301] == pytest.approx(ivar[301] / 20.0**2, rel=0.02)
    # grow 5: the peak's excess reaches 2 pixels either side of it, so 299-303 carry its factor
    for pixel in (299, 300, 302, 303):
        assert w[pixel] == pytest.approx(ivar[pixel] / 20.0**2, rel=0.02), pixel
    # the pixels next to the peak's reach carry their own neighbours' excess, 10×
    for pixel in (298, 304):
        assert w[pixel] == pytest.approx(ivar[pixel] / 10.0**2, rel=0.02), pixel
    # further out, and away from the line, the weight is the ivar to within the
    # interpolation of the local level between block centres (the ramp is linear: under 1 %; beyond
    # the outer blocks' centres the level is held, so the last half block, 27 pixels, loses a few per cent)
    away = np.ones(len(ivar), bool)
    away[298:305] = False
    away[-28:] = False
    assert np.allclose(w[away], ivar[away], rtol=0.01)
    assert np.all(w <= ivar * (1 + 1e-12))
    # confined to the known line's pixels: the same there, the ivar itself everywhere else
    assert np.array_equal(confined[~near], ivar[~near])
    assert np.allclose(confined[near], w[near], rtol=1e-12)


def test_an_objects_own_line_away_from_the_sky_lines_keeps_its_weight():
    """A bright emission line of the object raises the variance as a sky line does (the object's
    photons); outside the known sky lines' pixels it keeps its weight."""
    ivar, _ = _ivar_with_a_sky_line()
    ivar[100:103] /= 8.0                     # the object's line: variance 8× its level
    near = np.zeros(len(ivar), bool)
    near[292:311] = True
    w = sky_line_weights(ivar[None], window=51, grow=5, near=near)[0]
    assert np.array_equal(w[95:108], ivar[95:108])
    assert w[301] == pytest.approx(ivar[301] / 400.0, rel=0.02)
    unconfined = sky_line_weights(ivar[None], window=51, grow=5)[0]
    assert unconfined[101] == pytest.approx(ivar[101] / 64.0, rel=0.02)


def test_unusable_pixels_stay_at_zero_and_window_zero_is_the_ivar_itself():
    ivar, _ = _ivar_with_a_sky_line()
    masked = ivar.copy()
    masked[:40] = 0.0           # a blue start not covered
    masked[500:530] = 0.0       # a bad column
    rows = np.stack([masked, np.zeros_like(ivar)])  # the second row has no usable pixel
    w = sky_line_weights(rows, window=51, grow=5)
    assert np.all(w[0, :40] == 0) and np.all(w[0, 500:530] == 0) and np.all(w[1] == 0)
    assert np.allclose(w[0, 60:290], masked[60:290], rtol=0.01)
    assert w[0, 301] == pytest.approx(masked[301] / 20.0**2, rel=0.02)
    assert sky_line_weights(rows, window=0, grow=5) is rows


def test_spectrum_arrays_applies_the_sky_weights_only_when_asked():
    ivar, _ = _ivar_with_a_sky_line()
    flux = np.ones((1, len(ivar)))
    mask = np.zeros((1, len(ivar)), bool)
    _, plain, _ = spectrum_arrays(flux, ivar[None], mask)
    _, weighted, _ = spectrum_arrays(flux, ivar[None], mask, 51, 5)
    assert np.array_equal(plain[0], ivar)
    assert weighted[0, 301] == pytest.approx(ivar[301] / 400.0, rel=0.02)
    assert (FitSettings().sky_window, FitSettings().sky_grow, FitSettings().sky_halfwidth) == (51, 5, 8)
    assert "sky=51/5/8" in FitSettings().describe()
    assert "sky=" not in FitSettings(sky_window=0).describe()


def test_the_known_sky_lines_pixels_on_the_store_grid():
    from annotate.fit.weights import sky_line_pixels
    from annotate.grid import WavelengthGrid, air_to_vacuum

    grid = WavelengthGrid()
    near = sky_line_pixels(grid, 8)
    pixel = lambda air: int(round((np.log10(air_to_vacuum(np.float64(air))) - grid.loglam_start) / grid.loglam_step))
    for air in (5577.34, 6300.30, 8344.60):      # [O I] 5577, [O I] 6300, an OH line
        centre = pixel(air)
        assert near[centre - 8:centre + 9].all() and not near[centre + 9] and not near[centre - 9], air
    assert not near[pixel(5000.0)] and not near[pixel(6563.0)]
    # 30 lines, ±8 pixels each where they fall on the grid (Na D's pair overlaps): about a tenth
    assert 0.08 < near.mean() < 0.12


def test_stars_under_bright_sky_residuals_stay_stars():
    """Held-out stars at S/N 20-60 with the simulator's sky at 2.8 times its strength (sky up to 8×
    the star, residuals of 5.6 % of each line's flux, wavelength errors of 0.28 pixel): with the
    ivar as given, [O I] 5577 Å's residual is taken for [O III] 5007 Å and two of the twelve become
    galaxies at z = 0.114; with the sky-line weights all twelve are stars within 50 km/s."""
    import dataclasses

    from annotate import SPEED_OF_LIGHT_KMS
    from annotate.fit.bases import load_bases
    from annotate.fit.fitter import Fitter
    from annotate.fit.stage import fit_rows
    from annotate.grid import WavelengthGrid
    from annotate.simulate.realism import Realism
    from annotate.simulate.spectra import SimulationSettings, draw_sample
    from annotate.simulate.templates import load_library

    grid, bases = WavelengthGrid(), load_bases()
    base = Realism()
    sky = dataclasses.replace(base, sky_to_object=tuple(2.8 * x for x in base.sky_to_object),
                              sky_residual=2.8 * base.sky_residual, sky_shift_pix=2.8 * base.sky_shift_pix)
    sample = draw_sample(12, load_library(), grid, seed=5, star_indices=bases.held_out_stars,
                         settings=SimulationSettings(class_fractions=(0, 0, 1), snr=(20.0, 60.0), realism=sky))
    args = (sample["flux"], sample["ivar"], sample["mask"], None)
    plain = fit_rows(Fitter(grid, FitSettings(prior=False, sky_window=0), bases), *args)
    weighted = fit_rows(Fitter(grid, FitSettings(prior=False), bases), *args)
    wrong = plain["fit_class"] != "STAR"
    assert wrong.sum() == 2 and np.allclose(plain["fit_z"][wrong], 0.114, atol=0.002), plain["fit_z"][wrong]
    assert list(weighted["fit_class"]) == ["STAR"] * 12
    assert np.abs(weighted["fit_z"] - sample["z"]).max() * SPEED_OF_LIGHT_KMS < 50.0


def test_rows_are_weighted_alike_in_chunks_and_alone(monkeypatch):
    """Each row's weights depend on that row alone: a batch weighted a few rows at a time equals
    each row weighted by itself."""
    import annotate.fit.weights as weights

    rng = np.random.default_rng(4)
    ivar, _ = _ivar_with_a_sky_line()
    rows = ivar[None] * rng.uniform(0.5, 2.0, (7, 1))
    rows[3, 100:140] = 0.0
    monkeypatch.setattr(weights, "SKY_CHUNK", 3)
    batch = weights.sky_line_weights(rows, 51, 5)
    alone = np.stack([weights.sky_line_weights(row[None], 51, 5)[0] for row in rows])
    assert np.array_equal(batch, alone)


def test_weights_confined_to_the_near_pixels_equal_the_whole_rows_rule_there():
    """Confined to `near`, the weights are computed only where they can change (the pixels the
    maximum filter reads and the blocks whose medians the level interpolates between); they
    equal, to the bit, the rule applied over whole rows and then kept at the near pixels only:
    for the fit's own sky-line pixels, random masks of many sizes, near pixels at both ends of
    the row, no near pixel and all of them, and filter sizes 1-7, odd and even."""
    from annotate.fit.weights import sky_line_pixels
    from annotate.grid import WavelengthGrid

    rng = np.random.default_rng(12)
    grid = WavelengthGrid()
    base = np.exp(rng.normal(0.0, 0.3, (6, grid.n_pix))) * rng.uniform(0.5, 2.0, (6, 1))
    base[:, rng.integers(0, grid.n_pix, 40)] *= 0.01                     # narrow bright sky lines
    base[1, :300] = 0.0
    base[2, -200:] = 0.0
    base[3, 2000:2100] = 0.0
    base[4] = 0.0
    ends = np.zeros(grid.n_pix, bool)
    ends[[0, 1, grid.n_pix - 1]] = True
    cases = [(sky_line_pixels(grid, 8), 51, 5), (ends, 51, 5), (np.zeros(grid.n_pix, bool), 51, 5),
             (np.ones(grid.n_pix, bool), 51, 5)]
    cases += [(rng.uniform(size=grid.n_pix) < rng.uniform(0.002, 0.05), int(rng.integers(11, 101)),
               int(rng.integers(1, 8))) for _ in range(12)]
    for near, window, grow in cases:
        whole = sky_line_weights(base, window, grow)
        expected = np.where(near, whole, np.where(base > 0, base, 0.0))
        np.testing.assert_array_equal(sky_line_weights(base, window, grow, near), expected)
