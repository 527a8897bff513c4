"""The catalog formats' common interface and their registry: each format module registers an
`identify(path)` and an opener, as the spectrum readers do, and `open_catalog` picks the format
from the file's content, not its name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CatalogError, OutputError

PRED_BYTES_PER_ROW = 112  # the PRED_* columns of one row, with room for the format's overhead


class Catalog:
    """One table of a catalog file, opened for reading: `n_rows`, `colnames`, `where` (the HDU or
    table read, for messages), and the operations every format provides."""

    path: Path
    n_rows: int
    colnames: list
    where: str = ""

    def read(self, names, rows: slice | None = None) -> dict:
        """Columns `names` for `rows` (default all) as numpy arrays (text as str; a missing value
        of a column that has a way to say so as a masked entry)."""
        raise NotImplementedError

    def read_column(self, name: str, chunk_rows: int | None = None) -> np.ndarray:
        """One whole column, as stored, read `chunk_rows` rows at a time (default: the format's)."""
        raise NotImplementedError

    def provenance(self) -> dict:
        """The annotation's provenance the catalog carries (ANNSURV, ANNMODEL, ...), or {}."""
        raise NotImplementedError

    def write_annotated(self, out: str | Path, columns, provenance: dict) -> Path:
        """Copy the catalog to `out` with the PRED_* `columns` (name -> full column, or a function
        (start, stop) -> those rows' columns) and the `provenance` (keyword -> (value, comment))
        added; under a temporary name, then renamed."""
        raise NotImplementedError


@dataclass(frozen=True)
class Format:
    name: str
    identify: Callable[[Path], bool]
    open: Callable[[Path, int], Catalog]
    priority: int = 0


_FORMATS: dict[str, Format] = {}


def register(name: str, identify: Callable[[Path], bool], priority: int = 0):
    """Decorator registering `open(path, hdu) -> Catalog` as the catalog format `name`; the
    highest-priority format whose `identify(path)` accepts a file opens it."""
    def decorate(opener):
        _FORMATS[name] = Format(name, identify, opener, priority)
        return opener
    return decorate


def format_names() -> list[str]:
    return sorted(_FORMATS)


def open_catalog(path: str | Path, hdu: int = 1) -> Catalog:
    """The catalog at `path` (a FITS file's table HDU `hdu`; an HDF5 file's one table), in the
    format its content says. CatalogError in one line for a file that is missing, not a regular
    file, or of no known format."""
    path = Path(path)
    check_catalog_file(path)
    for fmt in sorted(_FORMATS.values(), key=lambda item: -item.priority):
        if fmt.identify(path):
            return fmt.open(path, hdu)
    raise CatalogError(f"{path}: not a catalog of a known format ({', '.join(format_names())})")


def check_catalog_file(path: Path) -> None:
    """CatalogError, before the file is opened, for a catalog that is missing or no regular file:
    a folder, a pipe or FIFO (which can be read once only and would leave annotate waiting), a
    device."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CatalogError(f"catalog not found: {path}") from None
    except OSError as exc:
        raise CatalogError(f"catalog {path} cannot be opened: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise CatalogError(f"{path} is a folder, not a catalog file")
    if stat.S_ISFIFO(mode):
        raise CatalogError(f"{path} is a pipe or FIFO; annotate reads the catalog more than once and in other "
                           "processes: give it as a file")
    if not stat.S_ISREG(mode):
        raise CatalogError(f"{path} is not a regular file (a device or socket); give the catalog as a file")


def writable_folder(folder: Path, what: str, make: bool = False) -> Path:
    """`folder`, where a command writes, made first (with its parents) when `make`: OutputError in
    one line when it cannot be made, is missing or cannot be written to, before any work is done."""
    folder = Path(folder)
    if make:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot make {what} {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OutputError(f"{what} is missing or not writable: {folder}")
    return folder


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse up front when the output's file system evidently has no room for it."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if free < needed:
        raise OutputError(f"not enough free space in {folder} for the annotated catalog: about "
                          f"{needed / 1e6:.0f} MB needed, {free / 1e6:.0f} MB free")

