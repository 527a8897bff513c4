"""`annotate crosscheck`: an annotated catalog's predictions against the survey pipeline's values.

Writes into one folder: `metrics.json`, `report.html` (one page, plots embedded as PNG data URIs),
`disagreements.csv` and `disagreements.fits` (rows where class differs or PRED_Z_CATASTROPHIC,
likely pipeline failures first, then worst first) and `disagreements.png` (their spectra, with the
main lines at both redshifts). The report opens with what made the catalog (its ANN* header cards,
also under "provenance" in metrics.json) and a few sentences on what to look at first.

Which rows are compared: those with a prediction, a reference class and z, ZWARNING = 0 and the
survey's selection passed. Rows without a prediction, with ZWARNING ≠ 0, without a reference, or
outside the selection are counted in `excluded`, never mixed in. With `all_rows`, ZWARNING and the
selection are ignored: every row with a prediction and a reference is compared.

A catalog with the ViT's own columns (PRED_CLASS_VIT, PRED_Z_VIT, PRED_Z_ERR_VIT) gets the same
classification and redshift metrics for the ViT alone under `vit`, over the same rows, shown beside
the final (fitted) ones in the report with both pull distributions; an older catalog without them
gets the report as before.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import CLASS_NAMES, __version__
from .errors import AnnotateError, CatalogError
from .metrics import (
    accuracy, bias, catastrophic, confusion_matrix, gaussian_crps, macro_f1, nmad, outlier_fraction,
    per_class_recall, r2_score, rmse, robust_spread, success_by_snr, velocity_offset_kms, within_sigma,
)
from .surveys import load_survey

# vacuum rest wavelengths (Å) marked on the disagreement sheet
LINES = {"Lyα": 1215.67, "CIV": 1549.06, "MgII": 2798.75, "[OII]": 3728.48, "Hβ": 4862.68,
         "[OIII]": 5008.24, "Hα": 6564.61, "CaK": 3934.78, "CaH": 3969.59}
STELLAR = (("teff", "PRED_TEFF", "Teff", "K"), ("logg", "PRED_LOGG", "log g", "dex"), ("feh", "PRED_FEH", "[Fe/H]", "dex"))
# (class, z, z_err) columns of the final (fitted) result and of the ViT alone
FINAL_COLUMNS = ("PRED_CLASS", "PRED_Z", "PRED_Z_ERR")
VIT_COLUMNS = ("PRED_CLASS_VIT", "PRED_Z_VIT", "PRED_Z_ERR_VIT")
# (metrics.json key under "provenance", header card, what the report calls it)
PROVENANCE = (
    ("model", "ANNMODEL", "model"), ("weights_sha256", "ANNWSHA", "model weights (sha256)"),
    ("encoding", "ANNENC", "spectrum rendering encoding"), ("precision", "ANNPREC", "model arithmetic"),
    ("template_fit", "ANNFIT", "template fit"), ("template_set_sha256", "ANNTSHA", "template set (sha256)"),
    ("fit_settings", "ANNFITS", "template fit settings"), ("annotate_version", "ANNVERS", "annotate version"),
    ("survey", "ANNSURV", "survey definition"), ("annotated_utc", "ANNDATE", "annotated (UTC)"),
)
NOT_RECORDED = "not recorded"
# the fit and the ViT agree with each other within this, and the fit is this sure (Δχ² to the next
# other solution), but both disagree with the pipeline: a likely pipeline failure
AGREE_KMS, CONFIDENT_DELTACHI2 = 1000.0, 25.0
LOW_ACCURACY = 0.95  # below it, the report names the confusion cell that dominates the errors
STORE_FLUX_UNIT = "10⁻¹⁷ erg/s/cm²/Å"  # the spectra store's layout (annotate.store)
RELATIVE_FLUX_READERS = ("lamost_lrs",)  # relative-calibrated flux, in stores without a flux_unit attribute


@dataclass(frozen=True)
class CrosscheckResult:
    out_dir: Path
    report: Path
    metrics: dict


def read_annotated(catalog: Path, survey_name: str | None = None) -> tuple[dict, dict, object, np.ndarray, list]:
    """(reference values, prediction columns, survey, selected, relative spectrum paths)."""
    from .catalogs import open_catalog

    if not catalog.is_file():
        raise CatalogError(f"catalog not found: {catalog}")
    opened = open_catalog(catalog)
    names = opened.colnames
    missing = [c for c in ("PRED_CLASS", "PRED_Z", "PRED_Z_ERR", "PRED_FLAGS") if c not in names]
    if missing:
        raise CatalogError(f"{catalog} has no {', '.join(missing)}: run annotate run on it first")
    survey = load_survey(survey_name or opened.provenance().get("ANNSURV", "sdss_dr18"))
    table = opened.read(names)
    reference = survey.reference(table)
    pred = {name: table[name] for name in names if name.startswith("PRED_")}
    for name in (FINAL_COLUMNS[0], VIT_COLUMNS[0]):
        if name in pred:
            pred[name] = np.array([str(v).strip() for v in pred[name]], dtype=object)
    try:
        paths = [path or "" for path in survey.spectrum_paths(table)]  # None: the row makes no path
    except CatalogError:
        paths = [""] * len(pred["PRED_Z"])
    return reference, pred, survey, survey.selected(table), paths


def read_provenance(catalog: Path) -> dict:
    """metrics.json's "provenance": the annotation's header cards (FITS table HDU, or the HDF5
    table's stored provenance) by PROVENANCE key; None for a card the catalog lacks."""
    from .catalogs import open_catalog

    try:
        cards = open_catalog(catalog).provenance()
    except (OSError, ValueError, KeyError, IndexError, AnnotateError):
        cards = {}
    values = {key: cards.get(card) for key, card, _ in PROVENANCE}
    return {key: None if value is None or str(value).strip() == "" else str(value).strip()
            for key, value in values.items()}


def has_vit(pred: dict) -> bool:
    """Whether the catalog carries the ViT's own class, z and z_err (catalogs written before do not)."""
    return all(name in pred for name in VIT_COLUMNS)


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
               **assess(ref_class, z_ref, snr, *compared_predictions(pred, compared)), "stellar": {}}
    stars = ref_class == "STAR"
    for role, column, _, unit in STELLAR:
        true = np.asarray(reference[role], float)[compared][stars]
        guess = np.asarray(pred.get(column, np.full(n, np.nan)), float)[compared][stars]
        metrics["stellar"][role] = {"n": int((np.isfinite(true) & np.isfinite(guess)).sum()), "unit": unit,
                                    "r2": r2_score(true, guess), "rmse": rmse(true, guess), "bias": bias(true, guess)}
    if has_vit(pred):
        metrics["vit"] = assess(ref_class, z_ref, snr, *compared_predictions(pred, compared, VIT_COLUMNS))
    return metrics, compared


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


