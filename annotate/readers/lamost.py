"""LAMOST DR10 low-resolution spectra, both published layouts.

Newer files (DR8 on): binary table HDU 1 (named 'COADD'), one row, array cells FLUX, IVAR,
WAVELENGTH, ANDMASK, ORMASK. Older files: a 5-row primary image with rows flux, ivar, wavelength,
andmask, ormask; where the header gives the log-linear solution (COEFF0/COEFF1 or CRVAL1/CD1_1)
the wavelengths are computed from it, since row 2 is not a wavelength row in pilot-survey files.
Wavelengths are vacuum Å; flux is relative-calibrated (its shape, not its scale: the spectra
say `RELATIVE_FLUX_UNIT`). A pixel is unusable where ANDMASK has any of the survey's
`mask_bits_bad`, or any bit where the survey names none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import RELATIVE_FLUX_UNIT, Spectrum, bad_pixels, register, table_column
from ..errors import SpectrumError

if TYPE_CHECKING:
    from astropy.io import fits

LABEL_KEYWORDS = {"CLASS": "CLASS", "SUBCLASS": "SUBCLASS", "Z": "Z", "Z_ERR": "Z_ERR", "OBSID": "OBSID"}


def _is_lamost(hdul: fits.HDUList) -> bool:
    telescope = str(hdul[0].header.get("TELESCOP", "")).upper()
    return "LAMOST" in telescope


def _table(hdul: fits.HDUList):
    return hdul["COADD"] if "COADD" in hdul else hdul[1]


def identify_table(hdul: fits.HDUList) -> bool:
    from astropy.io import fits

    if len(hdul) < 2 or not isinstance(_table(hdul), fits.BinTableHDU):
        return False
    names = {name.upper() for name in _table(hdul).columns.names}
    return {"FLUX", "IVAR", "WAVELENGTH"} <= names


def identify_image(hdul: fits.HDUList) -> bool:
    data = hdul[0].data
    return _is_lamost(hdul) and data is not None and data.ndim == 2 and data.shape[0] >= 3


@register("lamost_lrs", identify_table, priority=5)
def read_table(hdul: fits.HDUList, bad_bits: int | None = None) -> Spectrum:
    table = _table(hdul).data
    if table is None or len(table) == 0:
        raise SpectrumError("spectrum table HDU is empty")
    wavelength = np.asarray(table_column(table, "WAVELENGTH")[0], dtype=np.float64)
    flux = np.asarray(table_column(table, "FLUX")[0], dtype=np.float32)
    ivar = np.asarray(table_column(table, "IVAR")[0], dtype=np.float32)
    try:
        bad = bad_pixels(table_column(table, "ANDMASK")[0], bad_bits)
    except SpectrumError:
        bad = np.zeros(flux.shape, dtype=bool)
    return Spectrum(wavelength, flux, ivar, bad, RELATIVE_FLUX_UNIT, labels=_labels(hdul[0].header))


@register("lamost_lrs_image", identify_image, priority=4, layout_of="lamost_lrs")
def read_image(hdul: fits.HDUList, bad_bits: int | None = None) -> Spectrum:
    data = np.asarray(hdul[0].data)
    flux, ivar, wavelength = data[0], data[1], data[2]
    header = hdul[0].header
    start, step = header.get("COEFF0", header.get("CRVAL1")), header.get("COEFF1", header.get("CD1_1"))
    if start is not None and step is not None and 2.0 < float(start) < 5.0:
        wavelength = 10.0 ** (float(start) + float(step) * np.arange(flux.shape[0]))
    bad = bad_pixels(data[3], bad_bits) if data.shape[0] > 3 else np.zeros(flux.shape, dtype=bool)
    return Spectrum(wavelength.astype(np.float64), flux.astype(np.float32), ivar.astype(np.float32),
                    bad, RELATIVE_FLUX_UNIT, labels=_labels(hdul[0].header))


def _labels(header: fits.Header) -> dict:
    labels = {}
    for keyword, role in LABEL_KEYWORDS.items():
        if keyword in header:
            value = header[keyword]
            labels[role] = value.strip() if isinstance(value, str) else value
    return labels
