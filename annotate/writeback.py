"""Write predictions back into a copy of the input catalog as PRED_* columns.

The input is never modified: a new file is written under a temporary name beside the output and
renamed into place. All HDUs, columns and header cards of the input are kept; existing PRED_*
columns (from an earlier run) are replaced, not duplicated.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import CLASS_NAMES, __version__
from .errors import OutputError
from .flags import NO_PREDICTION, PredFlag
from .metrics import catastrophic


@dataclass(frozen=True)
class OutputColumn:
    name: str
    fits_format: str
    unit: str
    comment: str


OUTPUT_COLUMNS = (
    OutputColumn("PRED_CLASS", "6A", "", "predicted class: GALAXY, QSO or STAR ('' if none)"),
    OutputColumn("PRED_PROB_GALAXY", "E", "", "predicted probability of GALAXY"),
    OutputColumn("PRED_PROB_QSO", "E", "", "predicted probability of QSO"),
    OutputColumn("PRED_PROB_STAR", "E", "", "predicted probability of STAR"),
    OutputColumn("PRED_Z", "D", "", "predicted redshift"),
    OutputColumn("PRED_Z_ERR", "E", "", "predicted redshift 1-sigma uncertainty"),
    OutputColumn("PRED_Z_CATASTROPHIC", "L", "", "|PRED_Z-Z|c/(1+Z) > 1000 (3000 QSO) km/s"),
    OutputColumn("PRED_TEFF", "E", "K", "predicted effective temperature (stars)"),
    OutputColumn("PRED_LOGG", "E", "dex", "predicted log10 surface gravity, cgs (stars)"),
    OutputColumn("PRED_FEH", "E", "dex", "predicted [Fe/H] (stars)"),
    OutputColumn("PRED_FLAGS", "J", "", "quality bitmask, see PRED_FLAGS_BITS / README"),
)
def prediction_columns(pred: dict, reference: dict, flags: np.ndarray) -> dict:
    """name -> (n,) array for every OUTPUT_COLUMNS entry, from predict_store's output, the survey's
    reference values (class, z, zwarning) and the PRED_FLAGS computed by the pipeline."""
    prob = pred["prob"]
    has = ~((flags & int(NO_PREDICTION)) != 0) & np.isfinite(prob).all(axis=1)
    pred_class = np.where(has, np.array(CLASS_NAMES)[np.nan_to_num(prob, nan=0).argmax(axis=1)], "")
    no_ref = (flags & int(PredFlag.NO_REFERENCE_Z | PredFlag.UNKNOWN_REFERENCE_CLASS)) != 0
    cat = catastrophic(pred["z"], reference["z"], reference["class"]) & ~no_ref & has
    nan_if_none = lambda values: np.where(has, values, np.nan)  # noqa: E731
    return {
        "PRED_CLASS": pred_class.astype("U6"),
        "PRED_PROB_GALAXY": nan_if_none(prob[:, 0]).astype(np.float32),
        "PRED_PROB_QSO": nan_if_none(prob[:, 1]).astype(np.float32),
        "PRED_PROB_STAR": nan_if_none(prob[:, 2]).astype(np.float32),
        "PRED_Z": nan_if_none(pred["z"]).astype(np.float64),
        "PRED_Z_ERR": nan_if_none(pred["z_err"]).astype(np.float32),
        "PRED_Z_CATASTROPHIC": cat.astype(bool),
        "PRED_TEFF": nan_if_none(pred["teff"]).astype(np.float32),
        "PRED_LOGG": nan_if_none(pred["logg"]).astype(np.float32),
        "PRED_FEH": nan_if_none(pred["feh"]).astype(np.float32),
        "PRED_FLAGS": flags.astype(np.int32),
    }


def default_output_path(catalog: str | Path) -> Path:
    """`dr18.fits` -> `dr18.annotated.fits` beside the input (`.fits.gz` likewise)."""
    catalog = Path(catalog)
    name = catalog.name
    for suffix in (".fits.gz", ".fits", ".fit", ".fts"):
        if name.lower().endswith(suffix):
            return catalog.with_name(name[: -len(suffix)] + ".annotated.fits")
    return catalog.with_name(name + ".annotated.fits")


def write_fits(catalog: str | Path, out: str | Path, columns: dict, provenance: dict, hdu_index: int = 1) -> Path:
    """Copy `catalog` to `out` with the prediction `columns` added to table HDU `hdu_index`.

    provenance: FITS keyword -> (value, comment), added to that HDU's header.
    """
    catalog, out = Path(catalog), Path(out)
    if out.resolve() == catalog.resolve():
        raise OutputError(f"refusing to overwrite the input catalog {catalog}")
    if not out.parent.is_dir():
        raise OutputError(f"output directory does not exist: {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"output directory is not writable: {out.parent}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with fits.open(catalog, memmap=True) as hdul:
            table = hdul[hdu_index]
            kept = [col for col in table.columns if col.name.upper() not in {c.name for c in OUTPUT_COLUMNS}]
            new = [fits.Column(spec.name, spec.fits_format, unit=spec.unit or None, array=columns[spec.name])
                   for spec in OUTPUT_COLUMNS]
            header = table.header.copy()
            for key in [k for k in header if k.startswith(("ANN", "PFLAG"))]:
                del header[key]
            new_table = fits.BinTableHDU.from_columns(fits.ColDefs(kept) + fits.ColDefs(new), header=header,
                                                      name=table.name)
            for i, name in enumerate(new_table.columns.names, start=1):
                spec = next((s for s in OUTPUT_COLUMNS if s.name == name), None)
                if spec is not None:
                    new_table.header.comments[f"TTYPE{i}"] = spec.comment
            for key, (value, comment) in provenance.items():
                new_table.header[key] = (value, comment)
            hdus = [h if i != hdu_index else new_table for i, h in enumerate(hdul)]
            fits.HDUList(hdus).writeto(tmp, overwrite=False, output_verify="silentfix")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def provenance_cards(model_name: str, weights_sha: str, encoding: str, survey: str, n_failed: int) -> dict:
    return {
        "ANNVERS": (__version__, "annotate version"),
        "ANNMODEL": (model_name, "model name"),
        "ANNWSHA": (weights_sha, ""),  # 64 hex digits leave no room for a comment
        "ANNENC": (encoding, "spectrum rendering encoding"),
        "ANNSURV": (survey, "survey definition used"),
        "ANNDATE": (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC time of annotation"),
        "ANNNFAIL": (int(n_failed), "rows without a prediction"),
        "PFLAGBIT": ("see README: PRED_FLAGS", "PRED_FLAGS bit meanings below"),
        **{f"PFLAG{i}": (flag.name, f"PRED_FLAGS bit {i}") for i, flag in enumerate(PredFlag)},
    }
