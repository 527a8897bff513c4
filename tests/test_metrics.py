import numpy as np
import pytest

from annotate.metrics import (
    accuracy, bias, confusion_matrix, gaussian_crps, macro_f1, nmad, outlier_fraction, per_class_recall, r2_score, rmse,
    success_by_snr, within_sigma,
)
from annotate.metrics import catastrophic, velocity_offset_kms


def test_confusion_matrix_known_case():
    true = ["GALAXY", "GALAXY", "QSO", "STAR", "STAR", "STAR"]
    pred = ["GALAXY", "QSO", "QSO", "STAR", "GALAXY", "STAR"]
    assert confusion_matrix(true, pred).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert accuracy(np.array(true), np.array(pred)) == pytest.approx(4 / 6)


def test_r2_perfect_mean_and_nan_pairs():
    true = np.array([1.0, 2.0, 3.0, np.nan])
    assert r2_score(true, true) == 1.0
    assert r2_score(true, np.array([2.0, 2.0, 2.0, 5.0])) == pytest.approx(0.0)
    assert np.isnan(r2_score(np.array([1.0]), np.array([1.0])))


def test_nmad_and_eta_of_known_residuals():
    z_true = np.zeros(5)
    z_pred = np.array([0.01, -0.02, 0.03, 0.2, -0.5])
    assert nmad(z_true, z_pred) == pytest.approx(1.4826 * 0.03)
    assert outlier_fraction(z_true, z_pred) == pytest.approx(2 / 5)
    # a constant bias counts: |Δz|/(1+z) = 0.05 + (0, 0.001, -0.001, 0.002) has median 0.0505
    assert nmad(np.full(4, 1.0), np.full(4, 1.0) + 0.1 + np.array([0, 0.002, -0.002, 0.004])) == pytest.approx(
        1.4826 * 0.0505, rel=1e-6)


def test_ross_2020_thresholds_by_reference_class():
    z_ref = np.array([0.1, 0.1, 2.0, 2.0, 0.0])
    # 1100 km/s for the galaxy, 900 for the second galaxy, 2900 and 3100 km/s for quasars
    c = 299792.458
    offsets = np.array([1100, 900, 2900, 3100, 1500]) / c
    z_pred = z_ref + offsets * (1 + z_ref)
    ref_class = np.array(["GALAXY", "GALAXY", "QSO", "QSO", ""])
    np.testing.assert_allclose(velocity_offset_kms(z_pred, z_ref), [1100, 900, 2900, 3100, 1500])
    assert catastrophic(z_pred, z_ref, ref_class).tolist() == [True, False, False, True, False]


def test_gaussian_crps_closed_form():
    # CRPS(N(0,1), 0) = 2 φ(0) - 1/√π = (√2 - 1)/√π
    assert gaussian_crps(np.array([0.0]), np.array([0.0]), np.array([1.0])) == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi))
    # far from the forecast CRPS tends to |y - mu|
    assert gaussian_crps(np.array([100.0]), np.array([0.0]), np.array([1.0])) == pytest.approx(100 - 1 / np.sqrt(np.pi), rel=1e-6)


def test_f1_recall_of_a_known_confusion_matrix():
    true = ["GALAXY"] * 4 + ["QSO"] * 2 + ["STAR"] * 4
    pred = ["GALAXY", "GALAXY", "GALAXY", "STAR", "QSO", "GALAXY", "STAR", "STAR", "STAR", "STAR"]
    assert confusion_matrix(true, pred).tolist() == [[3, 0, 1], [1, 1, 0], [0, 0, 4]]
    assert per_class_recall(true, pred) == {"GALAXY": 0.75, "QSO": 0.5, "STAR": 1.0}
    # F1: GALAXY 2·3/(6+1+1) = 0.75, QSO 2/(2+0+1) = 2/3, STAR 8/(8+1+0) = 8/9
    assert macro_f1(true, pred) == pytest.approx((0.75 + 2 / 3 + 8 / 9) / 3)


def test_rmse_bias_calibration_and_snr_bins():
    true = np.array([0.0, 0.0, 0.0, 0.0])
    pred = np.array([0.1, -0.1, 0.3, np.nan])
    assert rmse(true, pred) == pytest.approx(np.sqrt((0.01 + 0.01 + 0.09) / 3))
    assert bias(true, pred) == pytest.approx(0.1)
    assert within_sigma(true, pred, np.full(4, 0.2), 1) == pytest.approx(2 / 3)
    assert within_sigma(true, pred, np.full(4, 0.2), 2) == pytest.approx(1.0)
    bins = success_by_snr(np.array([0.5, 1.5, 1.7, 60.0]), np.array([True, False, True, False]))
    assert [b["n"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[0]["success_rate"] == 0.0 and bins[1]["success_rate"] == 0.5 and bins[-1]["success_rate"] == 1.0
    assert np.isnan(bins[2]["success_rate"])