# ------------------------------------------------------------------------------------------------
# plots (matplotlib, Agg) -> PNG bytes

def _figure(width=5.0, height=4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def plot_confusion(metrics: dict) -> bytes:
    plt, fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    matrix = np.array(metrics["classification"]["confusion_matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black" if count < matrix.max() / 2 else "white")
    labels = metrics["classification"]["labels"]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class (PRED_CLASS)")
    ax.set_ylabel("pipeline class (CLASS)")
    return _png(plt, fig)


def plot_redshift(z_ref: np.ndarray, z_pred: np.ndarray, ref_class: np.ndarray) -> bytes:
    plt, fig = _figure(9.0, 4.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, colour in zip(CLASS_NAMES, ("tab:blue", "tab:red", "tab:orange")):
        pick = ref_class == name
        left.scatter(z_ref[pick], z_pred[pick], s=6, alpha=0.6, color=colour, label=name)
    top = float(np.nanmax(np.concatenate([z_ref, z_pred, [0.1]])))
    left.plot([0, top], [0, top], color="grey", lw=0.8)
    left.set_xlabel("pipeline redshift z")
    left.set_ylabel("predicted redshift z")
    left.legend(fontsize=8)
    dz = (z_pred - z_ref) / (1 + z_ref)
    edges = np.quantile(z_ref, np.linspace(0, 1, 9)) if len(z_ref) > 8 else np.array([0, top])
    centres, medians, spreads = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (z_ref >= lo) & (z_ref <= hi)
        if inside.sum() > 1:
            centres.append(0.5 * (lo + hi))
            medians.append(np.median(dz[inside]))
            spreads.append(1.4826 * np.median(np.abs(dz[inside])))
    right.scatter(z_ref, dz, s=4, alpha=0.3, color="grey")
    right.errorbar(centres, medians, yerr=spreads, fmt="o", color="black", label="median ± NMAD per z bin")
    right.axhline(0, color="grey", lw=0.8)
    right.set_ylim(-0.2, 0.2)
    right.set_xlabel("pipeline redshift z")
    right.set_ylabel("Δz / (1 + z)  (predicted − pipeline)")
    right.legend(fontsize=8)
    return _png(plt, fig)


def plot_snr(metrics: dict) -> bytes:
    plt, fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    bins = metrics["redshift"]["success_by_snr"]
    labels = [f"{b['snr_min']:g}–{b['snr_max']:g}" if b["snr_max"] is not None else f"{b['snr_min']:g}+" for b in bins]
    ax.bar(labels, [0 if np.isnan(b["success_rate"]) else b["success_rate"] for b in bins], color="tab:green")
    for i, b in enumerate(bins):
        ax.text(i, 0.02, f"n={b['n']}", ha="center", rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_xlabel("pipeline S/N (median per pixel)")
    ax.set_ylabel("redshift success rate (1 − catastrophic)")
    ax.tick_params(axis="x", labelsize=7)
    return _png(plt, fig)


def plot_stellar(reference: dict, pred: dict, compared: np.ndarray) -> bytes:
    plt, fig = _figure(10.0, 3.4)
    stars = compared & (reference["class"].astype(str) == "STAR")
    for k, (role, column, label, unit) in enumerate(STELLAR, start=1):
        ax = fig.add_subplot(1, 3, k)
        true = np.asarray(reference[role], float)[stars]
        guess = np.asarray(pred.get(column, np.full(len(stars), np.nan)), float)[stars]
        ax.scatter(true, guess, s=6, alpha=0.6)
        finite = np.isfinite(true) & np.isfinite(guess)
        if finite.any():
            lo, hi = np.min([true[finite].min(), guess[finite].min()]), np.max([true[finite].max(), guess[finite].max()])
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set_xlabel(f"pipeline {label} ({unit})")
        ax.set_ylabel(f"predicted {label} ({unit})")
    return _png(plt, fig)


def plot_pulls(pulls_by_label: dict) -> bytes:
    """Overlaid histograms of the pulls (z_pred − z_ref) / z_err, label -> (m,) float, against the
    unit Gaussian of a calibrated z_err; |pull| > 6 lands in the edge bins."""
    plt, fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    edges = np.linspace(-6.0, 6.0, 49)
    for (label, pull), colour in zip(pulls_by_label.items(), ("tab:purple", "tab:green")):
        if len(pull):
            ax.hist(np.clip(pull, edges[0], edges[-1]), bins=edges, density=True, histtype="step", lw=1.4,
                    color=colour, label=f"{label} (n={len(pull)})")
    grid = np.linspace(edges[0], edges[-1], 241)
    ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="grey", ls="--", lw=1.0, label="unit Gaussian")
    ax.set_xlabel("pull = (predicted z − pipeline z) / predicted σ_z")
    ax.set_ylabel("probability density (per unit pull)")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def flux_unit(attrs, reader: str) -> str:
    """The unit of a spectra store's flux: its `flux_unit` attribute, the units its readers gave
    (10⁻¹⁷ erg/s/cm²/Å written so); for a store ingested before the attribute, the store layout's
    unit, or "survey units" for a relative-calibrated survey's reader."""
    from .readers import FLUX_UNIT

    unit = attrs.get("flux_unit")
    unit = (unit.decode() if isinstance(unit, bytes) else str(unit or "")).strip()
    if unit:
        return "; ".join(STORE_FLUX_UNIT if part == FLUX_UNIT else part for part in unit.split("; "))
    return "survey units" if reader in RELATIVE_FLUX_READERS else STORE_FLUX_UNIT


def plot_disagreements(table: dict, store: Path | None, n: int, object_ids: np.ndarray, reader: str = "") -> bytes | None:
    """Spectra of the first n disagreements from the spectra store, main lines marked and named at
    the pipeline's z (dashed, names at the top) and the predicted z (dotted, names at the bottom).
    None without rows, or without a store that belongs to this catalog (same rows, same object ids);
    `reader` (the survey's) names the flux unit where the store does not."""
    if store is None or not Path(store).is_file() or len(table["ROW"]) == 0:
        return None
    import h5py
    from matplotlib.lines import Line2D

    from .errors import StoreError
    from .store import open_store, read_rows

    try:
        info = open_store(store)
    except StoreError:
        return None
    with h5py.File(info.path, "r") as h5:
        stored_ids = h5["object_id"][()]
        unit = flux_unit(h5.attrs, info.reader or reader)
    if info.n_rows != len(object_ids):
        return None
    rows = table["ROW"][:n]
    decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in stored_ids[rows]]
    if decoded != [str(object_ids[r]) for r in rows]:
        return None
    wave = info.grid.wavelength
    plt, fig = _figure(10.0, 1.9 * len(rows) + 0.6)
    for k, row in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, k + 1)
        data = read_rows(store, int(row), int(row) + 1)
        flux = np.where(data["mask"][0], np.nan, data["flux"][0])
        ax.plot(wave, flux, lw=0.5, color="black")
        finite = flux[np.isfinite(flux)]
        if finite.size:
            lo, hi = np.percentile(finite, [1, 99.5])
            pad = 0.1 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
        for z, style, colour, height in ((table["Z"][k], "--", "tab:blue", 0.97), (table["PRED_Z"][k], ":", "tab:red", 0.03)):
            for name, rest in LINES.items():
                observed = rest * (1 + z)
                if np.isfinite(observed) and wave[0] < observed < wave[-1]:
                    ax.axvline(observed, ls=style, color=colour, lw=0.8)
                    ax.text(observed, height, name, transform=ax.get_xaxis_transform(), color=colour, fontsize=6,
                            rotation=90, ha="right", va="top" if height > 0.5 else "bottom")
        ax.set_title(f"row {row}  id {table['OBJECT_ID'][k]}: pipeline {table['CLASS'][k]} z={table['Z'][k]:.4f} "
                     f"(blue dashed) · model {table['PRED_CLASS'][k]} z={table['PRED_Z'][k]:.4f} (red dotted)",
                     fontsize=8)
        ax.set_ylabel(f"flux ({unit})", fontsize=7)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend([Line2D([], [], ls="--", color="tab:blue"), Line2D([], [], ls=":", color="tab:red")],
                      ["lines at the pipeline's z (names at the top)", "lines at the predicted z (names at the bottom)"],
                      fontsize=6, loc="upper right")
        if k == len(rows) - 1:
            ax.set_xlabel("observed wavelength (Å)", fontsize=8)
    return _png(plt, fig)


# ------------------------------------------------------------------------------------------------
# report

def _fmt(value) -> str:
    if isinstance(value, float):
        return "–" if not np.isfinite(value) else f"{value:.4g}"
    return html.escape(str(value))


def _image(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


# metrics.json keys of a "redshift" block -> what the report calls them
METRIC_LABELS = {
    "r2": "z R²", "rmse": "z RMSE", "bias": "z bias (mean Δz)", "nmad": "NMAD of Δz/(1+z)",
    "eta": "outlier fraction η (|Δz|/(1+z) > 0.15)", "catastrophic_rate": "catastrophic rate (Ross et al. 2020)",
    "crps": "CRPS with each row's PRED_Z_ERR", "crps_global_sigma": "CRPS with one σ for every row",
    "z_err_within_1sigma": "rows within 1σ of PRED_Z_ERR", "z_err_within_2sigma": "rows within 2σ of PRED_Z_ERR",
}
EXCLUSION_LABELS = {"no_prediction": "no prediction (PRED_FLAGS says why)", "zwarning_nonzero": "ZWARNING ≠ 0",
                    "no_reference": "no pipeline class or z", "not_selected": "outside the survey's selection"}
# what the report's metric names mean
DEFINITIONS = (
    ("Δz", "predicted z − pipeline z; |Δv| = c·|Δz|/(1 + z), z the pipeline's."),
    ("class accuracy", "the fraction of compared rows whose PRED_CLASS is the pipeline's class."),
    ("recall", "per pipeline class, the fraction of its rows predicted as that class."),
    ("macro F1", "the unweighted mean over the classes of F1 = 2·TP / (2·TP + FP + FN): a rare class counts "
                 "as much as a common one."),
    ("z R², RMSE, bias", "R² = 1 − Σ Δz² / Σ (z − mean z)²; RMSE = √(mean Δz²); bias = mean Δz."),
    ("NMAD of Δz/(1+z)", "1.4826 · median(|Δz|/(1 + z)): the σ of Δz/(1 + z) for Gaussian scatter, insensitive "
                         "to outliers; the median residual is not subtracted first, so a bias counts as scatter."),
    ("outlier fraction η", "the fraction of rows with |Δz|/(1 + z) > 0.15."),
    ("catastrophic rate", "Ross et al. (2020): the fraction of rows with |Δv| > 1000 km/s for GALAXY and STAR, "
                          "> 3000 km/s for QSO, by the pipeline's class."),
    ("redshift success rate", "1 − catastrophic rate, per bin of the pipeline's S/N."),
    ("CRPS", "continuous ranked probability score of the Gaussian N(predicted z, σ²) against the pipeline z, "
             "mean over rows, in units of z (lower is better; the mean |Δz| as σ → 0). With each row's "
             "PRED_Z_ERR as σ, and with one σ (the RMS of Δz) for every row: per-row σ that carry information "
             "give the lower value."),
    ("rows within 1σ / 2σ", "the fraction with |Δz| ≤ 1 (2) times the stated σ; 0.683 (0.954) for right "
                            "Gaussian errors."),
    ("pull and robust spread", "pull = Δz / σ, σ the row's stated z error; robust spread = 1.4826 · median |pull "
                               "− median pull|: 1 when the stated errors are right, above 1 when they are too small."),
)

# the rows of the ViT-against-final table: (label, path into a "classification"/"redshift" pair)
SIDE_BY_SIDE = (
    ("class accuracy", ("classification", "accuracy")), ("macro F1", ("classification", "macro_f1")),
    *((f"recall {c}", ("classification", "recall", c)) for c in CLASS_NAMES),
    ("z R²", ("redshift", "r2")), ("z RMSE", ("redshift", "rmse")), ("z bias (mean Δz)", ("redshift", "bias")),
    ("NMAD of Δz/(1+z)", ("redshift", "nmad")), ("outlier fraction η (|Δz|/(1+z) > 0.15)", ("redshift", "eta")),
    ("catastrophic rate", ("redshift", "catastrophic_rate")),
    *((f"catastrophic rate {c}", ("redshift", "catastrophic_rate_by_class", c)) for c in CLASS_NAMES),
    ("CRPS with each row's σ", ("redshift", "crps")), ("rows within 1σ", ("redshift", "z_err_within_1sigma")),
    ("rows within 2σ", ("redshift", "z_err_within_2sigma")), ("pull median", ("redshift", "pulls", "median")),
    ("pull robust spread", ("redshift", "pulls", "robust_spread")), ("rows with a pull", ("redshift", "pulls", "n")),
)


def _side_by_side(metrics: dict, images: dict) -> str:
    """The ViT-alone against final (fit) section; '' for a catalog without the ViT's columns."""
    if "vit" not in metrics:
        return ""

    def value(block: dict, path: tuple):
        for key in path:
            block = block[key]
        return block

    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(value(metrics['vit'], path))}</td>"
                   f"<td>{_fmt(value(metrics, path))}</td></tr>" for label, path in SIDE_BY_SIDE)
    return f"""<h2>ViT alone and final (fit)</h2>
<p>The same rows, scored from the ViT's own columns (PRED_CLASS_VIT, PRED_Z_VIT, PRED_Z_ERR_VIT) and from
the final ones (PRED_CLASS, PRED_Z, PRED_Z_ERR: the template fit's where it found a solution, the ViT's
elsewhere). σ is each set's own z error (PRED_Z_ERR_VIT, PRED_Z_ERR).</p>
<table><tr><th>metric</th><th>ViT</th><th>final (fit)</th></tr>{rows}</table>
{_image(images.get('pulls'), 'pull distributions')}
"""


