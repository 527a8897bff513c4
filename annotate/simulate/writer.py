"""Write spectra as survey files in their real layouts (SDSS DR18 spec files, LAMOST DR10 LRS)
and spAll-like catalogs. Used by the demo and by tests that need files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..readers.sdss import SPPIXMASK_BAD


def _atomic_write(hdul: fits.HDUList, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    hdul.writeto(tmp, overwrite=True)
    tmp.replace(path)


def write_sdss_spec(path: str | Path, loglam: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                    mask: np.ndarray, spall_row: dict, header: dict | None = None,
                    wdisp_pix: float = 1.0) -> Path:
    """A spec-*.fits in the DR18 layout: primary header, 'COADD' (flux, loglam, ivar, and_mask,
    or_mask, wdisp, sky, model; lower-case), 'SPALL' one-row table with the catalog values.

    loglam: (n,) log10 vacuum Å; flux, ivar: (n,) 1e-17 erg/s/cm²/Å and its inverse variance;
    mask: (n,) bool, written as SPPIXMASK NODATA in and_mask.
    """
    return write_sdss_specs([path], loglam, np.asarray(flux)[None], np.asarray(ivar)[None], np.asarray(mask)[None],
                            {k: np.asarray([v]) for k, v in spall_row.items()}, [header or {}], wdisp_pix)[0]


def write_sdss_specs(paths: list, loglam: np.ndarray, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray,
                     spall: dict, headers: list[dict], wdisp_pix: float = 1.0) -> list[Path]:
    """One spec-*.fits (as `write_sdss_spec`) per row of flux, ivar, mask (m, n) and of the
    catalog columns `spall` (name -> (m,) array), with primary header cards `headers[i]`. The
    HDUs are built once and their values replaced for each file (a string column is as wide as
    its longest value in `spall`), which is what makes a few hundred files quick to write."""
    n = len(loglam)
    columns = {"flux": "E", "loglam": "E", "ivar": "E", "and_mask": "J", "or_mask": "J", "wdisp": "E", "sky": "E",
               "model": "E"}
    coadd = fits.BinTableHDU.from_columns(
        [fits.Column(name, form, array=np.zeros(n, np.float32 if form == "E" else np.int32))
         for name, form in columns.items()], name="COADD")
    coadd.data["loglam"][:] = loglam
    coadd.data["wdisp"][:] = wdisp_pix
    spall = {k: _column_array(v) for k, v in spall.items()}  # strings as wide as the longest of all files
    one_row = table_hdu({k: v[:1] for k, v in spall.items()}, name="SPALL")
    written = []
    for i, path in enumerate(paths):
        primary = fits.PrimaryHDU()
        primary.header["TELESCOP"] = ("SDSS 2.5-M", "Sloan Digital Sky Survey")
        and_mask = np.where(mask[i], 1 << SPPIXMASK_BAD["NODATA"], 0)
        coadd.data["flux"][:] = flux[i]
        coadd.data["ivar"][:] = ivar[i]
        coadd.data["and_mask"][:] = and_mask
        coadd.data["or_mask"][:] = and_mask
        for key, values in spall.items():
            one_row.data[key][0] = values[i]
        for key, value in headers[i].items():
            primary.header[key] = value
        _atomic_write(fits.HDUList([primary, coadd, one_row]), Path(path))
        written.append(Path(path))
    return written


def table_hdu(columns: dict, name: str | None = None, units: dict | None = None) -> fits.BinTableHDU:
    """A binary table HDU from name -> (n,) array (strings become fixed-width ASCII)."""
    from astropy.table import Table

    table = Table({key: _column_array(values) for key, values in columns.items()})
    for key, unit in (units or {}).items():
        table[key].unit = unit
    hdu = fits.table_to_hdu(table)
    if name:
        hdu.name = name
    return hdu


def _column_array(values):
    """Text (str or object) as a fixed-width str array; other values as given (a masked column
    keeps its mask)."""
    return np.asarray(values).astype(str) if np.asarray(values).dtype.kind in "UO" else values


def write_catalog(path: str | Path, columns: dict, header: dict | None = None) -> Path:
    """An spAll-like FITS catalog: empty primary HDU + one binary table (HDU 1)."""
    primary = fits.PrimaryHDU()
    for key, value in (header or {}).items():
        primary.header[key] = value
    table = table_hdu(columns, name="SPALL")
    path = Path(path)
    _atomic_write(fits.HDUList([primary, table]), path)
    return path


def write_lamost_table(path: str | Path, wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                       mask: np.ndarray, header: dict | None = None) -> Path:
    """A LAMOST DR10 LRS file, newer layout: 'COADD' binary table, one row of array cells."""
    n = len(wavelength)
    cells = {"FLUX": ("E", flux), "IVAR": ("E", ivar), "WAVELENGTH": ("D", wavelength),
             "ANDMASK": ("J", np.where(mask, 1, 0)), "ORMASK": ("J", np.where(mask, 1, 0))}
    cols = [fits.Column(name, f"{n}{code}", array=np.asarray(values)[None, :]) for name, (code, values) in cells.items()]
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "LAMOST"
    for key, value in (header or {}).items():
        primary.header[key] = value
    _atomic_write(fits.HDUList([primary, fits.BinTableHDU.from_columns(cols, name="COADD")]), Path(path))
    return Path(path)


def write_lamost_image(path: str | Path, wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                       mask: np.ndarray, header: dict | None = None) -> Path:
    """A LAMOST LRS file, older layout: primary image of 5 rows flux, ivar, wavelength, andmask, ormask."""
    data = np.vstack([flux, ivar, wavelength, np.where(mask, 1, 0), np.where(mask, 1, 0)]).astype(np.float32)
    primary = fits.PrimaryHDU(data)
    primary.header["TELESCOP"] = "LAMOST"
    loglam = np.log10(wavelength)
    primary.header["COEFF0"] = (float(loglam[0]), "log10 of the first wavelength (Angstrom)")
    primary.header["COEFF1"] = (float(np.median(np.diff(loglam))), "log10 wavelength step")
    for key, value in (header or {}).items():
        primary.header[key] = value
    _atomic_write(fits.HDUList([primary]), Path(path))
    return Path(path)


DESI_ARMS = {"B": (3600.0, 5800.0), "R": (5760.0, 7620.0), "Z": (7520.0, 9824.0)}  # Å, 0.8 Å pixels
DESI_STEP = 0.8


def write_desi_coadd(path: str | Path, fibermap: dict, wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
                     mask: np.ndarray, header: dict | None = None) -> Path:
    """A DESI coadd-*.fits (FIBERMAP, then B/R/Z WAVELENGTH, FLUX, IVAR, MASK per arm) for k targets
    given on one log-λ grid: wavelength (n,) vacuum Å; flux, ivar (k, n) in 1e-17 erg/s/cm²/Å;
    mask (k, n) bool. Each arm's 0.8 Å pixels are interpolated linearly from the grid, with the
    ivar scaled by the ratio of pixel widths; masked (or uncovered) pixels get MASK 2
    (ALLBADPIX) and IVAR 0. RESOLUTION HDUs are not written."""
    path = Path(path)
    flux, ivar, mask = np.atleast_2d(flux), np.atleast_2d(ivar), np.atleast_2d(mask)
    width = np.gradient(wavelength)
    primary = fits.PrimaryHDU()
    for key, value in (header or {}).items():
        primary.header[key] = value
    hdus = [primary, table_hdu(fibermap, name="FIBERMAP")]
    for arm, (lo, hi) in DESI_ARMS.items():
        wave = lo + DESI_STEP * np.arange(int(round((hi - lo) / DESI_STEP)) + 1)
        inside = (wave >= wavelength[0]) & (wave <= wavelength[-1])
        arm_flux = np.array([np.interp(wave, wavelength, f) for f in flux], np.float32)
        bad = np.array([np.interp(wave, wavelength, m.astype(float)) > 0 for m in mask]) | ~inside
        scale = DESI_STEP / np.interp(wave, wavelength, width)
        arm_ivar = np.where(bad, 0.0, np.array([np.interp(wave, wavelength, v) for v in ivar]) * scale).astype(np.float32)
        hdus.append(fits.ImageHDU(wave, name=f"{arm}_WAVELENGTH"))
        flux_hdu = fits.ImageHDU(np.where(bad, 0.0, arm_flux).astype(np.float32), name=f"{arm}_FLUX")
        flux_hdu.header["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"
        hdus += [flux_hdu, fits.ImageHDU(arm_ivar, name=f"{arm}_IVAR"),
                 fits.ImageHDU(np.where(bad, 1 << 1, 0).astype(np.int32), name=f"{arm}_MASK")]
    _atomic_write(fits.HDUList(hdus), path)
    return path
