"""The report's numbers: which rows are compared, the classification, redshift, pull and
stellar metrics (final and ViT alone), the disagreements, and what to look at first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import CLASS_NAMES
from ..flags import PredFlag
from ..metrics import (
    accuracy, bias, catastrophic, confusion_matrix, gaussian_crps, macro_f1, nmad, outlier_fraction,
    per_class_recall, r2_score, rmse, robust_spread, success_by_snr, velocity_offset_kms, within_sigma,
)
from .read import FINAL_COLUMNS, STELLAR, STELLAR_VIT, VIT_COLUMNS, has_vit, read_annotated


# the fit and the ViT agree with each other within this, and the fit is this sure (Δχ² to the next
# other solution), but both disagree with the pipeline: a likely pipeline failure
AGREE_KMS, CONFIDENT_DELTACHI2 = 1000.0, 25.0


LOW_ACCURACY = 0.95  # below it, the report names the confusion cell that dominates the errors


def compared_predictions(pred: dict, compared: np.ndarray, columns=FINAL_COLUMNS) -> tuple:
    """(class (m,) str, z (m,) float, z_err (m,) float) of the compared rows from one set of
    prediction columns (FINAL_COLUMNS or VIT_COLUMNS)."""
    name_class, name_z, name_err = columns
    return (pred[name_class][compared].astype(str), np.asarray(pred[name_z], float)[compared],
            np.asarray(pred[name_err], float)[compared])


def pulls(z_ref: np.ndarray, z_pred: np.ndarray, z_err: np.ndarray) -> np.ndarray:
    """(m,) float: (z_pred − z_ref) / z_err, the residual in units of the stated 1σ, where finite
    (a NaN or zero z_err gives none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = (np.asarray(z_pred, float) - np.asarray(z_ref, float)) / np.asarray(z_err, float)
    return pull[np.isfinite(pull)]


def pull_summary(pull: np.ndarray) -> dict:
    """n, median, robust spread (1.4826·median |pull − median|, 1 for a calibrated z_err) and the
    fractions with |pull| ≤ 1 and ≤ 2 (0.683 and 0.954 for Gaussian errors); NaN without pulls."""
    if not len(pull):
        return {"n": 0, "median": float("nan"), "robust_spread": float("nan"),
                "within_1sigma": float("nan"), "within_2sigma": float("nan")}
    median = float(np.median(pull))
    return {"n": int(len(pull)), "median": median, "robust_spread": robust_spread(pull),
            "within_1sigma": float(np.mean(np.abs(pull) <= 1.0)), "within_2sigma": float(np.mean(np.abs(pull) <= 2.0))}


def assess(ref_class: np.ndarray, z_ref: np.ndarray, snr: np.ndarray, pred_class: np.ndarray,
           z_pred: np.ndarray, z_err: np.ndarray) -> dict:
    """The "classification" and "redshift" blocks of one set of predictions over the compared rows:
    ref_class, pred_class (m,) str; z_ref, z_pred, z_err (m,) float; snr (m,) the pipeline's S/N."""
    failed = catastrophic(z_pred, z_ref, ref_class)
    residual = np.abs(z_pred - z_ref)
    global_sigma = float(np.sqrt(np.mean((z_pred - z_ref) ** 2))) if len(z_ref) else float("nan")
    return {
        "classification": {
            "accuracy": accuracy(ref_class, pred_class), "macro_f1": macro_f1(ref_class, pred_class),
            "recall": per_class_recall(ref_class, pred_class), "labels": list(CLASS_NAMES),
            "confusion_matrix": confusion_matrix(ref_class, pred_class).tolist(),
        },
        "redshift": {
            "r2": r2_score(z_ref, z_pred), "rmse": rmse(z_ref, z_pred), "bias": bias(z_ref, z_pred),
            "nmad": nmad(z_ref, z_pred), "eta": outlier_fraction(z_ref, z_pred),
            "catastrophic_rate": float(failed.mean()) if len(failed) else float("nan"),
            "catastrophic_rate_by_class": {c: float(failed[ref_class == c].mean()) if (ref_class == c).any()
                                           else float("nan") for c in CLASS_NAMES},
            "success_by_snr": success_by_snr(snr, failed),
            "crps": gaussian_crps(z_ref, z_pred, z_err),
            "crps_global_sigma": gaussian_crps(z_ref, z_pred, np.full(len(z_ref), global_sigma)),
            "z_err_within_1sigma": within_sigma(z_ref, z_pred, z_err, 1.0),
            "z_err_within_2sigma": within_sigma(z_ref, z_pred, z_err, 2.0),
            "median_abs_dz": float(np.median(residual)) if len(residual) else float("nan"),
            "pulls": pull_summary(pulls(z_ref, z_pred, z_err)),
        },
    }


def compared_rows(reference: dict, pred: dict, selected: np.ndarray, all_rows: bool = False) -> tuple:
    """((n,) bool of the compared rows, `excluded` counts by reason, and with `all_rows` the counts
    of rows compared although ZWARNING ≠ 0 or outside the selection, else {})."""
    predicted = (pred["PRED_CLASS"] != "") & np.isfinite(np.asarray(pred["PRED_Z"], float))
    zwarning = np.nan_to_num(np.asarray(reference["zwarning"], float), nan=0.0) != 0
    no_reference = (reference["class"] == "") | ~np.isfinite(np.asarray(reference["z"], float))
    if all_rows:
        compared = predicted & ~no_reference
        excluded = {"no_prediction": int((~predicted).sum()), "zwarning_nonzero": 0,
                    "no_reference": int((predicted & no_reference).sum()), "not_selected": 0}
        return compared, excluded, {"zwarning_nonzero": int((compared & zwarning).sum()),
                                    "not_selected": int((compared & ~zwarning & ~selected).sum())}
    compared = predicted & ~zwarning & ~no_reference & selected
    excluded = {"no_prediction": int((~predicted).sum()), "zwarning_nonzero": int((predicted & zwarning).sum()),
                "no_reference": int((predicted & ~zwarning & no_reference).sum()),
                "not_selected": int((predicted & ~zwarning & ~no_reference & ~selected).sum())}
    return compared, excluded, {}


def compute(reference: dict, pred: dict, selected: np.ndarray, all_rows: bool = False) -> tuple[dict, np.ndarray]:
    """metrics.json content and the (n,) bool of compared rows (chosen by the final columns; the
    ViT's block, where the catalog has its columns, is over the same rows)."""
    n = len(pred["PRED_Z"])
    compared, excluded, included = compared_rows(reference, pred, selected, all_rows)
    ref_class, z_ref = reference["class"][compared].astype(str), np.asarray(reference["z"], float)[compared]
    snr = np.asarray(reference["snr"], float)[compared]
    metrics = {"rows": n, "compared": int(compared.sum()), "all_rows": bool(all_rows), "excluded": excluded,
               **({"included_anyway": included} if all_rows else {}),
               **assess(ref_class, z_ref, snr, *compared_predictions(pred, compared)),
               "stellar": stellar_metrics(reference, pred, compared, ref_class == "STAR")}
    if "PRED_FLAGS" in pred:
        pred_class, z_pred, _ = compared_predictions(pred, compared)
        metrics["flags"] = flag_metrics(np.asarray(pred["PRED_FLAGS"], np.int64)[compared], ref_class, z_ref,
                                        pred_class, z_pred)
    if has_vit(pred):
        metrics["vit"] = assess(ref_class, z_ref, snr, *compared_predictions(pred, compared, VIT_COLUMNS))
        if all(column in pred for _, column, _, _ in STELLAR_VIT):
            metrics["vit"]["stellar"] = stellar_metrics(reference, pred, compared, ref_class == "STAR", STELLAR_VIT)
    return metrics, compared


# PRED_FLAGS bits that a compared row can carry and that speak of its class and redshift (the
# stellar labels' own, FEH_NO_SKILL and FLUX_OFFSET, are not scored by them: FEH_NO_SKILL has its
# [Fe/H] row in the stellar table)
QUALITY_FLAGS = (PredFlag.LOW_COVERAGE, PredFlag.DUPLICATE_ID, PredFlag.SMALL_DELTACHI2, PredFlag.Z_AT_EDGE,
                 PredFlag.FIT_VIT_DISAGREE, PredFlag.FIT_FAILED, PredFlag.SPIKES_LEFT_OUT)
NO_QUALITY_FLAG = "none"


def flag_metrics(flags: np.ndarray, ref_class: np.ndarray, z_ref: np.ndarray, pred_class: np.ndarray,
                 z_pred: np.ndarray) -> dict:
    """{flag name: {'n', 'class_accuracy', 'catastrophic_rate'}} of the compared rows carrying each
    of QUALITY_FLAGS (those no row carries left out), and under NO_QUALITY_FLAG of the rows
    carrying none of them: whether a flag marks the rows that disagree with the pipeline, on the
    user's own catalog. flags (m,) int; the others (m,) as for `assess`."""
    right = np.asarray(pred_class) == np.asarray(ref_class)
    failed = catastrophic(z_pred, z_ref, ref_class)
    any_flag = np.zeros(len(flags), bool)
    out = {}
    for flag in QUALITY_FLAGS:
        rows = (flags & int(flag)) != 0
        any_flag |= rows
        if rows.any():
            out[flag.name] = {"n": int(rows.sum()), "class_accuracy": float(right[rows].mean()),
                              "catastrophic_rate": float(failed[rows].mean())}
    rows = ~any_flag
    out[NO_QUALITY_FLAG] = {"n": int(rows.sum()),
                            "class_accuracy": float(right[rows].mean()) if rows.any() else float("nan"),
                            "catastrophic_rate": float(failed[rows].mean()) if rows.any() else float("nan")}
    return out


def stellar_metrics(reference: dict, pred: dict, compared: np.ndarray, stars: np.ndarray, columns=STELLAR) -> dict:
    """{role: {'n', 'unit', 'r2', 'rmse', 'bias', 'n_sigma', 'within_1sigma'}} of the compared rows
    that are pipeline stars (`stars`, over the compared rows), the predictions read from `columns`
    (NaN where absent) and their σ from `<column>_ERR` where the catalog has it: 'within_1sigma' is
    the share of the 'n_sigma' rows with a σ whose |prediction − pipeline| is at most that σ (our
    σ alone: the pipeline's own errors widen the difference)."""
    out = {}
    for role, column, _, unit in columns:
        out[role] = _label_metrics(reference[role], pred, column, unit, compared, stars)
    if columns == STELLAR and "PRED_FLAGS" in pred:   # the final [Fe/H] where it has skill (README: FEH_NO_SKILL)
        skill = (np.asarray(pred["PRED_FLAGS"], np.int64)[compared][stars] & int(PredFlag.FEH_NO_SKILL)) == 0
        out[FEH_WITH_SKILL] = _label_metrics(reference["feh"], pred, "PRED_FEH", "dex", compared, stars, skill)
    return out


FEH_WITH_SKILL = "feh_with_skill"  # stellar_metrics' key for [Fe/H] over the rows without FEH_NO_SKILL


def _label_metrics(reference_values, pred: dict, column: str, unit: str, compared: np.ndarray, stars: np.ndarray,
                   keep: np.ndarray | None = None) -> dict:
    """`stellar_metrics` of one label over the compared pipeline stars (and of those, `keep`)."""
    n = len(pred["PRED_Z"])
    true = np.asarray(reference_values, float)[compared][stars]
    guess = np.asarray(pred.get(column, np.full(n, np.nan)), float)[compared][stars]
    sigma = np.asarray(pred.get(f"{column}_ERR", np.full(n, np.nan)), float)[compared][stars]
    if keep is not None:
        true, guess, sigma = true[keep], guess[keep], sigma[keep]
    with_sigma = np.isfinite(true) & np.isfinite(guess) & np.isfinite(sigma)
    return {"n": int((np.isfinite(true) & np.isfinite(guess)).sum()), "unit": unit,
            "r2": r2_score(true, guess), "rmse": rmse(true, guess), "bias": bias(true, guess),
            "n_sigma": int(with_sigma.sum()), "within_1sigma": within_sigma(true, guess, sigma, 1.0)}


def fit_and_vit_agree(pred: dict) -> np.ndarray:
    """(n,) bool: the template fit found a solution with Δχ² > CONFIDENT_DELTACHI2 and its class and
    z agree with the ViT's (same class, |Δv| < AGREE_KMS); all False for a catalog without
    PRED_DELTACHI2 or the ViT's columns."""
    n = len(pred["PRED_Z"])
    if "PRED_DELTACHI2" not in pred or not has_vit(pred):
        return np.zeros(n, bool)
    deltachi2 = np.asarray(pred["PRED_DELTACHI2"], float)
    with np.errstate(invalid="ignore"):
        offset = velocity_offset_kms(np.asarray(pred["PRED_Z"], float), np.asarray(pred["PRED_Z_VIT"], float))
        return ((deltachi2 > CONFIDENT_DELTACHI2) & (pred["PRED_CLASS"].astype(str) == pred["PRED_CLASS_VIT"].astype(str))
                & (offset < AGREE_KMS))


def disagreements(reference: dict, pred: dict, compared: np.ndarray, paths: list) -> dict:
    """Columns of the compared rows where class differs or z is catastrophic: likely pipeline
    failures first (the fit and the ViT agree with each other, not with the pipeline), then class
    mismatches, then by velocity offset."""
    ref_class = reference["class"].astype(str)
    pred_class = pred["PRED_CLASS"].astype(str)
    z_ref, z_pred = np.asarray(reference["z"], float), np.asarray(pred["PRED_Z"], float)
    offset = velocity_offset_kms(z_pred, z_ref)
    wrong_class = compared & (ref_class != pred_class)
    wrong_z = compared & catastrophic(z_pred, z_ref, ref_class)
    suspect = (wrong_class | wrong_z) & fit_and_vit_agree(pred)
    rows = np.flatnonzero(wrong_class | wrong_z)
    order = np.lexsort((-np.nan_to_num(offset[rows], nan=0.0), ~wrong_class[rows], ~suspect[rows]))
    rows = rows[order]
    prob = {c: np.asarray(pred.get(f"PRED_PROB_{c}", np.full(len(z_ref), np.nan)), float) for c in CLASS_NAMES}
    return {
        "ROW": rows.astype(np.int64), "OBJECT_ID": np.array([str(reference["object_id"][r]) for r in rows]),
        "SPECTRUM": np.array([paths[r] for r in rows]) if len(rows) else np.array([], dtype=str),
        "CLASS": ref_class[rows], "PRED_CLASS": pred_class[rows],
        "PRED_PROB": np.array([prob[c][r] if c in prob else np.nan for r, c in zip(rows, pred_class[rows])]),
        "Z": z_ref[rows], "PRED_Z": z_pred[rows], "PRED_Z_ERR": np.asarray(pred["PRED_Z_ERR"], float)[rows],
        "DV_KMS": offset[rows], "SNR": np.asarray(reference["snr"], float)[rows],
        "CLASS_DIFFERS": wrong_class[rows], "Z_CATASTROPHIC": wrong_z[rows],
        "PRED_DELTACHI2": np.asarray(pred.get("PRED_DELTACHI2", np.full(len(z_ref), np.nan)), float)[rows],
        "LIKELY_PIPELINE_FAILURE": suspect[rows],
    }


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %" if np.isfinite(fraction) else "–"


def look_first(metrics: dict, table: dict) -> list[str]:
    """Sentences for the top of the report, from the metrics and the disagreement table: which
    pipeline class the catastrophic redshifts come from, how many rows are likely pipeline
    failures (where the catalog has the fit's Δχ² and the ViT's columns), and, below
    LOW_ACCURACY, the confusion cell that dominates the class errors. [] when no row is compared."""
    if not metrics["compared"]:
        return []
    sentences = []
    z = metrics["redshift"]
    failed = np.asarray(table["CLASS"]).astype(str)[np.asarray(table["Z_CATASTROPHIC"], bool)]
    rate = _percent(z["catastrophic_rate"])
    if not len(failed):
        sentences.append("No compared row has a catastrophic redshift.")
    else:
        names, counts = np.unique(failed, return_counts=True)
        top = int(np.argmax(counts))
        name, count = str(names[top]), int(counts[top])
        within = _percent(z["catastrophic_rate_by_class"].get(name, float("nan")))
        if len(failed) == 1:
            sentences.append(f"The catastrophic rate ({rate}) is one row, a pipeline {name}.")
        elif 2 * count > len(failed):
            sentences.append(f"The catastrophic rate ({rate}) is driven by {name} rows: {count} of the "
                             f"{len(failed)} catastrophic rows ({within} of the pipeline's {name} rows).")
        else:
            spread = ", ".join(f"{c} {k}" for c, k in zip(names, counts))
            sentences.append(f"The catastrophic rate ({rate}) is spread over the pipeline's classes: {spread} "
                             f"of the {len(failed)} catastrophic rows.")
    suspects = metrics.get("likely_pipeline_failures")
    if suspects:
        sentences.append(f"{suspects} {'row' if suspects == 1 else 'rows'} where the template fit and the ViT agree "
                         f"with each other (same class, |Δv| < {AGREE_KMS:.0f} km/s) but not with the pipeline, with "
                         f"Δχ² > {CONFIDENT_DELTACHI2:g}: likely pipeline failures — the first {suspects} of "
                         "disagreements.csv (LIKELY_PIPELINE_FAILURE).")
    c = metrics["classification"]
    matrix = np.array(c["confusion_matrix"])
    errors = int(matrix.sum() - np.trace(matrix))
    if c["accuracy"] < LOW_ACCURACY and errors:
        off = matrix.copy()
        np.fill_diagonal(off, 0)
        i, j = np.unravel_index(int(np.argmax(off)), off.shape)
        cell = f"pipeline {c['labels'][i]} called {c['labels'][j]}"
        if errors == 1:
            sentences.append(f"Class accuracy is {_percent(c['accuracy'])}: the one misclassified row is {cell}.")
        else:
            lead = "most errors are" if 2 * off[i, j] > errors else "the commonest error is"
            sentences.append(f"Class accuracy is {_percent(c['accuracy'])}: {lead} {cell}: {off[i, j]} of the "
                             f"{errors} misclassified rows.")
    return sentences


def why_none_compared(metrics: dict) -> str:
    """One line on why no row was compared, from the `excluded` counts, and what compares them anyway."""
    rows, excluded = metrics["rows"], metrics["excluded"]
    if not rows:
        return "no row compared: the catalog has no rows"
    parts = []
    failing = excluded["zwarning_nonzero"] + excluded["not_selected"]
    if failing:
        detail = ", ".join(f"{label}: {excluded[key]}" for key, label in (
            ("zwarning_nonzero", "ZWARNING ≠ 0"), ("not_selected", "other selection rules")) if excluded[key])
        parts.append(f"{failing} of {rows} rows fail the survey's selection ({detail})")
    for key, what in (("no_reference", "have no pipeline class or z"), ("no_prediction", "have no prediction")):
        if excluded[key]:
            parts.append(f"{excluded[key]} of {rows} {what}")
    line = "no row compared" + (": " + "; ".join(parts) if parts else "")
    if failing:
        line += f"; `annotate crosscheck --catalog {metrics.get('catalog', '<catalog>')} --all-rows` compares them anyway"
    return line


def no_comparison_line(catalog: str | Path) -> str:
    """why_none_compared for an annotated catalog, read from it (the run's summary has no counts)."""
    reference, pred, _, selected, _ = read_annotated(Path(catalog))
    _, excluded, _ = compared_rows(reference, pred, selected)
    return why_none_compared({"rows": len(pred["PRED_Z"]), "excluded": excluded, "catalog": str(catalog)})
