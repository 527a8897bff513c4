"""FITS catalogs (spAll, LAMOST and DESI catalogs, plain or gzip-compressed): a binary table HDU,
read from a memory map a slice of rows at a time; the annotated copy by `fits_writer`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import CatalogError
from .hdf5 import is_hdf5
from .registry import Catalog, register

COLUMN_CHUNK_ROWS = 1_000_000  # rows per memory map when one column is read whole


def identify(path: Path) -> bool:
    """Any file that is not HDF5: FITS is the default format, and astropy says what is wrong
    with a file that is not FITS either."""
    return not is_hdf5(path)


@register("fits", identify, priority=0)
class FitsCatalog(Catalog):
    """Table HDU `hdu` of a FITS file."""

    def __init__(self, path: str | Path, hdu: int = 1):
        self.path, self.hdu = Path(path), hdu
        self.where = f", HDU {hdu}"
        _check_fits_file(self.path)
        try:
            with self._open() as hdul:
                if len(hdul) <= hdu or not isinstance(hdul[hdu], fits.BinTableHDU):
                    raise CatalogError(_no_table_message(self.path, hdu))
                self.colnames = list(hdul[hdu].columns.names)
                self.n_rows = int(hdul[hdu].header["NAXIS2"])
        except OSError as exc:
            raise _unreadable(self.path, exc) from None

    def _open(self):
        try:
            return fits.open(self.path, memmap=True)
        except OSError as exc:
            raise _unreadable(self.path, exc) from None

    def read(self, names, rows: slice | None = None) -> dict:
        try:
            with self._open() as hdul:
                # TNULL from the header: touching the HDU's column definitions ties them to the data,
                # and astropy then copies every whole column when the table goes (3x the read's time)
                header = hdul[self.hdu].header
                nulls = {header.get(f"TTYPE{i}"): header.get(f"TNULL{i}") for i in range(1, header["TFIELDS"] + 1)}
                # slice the table before taking columns: astropy converts (decodes, scales) a whole
                # column on first access, so data[name][rows] would cost the full column every time
                part = hdul[self.hdu].data[rows if rows is not None else slice(None)]
                return {name: _with_nulls(np.array(part[name]), nulls.get(name)) for name in names}
        except OSError as exc:
            raise _unreadable(self.path, exc) from None

    def read_column(self, name: str, chunk_rows: int | None = None) -> np.ndarray:
        """As stored (no text decoding), a slice of rows at a time, the file mapped afresh for
        each: its rows interleave all the columns, so reading one column through a single map
        would bring the whole table into memory."""
        if not _is_plain_fits(self.path):  # compressed: every open would decompress the whole file, so read it once
            with fits.open(self.path) as hdul:
                return np.array(hdul[self.hdu].data[name])
        chunk_rows = chunk_rows or COLUMN_CHUNK_ROWS
        out = None
        for start in range(0, max(self.n_rows, 1), chunk_rows):
            with fits.open(self.path, memmap=True) as hdul:
                part = np.array(hdul[self.hdu].data[start:start + chunk_rows][name])
            if out is None:
                out = np.empty(self.n_rows, part.dtype)
            out[start:start + len(part)] = part
        return out

    def provenance(self) -> dict:
        """The table HDU's header cards."""
        with self._open() as hdul:
            return dict(hdul[self.hdu].header.items())

    def write_annotated(self, out: str | Path, columns, provenance: dict) -> Path:
        from .fits_writer import write_fits

        return write_fits(self.path, out, columns, provenance, self.hdu)


def _with_nulls(values: np.ndarray, null) -> np.ndarray:
    """An integer FITS column with TNULL as a masked array (the null value means missing, as a
    masked value of an HDF5 catalog and NaN do); every other column as it is."""
    if null is None or values.dtype.kind not in "iu" or isinstance(null, str):
        return values
    try:
        missing = values == int(null)
    except (TypeError, ValueError):
        return values
    return np.ma.MaskedArray(values, mask=missing) if missing.any() else values


def _unreadable(path: Path, exc: OSError) -> CatalogError:
    return CatalogError(f"{path}: not a readable FITS catalog ({str(exc).splitlines()[0]})")


def _check_fits_file(path: Path) -> None:
    """CatalogError for a plain FITS file cut short (FITS files are whole 2880-byte blocks;
    compressed ones are checked by astropy as it reads). `open_catalog` has checked that the
    file exists and is a regular file."""
    path = Path(path)
    if _is_plain_fits(path) and path.stat().st_size % 2880:
        raise CatalogError(f"{path}: truncated or damaged FITS file ({path.stat().st_size} bytes, "
                           "not a whole number of 2880-byte blocks)")


def _no_table_message(path: Path, hdu: int) -> str:
    """Why HDU `hdu` of a FITS catalog is not a table: a gzip file cut short (astropy reads it
    lazily, so the table is simply not there) says so; otherwise the HDU is of another kind."""
    import gzip
    import zlib

    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    if compressed:
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 22):
                    pass
        except (EOFError, OSError, zlib.error) as exc:
            return f"{path}: truncated or damaged gzip file ({exc}); its HDU {hdu} cannot be read"
    return f"{path}: HDU {hdu} is not a binary table"


def _is_plain_fits(path: Path) -> bool:
    """An uncompressed FITS file (a gzip one starts with its own magic bytes instead)."""
    with open(path, "rb") as handle:
        return handle.read(6) == b"SIMPLE"
