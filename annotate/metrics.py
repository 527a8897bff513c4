"""Cross-check metrics: plain functions over arrays (NaN-aware where stated)."""

from __future__ import annotations

import numpy as np

from . import CLASS_NAMES, SPEED_OF_LIGHT_KMS

CATASTROPHIC_KMS = {"GALAXY": 1000.0, "STAR": 1000.0, "QSO": 3000.0}


def velocity_offset_kms(z_pred: np.ndarray, z_ref: np.ndarray) -> np.ndarray:
    """|z_pred - z_ref| c / (1 + z_ref), km/s (Ross et al. 2020)."""
    return np.abs(z_pred - z_ref) * SPEED_OF_LIGHT_KMS / (1.0 + z_ref)


def catastrophic(z_pred: np.ndarray, z_ref: np.ndarray, ref_class: np.ndarray) -> np.ndarray:
    """(n,) bool: Ross et al. 2020 redshift failure against the reference, by the reference class;
    False wherever the reference or the prediction is missing."""
    ref_class = np.asarray(ref_class)
    names, index = np.unique(ref_class.astype(str), return_inverse=True)
    threshold = np.array([CATASTROPHIC_KMS.get(str(c), np.nan) for c in names] or [np.nan])[index.reshape(-1)]
    with np.errstate(invalid="ignore"):
        offset = velocity_offset_kms(z_pred, z_ref)
        return np.where(np.isfinite(offset) & np.isfinite(threshold), offset > threshold, False)


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    true, pred = np.asarray(true), np.asarray(pred)
    return float(np.mean(true == pred)) if len(true) else float("nan")


def confusion_matrix(true, pred, labels=CLASS_NAMES) -> np.ndarray:
    """(k, k) int counts: rows = true label, columns = predicted label, in `labels` order."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, pred):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    return matrix


def r2_score(true: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination over pairs where both are finite; NaN for fewer than 2 pairs."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    ok = np.isfinite(true) & np.isfinite(pred)
    if ok.sum() < 2:
        return float("nan")
    residual = np.sum((true[ok] - pred[ok]) ** 2)
    total = np.sum((true[ok] - true[ok].mean()) ** 2)
    return float(1.0 - residual / total) if total > 0 else float("nan")


def nmad(z_true: np.ndarray, z_pred: np.ndarray) -> float:
    """NMAD = 1.4826 · median(|Δz| / (1 + z_true)), the project's definition (the cross-check
    issue's, after SpecPT). Unlike the photometric-redshift σ_MAD it does not subtract the median
    residual first, so a bias counts as scatter."""
    dz = np.abs(np.asarray(z_pred, float) - z_true) / (1.0 + np.asarray(z_true, float))
    dz = dz[np.isfinite(dz)]
    return float(1.4826 * np.median(dz)) if len(dz) else float("nan")


def robust_spread(values: np.ndarray) -> float:
    """1.4826 · median |x − median x| over the finite values: the σ of a Gaussian, robust to
    outliers (1 for the pulls of a calibrated uncertainty); NaN without values."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if len(values) else float("nan")


def outlier_fraction(z_true: np.ndarray, z_pred: np.ndarray, threshold: float = 0.15) -> float:
    """η: fraction with |Δz| / (1 + z_true) > threshold."""
    dz = np.abs(np.asarray(z_pred, float) - z_true) / (1.0 + np.asarray(z_true, float))
    dz = dz[np.isfinite(dz)]
    return float(np.mean(dz > threshold)) if len(dz) else float("nan")


