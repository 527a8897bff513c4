"""A catalog read for a survey: the columns the survey definition needs, checked, from any
catalog format (`open_catalog`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CatalogError
from .registry import open_catalog


def read_catalog(path: Path, survey, hdu: int = 1, rows: slice | None = None, paths: bool = True,
                 extra: tuple = ()) -> dict:
    """The columns `survey` (annotate.surveys.Survey) needs (roles, path fields, selection) and
    the `extra` ones as name -> array; `rows` reads only that slice (a shard never loads the
    whole catalog). FITS (table HDU `hdu`) or an HDF5 table (pandas or astropy convention)."""
    wanted = {str(c).upper() for c in survey.columns.values() if c}
    if paths:  # the columns spectrum paths are made from
        wanted |= {str(c).upper() for rule in survey.paths for c in rule.fields.values()}
    wanted |= {str(rule["column"]).upper() for rule in survey.selection}
    wanted |= {str(b).upper() for b in survey.snr_bands or ()}
    wanted |= {c.upper() for c in extra}
    table = open_catalog(path, hdu)
    _check_columns(Path(path), survey, table.colnames, table.n_rows, extra, table.where)
    return table.read([n for n in table.colnames if n.upper() in wanted], rows)


def catalog_rows(path: Path, survey, hdu: int = 1) -> int:
    """The number of rows of a catalog whose columns suit `survey` (read from the header only)."""
    table = open_catalog(path, hdu)
    _check_columns(Path(path), survey, table.colnames, table.n_rows, where=table.where)
    return table.n_rows


def read_column(path: Path, name: str, hdu: int = 1, chunk_rows: int | None = None) -> np.ndarray:
    """One whole column of a catalog, as stored, read `chunk_rows` rows at a time (default: the
    format's)."""
    return open_catalog(path, hdu).read_column(name, chunk_rows)


def _check_columns(path: Path, survey, names: list, n_rows: int, extra: tuple = (), where: str = "") -> None:
    """CatalogError when the survey's columns are missing (naming the HDU or table read, `where`),
    two columns share a name up to case, or there are no rows."""
    seen: dict = {}
    for name in names:
        if name.upper() in seen:
            raise CatalogError(f"{path}{where}: two columns named {seen[name.upper()]!r} and {name!r} "
                               "(column names are compared without case); rename one")
        seen[name.upper()] = name
    try:
        survey.check_catalog(names)
    except CatalogError as exc:
        if where:
            raise CatalogError(f"{exc} (read {path.name}{where})") from None
        raise
    missing = [c for c in extra if c.upper() not in {n.upper() for n in names}]
    if missing:
        raise CatalogError(f"{path}: no column {', '.join(missing)}")
    if n_rows == 0:
        raise CatalogError(f"{path}: the catalog has no rows")