def _provenance(provenance: dict) -> str:
    """The table of what made the catalog; "not recorded" for a missing card."""
    rows = []
    for key, card, label in PROVENANCE:
        value = provenance.get(key)
        if value is None and key in ("template_set_sha256", "fit_settings") and provenance.get("template_fit") == "off":
            value = "none: the template fit did not run"
        rows.append(f"<tr><td>{html.escape(label)}</td><td><code>{html.escape(value or NOT_RECORDED)}</code></td>"
                    f"<td>{card}</td></tr>")
    return f'<table class="left"><tr><th>what</th><th>value</th><th>header card</th></tr>{"".join(rows)}</table>'


def _which_rows(metrics: dict) -> str:
    """The paragraph on which rows were compared (and, with all_rows, what that let in)."""
    if metrics.get("all_rows"):
        included = metrics.get("included_anyway", {})
        return (f"<p><strong>All rows compared (--all-rows)</strong>: ZWARNING and the survey's selection are ignored, "
                f"so the pipeline values of some compared rows may be unreliable: {included.get('zwarning_nonzero', 0)} "
                f"rows with ZWARNING ≠ 0 and {included.get('not_selected', 0)} outside the survey's selection are "
                f"among the {metrics['compared']} of {metrics['rows']} compared (a prediction, a pipeline class and z). "
                "Excluded, and not mixed in:</p>")
    return (f"<p>{metrics['compared']} of {metrics['rows']} rows compared (a prediction, a pipeline class and z, "
            "ZWARNING = 0, the survey's selection passed). Excluded, and not mixed in:</p>")


