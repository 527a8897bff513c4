"""An annotated catalog read back for the report: reference values, the PRED_* columns, the
survey, the selection and the spectrum paths; the annotation's provenance cards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import AnnotateError, CatalogError
from ..surveys import load_survey


STELLAR = (("teff", "PRED_TEFF", "Teff", "K"), ("logg", "PRED_LOGG", "log g", "dex"), ("feh", "PRED_FEH", "[Fe/H]", "dex"))


# the ViT's own stellar parameters (PRED_TEFF etc. are the fit's for the rows it classed STAR)
STELLAR_VIT = tuple((role, f"{column}_VIT", label, unit) for role, column, label, unit in STELLAR)


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


def read_annotated(catalog: Path, survey_name: str | None = None) -> tuple[dict, dict, object, np.ndarray, list]:
    """(reference values, prediction columns, survey, selected, relative spectrum paths)."""
    from ..catalogs import open_catalog

    if not catalog.is_file():
        raise CatalogError(f"catalog not found: {catalog}")
    opened = open_catalog(catalog)
    names = opened.colnames
    missing = [c for c in ("PRED_CLASS", "PRED_Z", "PRED_Z_ERR", "PRED_FLAGS") if c not in names]
    if missing:
        raise CatalogError(f"{catalog} has no {', '.join(missing)}: run annotate run on it first")
    survey = load_survey(survey_name or opened.provenance().get("ANNSURV", "sdss_dr18"))
    # another survey's catalog (a wrong --survey) is refused as `annotate run` refuses it; the
    # spectrum paths are only for the disagreement sheet
    survey.check_catalog(names, paths=False)
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
    from ..catalogs import open_catalog

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
