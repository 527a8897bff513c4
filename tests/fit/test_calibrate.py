"""The σ_z calibration's folds and its choice of scale and floor (`annotate.fit.calibrate`)."""

import numpy as np
import pytest

from annotate import SPEED_OF_LIGHT_KMS
from annotate.fit.calibrate import library_fold_fits, library_folds, scale_and_floor, training_templates


def test_library_folds_split_the_training_populations_by_library():
    lib, populations, _ = training_templates()
    folds = library_folds(lib, populations)
    assert list(folds) == list(dict.fromkeys(lib.gal_set[populations]))
    assert len(folds) == 3
    for name, fold in folds.items():
        assert set(lib.gal_set[fold]) == {name}
    np.testing.assert_array_equal(np.sort(np.concatenate(list(folds.values()))), populations)


def test_scale_and_floor_recover_a_known_pair():
    """Velocity errors drawn from N(0, √((1.5 σ_stat)² + (20 km/s)²)), σ_stat falling with S/N as
    a fit's does (the bins by S/N then tell the scale, which the low S/N sets, from the floor,
    which the high S/N sets): the grid search finds scale 1.5 and floor 20 km/s within a grid
    step or two."""
    rng = np.random.default_rng(3)
    n = 20000
    snr = rng.uniform(1.0, 60.0, n)
    sigma_kms = 300.0 / snr
    dv = rng.normal(0.0, np.hypot(1.5 * sigma_kms, 20.0))
    fits = {"z": np.zeros(n), "fit_z": dv / SPEED_OF_LIGHT_KMS, "snr": snr}
    fits["fit_z_err"] = sigma_kms / SPEED_OF_LIGHT_KMS * (1 + fits["fit_z"])
    grids = np.round(np.arange(1.0, 2.51, 0.05), 2), np.arange(0.0, 40.1, 1.0)  # the calibration's steps
    scale, floor = scale_and_floor(fits, np.ones(n, bool), *grids)
    assert scale == pytest.approx(1.5, abs=0.1) and floor == pytest.approx(20.0, abs=2.0)
    # rows left out of `chosen` do not count: errors 10× larger there change nothing
    fits2 = {key: np.concatenate([value, value]) for key, value in fits.items()}
    fits2["fit_z"][n:] *= 10
    assert scale_and_floor(fits2, np.arange(2 * n) < n, *grids) == (scale, floor)


def test_library_fold_galaxies_are_fitted_without_their_library(monkeypatch):
    """Two galaxies per library, each fitted with a galaxy basis built from the other libraries'
    training populations alone: every row names its library, and the fit finds the galaxies (no
    calibration: σ_z from the curvature alone)."""
    from annotate.fit import build, calibrate

    built = []

    def recording(population_train, star_train, qso=None, n_star_pca=build.N_STAR_PCA):
        built.append(np.asarray(population_train))
        return build.build_in_memory(population_train, star_train, qso, n_star_pca)

    monkeypatch.setattr(calibrate, "build_in_memory", recording)
    fits = library_fold_fits(6, realism=0.0)
    lib, populations, _ = training_templates()
    folds = library_folds(lib, populations)
    assert list(fits["library"]) == [name for name in folds for _ in range(2)]
    assert len(built) == 3
    for train, (name, fold) in zip(built, folds.items()):
        assert name not in set(lib.gal_set[train])
        np.testing.assert_array_equal(np.sort(train), np.setdiff1d(populations, fold))
    assert (fits["class"] == "GALAXY").all()
    assert (fits["fit_class"] == "GALAXY").sum() >= 5
    dv = (fits["fit_z"] - fits["z"]) * SPEED_OF_LIGHT_KMS / (1 + fits["z"])
    assert np.median(np.abs(dv)) < 100.0
    assert (fits["fit_z_err"] > 0).all()
