"""The PRED_* columns an annotated catalog gains: names, FITS formats, units and descriptions.
The one schema that the catalog formats (`annotate.catalogs`: the FITS writer, the HDF5 tables), the
merge and the report share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputColumn:
    name: str
    fits_format: str
    unit: str
    comment: str  # the TTYPEn comment (short); with the unit, the column's TCOMMn description


OUTPUT_COLUMNS = (
    OutputColumn("PRED_CLASS", "6A", "", "final class GALAXY/QSO/STAR (fit), '' if none"),
    OutputColumn("PRED_PROB_GALAXY", "E", "", "ViT probability of GALAXY"),
    OutputColumn("PRED_PROB_QSO", "E", "", "ViT probability of QSO"),
    OutputColumn("PRED_PROB_STAR", "E", "", "ViT probability of STAR"),
    OutputColumn("PRED_Z", "D", "", "final redshift (template fit)"),
    OutputColumn("PRED_Z_ERR", "E", "", "final redshift 1-sigma uncertainty"),
    OutputColumn("PRED_Z_CATASTROPHIC", "L", "", "|PRED_Z-Z|c/(1+Z) > 1000 (3000 QSO) km/s"),
    OutputColumn("PRED_CLASS_VIT", "6A", "", "ViT class GALAXY/QSO/STAR, '' if none"),
    OutputColumn("PRED_Z_VIT", "D", "", "ViT redshift"),
    OutputColumn("PRED_Z_ERR_VIT", "E", "", "ViT redshift 1-sigma uncertainty"),
    OutputColumn("PRED_DELTACHI2", "E", "", "fit chi2 of the next other solution minus best"),
    OutputColumn("PRED_RCHI2", "E", "", "fit chi2 per degree of freedom"),
    OutputColumn("PRED_SPECTYPE", "12A", "", "stars: type of the best-fitting MILES star"),
    OutputColumn("PRED_TEFF", "E", "K", "effective temperature (fit's if STAR, else ViT)"),
    OutputColumn("PRED_LOGG", "E", "dex", "log10 gravity, cgs (fit's if STAR, else ViT)"),
    OutputColumn("PRED_FEH", "E", "dex", "[Fe/H] (fit's if STAR, else ViT)"),
    OutputColumn("PRED_TEFF_ERR", "E", "K", "PRED_TEFF 1-sigma (fit's stars; NaN for ViT)"),
    OutputColumn("PRED_LOGG_ERR", "E", "dex", "PRED_LOGG 1-sigma (fit's stars; NaN for ViT)"),
    OutputColumn("PRED_FEH_ERR", "E", "dex", "PRED_FEH 1-sigma (fit's stars; NaN for ViT)"),
    OutputColumn("PRED_TEFF_VIT", "E", "K", "ViT effective temperature"),
    OutputColumn("PRED_LOGG_VIT", "E", "dex", "ViT log10 surface gravity, cgs"),
    OutputColumn("PRED_FEH_VIT", "E", "dex", "ViT [Fe/H]"),
    OutputColumn("PRED_FLAGS", "J", "", "quality bitmask, bits named in PFLAGn cards"),
)


def column_description(spec: OutputColumn) -> str:
    """The TCOMMn text of an output column: its comment, with the unit where it has one."""
    return f"{spec.comment} [{spec.unit}]" if spec.unit else spec.comment
