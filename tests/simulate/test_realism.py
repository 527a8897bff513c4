from dataclasses import replace

import numpy as np
import pytest

from annotate.errors import ConfigError
from annotate.grid import WavelengthGrid, air_to_vacuum
from annotate.simulate.realism import (Realism, bad_columns, calibration_error, calzetti_k, delayed_tau_weights,
                                       instrument_range, observe_with_sky, sky_model, smc_k, throughput)
from annotate.simulate.realism import (STARBURST_EW_AA, halpha_equivalent_width, realism_rng, star_forming_rng,
                                       starburst_rng)
from annotate.simulate.spectra import (GALAXY_LINE_INDEX, WEAK_GALAXY_LINES, SimulationSettings, draw_sample, galaxy_rest,
                                      quasar_rest)
from annotate.simulate.templates import load_library

GRID = WavelengthGrid()


def _median_snr(sample, i):
    good = ~sample["mask"][i]
    return np.median(np.abs(sample["flux"][i][good]) * np.sqrt(sample["ivar"][i][good]))


def test_realism_draws_the_same_objects_with_the_target_snr():
    lib = load_library()
    plain = draw_sample(30, lib, GRID, seed=4)
    real = draw_sample(30, lib, GRID, seed=4, settings=SimulationSettings(realism=Realism()))
    assert (plain["class"] == real["class"]).all()
    np.testing.assert_allclose(real["z"], plain["z"], rtol=0, atol=0)
    np.testing.assert_allclose(real["snr"], plain["snr"], rtol=0, atol=0)
    assert not np.array_equal(real["flux"], plain["flux"])
    # the noise is still scaled to the drawn S/N (measured on noisy flux and after masking, as before)
    ratio = np.array([_median_snr(real, i) / real["snr"][i] for i in range(30)])
    plain_ratio = np.array([_median_snr(plain, i) / plain["snr"][i] for i in range(30)])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.abs(ratio - plain_ratio).max() < 0.25, (ratio, plain_ratio)
    assert real["mask"].sum() >= plain["mask"].sum()  # bad columns only add masked pixels
    assert np.isfinite(real["flux"]).all() and (real["ivar"][real["mask"]] == 0).all()


def test_calzetti_and_smc_curves_at_published_points():
    assert calzetti_k(np.array([5500.0]))[0] == pytest.approx(4.05, abs=0.01)  # k(V) = R_V
    assert calzetti_k(np.array([4400.0]))[0] - calzetti_k(np.array([5500.0]))[0] == pytest.approx(1.0, abs=0.05)
    assert smc_k(np.array([10000.0]))[0] == pytest.approx(1.39)
    assert smc_k(np.array([2000.0]))[0] == pytest.approx(1.39 * 0.2**-1.2)


def test_calibration_error_is_smooth_with_the_requested_rms():
    rng = np.random.default_rng(0)
    factors = np.array([calibration_error(GRID, 0.1, rng) for _ in range(20)])
    np.testing.assert_allclose(np.log(factors).std(axis=1), 0.1, rtol=1e-6)
    assert np.abs(np.diff(np.log(factors), axis=1)).max() < 0.01  # no pixel-to-pixel structure


def test_sky_raises_the_noise_at_night_sky_lines_and_leaves_residuals():
    wave = GRID.wavelength
    line = int(np.argmin(np.abs(wave - air_to_vacuum(np.float64(5577.34)))))
    continuum, lines, _ = sky_model(GRID, 69.0)
    assert lines[line] > 10 * np.median(lines[line - 60:line + 60])
    flux = np.full(GRID.n_pix, 10.0)
    good = np.ones(GRID.n_pix, bool)
    realism = Realism(sky_to_object=(3.0, 3.0), calibration_rms=(1e-6, 1e-6))
    noisy, ivar = observe_with_sky(flux, good, GRID, 20.0, 10.0, realism, 69.0, np.random.default_rng(1),
                                   np.random.default_rng(2))
    sigma = 1 / np.sqrt(ivar)
    assert sigma[line] > 2 * np.median(sigma[line - 60:line + 60])
    assert np.median(flux / sigma) == pytest.approx(20.0, rel=1e-6)
    assert sigma[wave > 9000].mean() > sigma[(wave > 4500) & (wave < 5500)].mean()  # the red sky is brighter


