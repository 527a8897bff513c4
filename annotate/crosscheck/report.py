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

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .assess import compared_predictions, compute, disagreements, look_first, pulls
from .figures import plot_confusion, plot_disagreements, plot_pulls, plot_redshift, plot_snr, plot_stellar
from .page import render_html
from .read import VIT_COLUMNS, has_vit, read_annotated, read_provenance


@dataclass(frozen=True)
class CrosscheckResult:
    out_dir: Path
    report: Path
    metrics: dict


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

    from ..errors import StoreError
    from ..pipeline import default_store_path, writable_folder
    from ..writeback import catalog_stem

    catalog = Path(catalog)
    out_dir = Path(out_dir) if out_dir else catalog.with_name(catalog_stem(catalog) + ".crosscheck")
    if store and not Path(store).is_file():   # the run's own store may be gone; a store named must be there
        raise StoreError(f"--store {store}: no such spectra store")
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
    writable_folder(out_dir, "the report's folder", make=True)
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