def render_html(catalog: Path, metrics: dict, images: dict, n_disagreements: int) -> str:
    c, z = metrics["classification"], metrics["redshift"]
    excluded = "".join(f"<tr><td>{html.escape(EXCLUSION_LABELS.get(k, k))}</td><td>{v}</td></tr>"
                       for k, v in metrics["excluded"].items())
    recall = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in c["recall"].items())
    by_class = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in z["catastrophic_rate_by_class"].items())
    snr = "".join(f"<tr><td>{b['snr_min']:g}–{'' if b['snr_max'] is None else format(b['snr_max'], 'g')}</td><td>{b['n']}</td><td>{_fmt(b['success_rate'])}</td></tr>"
                  for b in z["success_by_snr"])
    labels = {role: label for role, _, label, _ in STELLAR}
    stellar = "".join(f"<tr><td>{labels.get(k, k)}</td><td>{v['n']}</td><td>{_fmt(v['r2'])}</td><td>{_fmt(v['rmse'])} {v['unit']}</td>"
                      f"<td>{_fmt(v['bias'])} {v['unit']}</td></tr>" for k, v in metrics["stellar"].items())
    redshift = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(z[k])}</td></tr>" for k, label in METRIC_LABELS.items())
    if metrics["compared"]:
        first = " ".join(html.escape(line) for line in metrics.get("look_first", []))
    else:
        first = f"<strong>{html.escape(why_none_compared(metrics))}</strong>"
    order = "class mismatches first, then by |Δv|"
    if "likely_pipeline_failures" in metrics:
        order = (f"likely pipeline failures first (LIKELY_PIPELINE_FAILURE: the template fit, with Δχ² &gt; "
                 f"{CONFIDENT_DELTACHI2:g}, and the ViT agree with each other), then {order}")
    definitions = "".join(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in DEFINITIONS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>annotate cross-check: {html.escape(catalog.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child,table.left td{{text-align:left}}img{{max-width:100%;display:block;margin:0.5em 0}}
dt{{font-weight:bold}}dd{{margin:0 0 0.4em 1.5em}}</style></head><body>
<h1>Cross-check of {html.escape(catalog.name)}</h1>
<p>Report by annotate {__version__}, {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: the
catalog's predictions against the survey pipeline's values. The metric names are defined
<a href="#definitions">at the end</a>.</p>
<h2>What made the catalog</h2>
{_provenance(metrics.get('provenance', {}))}
<h2>What to look at first</h2>
<p>{first}</p>
{_which_rows(metrics)}
<table><tr><th>reason</th><th>rows</th></tr>{excluded}</table>
<h2>Classification</h2>
<p>class accuracy {_fmt(c['accuracy'])}, macro F1 {_fmt(c['macro_f1'])}</p>
<table><tr><th>pipeline class</th><th>recall</th></tr>{recall}</table>
{_image(images.get('confusion'), 'confusion matrix')}
<h2>Redshift</h2>
<table><tr><th>metric</th><th>value</th></tr>{redshift}</table>
<table><tr><th>pipeline class</th><th>catastrophic rate</th></tr>{by_class}</table>
{_image(images.get('redshift'), 'predicted against pipeline redshift')}
<table><tr><th>pipeline S/N bin</th><th>rows</th><th>redshift success rate</th></tr>{snr}</table>
{_image(images.get('snr'), 'success rate by S/N')}
{_side_by_side(metrics, images)}<h2>Stellar parameters (pipeline stars)</h2>
<table><tr><th>parameter</th><th>n</th><th>R²</th><th>RMSE</th><th>bias</th></tr>{stellar}</table>
{_image(images.get('stellar'), 'stellar parameters')}
<h2>Disagreements</h2>
<p>{n_disagreements} disagreements: compared rows whose class differs from the pipeline's or whose redshift is
catastrophic. They are in <code>disagreements.csv</code> and <code>disagreements.fits</code> (ids, spectrum paths,
both classes and redshifts, |Δv| in DV_KMS), {order}. The spectra of the first of them
(<code>disagreements.png</code>), the main lines marked and named at both redshifts:</p>
{_image(images.get('disagreements'), 'spectra of the first disagreements')}
<h2 id="definitions">Definitions</h2>
<dl>{definitions}</dl>
</body></html>
"""


def _jsonable(value):
    """NaN and infinities as null (strict JSON), numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)


def crosscheck(catalog: str | Path, out_dir: str | Path | None = None, survey: str | None = None,
               store: str | Path | None = None, n_sheet: int = 8, all_rows: bool = False) -> CrosscheckResult:
    """Write the cross-check of an annotated catalog into `out_dir` (default: beside it,
    `<catalog stem>.crosscheck/`); `store` (default: the run's store beside it) gives the spectra
    for the disagreement sheet; `all_rows` compares rows with ZWARNING ≠ 0 or outside the
    survey's selection too."""
    import pandas as pd
    from astropy.table import Table

    from .pipeline import default_store_path
    from .writeback import catalog_stem

    catalog = Path(catalog)
    out_dir = Path(out_dir) if out_dir else catalog.with_name(catalog_stem(catalog) + ".crosscheck")
    store = Path(store) if store else default_store_path(catalog)
    reference, pred, definition, selected, paths = read_annotated(catalog, survey)
    metrics, compared = compute(reference, pred, selected, all_rows)
    metrics["catalog"], metrics["survey"] = str(catalog), definition.name
    metrics["provenance"] = read_provenance(catalog)
    table = disagreements(reference, pred, compared, paths)
    metrics["disagreements"] = int(len(table["ROW"]))
    if "PRED_DELTACHI2" in pred and has_vit(pred):
        metrics["likely_pipeline_failures"] = int(table["LIKELY_PIPELINE_FAILURE"].sum())
    metrics["look_first"] = look_first(metrics, table)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "metrics.json", (json.dumps(_jsonable(metrics), indent=1, allow_nan=False) + "\n").encode())
    ref_class, z_ref = reference["class"][compared].astype(str), np.asarray(reference["z"], float)[compared]
    _, z_final, z_err_final = compared_predictions(pred, compared)
    images = {"confusion": plot_confusion(metrics), "redshift": plot_redshift(z_ref, z_final, ref_class),
              "snr": plot_snr(metrics), "stellar": plot_stellar(reference, pred, compared),
              "disagreements": plot_disagreements(table, store, n_sheet, reference["object_id"], definition.reader)}
    if has_vit(pred):
        _, z_vit, z_err_vit = compared_predictions(pred, compared, VIT_COLUMNS)
        images["pulls"] = plot_pulls({"ViT": pulls(z_ref, z_vit, z_err_vit),
                                      "final (fit)": pulls(z_ref, z_final, z_err_final)})
    buffer = io.StringIO()
    pd.DataFrame(table).to_csv(buffer, index=False)
    _write(out_dir / "disagreements.csv", buffer.getvalue().encode())
    fits_buffer = io.BytesIO()
    Table({k: np.asarray(v) for k, v in table.items()}).write(fits_buffer, format="fits")
    _write(out_dir / "disagreements.fits", fits_buffer.getvalue())
    if images["disagreements"] is not None:
        _write(out_dir / "disagreements.png", images["disagreements"])
    else:  # a sheet left by an earlier cross-check would show other rows
        (out_dir / "disagreements.png").unlink(missing_ok=True)
    report = out_dir / "report.html"
    _write(report, render_html(catalog, metrics, images, metrics["disagreements"]).encode())
    return CrosscheckResult(out_dir, report, metrics)
