"""`annotate crosscheck`: an annotated catalog's predictions against the survey pipeline's values.

Writes into one folder: `metrics.json`, `report.html` (one page, plots embedded as PNG data URIs),
`disagreements.csv` and `disagreements.fits` (rows where class differs or PRED_Z_CATASTROPHIC,
worst first) and `disagreements.png` (their spectra, with the main lines at both redshifts).

Which rows are compared: those with a prediction, a reference class and z, ZWARNING = 0 and the
survey's selection passed. Rows without a prediction, with ZWARNING ≠ 0, without a reference, or
outside the selection are counted in `excluded`, never mixed in.

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
from astropy.io import fits

from . import CLASS_NAMES, __version__
from .errors import CatalogError
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


@dataclass(frozen=True)
class CrosscheckResult:
    out_dir: Path
    report: Path
    metrics: dict


def read_annotated(catalog: Path, survey_name: str | None = None) -> tuple[dict, dict, object, np.ndarray, list]:
    """(reference values, prediction columns, survey, selected, relative spectrum paths)."""
    from .catalogio import HDF5Catalog, is_hdf5

    if not catalog.is_file():
        raise CatalogError(f"catalog not found: {catalog}")

    def check(names: list) -> None:
        missing = [c for c in ("PRED_CLASS", "PRED_Z", "PRED_Z_ERR", "PRED_FLAGS") if c not in names]
        if missing:
            raise CatalogError(f"{catalog} has no {', '.join(missing)}: run annotate run on it first")

    if is_hdf5(catalog):
        hdf5 = HDF5Catalog(catalog)
        names = hdf5.colnames
        check(names)
        survey = load_survey(survey_name or hdf5.provenance().get("ANNSURV", "sdss_dr18"))
        table = hdf5.read(names)
    else:
        try:
            with fits.open(catalog, memmap=True) as hdul:
                header, data = hdul[1].header, hdul[1].data
                names = list(hdul[1].columns.names)
                check(names)
                survey = load_survey(survey_name or header.get("ANNSURV", "sdss_dr18"))
                table = {name: np.array(data[name]) for name in names}
        except OSError as exc:
            raise CatalogError(f"{catalog}: not a readable FITS catalog ({str(exc).splitlines()[0]})") from None
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


def compute(reference: dict, pred: dict, selected: np.ndarray) -> tuple[dict, np.ndarray]:
    """metrics.json content and the (n,) bool of compared rows (chosen by the final columns; the
    ViT's block, where the catalog has its columns, is over the same rows)."""
    n = len(pred["PRED_Z"])
    predicted = (pred["PRED_CLASS"] != "") & np.isfinite(np.asarray(pred["PRED_Z"], float))
    zwarning = np.nan_to_num(np.asarray(reference["zwarning"], float), nan=0.0) != 0
    no_reference = (reference["class"] == "") | ~np.isfinite(np.asarray(reference["z"], float))
    compared = predicted & ~zwarning & ~no_reference & selected
    excluded = {"no_prediction": int((~predicted).sum()), "zwarning_nonzero": int((predicted & zwarning).sum()),
                "no_reference": int((predicted & ~zwarning & no_reference).sum()),
                "not_selected": int((predicted & ~zwarning & ~no_reference & ~selected).sum())}
    ref_class, z_ref = reference["class"][compared].astype(str), np.asarray(reference["z"], float)[compared]
    snr = np.asarray(reference["snr"], float)[compared]
    metrics = {"rows": n, "compared": int(compared.sum()), "excluded": excluded,
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


def disagreements(reference: dict, pred: dict, compared: np.ndarray, paths: list) -> dict:
    """Columns of the compared rows where class differs or z is catastrophic, worst first (class
    mismatches, then by velocity offset)."""
    ref_class = reference["class"].astype(str)
    pred_class = pred["PRED_CLASS"].astype(str)
    z_ref, z_pred = np.asarray(reference["z"], float), np.asarray(pred["PRED_Z"], float)
    offset = velocity_offset_kms(z_pred, z_ref)
    wrong_class = compared & (ref_class != pred_class)
    wrong_z = compared & catastrophic(z_pred, z_ref, ref_class)
    rows = np.flatnonzero(wrong_class | wrong_z)
    order = np.lexsort((-np.nan_to_num(offset[rows], nan=0.0), ~wrong_class[rows]))
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
    }


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
    ax.set_xlabel("predicted (PRED_CLASS)")
    ax.set_ylabel("pipeline (CLASS)")
    return _png(plt, fig)


def plot_redshift(z_ref: np.ndarray, z_pred: np.ndarray, ref_class: np.ndarray) -> bytes:
    plt, fig = _figure(9.0, 4.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, colour in zip(CLASS_NAMES, ("tab:blue", "tab:red", "tab:orange")):
        pick = ref_class == name
        left.scatter(z_ref[pick], z_pred[pick], s=6, alpha=0.6, color=colour, label=name)
    top = float(np.nanmax(np.concatenate([z_ref, z_pred, [0.1]])))
    left.plot([0, top], [0, top], color="grey", lw=0.8)
    left.set_xlabel("pipeline z")
    left.set_ylabel("predicted z")
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
    right.set_xlabel("pipeline z")
    right.set_ylabel("Δz / (1 + z)")
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
    ax.set_xlabel("S/N (median per pixel)")
    ax.set_ylabel("redshift success rate")
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
        ax.set_ylabel(f"predicted {label}")
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
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_disagreements(table: dict, store: Path | None, n: int, object_ids: np.ndarray) -> bytes | None:
    """Spectra of the first n disagreements from the spectra store, main lines marked at the
    pipeline's z (dashed) and the predicted z (dotted). None without rows, or without a store that
    belongs to this catalog (same rows, same object ids)."""
    if store is None or not Path(store).is_file() or len(table["ROW"]) == 0:
        return None
    import h5py

    from .errors import StoreError
    from .store import open_store, read_rows

    try:
        info = open_store(store)
    except StoreError:
        return None
    with h5py.File(info.path, "r") as h5:
        stored_ids = h5["object_id"][()]
    if info.n_rows != len(object_ids):
        return None
    rows = table["ROW"][:n]
    decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in stored_ids[rows]]
    if decoded != [str(object_ids[r]) for r in rows]:
        return None
    wave = info.grid.wavelength
    plt, fig = _figure(10.0, 1.9 * len(rows) + 0.4)
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
        for z, style, colour in ((table["Z"][k], "--", "tab:blue"), (table["PRED_Z"][k], ":", "tab:red")):
            for rest in LINES.values():
                observed = rest * (1 + z)
                if np.isfinite(observed) and wave[0] < observed < wave[-1]:
                    ax.axvline(observed, ls=style, color=colour, lw=0.8)
        ax.set_title(f"row {row}  id {table['OBJECT_ID'][k]}: pipeline {table['CLASS'][k]} z={table['Z'][k]:.4f} "
                     f"(blue dashed) · model {table['PRED_CLASS'][k]} z={table['PRED_Z'][k]:.4f} (red dotted)",
                     fontsize=8)
        ax.tick_params(labelsize=7)
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


# the rows of the ViT-against-final table: (label, path into a "classification"/"redshift" pair)
SIDE_BY_SIDE = (
    ("class accuracy", ("classification", "accuracy")), ("macro F1", ("classification", "macro_f1")),
    *((f"recall {c}", ("classification", "recall", c)) for c in CLASS_NAMES),
    ("z R²", ("redshift", "r2")), ("z RMSE", ("redshift", "rmse")), ("z bias", ("redshift", "bias")),
    ("NMAD", ("redshift", "nmad")), ("η", ("redshift", "eta")),
    ("catastrophic rate", ("redshift", "catastrophic_rate")),
    *((f"catastrophic rate {c}", ("redshift", "catastrophic_rate_by_class", c)) for c in CLASS_NAMES),
    ("CRPS", ("redshift", "crps")), ("within 1σ", ("redshift", "z_err_within_1sigma")),
    ("within 2σ", ("redshift", "z_err_within_2sigma")), ("pull median", ("redshift", "pulls", "median")),
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
elsewhere). σ is each set's own z_err; pull = (predicted z − pipeline z)/σ, robust spread =
1.4826·median|pull − median| (1 when σ is right).</p>
<table><tr><th>metric</th><th>ViT</th><th>final (fit)</th></tr>{rows}</table>
{_image(images.get('pulls'), 'pull distributions')}
"""


def render_html(catalog: Path, metrics: dict, images: dict, n_disagreements: int) -> str:
    c, z = metrics["classification"], metrics["redshift"]
    excluded = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in metrics["excluded"].items())
    recall = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in c["recall"].items())
    by_class = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in z["catastrophic_rate_by_class"].items())
    snr = "".join(f"<tr><td>{b['snr_min']:g}–{'' if b['snr_max'] is None else format(b['snr_max'], 'g')}</td><td>{b['n']}</td><td>{_fmt(b['success_rate'])}</td></tr>"
                  for b in z["success_by_snr"])
    stellar = "".join(f"<tr><td>{k}</td><td>{v['n']}</td><td>{_fmt(v['r2'])}</td><td>{_fmt(v['rmse'])} {v['unit']}</td>"
                      f"<td>{_fmt(v['bias'])} {v['unit']}</td></tr>" for k, v in metrics["stellar"].items())
    redshift = "".join(f"<tr><td>{k}</td><td>{_fmt(z[k])}</td></tr>" for k in (
        "r2", "rmse", "bias", "nmad", "eta", "catastrophic_rate", "crps", "crps_global_sigma",
        "z_err_within_1sigma", "z_err_within_2sigma"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>annotate cross-check: {html.escape(catalog.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%;display:block;margin:0.5em 0}}</style></head><body>
<h1>Cross-check of {html.escape(catalog.name)}</h1>
<p>annotate {__version__}, {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.
{metrics['compared']} of {metrics['rows']} rows compared (a prediction, a pipeline class and z, ZWARNING = 0,
the survey's selection passed). Excluded, and not mixed in:</p>
<table><tr><th>reason</th><th>rows</th></tr>{excluded}</table>
<h2>Classification</h2>
<p>accuracy {_fmt(c['accuracy'])}, macro F1 {_fmt(c['macro_f1'])}</p>
<table><tr><th>class</th><th>recall</th></tr>{recall}</table>
{_image(images.get('confusion'), 'confusion matrix')}
<h2>Redshift</h2>
<table><tr><th>metric</th><th>value</th></tr>{redshift}</table>
<p>NMAD = 1.4826·median(|Δz|/(1+z)); η = fraction with |Δz|/(1+z) &gt; 0.15; catastrophic: Ross et al. 2020,
|Δz|·c/(1+z) &gt; 1000 km/s (GALAXY, STAR) or 3000 km/s (QSO) by the pipeline's class. CRPS uses each row's
PRED_Z_ERR; the global-σ variant one σ (the RMS residual) for all rows.</p>
<table><tr><th>pipeline class</th><th>catastrophic rate</th></tr>{by_class}</table>
{_image(images.get('redshift'), 'predicted against pipeline redshift')}
<table><tr><th>S/N bin</th><th>rows</th><th>success rate</th></tr>{snr}</table>
{_image(images.get('snr'), 'success rate by S/N')}
{_side_by_side(metrics, images)}<h2>Stellar parameters (pipeline stars)</h2>
<table><tr><th>parameter</th><th>n</th><th>R²</th><th>RMSE</th><th>bias</th></tr>{stellar}</table>
{_image(images.get('stellar'), 'stellar parameters')}
<h2>Disagreements</h2>
<p>{n_disagreements} rows where the class differs or the redshift is catastrophic, worst first, are in
<code>disagreements.csv</code> and <code>disagreements.fits</code>; the first of them:</p>
{_image(images.get('disagreements'), 'spectra of the first disagreements')}
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
               store: str | Path | None = None, n_sheet: int = 8) -> CrosscheckResult:
    """Write the cross-check of an annotated catalog into `out_dir` (default: beside it,
    `<catalog stem>.crosscheck/`); `store` (default: the run's store beside it) gives the spectra
    for the disagreement sheet."""
    import pandas as pd
    from astropy.table import Table

    from .pipeline import default_store_path
    from .writeback import catalog_stem

    catalog = Path(catalog)
    out_dir = Path(out_dir) if out_dir else catalog.with_name(catalog_stem(catalog) + ".crosscheck")
    store = Path(store) if store else default_store_path(catalog)
    reference, pred, definition, selected, paths = read_annotated(catalog, survey)
    metrics, compared = compute(reference, pred, selected)
    metrics["catalog"], metrics["survey"] = str(catalog), definition.name
    table = disagreements(reference, pred, compared, paths)
    metrics["disagreements"] = int(len(table["ROW"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    _write(out_dir / "metrics.json", (json.dumps(_jsonable(metrics), indent=1, allow_nan=False) + "\n").encode())
    ref_class, z_ref = reference["class"][compared].astype(str), np.asarray(reference["z"], float)[compared]
    _, z_final, z_err_final = compared_predictions(pred, compared)
    images = {"confusion": plot_confusion(metrics), "redshift": plot_redshift(z_ref, z_final, ref_class),
              "snr": plot_snr(metrics), "stellar": plot_stellar(reference, pred, compared),
              "disagreements": plot_disagreements(table, store, n_sheet, reference["object_id"])}
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
    report = out_dir / "report.html"
    _write(report, render_html(catalog, metrics, images, metrics["disagreements"]).encode())
    return CrosscheckResult(out_dir, report, metrics)