def gaussian_crps(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """Mean CRPS of Gaussian forecasts N(mu, sigma²) for outcomes y (closed form, Gneiting+ 2005),
    over the finite triples."""
    from scipy.special import erf

    y, mu, sigma = (np.asarray(a, float) for a in (y, mu, sigma))
    ok = np.isfinite(y) & np.isfinite(mu) & np.isfinite(sigma)
    y, mu, sigma = y[ok], mu[ok], np.maximum(sigma[ok], 1e-12)
    w = (y - mu) / sigma
    pdf = np.exp(-0.5 * w**2) / np.sqrt(2 * np.pi)
    cdf = 0.5 * (1 + erf(w / np.sqrt(2)))
    crps = sigma * (w * (2 * cdf - 1) + 2 * pdf - 1 / np.sqrt(np.pi))
    return float(np.mean(crps)) if len(crps) else float("nan")


def per_class_recall(true, pred, labels=CLASS_NAMES) -> dict:
    """label -> recall (NaN for a label with no true rows)."""
    matrix = confusion_matrix(true, pred, labels)
    totals = matrix.sum(axis=1)
    return {label: float(matrix[i, i] / totals[i]) if totals[i] else float("nan") for i, label in enumerate(labels)}


def macro_f1(true, pred, labels=CLASS_NAMES) -> float:
    """Unweighted mean of the per-class F1 over the labels that occur (true or predicted)."""
    matrix = confusion_matrix(true, pred, labels)
    scores = []
    for i in range(len(labels)):
        tp, fp, fn = matrix[i, i], matrix[:, i].sum() - matrix[i, i], matrix[i, :].sum() - matrix[i, i]
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def rmse(true: np.ndarray, pred: np.ndarray) -> float:
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    ok = np.isfinite(true) & np.isfinite(pred)
    return float(np.sqrt(np.mean((pred[ok] - true[ok]) ** 2))) if ok.any() else float("nan")


def bias(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean of pred − true over finite pairs."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    ok = np.isfinite(true) & np.isfinite(pred)
    return float(np.mean(pred[ok] - true[ok])) if ok.any() else float("nan")


def within_sigma(true: np.ndarray, pred: np.ndarray, sigma: np.ndarray, k: float) -> float:
    """Fraction of rows with |pred − true| ≤ k·σ (calibration of a stated uncertainty)."""
    true, pred, sigma = (np.asarray(a, float) for a in (true, pred, sigma))
    ok = np.isfinite(true) & np.isfinite(pred) & np.isfinite(sigma)
    return float(np.mean(np.abs(pred[ok] - true[ok]) <= k * sigma[ok])) if ok.any() else float("nan")


SNR_BINS = (0, 1, 2, 5, 7, 10, 20, 30, 40, 50, np.inf)  # the Spectromer paper's bins


def success_by_snr(snr: np.ndarray, failed: np.ndarray, edges=SNR_BINS) -> list[dict]:
    """Per S/N bin [lo, hi): count and success rate (1 − failure fraction); NaN where empty."""
    snr, failed = np.asarray(snr, float), np.asarray(failed, bool)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (snr >= lo) & (snr < hi)
        n = int(inside.sum())
        out.append({"snr_min": float(lo), "snr_max": float(hi) if np.isfinite(hi) else None, "n": n,
                    "success_rate": float(1.0 - failed[inside].mean()) if n else float("nan")})
    return out


def summary(reference: dict, columns: dict, usable: np.ndarray) -> dict:
    """The short cross-check printed after a run, over `usable` rows (predicted, selected, with a
    reference class and z): counts, class accuracy, z R², NMAD, η, Ross et al. catastrophic rate,
    and Teff/logg/[Fe/H] R² for reference stars."""
    ref_class = reference["class"][usable]
    pred_class = columns["PRED_CLASS"][usable]
    z_ref, z_pred = reference["z"][usable], columns["PRED_Z"][usable]
    result = {
        "rows_compared": int(usable.sum()),
        "class_accuracy": accuracy(ref_class, pred_class),
        "z_r2": r2_score(z_ref, z_pred),
        "z_nmad": nmad(z_ref, z_pred),
        "z_eta": outlier_fraction(z_ref, z_pred),
        "z_catastrophic_rate": float(np.mean(catastrophic(z_pred, z_ref, ref_class))) if usable.any() else float("nan"),
    }
    stars = ref_class == "STAR"
    for role in ("teff", "logg", "feh"):
        true = reference[role][usable][stars]
        result[f"{role}_r2"] = r2_score(true, columns[f"PRED_{role.upper()}"][usable][stars])
        result[f"{role}_n"] = int(np.isfinite(true).sum())
    return result
