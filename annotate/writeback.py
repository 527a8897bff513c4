"""Write-back: the PRED_* columns' values from the predictions, the provenance cards and the
output's name; the catalog's own format writes the annotated copy (annotate.catalogs).

The input is never modified: a new file is written under a temporary name beside the output and
renamed into place. All HDUs, columns and header cards of the input are kept; existing PRED_*
columns (from an earlier run) are replaced, not duplicated.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from . import __version__
from .flags import NO_PREDICTION, PredFlag
from .metrics import catastrophic


def prediction_columns(pred: dict, reference: dict, flags: np.ndarray) -> dict:
    """name -> (n,) array for every OUTPUT_COLUMNS entry, from predict_store's output, the survey's
    reference values (class, z, zwarning) and the PRED_FLAGS computed by the pipeline."""
    from .fit.stage import empty_fit, final_columns

    prob = pred["prob"]
    if "fit_class" not in pred:  # predictions of the ViT alone
        pred = {**pred, **empty_fit(len(prob))}
    final = final_columns(pred)
    flags = flags | pred["fit_flags"].astype(flags.dtype)
    has = ~((flags & int(NO_PREDICTION)) != 0) & (np.isfinite(prob).all(axis=1) | final["fitted"])
    flags = flags | np.where(has & feh_without_skill(final), int(PredFlag.FEH_NO_SKILL), 0).astype(flags.dtype)
    no_ref = (flags & int(PredFlag.NO_REFERENCE_Z | PredFlag.UNKNOWN_REFERENCE_CLASS)) != 0
    cat = catastrophic(final["z"], reference["z"], reference["class"]) & ~no_ref & has
    nan_if_none = lambda values: np.where(has, values, np.nan)  # noqa: E731
    text_if_any = lambda values, width: np.where(has, values, "").astype(f"U{width}")  # noqa: E731
    return {
        "PRED_CLASS": text_if_any(final["class"], 6),
        "PRED_PROB_GALAXY": nan_if_none(prob[:, 0]).astype(np.float32),
        "PRED_PROB_QSO": nan_if_none(prob[:, 1]).astype(np.float32),
        "PRED_PROB_STAR": nan_if_none(prob[:, 2]).astype(np.float32),
        "PRED_Z": nan_if_none(final["z"]).astype(np.float64),
        "PRED_Z_ERR": nan_if_none(final["z_err"]).astype(np.float32),
        "PRED_Z_CATASTROPHIC": cat.astype(bool),
        "PRED_CLASS_VIT": text_if_any(final["vit_class"], 6),
        "PRED_Z_VIT": nan_if_none(pred["z"]).astype(np.float64),
        "PRED_Z_ERR_VIT": nan_if_none(pred["z_err"]).astype(np.float32),
        "PRED_DELTACHI2": nan_if_none(pred["fit_deltachi2"]).astype(np.float32),
        "PRED_RCHI2": nan_if_none(pred["fit_rchi2"]).astype(np.float32),
        "PRED_SPECTYPE": text_if_any(pred["fit_spectype"], 12),
        "PRED_TEFF": nan_if_none(final["teff"]).astype(np.float32),
        "PRED_LOGG": nan_if_none(final["logg"]).astype(np.float32),
        "PRED_FEH": nan_if_none(final["feh"]).astype(np.float32),
        "PRED_TEFF_ERR": nan_if_none(final["teff_err"]).astype(np.float32),
        "PRED_LOGG_ERR": nan_if_none(final["logg_err"]).astype(np.float32),
        "PRED_FEH_ERR": nan_if_none(final["feh_err"]).astype(np.float32),
        "PRED_TEFF_VIT": nan_if_none(pred["teff"]).astype(np.float32),
        "PRED_LOGG_VIT": nan_if_none(pred["logg"]).astype(np.float32),
        "PRED_FEH_VIT": nan_if_none(pred["feh"]).astype(np.float32),
        "PRED_FLAGS": flags.astype(np.int32),
    }


def feh_without_skill(final: dict) -> np.ndarray:
    """Rows classed STAR with an [Fe/H] whose Teff lies outside the range where the fit's [Fe/H]
    has skill (`fit.stellar.FEH_SKILL_TEFF`; a missing Teff counts as outside)."""
    from .fit.stellar import FEH_SKILL_TEFF

    lo, hi = FEH_SKILL_TEFF
    with np.errstate(invalid="ignore"):
        inside = (final["teff"] >= lo) & (final["teff"] < hi)
    return (final["class"] == "STAR") & np.isfinite(final["feh"]) & ~inside


HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def catalog_stem(path: str | Path) -> str:
    """The file name without its FITS or HDF5 suffix: `dr18.fits.gz` -> `dr18`, `lamost.h5` -> `lamost`."""
    name = Path(path).name
    for suffix in (".fits.gz", ".fits", ".fit", ".fts", *HDF5_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def default_output_path(catalog: str | Path) -> Path:
    """`dr18.fits` -> `dr18.annotated.fits` beside the input (`.fits.gz` likewise); an HDF5
    catalog `lamost.h5` -> `lamost.annotated.h5`."""
    hdf5 = Path(catalog).suffix.lower() in HDF5_SUFFIXES
    return Path(catalog).with_name(catalog_stem(catalog) + (".annotated.h5" if hdf5 else ".annotated.fits"))


def write_annotated_catalog(catalog: str | Path, out: str | Path, columns, provenance: dict) -> Path:
    """The annotated copy of a catalog in its own format and convention (annotate.catalogs).
    columns: name -> (n_rows,) array for every OUTPUT_COLUMNS entry, or a function (start, stop)
    returning them for those rows; provenance: keyword -> (value, comment)."""
    from .catalogs import open_catalog

    return open_catalog(catalog).write_annotated(out, columns, provenance)


def provenance_cards(model_name: str, weights_sha: str, encoding: str, survey: str, n_failed: int,
                     precision: str = "fp32", fit: dict | None = None, catalog: str | Path | None = None,
                     model_dir: str | Path | None = None) -> dict:
    """Header cards of an annotated catalog; `fit` = {'settings': text, 'sha256': template set
    hash} when the template fit ran (ANNFIT on, ANNTSHA, ANNFITS), else ANNFIT off. The command
    line (ANNCMD), the input catalog (ANNCAT) and the model folder (ANNMDIR) are recorded in full:
    values longer than a card continue in CONTINUE cards (the OGIP long-string convention,
    LONGSTRN)."""
    import shlex

    from .invocation import argv

    fit_cards = {"ANNFIT": ("off", "template fit (off: PRED_CLASS/Z are the ViT's)")}
    if fit is not None:
        fit_cards = {"ANNFIT": ("on", "template fit seeded by the ViT"),
                     "ANNTSHA": (fit["sha256"], ""),
                     "ANNFITS": (fit["settings"], "")}
    paths = {key: (str(Path(path).resolve()), "") for key, path in (("ANNCAT", catalog), ("ANNMDIR", model_dir))
             if path is not None}
    return {
        "LONGSTRN": ("OGIP 1.0", "long strings continue in CONTINUE cards"),
        "ANNCMD": (shlex.join(["annotate", *argv()]), ""),  # long values: no room for a comment
        **paths,
        "ANNVERS": (__version__, "annotate version"),
        "ANNMODEL": (model_name, "model name"),
        "ANNWSHA": (weights_sha, ""),  # 64 hex digits leave no room for a comment
        "ANNENC": (encoding, "spectrum rendering encoding"),
        "ANNPREC": (precision, "model arithmetic (fp32, bf16 or mixed)"),
        "ANNSURV": (survey, "survey definition used"),
        "ANNDATE": (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC time of annotation"),
        "ANNNFAIL": (int(n_failed), "rows without a prediction"),
        **fit_cards,
        "PFLAGBIT": ("see README: PRED_FLAGS", "PRED_FLAGS bit meanings below"),
        **{f"PFLAG{i}": (flag.name, f"PRED_FLAGS bit {i}") for i, flag in enumerate(PredFlag)},
    }
