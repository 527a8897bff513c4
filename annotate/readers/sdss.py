"""SDSS spec-*.fits (DR8 to DR19): HDU 'COADD' with flux, loglam, ivar, and_mask (lower-case in
real files), labels in the 'SPALL' (SDSS-V) or 'SPECOBJ' (SDSS-I/II/III) HDU."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pathlib import Path

from . import Spectrum, bad_pixels, register, table_column
from .rawfits import read_table
from ..errors import SpectrumError

if TYPE_CHECKING:
    from astropy.io import fits

# SPPIXMASK bits (idlutils sdssMaskbits.par) that mean the pixel holds no usable data.
SPPIXMASK_BAD = {"NOPLUG": 0, "BADTRACE": 1, "BADFLAT": 2, "BADARC": 3, "FULLREJECT": 18, "NODATA": 24}
BAD_PIXEL_BITS = sum(1 << bit for bit in SPPIXMASK_BAD.values())

LABEL_COLUMNS = ("CLASS", "SUBCLASS", "Z", "Z_ERR", "ZWARNING", "SN_MEDIAN_ALL",
                 "ELODIE_TEFF", "ELODIE_LOGG", "ELODIE_FEH", "XCSAO_TEFF", "XCSAO_LOGG", "XCSAO_FEH")


def _coadd(hdul: fits.HDUList):
    if "COADD" in hdul:
        return hdul["COADD"]
    return hdul[1]


def identify(hdul: fits.HDUList) -> bool:
    from astropy.io import fits

    hdu = _coadd(hdul)
    names = {name.lower() for name in getattr(hdu, "columns", fits.ColDefs([])).names}
    return {"flux", "loglam", "ivar"} <= names


def read_path(path: Path, bad_bits: int | None = None) -> Spectrum | None:
    """The COADD HDU without astropy (see rawfits); None where the file needs astropy."""
    columns = read_table(path, "COADD")
    if columns is None or not {"loglam", "flux", "ivar"} <= set(columns):
        return None
    return _spectrum(lambda name: columns[name], len(columns["flux"]), {}, bad_bits)


@register("sdss_spec", identify, priority=10, read_path=read_path)
def read(hdul: fits.HDUList, bad_bits: int | None = None) -> Spectrum:
    if "COADD" not in hdul and len(hdul) < 2:
        raise SpectrumError("no COADD HDU")
    table = _coadd(hdul).data
    if table is None:
        raise SpectrumError("COADD HDU is empty")
    return _spectrum(lambda name: table_column(table, name), len(table), _labels(hdul), bad_bits)


def _spectrum(column, n_rows: int, labels: dict, bad_bits: int | None = None) -> Spectrum:
    """Spectrum from a column getter (lower-case name -> array) of a COADD table; unusable pixels
    where and_mask has any of `bad_bits` (default: the SPPIXMASK bits of BAD_PIXEL_BITS)."""
    if n_rows == 0:
        raise SpectrumError("COADD HDU is empty")
    try:
        loglam = np.asarray(column("loglam"), dtype=np.float64)
        flux = np.asarray(column("flux"), dtype=np.float32)
        ivar = np.asarray(column("ivar"), dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise SpectrumError(f"COADD columns have the wrong type ({exc})") from None
    if loglam.ndim != 1:
        raise SpectrumError("COADD loglam is not one value per row")
    if np.nanmedian(loglam) > 10:
        raise SpectrumError("LOGLAM holds wavelengths in Å, not log10(Å)")
    try:
        bad = bad_pixels(column("and_mask"), bad_bits, BAD_PIXEL_BITS)
    except (SpectrumError, KeyError):
        bad = np.zeros(flux.shape, dtype=bool)
    return Spectrum(10.0**loglam, flux, ivar, bad, labels=labels)


def _labels(hdul: fits.HDUList) -> dict:
    for name in ("SPALL", "SPECOBJ"):
        if name in hdul and hdul[name].data is not None and len(hdul[name].data):
            row = hdul[name].data[0]
            names = set(hdul[name].columns.names)
            return {col: _plain(row[col]) for col in LABEL_COLUMNS if col in names}
    return {}


def _plain(value):
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode().strip()
    if isinstance(value, str):
        return value.strip()
    return value.item() if hasattr(value, "item") else value
