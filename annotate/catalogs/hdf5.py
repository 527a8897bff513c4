"""HDF5 catalogs in the two conventions survey scientists write them in, read and written back.

- **pandas / PyTables** (`df.to_hdf(path, key=..., format="table" | "fixed")`, read back with
  `pd.read_hdf`): a group whose `pandas_type` attribute is `frame_table` or `frame`.
- **astropy / h5py** (`Table.write(path, path=..., serialize_meta=True)`, read back with
  `Table.read(path, path=...)`): a compound dataset, with its units, descriptions and table meta
  in a `<path>.__table_column_meta__` dataset when serialised.

The table is the file's only one (a file holding several is refused, naming them). Rows are read
in slices; the annotated copy keeps every input column (earlier PRED_* columns are replaced),
adds the PRED_* columns with units and descriptions where the convention has a place for them,
records the provenance (pandas: the storer's `annotate_provenance` attribute, JSON; astropy: the
table meta), keeps the file's other objects, and is written under a temporary name and renamed.
The two conventions are two formats (`hdf5_pandas`, `hdf5_astropy`); this module holds what
they share.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import interrupts
from ..columns import OUTPUT_COLUMNS
from ..errors import CatalogError, OutputError
from .registry import PRED_BYTES_PER_ROW, Catalog, check_free_space, register, writable_folder

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PANDAS_TYPES = ("frame_table", "frame")
META_SUFFIX = ".__table_column_meta__"
CHUNK_ROWS = 200_000


def is_hdf5(path: str | Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == HDF5_MAGIC
    except OSError:
        return False


def _attr_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def find_table(path: str | Path) -> tuple[str, str]:
    """(convention 'pandas' or 'astropy', key/path of the table) for an HDF5 catalog."""
    import h5py

    found = []
    try:
        with h5py.File(path, "r") as h5:
            def visit(name, obj):
                kind = _attr_text(obj.attrs.get("pandas_type", b"")) if isinstance(obj, h5py.Group) else ""
                if kind in PANDAS_TYPES:
                    found.append(("pandas", "/" + name))
                elif isinstance(obj, h5py.Dataset) and obj.dtype.names and obj.ndim == 1 \
                        and not any(f"/{name}".startswith(k + "/") for _, k in found):
                    found.append(("astropy", name))
            h5.visititems(visit)
    except OSError as exc:
        raise CatalogError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    # a pandas table's own datasets are not tables of their own
    pandas_keys = [k for c, k in found if c == "pandas"]
    found = [(c, k) for c, k in found if c == "pandas" or not any(("/" + k).startswith(p + "/") for p in pandas_keys)]
    if len(found) != 1:
        listed = ", ".join(f"{k} ({c})" for c, k in found) or "none"
        raise CatalogError(f"{path}: an HDF5 catalog must hold exactly one table; found {listed}")
    return found[0]


class HDF5Table(Catalog):
    """One table of an HDF5 file (`find_table`); each convention's subclass reads and writes it."""

    convention = ""

    def __init__(self, path: str | Path, key: str):
        self.path, self.key = Path(path), key
        self.where = f", table {key}"

    def write_annotated(self, out: str | Path, columns, provenance: dict) -> Path:
        """Copy the catalog to `out` with the PRED_* `columns` (a dict of full columns, or a
        function (start, stop) -> dict) added; temp name, fsync, read back, rename."""
        global HDF5_WRITE_FAILED
        out = Path(out)
        if out.resolve() == self.path.resolve():
            raise OutputError(f"refusing to overwrite the input catalog {self.path}")
        writable_folder(out.parent, "output directory")
        check_free_space(out.parent, self.path.stat().st_size + self.n_rows * PRED_BYTES_PER_ROW)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        chunk = (lambda a, b: columns(a, b)) if callable(columns) else \
            (lambda a, b: {name: values[a:b] for name, values in columns.items()})
        cards = {key: value for key, (value, _) in provenance.items()}
        try:
            self._write(tmp, chunk, cards)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            self._check_written(tmp)
            interrupts.check()  # an interrupt swallowed by a finaliser still stops the replace
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            HDF5_WRITE_FAILED = True
            raise OutputError(f"cannot write {out}: {(exc.strerror or str(exc)).strip().splitlines()[0]}") from None
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if _is_hdf5_write_error(exc):  # PyTables reports a full disk or quota as HDF5ExtError
                HDF5_WRITE_FAILED = True
                raise OutputError(f"cannot write {out}: {str(exc).strip().splitlines()[0]}") from None
            raise
        return out

    def _check_written(self, tmp: Path) -> None:
        """Read the written file back before it takes the final name: PyTables can close a file
        it could not finish writing (a full disk, a quota) without saying so."""
        try:
            written = open_hdf5(tmp)
            last = written.read(written.colnames, slice(written.n_rows - 1, written.n_rows)) if written.n_rows else {}
        except (CatalogError, OSError, ValueError, KeyError, RuntimeError) as exc:
            raise OSError(f"the written file does not read back ({str(exc).strip().splitlines()[0]}); "
                          "is the disk or quota full?") from None

        if written.n_rows != self.n_rows or any(s.name not in last for s in OUTPUT_COLUMNS if self.n_rows):
            raise OSError(f"the written file holds {written.n_rows} of {self.n_rows} rows; is the disk or quota full?")

    def _write(self, tmp: Path, chunk, cards: dict) -> None:
        raise NotImplementedError


CONVENTIONS: dict[str, type] = {}  # 'pandas' / 'astropy' -> its HDF5Table subclass


def open_hdf5(path: str | Path, hdu: int = 1) -> HDF5Table:
    """The one table of an HDF5 catalog, in the convention `find_table` reads off the file (its
    subclass registered in CONVENTIONS by hdf5_pandas / hdf5_astropy); `hdu` is FITS's."""
    convention, key = find_table(path)
    return CONVENTIONS[convention](path, key)


# one format for both conventions: the file says which (find_table), read once when it is opened
register("hdf5", is_hdf5, priority=10)(open_hdf5)


# set once an HDF5 write failed in this process: the HDF5 library may then hold a file it cannot
# close, and closing it again at interpreter exit crashes (the CLI ends with os._exit instead)
HDF5_WRITE_FAILED = False


def _copy_tree(source, target, skip: set) -> None:
    """Copy an HDF5 file's groups, datasets and attributes into `target`, leaving out the
    objects at the paths in `skip` (at any depth); filters and attributes travel with each copy."""
    import h5py

    def copy(group_in, group_out, prefix: str) -> None:
        for name, value in group_in.attrs.items():
            group_out.attrs[name] = value
        for name, obj in group_in.items():
            path = f"{prefix}{name}"
            if path in skip:
                continue
            if isinstance(obj, h5py.Group) and any(s.startswith(path + "/") for s in skip):
                copy(obj, group_out.create_group(name), path + "/")
            else:
                group_in.copy(obj, group_out, name=name)

    copy(source, target, "")


def _is_hdf5_write_error(exc: BaseException) -> bool:
    import sys

    tables = sys.modules.get("tables")
    return tables is not None and isinstance(exc, tables.exceptions.HDF5ExtError)


def _text(values: np.ndarray) -> np.ndarray:
    """Byte strings decoded to str; object columns of str to a str array."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", "replace")
    if values.dtype.kind == "O" and len(values) and isinstance(values[0], (str, bytes)):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values
