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
    threshold = np.array([CATASTROPHIC_KMS.get(str(c), np.nan) for c in ref_class])
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


def outlier_fraction(z_true: np.ndarray, z_pred: np.ndarray, threshold: float = 0.15) -> float:
    """η: fraction with |Δz| / (1 + z_true) > threshold."""
    dz = np.abs(np.asarray(z_pred, float) - z_true) / (1.0 + np.asarray(z_true, float))
    dz = dz[np.isfinite(dz)]
    return float(np.mean(dz > threshold)) if len(dz) else float("nan")


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
