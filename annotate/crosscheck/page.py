"""The report's one HTML page: provenance, what to look at first, the metrics side by side with
their definitions, and the figures embedded as data URIs.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES, __version__
from .assess import CONFIDENT_DELTACHI2, FEH_WITH_SKILL, NO_QUALITY_FLAG, why_none_compared
from .read import NOT_RECORDED, PROVENANCE, STELLAR


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

    paths = SIDE_BY_SIDE
    if "stellar" in metrics["vit"]:  # catalogs with PRED_TEFF_VIT, PRED_LOGG_VIT, PRED_FEH_VIT
        paths += tuple((f"{label} {what} (pipeline stars)", ("stellar", role, key)) for role, _, label, _ in STELLAR
                       for what, key in (("R²", "r2"), ("RMSE", "rmse")))
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(value(metrics['vit'], path))}</td>"
                   f"<td>{_fmt(value(metrics, path))}</td></tr>" for label, path in paths)
    return f"""<h2>ViT alone and final (fit)</h2>
<p>The same rows, scored from the ViT's own columns (PRED_CLASS_VIT, PRED_Z_VIT, PRED_Z_ERR_VIT and, where the
catalog has them, PRED_TEFF_VIT, PRED_LOGG_VIT, PRED_FEH_VIT) and from the final ones (PRED_CLASS, PRED_Z,
PRED_Z_ERR, PRED_TEFF, PRED_LOGG, PRED_FEH: the template fit's where it found a solution, or a star for the
stellar parameters, the ViT's elsewhere). σ is each set's own z error (PRED_Z_ERR_VIT, PRED_Z_ERR).</p>
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
    labels = {**{role: label for role, _, label, _ in STELLAR},
              FEH_WITH_SKILL: "[Fe/H] without FEH_NO_SKILL (stars at 4,000–11,000 K)"}
    stellar = "".join(f"<tr><td>{labels.get(k, k)}</td><td>{v['n']}</td><td>{_fmt(v['r2'])}</td><td>{_fmt(v['rmse'])} {v['unit']}</td>"
                      f"<td>{_fmt(v['bias'])} {v['unit']}</td><td>{_fmt(v.get('within_1sigma', float('nan')))} "
                      f"({v.get('n_sigma', 0)})</td></tr>" for k, v in metrics["stellar"].items())
    redshift = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(z[k])}</td></tr>" for k, label in METRIC_LABELS.items())
    flags = "".join(f"<tr><td>{html.escape('no quality flag' if name == NO_QUALITY_FLAG else name)}</td><td>{v['n']}</td>"
                    f"<td>{_fmt(v['class_accuracy'])}</td><td>{_fmt(v['catastrophic_rate'])}</td></tr>"
                    for name, v in metrics.get("flags", {}).items())
    flag_section = "" if not flags else (
        "<h2>Quality flags</h2><p>The compared rows carrying each PRED_FLAGS bit about the class and redshift, and "
        "those carrying none of them: how far each flag marks the rows that disagree with the pipeline on this "
        "catalog.</p>"
        f"<table><tr><th>flag</th><th>rows</th><th>class accuracy</th><th>catastrophic rate</th></tr>{flags}</table>\n")
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
{_side_by_side(metrics, images)}{flag_section}<h2>Stellar parameters (pipeline stars)</h2>
<p>Within 1σ: the share of the rows with a σ (PRED_TEFF_ERR, PRED_LOGG_ERR, PRED_FEH_ERR: the fit's stars; their
count in brackets) whose difference from the pipeline's value is at most that σ. The σ is ours alone: the
pipeline's own errors add to the difference, so a share under 0.68 is expected where they are not small.</p>
<table><tr><th>parameter</th><th>n</th><th>R²</th><th>RMSE</th><th>bias</th><th>within 1σ (rows)</th></tr>{stellar}</table>
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