def test_delayed_tau_weights_are_light_fractions():
    lib = load_library()
    ages = lib.gal_age_gyr[lib.gal_set == "m11_marcs"]
    for seed in range(10):
        weights = delayed_tau_weights(ages, np.random.default_rng(seed))
        assert weights.shape == ages.shape and (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
        assert (weights > 0).sum() >= 2


def test_bad_columns_are_short_interior_stretches():
    masks = np.array([bad_columns(GRID.n_pix, np.random.default_rng(s), 1.0) for s in range(50)])
    counts = masks.sum(axis=1)
    assert (counts >= 1).all() and (counts <= 90).all()
    assert (counts <= 3).any() and (counts >= 20).any()  # from single pixels to long stretches
    assert not bad_columns(GRID.n_pix, np.random.default_rng(0), 0.0).any()


def test_quasar_civ_is_blueshifted_but_z_is_systemic():
    settings = SimulationSettings(realism=Realism(civ_blueshift_kms=(2000.0, 2000.0), qso_width_scatter_dex=0.0))
    loglam, flux, z, _ = quasar_rest(np.random.default_rng(3), settings, z=2.0, extra_rng=np.random.default_rng(5))
    wave = 10**loglam
    near = (wave > 1500) & (wave < 1600)
    peak = wave[near][np.argmax(flux[near] - np.interp(wave[near], [1500, 1600], flux[near][[0, -1]]))]
    assert z == 2.0
    assert peak == pytest.approx(1549.06 * (1 - 2000 / 299792.458), abs=3.0)


def test_recipe_realism_values_and_errors():
    assert Realism.from_dict(None) is None and Realism.from_dict(False) is None
    assert Realism.from_dict(2).strength == 2.0
    assert Realism.from_dict({"strength": 1.5, "calibration_rms": [0.01, 0.1]}).calibration_rms == (0.01, 0.1)
    with pytest.raises(ConfigError, match="unknown realism keys \\['sky'\\]"):
        Realism.from_dict({"sky": 1})
    with pytest.raises(ConfigError, match="strength must be >= 0"):
        Realism.from_dict(-1)


def test_robustness_sets_hold_the_same_new_objects_with_stronger_effects():
    from annotate.simulate.dataset import simulate_training_set

    data = simulate_training_set(40, GRID, seed=0, workers=1, realism={"strength": 1.0}, n_robustness_spectra=30,
                                 n_held_out_spectra=10)
    matched, harder = data["robustness"]["matched"], data["robustness"]["harder"]
    assert (matched["class"] == harder["class"]).all() and np.array_equal(matched["z"], harder["z"])
    assert not np.array_equal(matched["flux"], harder["flux"])
    held = set(data["held_out_star_names"])
    stars = matched["class"] == "STAR"
    assert stars.any() and set(matched["template"][stars]) <= held  # robustness stars are held-out stars
    assert set(data["template"][data["class"] == "STAR"]).isdisjoint(held)
    assert len(data["train_star_indices"]) + len(held) == load_library().n_star


def test_a_strength_range_draws_each_objects_strength_and_keeps_the_objects():
    lib = load_library()
    ranged = Realism(strength=0.5, strength_max=2.0)
    strengths = ranged.strengths(200, 9)
    assert strengths.min() >= 0.5 and strengths.max() <= 2.0 and strengths.std() > 0.3
    np.testing.assert_array_equal(strengths, ranged.strengths(200, 9))    # seeded
    assert Realism(strength=1.0).strengths(5, 9) is None and ranged.top == 2.0 and Realism(1.3).top == 1.3
    sample = draw_sample(12, lib, GRID, seed=9, settings=SimulationSettings(realism=ranged))
    first = ranged.strengths(12, 9)[0]
    fixed = draw_sample(12, lib, GRID, seed=9, settings=SimulationSettings(realism=Realism(strength=first)))
    np.testing.assert_array_equal(sample["z"], fixed["z"])
    np.testing.assert_array_equal(sample["class"], fixed["class"])
    # the first object is drawn from the same streams as in a sample at its own strength
    np.testing.assert_array_equal(sample["flux"][0], fixed["flux"][0])
    assert not np.array_equal(sample["flux"][1:], fixed["flux"][1:])
    # a range of one value is that fixed strength, to the bit
    one = draw_sample(12, lib, GRID, seed=9, settings=SimulationSettings(realism=Realism(1.0, strength_max=1.0)))
    plain = draw_sample(12, lib, GRID, seed=9, settings=SimulationSettings(realism=Realism(1.0)))
    for key in ("flux", "ivar", "mask"):
        np.testing.assert_array_equal(one[key], plain[key])
    with pytest.raises(ConfigError, match="strength_max must be a number >= strength"):
        Realism.from_dict({"strength": 1.0, "strength_max": 0.5})
    with pytest.raises(ConfigError, match="realism strength_max must be a number, got '2'"):
        Realism.from_dict({"strength": 1.0, "strength_max": "2"})


def test_the_harder_robustness_set_is_stronger_than_the_strongest_training_object():
    from annotate.simulate.dataset import simulate_training_set

    ranged = simulate_training_set(20, GRID, seed=0, workers=1, realism={"strength": 0.5, "strength_max": 1.0},
                                   n_robustness_spectra=15, harder_strength=2.0)
    fixed = simulate_training_set(20, GRID, seed=0, workers=1, realism={"strength": 1.0},
                                  n_robustness_spectra=15, harder_strength=2.0)
    np.testing.assert_array_equal(ranged["robustness"]["harder"]["flux"], fixed["robustness"]["harder"]["flux"])
    assert not np.array_equal(ranged["robustness"]["matched"]["flux"], fixed["robustness"]["matched"]["flux"])


def test_a_new_seed_draws_new_objects_and_keeps_the_held_out_stars_of_held_out_seed():
    from annotate.simulate.dataset import held_out_star_indices, simulate_training_set

    first = simulate_training_set(30, GRID, seed=0, workers=1, n_held_out_spectra=5)
    more = simulate_training_set(30, GRID, seed=1, workers=1, n_held_out_spectra=5, held_out_seed=0)
    other = simulate_training_set(30, GRID, seed=1, workers=1, n_held_out_spectra=5)
    n_star = load_library().n_star
    assert list(more["held_out_star_names"]) == list(first["held_out_star_names"])
    assert list(other["held_out_star_names"]) != list(first["held_out_star_names"])
    assert np.array_equal(more["train_star_indices"],
                          np.setdiff1d(np.arange(n_star), held_out_star_indices(n_star, 0.15, 0)))
    assert not np.array_equal(more["z"], first["z"])  # new objects
    assert set(more["template"][more["class"] == "STAR"]).isdisjoint(set(first["held_out_star_names"]))
    low = simulate_training_set(60, GRID, seed=1, workers=1, low_z_fraction=1.0, realism=1.0, n_robustness_spectra=60)
    galaxies = low["class"] == "GALAXY"
    assert galaxies.sum() > 10 and (low["z"][galaxies] < 0.02).all()  # the training sample only
    matched = low["robustness"]["matched"]
    assert (matched["z"][matched["class"] == "GALAXY"] > 0.02).mean() > 0.5
    with pytest.raises(ConfigError, match="low_z_fraction must be between 0 and 1, got 10"):
        simulate_training_set(30, GRID, seed=1, workers=1, low_z_fraction=10)


def test_throughput_falls_at_both_ends_and_dips_at_the_dichroics():
    wave = GRID.wavelength
    realism = Realism(blue_throughput_loss=(0.8, 0.8), red_throughput_loss=(0.5, 0.5), dichroic_depth=(0.5, 0.5))
    t = throughput(GRID, realism, np.random.default_rng(0))
    assert t[0] == pytest.approx(0.2, abs=0.01) and t[-1] == pytest.approx(0.5, abs=0.01)
    middle = (wave > 6500) & (wave < 7300)
    assert t[middle].min() > 0.9
    dip = (wave > 5700) & (wave < 6100)
    assert t[dip].min() < 0.6 * np.median(t[middle])
    off = throughput(GRID, Realism(strength=0.0), np.random.default_rng(0))
    np.testing.assert_allclose(off, 1.0)


def test_another_instruments_range_masks_an_end():
    wave = GRID.wavelength
    masks = [instrument_range(GRID, Realism(range_probability=1.0), np.random.default_rng(s)) for s in range(20)]
    for mask in masks:
        assert mask[0] and mask[-1] and not mask[(wave > 4000) & (wave < 9100)].any()
    assert not instrument_range(GRID, Realism(range_probability=0.0), np.random.default_rng(0)).any()


def test_star_blends_and_class_fractions_shape_the_training_sample_only():
    from annotate.simulate.dataset import simulate_training_set

    data = simulate_training_set(80, GRID, seed=2, workers=1, realism=1.0, class_fractions=[0, 0, 1],
                                 star_blend_fraction=1.0, n_held_out_spectra=20, n_robustness_spectra=60)
    assert (data["class"] == "STAR").all() and np.mean([" & " in t for t in data["template"]]) > 0.8
    names = list(load_library().star_name)
    train = set(data["train_star_indices"])
    for template in data["template"]:
        assert {names.index(part) for part in template.split(" & ")} <= train
    held = data["held_out_stars"]
    matched = data["robustness"]["matched"]
    assert not any(" & " in t for t in np.concatenate([held["template"], matched["template"]]))
    assert set(matched["class"]) == {"GALAXY", "QSO", "STAR"}  # the plain class fractions
    for bad in ([1, 0], [1, -1, 1], [0, 0, 0], "stars"):
        with pytest.raises(ConfigError, match="class_fractions must be three shares"):
            simulate_training_set(10, GRID, seed=1, workers=1, class_fractions=bad)
    with pytest.raises(ConfigError, match="star_blend_fraction must be between 0 and 1, got 2"):
        simulate_training_set(10, GRID, seed=1, workers=1, star_blend_fraction=2)


def test_quasar_lines_are_offset_by_family_with_the_published_scatter():
    """Each line family's peak moves by its own draw (the Balmer lines and the [O III] doublet
    together), z stays systemic; over many quasars the offsets' spread is Shen et al.'s scatter
    times qso_line_scatter and strength; the default, 0, leaves every line at the systemic velocity."""
    from annotate.simulate.realism import QSO_LINE_SCATTER_KMS, line_offset_rng, line_offsets

    on = Realism(civ_blueshift_kms=(0.0, 0.0), qso_width_scatter_dex=0.0, qso_line_scatter=1.0)
    draws = [line_offsets(on, np.random.default_rng(s)) for s in range(4000)]
    for line, family in (("MgII", "MgII"), ("Hbeta", "Balmer"), ("[OIII]5007", "[OIII]"), ("CIII]", "CIII]")):
        values = np.array([d[line] for d in draws])
        assert np.std(values) == pytest.approx(QSO_LINE_SCATTER_KMS[family], rel=0.05)
        assert abs(np.mean(values)) < 4 * QSO_LINE_SCATTER_KMS[family] / np.sqrt(len(values))
    assert all(d["Hbeta"] == d["Halpha"] == d["Hgamma"] and d["[OIII]4959"] == d["[OIII]5007"] for d in draws)
    assert "CIV" not in draws[0]   # the high-ionisation lines keep their blueshift model
    assert line_offsets(Realism(strength=2.0, qso_line_scatter=0.5), np.random.default_rng(1))["MgII"] == \
        pytest.approx(line_offsets(on, np.random.default_rng(1))["MgII"])
    assert Realism().qso_line_scatter == 0.0

    # a quasar with each family moved (seed 14: Mg II +390, the Balmer lines −491, [O III] +43,
    # C III] +64 km/s) against the same quasar with none: around each line the moved spectrum is the
    # still one shifted by that line's draw (to 10 % of their difference unshifted), z systemic
    offsets = line_offsets(on, line_offset_rng(14))
    assert abs(offsets["MgII"]) > 300 and abs(offsets["Hbeta"]) > 400 and abs(offsets["[OIII]5007"]) > 30

    def quasar(realism):
        return quasar_rest(np.random.default_rng(3), SimulationSettings(realism=realism), z=0.5,
                           extra_rng=np.random.default_rng(5), offset_rng=line_offset_rng(14), loglam_step=1e-5)

    loglam, moved, z, _ = quasar(on)
    _, still, _, _ = quasar(replace(on, qso_line_scatter=0.0))
    assert z == 0.5
    wave = 10**loglam
    for line, low, high in (("MgII", 2700, 2900), ("Hbeta", 4700, 4940), ("[OIII]5007", 5000, 5017),
                            ("CIII]", 1850, 1960)):
        window = (wave > low) & (wave < high)
        shifted = np.interp(wave[window] / (1 + offsets[line] / 299792.458), wave, still)
        unshifted = np.abs(moved[window] - still[window]).max()
        assert np.abs(moved[window] - shifted).max() < 0.1 * unshifted, line


def test_quasar_line_offsets_change_only_the_quasars():
    lib = load_library()
    plain = draw_sample(90, lib, GRID, seed=4, settings=SimulationSettings(realism=Realism()))
    moved = draw_sample(90, lib, GRID, seed=4, settings=SimulationSettings(realism=Realism(qso_line_scatter=1.0)))
    for key in ("z", "class", "snr", "mask", "teff"):
        assert np.array_equal(plain[key], moved[key], equal_nan=key == "teff"), key
    quasar = plain["class"] == "QSO"
    assert quasar.any() and (~quasar).any()
    assert np.array_equal(plain["flux"][~quasar], moved["flux"][~quasar])
    assert all(not np.array_equal(plain["flux"][i], moved["flux"][i]) for i in np.flatnonzero(quasar))
    off = draw_sample(90, lib, GRID, seed=4, settings=SimulationSettings(realism=Realism(qso_line_scatter=0.0)))
    assert np.array_equal(plain["flux"], off["flux"])   # the default is off


def _blue_red(loglam, flux):
    """Rest-frame f_λ(4000-4500 Å) / f_λ(6500-7000 Å) of a noiseless rest spectrum."""
    wave = 10.0**loglam
    return np.nanmedian(flux[(wave > 4000) & (wave < 4500)]) / np.nanmedian(flux[(wave > 6500) & (wave < 7000)])


def test_star_forming_continua_are_blue_and_change_only_the_star_forming_galaxies():
    """With `star_forming_continuum`, a galaxy given lines of EW(Hα) ≥ 3 Å gets an ongoing history
    over a set with young populations: the blue cloud's continua (rest f_λ(4000-4500 Å) /
    f_λ(6500-7000 Å) median 1.39 over 2,000 local galaxies in REALISM.md, against 0.56 for the
    others), about half the galaxies, the same objects, and every other object as without it."""
    lib = load_library()
    settings = {on: SimulationSettings(class_fractions=(1, 0, 0), z_galaxy=(0.0, 0.05),
                                       realism=Realism(star_forming_continuum=on)) for on in (False, True)}
    streams = {on: (np.random.default_rng(3), realism_rng(3), star_forming_rng(3)) for on in (False, True)}
    drawn = {on: [galaxy_rest(lib, streams[on][0], settings[on], *streams[on][1:]) for _ in range(300)]
             for on in (False, True)}
    marked = np.array([labels["template"].endswith(":sf") for *_, labels in drawn[True]])
    assert 0.35 < marked.mean() < 0.65   # 55 % get lines, 91 % of those EW(Hα) ≥ 3 Å
    for before, after, sf in zip(drawn[False], drawn[True], marked):
        assert before[2] == after[2]    # the same z: `rng` and `extra_rng` draw as many numbers either way
        assert np.array_equal(before[1], after[1], equal_nan=True) != sf
    ratio = {on: np.array([_blue_red(loglam, flux) for loglam, flux, *_ in drawn[on]]) for on in (False, True)}
    assert np.median(ratio[True][marked]) > 1.0
    assert np.median(ratio[False][marked]) < 0.8   # the same galaxies without it
    assert np.median(ratio[True][~marked]) < 0.8
    # through draw_sample: every spectrum but the star-forming galaxies' is the same to the bit
    plain, sf = (draw_sample(90, lib, GRID, seed=4, settings=SimulationSettings(realism=Realism(star_forming_continuum=on)))
                 for on in (False, True))
    changed = np.char.endswith(sf["template"].astype(str), ":sf")
    assert changed.any() and (~changed).any()
    for key in ("flux", "ivar", "mask"):
        assert np.array_equal(plain[key][~changed], sf[key][~changed]), key
    assert np.array_equal(plain["z"], sf["z"]) and np.array_equal(plain["class"], sf["class"])
    assert Realism.from_dict({"star_forming_continuum": True}).star_forming_continuum
    assert not Realism().star_forming_continuum   # off by default: earlier recipes draw what they did


def test_halpha_equivalent_width_of_a_known_line():
    """A Gaussian Hα of EW 50 Å (σ 2 Å) on a flat continuum reads 50 Å; a gap in the line window
    lowers it; a continuum at or below 0, or no pixel in the continuum windows, gives NaN."""
    wave = np.arange(6400.0, 6700.0, 0.5)
    line = 50.0 * np.exp(-0.5 * ((wave - 6564.61) / 2.0) ** 2) / (2.0 * np.sqrt(2 * np.pi))
    assert halpha_equivalent_width(wave, 3.0 * (1.0 + line)) == pytest.approx(50.0, rel=1e-3)
    gap = np.where(np.abs(wave - 6564.61) < 1.0, np.nan, 1.0 + line)
    assert 20.0 < halpha_equivalent_width(wave, gap) < 40.0
    assert np.isnan(halpha_equivalent_width(wave, line - 1.0))
    assert np.isnan(halpha_equivalent_width(wave, np.where(np.abs(wave - 6564.61) > 10.0, np.nan, 1.0 + line)))


def test_starbursts_raise_the_lines_of_that_share_of_galaxies_and_change_nothing_else():
    """With `starburst_share`, that share of the galaxies given lines get EW(Hα) of 150-1,000 Å
    (STARBURST_EW_AA) in place of their 2-150 Å: the same galaxies, z and continua, only their
    lines stronger; without the star-forming continua every other object as without it, to the
    bit, and with them at a share of 0 every galaxy as without the starbursts' stream."""
    lib = load_library()
    drawn = {}
    for share in (0.0, 1.0):
        settings = SimulationSettings(class_fractions=(1, 0, 0), z_galaxy=(0.0, 0.05), realism=Realism(starburst_share=share))
        rng, extra, sf, burst = np.random.default_rng(6), realism_rng(6), star_forming_rng(6), starburst_rng(6)
        drawn[share] = [galaxy_rest(lib, rng, settings, extra, sf, burst) for _ in range(120)]
    ew = {share: np.array([halpha_equivalent_width(10.0 ** loglam, flux) for loglam, flux, *_ in drawn[share]])
          for share in drawn}
    changed = np.array([not np.array_equal(a[1], b[1], equal_nan=True) for a, b in zip(drawn[0.0], drawn[1.0])])
    assert 0.4 < changed.mean() < 0.7   # 55 % of galaxies get lines
    assert np.array_equal(changed, [labels["template"].startswith("starburst:") for *_, labels in drawn[1.0]])
    assert all(a[2] == b[2] for a, b in zip(drawn[0.0], drawn[1.0]))   # the same z: no other stream moves
    assert np.all(ew[0.0][changed] < 200.0)
    # the measured EW of the starbursts lies in the drawn range, less what falls outside ±10 Å
    assert np.all((ew[1.0][changed] > 0.8 * STARBURST_EW_AA[0]) & (ew[1.0][changed] < 1.05 * STARBURST_EW_AA[1]))
    assert np.median(ew[1.0][changed]) > 250.0   # log-uniform over 150-1,000 Å: median 387 Å
    # through draw_sample: a share of 0.5, and every spectrum but the changed galaxies' as without it
    plain, burst = (draw_sample(120, lib, GRID, seed=8, settings=SimulationSettings(realism=Realism(starburst_share=share)))
                    for share in (0.0, 0.5))
    moved = np.any(plain["flux"] != burst["flux"], axis=1)
    assert moved.any() and set(burst["class"][moved]) == {"GALAXY"}
    assert np.array_equal(moved, np.char.startswith(burst["template"], "starburst:"))   # marked in the label
    assert 0.1 < moved.sum() / (burst["class"] == "GALAXY").sum() < 0.45   # 0.55 × 0.5 expected
    for key in ("ivar", "mask"):
        assert np.array_equal(plain[key][~moved], burst[key][~moved]), key
    assert np.array_equal(plain["z"], burst["z"]) and np.array_equal(plain["class"], burst["class"])
    # with the star-forming continua, a starburst's continuum holds a population a few Myr old: bluer
    # than the same objects drawn without it (rest f_λ(4000-4500 Å) / f_λ(6500-7000 Å), REALISM.md)
    blue = {}
    for share in (0.0, 1.0):
        settings = SimulationSettings(class_fractions=(1, 0, 0), z_galaxy=(0.0, 0.05),
                                      realism=Realism(star_forming_continuum=True, starburst_share=share))
        rng, extra, sf, burst = np.random.default_rng(7), realism_rng(7), star_forming_rng(7), starburst_rng(7)
        blue[share] = [(_blue_red(loglam, flux), labels["template"]) for loglam, flux, _, labels in
                       (galaxy_rest(lib, rng, settings, extra, sf, burst) for _ in range(150))]
    marked = np.array([template.startswith("starburst:") for _, template in blue[1.0]])
    ratio = {share: np.array([value for value, _ in blue[share]]) for share in blue}
    assert marked.sum() > 40 and np.median(ratio[1.0][marked]) > 1.25 * np.median(ratio[0.0][marked])
    # a share of 0 draws nothing from the starbursts' stream: with the star-forming continua on, the
    # galaxies are those drawn without the stream at all (as before the share existed)
    settings = SimulationSettings(class_fractions=(1, 0, 0), realism=Realism(star_forming_continuum=True))
    streams = {with_stream: (np.random.default_rng(9), realism_rng(9), star_forming_rng(9),
                             starburst_rng(9) if with_stream else None) for with_stream in (False, True)}
    drawn = {key: [galaxy_rest(lib, rng, settings, extra, sf, burst) for _ in range(60)]
             for key, (rng, extra, sf, burst) in streams.items()}
    assert all(np.array_equal(a[1], b[1], equal_nan=True) and a[3] == b[3] for a, b in zip(drawn[False], drawn[True]))
    assert Realism.from_dict({"starburst_share": 0.15}).starburst_share == 0.15
    assert Realism().starburst_share == 0.0   # off by default: earlier recipes draw what they did


def _line_flux(wave, flux, centre, half=12.0):
    """Flux of a line alone in `flux` (a difference of two spectra), summed over ±half Å."""
    near = np.abs(wave - centre) < half
    return float(np.sum((flux * np.gradient(wave))[near]))


def test_weak_nebular_lines_add_their_lines_at_their_ratios_and_change_nothing_else():
    """With `weak_nebular_lines`, a galaxy given lines also gets WEAK_GALAXY_LINES: the difference
    from the same galaxy without them is those lines alone, each at its table ratio to Hα times
    the ratio draw of the line it follows (He I: Hα's, fixed; [Ne III] and [Ar III]: [O III]'s;
    H9 and H8: Hδ's, which varies), dimmed in the blue by the dust as the other lines are; no other draw moves,
    and every spectrum but those galaxies' is the same to the bit."""
    lib = load_library()
    table = {name: (centre, ratio) for name, centre, ratio, _ in WEAK_GALAXY_LINES}
    assert all(tied in GALAXY_LINE_INDEX for *_, tied in WEAK_GALAXY_LINES)

    def factor(wave, added, name, he1, half=8.0):
        """The line's flux in `added` over its table ratio, with He I 5876 (Hα's fixed factor) as Hα."""
        return _line_flux(wave, added, table[name][0], half) / he1 * table["HeI5876"][1] / table[name][1]

    for ebv in (0.0, 0.15):
        drawn = {}
        for on in (False, True):
            settings = SimulationSettings(class_fractions=(1, 0, 0), z_galaxy=(0.0, 0.05),
                                          realism=Realism(galaxy_ebv_mean=ebv, weak_nebular_lines=on))
            rng, extra, sf, burst = np.random.default_rng(12), realism_rng(12), star_forming_rng(12), starburst_rng(12)
            drawn[on] = [galaxy_rest(lib, rng, settings, extra, sf, burst) for _ in range(40)]
        with_lines, neon, oxygen, dimmed, balmer = 0, [], [], [], []
        for (loglam, before, z0, _), (_, after, z1, _) in zip(drawn[False], drawn[True]):
            assert z0 == z1
            wave, added = 10.0 ** loglam, np.nan_to_num(after - before)
            ew = halpha_equivalent_width(wave, before)
            if not added.any():   # a galaxy without lines: its stars' Hα absorption only
                assert ew < 1.0
                continue
            with_lines += 1
            he1, he2 = (_line_flux(wave, added, table[name][0], 12.0) for name in ("HeI5876", "HeI6678"))
            ne, ar = factor(wave, added, "[NeIII]3869", he1), factor(wave, added, "[ArIII]7136", he1, 12.0)
            if ebv == 0:
                # Hα's flux is the measured EW (over ±10 Å) times the median flux within 50 Å, lines
                # included; where the lines are strong, the stars' Hα absorption weighs little in it
                if ew > 20.0:
                    continuum = np.nanmedian(before[np.abs(wave - 6564.61) < 50])
                    assert he1 / (ew * continuum) == pytest.approx(table["HeI5876"][1], rel=0.1)
                assert he1 / he2 == pytest.approx(table["HeI5876"][1] / table["HeI6678"][1], rel=0.02)
                assert ne == pytest.approx(ar, rel=0.02) and 0.5 * 0.97 < ne < 2.0 * 1.03
                h8 = factor(wave, added, "H8+HeI3889", he1)
                assert factor(wave, added, "H9", he1) == pytest.approx(h8, rel=0.02) and 0.5 * 0.97 < h8 < 2.0 * 1.03
                balmer.append(h8)
                if ew > 15.0:   # [O III] 5007's own factor, measured in `before` over its local continuum
                    side = ((wave > 4975) & (wave < 4995)) | ((wave > 5020) & (wave < 5045))
                    neon.append(ne)
                    oxygen.append(_line_flux(wave, before - np.nanmedian(before[side]), 5008.24, 10.0) / he1
                                  * table["HeI5876"][1] / 0.36)
            else:
                dimmed.append(ne / ar)
            assert np.all(added[np.abs(wave - 6564.61) < 8] == 0)   # Hα itself untouched
        assert 15 < with_lines < 35   # 55 % of galaxies get lines
        if ebv == 0:   # [Ne III] follows [O III]: across galaxies their factors rise together
            assert len(neon) > 8 and np.corrcoef(neon, oxygen)[0, 1] > 0.9
            # the high Balmer lines follow Hδ's draw, not Hα's fixed 1 (under which they would not vary)
            assert np.std(balmer) > 0.2
        else:   # the dust dims [Ne III] 3869 against [Ar III] 7136, which share their factor (E(B-V) ≥ 0)
            assert np.all(np.array(dimmed) < 1.005) and np.median(dimmed) < 0.9
    # through draw_sample: only the galaxies with lines change
    plain, weak = (draw_sample(60, lib, GRID, seed=13, settings=SimulationSettings(realism=Realism(weak_nebular_lines=on)))
                   for on in (False, True))
    moved = np.any(plain["flux"] != weak["flux"], axis=1)
    assert moved.any() and set(weak["class"][moved]) == {"GALAXY"}
    for key in ("ivar", "mask"):
        assert np.array_equal(plain[key][~moved], weak[key][~moved]), key
    for key in ("z", "class", "snr", "template"):
        assert np.array_equal(plain[key], weak[key]), key
    assert Realism.from_dict({"weak_nebular_lines": True}).weak_nebular_lines
    assert not Realism().weak_nebular_lines   # off by default: earlier recipes draw what they did


def test_cosmic_rays_add_hits_and_change_nothing_else():
    """Hits of 1-3 pixels at usable pixels, peaks 10-1000 times the median noise, in about the
    share of spectra asked for; the ivar, mask, objects and every other pixel as without them."""
    lib = load_library()
    plain = draw_sample(120, lib, GRID, seed=9, settings=SimulationSettings(realism=Realism()))
    hit = draw_sample(120, lib, GRID, seed=9,
                      settings=SimulationSettings(realism=Realism(cosmic_ray_probability=0.5)))
    for key in ("ivar", "mask", "z", "class", "snr"):
        assert np.array_equal(plain[key], hit[key]), key
    changed = hit["flux"] != plain["flux"]
    assert np.array_equal(changed.sum(axis=1), hit["cosmic_ray_pixels"])
    assert not (changed & hit["mask"]).any()
    has = hit["cosmic_ray_pixels"] > 0
    assert 0.35 < has.mean() < 0.65
    assert hit["cosmic_ray_pixels"].max() <= 9
    for i in np.flatnonzero(has):
        sigma = np.median(1.0 / np.sqrt(hit["ivar"][i][hit["ivar"][i] > 0]))
        excess = (hit["flux"][i] - plain["flux"][i])[changed[i]] / sigma
        assert 10.0 * 0.999 <= excess.max() <= 3 * 1000.0 * 1.001   # hits may fall on one another
        assert excess.min() >= 0.3 * 10.0 * 0.999
    assert "cosmic_ray_pixels" not in plain


@pytest.mark.parametrize("spec, words", [({"cosmic_ray_probability": 1.5}, "cosmic_ray_probability"),
                                         ({"cosmic_ray_sigma": [0, 10]}, "cosmic_ray_sigma"),
                                         ({"cosmic_ray_sigma": [100, 10]}, "cosmic_ray_sigma"),
                                         ({"cosmic_ray_widths": [0, 0, 0]}, "cosmic_ray_widths"),
                                         ({"cosmic_ray_widths": [1, 1]}, "cosmic_ray_widths"),
                                         ({"qso_line_scatter": -1}, "qso_line_scatter"),
                                         ({"qso_line_scatter": "wide"}, "qso_line_scatter"),
                                         ({"star_forming_continuum": "yes"}, "star_forming_continuum"),
                                         ({"starburst_share": 1.5}, "starburst_share"),
                                         ({"starburst_share": True}, "starburst_share"),
                                         ({"weak_nebular_lines": 1}, "weak_nebular_lines")])
def test_cosmic_ray_and_line_offset_settings_are_checked(spec, words):
    with pytest.raises(ConfigError, match=words):
        Realism.from_dict(spec)


def test_holding_effect_groups_keeps_them_at_another_strength():
    from annotate.simulate.realism import HOLD_GROUPS

    lib = load_library()
    harder = Realism(strength=2.8, qso_line_scatter=1.0)
    draw = lambda realism: draw_sample(24, lib, GRID, seed=5, settings=SimulationSettings(realism=realism))  # noqa: E731
    strong = draw(harder)
    # every group held at 1.5 is the realism of strength 1.5: the groups hold every scaled effect
    everything = draw(harder.holding(tuple(HOLD_GROUPS), 1.5))
    at_matched = draw(Realism(strength=1.5, qso_line_scatter=1.0))
    for key in ("flux", "ivar"):
        np.testing.assert_allclose(everything[key], at_matched[key], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(everything["mask"], at_matched["mask"])
    # the quasars' dust alone: only the quasars change, each by its attenuation
    dust = draw(harder.holding(("qso_dust",), 1.5))
    qso = strong["class"] == "QSO"
    assert qso.any() and (~qso).any()
    np.testing.assert_array_equal(dust["flux"][~qso], strong["flux"][~qso])
    assert not np.array_equal(dust["flux"][qso], strong["flux"][qso])
    assert harder.holding(("calibration",), 1.4).calibration_rms == pytest.approx((0.01, 0.1))
    with pytest.raises(ConfigError, match="unknown effect groups \\['dust'\\]"):
        harder.holding(("dust",), 1.5)
    with pytest.raises(ConfigError, match="only a realism of one strength"):
        Realism(strength=1.0, strength_max=2.0).holding(("sky",), 1.5)
    with pytest.raises(ConfigError, match="strengths above 0, not 2.8 and 0"):
        harder.holding(("sky",), 0.0)


def test_a_robustness_set_can_hold_effects_in_its_harder_half():
    from annotate.simulate.dataset import robustness_sets, simulate
    from annotate.simulate.realism import HOLD_GROUPS

    held = np.arange(0, load_library().n_star, 7)
    effects = Realism(strength=1.0, strength_max=2.0)
    plain = robustness_sets(12, GRID, 3, held, effects, 1.4, workers=1)
    calm = robustness_sets(12, GRID, 3, held, effects, 1.4, workers=1, hold=("calibration", "sky"))
    np.testing.assert_array_equal(plain["matched"]["flux"], calm["matched"]["flux"])
    assert not np.array_equal(plain["harder"]["flux"], calm["harder"]["flux"])
    np.testing.assert_array_equal(plain["harder"]["z"], calm["harder"]["z"])
    # every group held: the harder set is the objects at the matched sets' mean strength, 1.5
    still = robustness_sets(12, GRID, 3, held, effects, 1.4, workers=1, hold=tuple(HOLD_GROUPS))["harder"]
    middle = simulate(12, GRID, 5, held, SimulationSettings(realism=Realism(strength=1.5)), workers=1)
    np.testing.assert_allclose(still["flux"], middle["flux"], rtol=1e-9, atol=1e-12)
