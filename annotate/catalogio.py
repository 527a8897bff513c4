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
FITS catalogs go through writeback.py instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import interrupts
from .columns import OUTPUT_COLUMNS
from .errors import CatalogError, OutputError

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


class HDF5Catalog:
    """One table of an HDF5 file, in either convention: n_rows, colnames, read, write_annotated."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.convention, self.key = find_table(self.path)
        if self.convention == "pandas":
            import pandas as pd

            refuse_pickled_objects(self.path)
            try:
                with pd.HDFStore(self.path, "r") as store:
                    storer = store.get_storer(self.key)
                    self.table_format = storer.format_type  # 'table' or 'fixed'
                    self.n_rows = int(storer.nrows) if self.table_format == "table" else len(store[self.key])
                    sample = store.select(self.key, start=0, stop=0) if self.table_format == "table" else store[self.key]
                    self.colnames = [str(c) for c in sample.columns]
            except CatalogError:
                raise
            except Exception as exc:  # pandas/PyTables raise many kinds on a half-written table
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise CatalogError(f"{self.path}: the pandas table {self.key} cannot be read (half-written or "
                                   f"damaged?): {first}") from None
        else:
            import h5py

            with h5py.File(self.path, "r") as h5:
                self.n_rows = int(h5[self.key].shape[0])
                self.colnames = list(h5[self.key].dtype.names)

    def read(self, names, rows: slice | None = None) -> dict:
        """Columns `names` for `rows` (default all) as numpy arrays (text as str)."""
        rows = rows or slice(None)
        start, stop, _ = rows.indices(self.n_rows)
        if self.convention == "pandas":
            frame = self._frame(start, stop)
            return {name: _text(frame[name].to_numpy()) for name in names}
        import h5py

        with h5py.File(self.path, "r") as h5:
            data = h5[self.key][start:stop]
        return {name: self._masked(name, _text(data[name]), data) for name in names}

    def _masked(self, name: str, values: np.ndarray, data) -> np.ndarray:
        """astropy writes a masked column as the values (whatever lies under the mask, e.g. 99.0)
        and a boolean `NAME.mask` column beside it: masked means missing, so the column comes
        back as a numpy masked array."""
        mask_name = f"{name}.mask"
        if mask_name in self.colnames and mask_name != name:
            return np.ma.MaskedArray(values, mask=np.asarray(data[mask_name], bool))
        return values

    def read_column(self, name: str) -> np.ndarray:
        """One whole column, read CHUNK_ROWS rows at a time (only that column of each slice is
        kept; pandas' fixed format, which cannot be sliced, is read whole)."""
        if self.convention == "pandas" and self.table_format == "fixed":
            return self.read([name])[name]
        parts = []
        for start in range(0, self.n_rows, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, self.n_rows)
            if self.convention == "pandas":
                import pandas as pd

                parts.append(_text(pd.read_hdf(self.path, self.key, start=start, stop=stop, columns=[name])[name].to_numpy()))
            else:
                import h5py

                with h5py.File(self.path, "r") as h5:
                    fields = [name] + ([f"{name}.mask"] if f"{name}.mask" in self.colnames else [])
                    data = h5[self.key].fields(fields)[start:stop]
                    parts.append(self._masked(name, _text(data[name]), data))
        if not parts:
            return self.read([name])[name]
        return np.ma.concatenate(parts) if any(np.ma.isMaskedArray(p) for p in parts) else np.concatenate(parts)

    def provenance(self) -> dict:
        """The provenance an annotated copy carries (ANNSURV, ANNMODEL, ...), or {}."""
        if self.convention == "pandas":
            import pandas as pd

            with pd.HDFStore(self.path, "r") as store:
                text = getattr(store.get_storer(self.key).attrs, "annotate_provenance", None)
            return json.loads(text) if text else {}
        import h5py

        with h5py.File(self.path, "r") as h5:
            if self.key + META_SUFFIX in h5:
                from astropy.table import meta

                lines = [_attr_text(line) for line in h5[self.key + META_SUFFIX][()]]
                return dict(meta.get_header_from_yaml(lines).get("meta", {}))
            return {k: _attr_text(v) if isinstance(v, bytes) else v for k, v in h5[self.key].attrs.items()}

    def _frame(self, start: int, stop: int):
        import pandas as pd

        if self.table_format == "table":
            return pd.read_hdf(self.path, self.key, start=start, stop=stop)
        return pd.read_hdf(self.path, self.key).iloc[start:stop]

    def write_annotated(self, out: str | Path, columns, provenance: dict) -> Path:
        """Copy the catalog to `out` with the PRED_* `columns` (a dict of full columns, or a
        function (start, stop) -> dict) added; temp name, fsync, read back, rename."""
        global HDF5_WRITE_FAILED
        out = Path(out)
        if out.resolve() == self.path.resolve():
            raise OutputError(f"refusing to overwrite the input catalog {self.path}")
        if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
            raise OutputError(f"output directory is missing or not writable: {out.parent}")
        check_free_space(out.parent, self.path.stat().st_size + self.n_rows * PRED_BYTES_PER_ROW)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        chunk = (lambda a, b: columns(a, b)) if callable(columns) else \
            (lambda a, b: {name: values[a:b] for name, values in columns.items()})
        cards = {key: value for key, (value, _) in provenance.items()}
        try:
            if self.convention == "pandas":
                self._write_pandas(tmp, chunk, cards)
            else:
                self._write_astropy(tmp, chunk, cards)
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
            written = HDF5Catalog(tmp)
            last = written.read(written.colnames, slice(written.n_rows - 1, written.n_rows)) if written.n_rows else {}
        except (CatalogError, OSError, ValueError, KeyError, RuntimeError) as exc:
            raise OSError(f"the written file does not read back ({str(exc).strip().splitlines()[0]}); "
                          "is the disk or quota full?") from None

        if written.n_rows != self.n_rows or any(s.name not in last for s in OUTPUT_COLUMNS if self.n_rows):
            raise OSError(f"the written file holds {written.n_rows} of {self.n_rows} rows; is the disk or quota full?")

    def _write_pandas(self, tmp: Path, chunk, cards: dict) -> None:
        """Everything but the table is copied node for node (h5py keeps attributes, filters and
        objects pandas does not know); the table is rewritten by pandas with the source's
        compression, string widths and data columns, and its storer's user attributes copied."""
        import h5py
        import pandas as pd


        names = [s.name for s in OUTPUT_COLUMNS]
        with h5py.File(self.path, "r") as source, h5py.File(tmp, "w") as target:
            _copy_tree(source, target, skip={self.key.strip("/")})
        with pd.HDFStore(self.path, "r") as source:
            storer = source.get_storer(self.key)
            filters = _pytables_filters(storer.group)
            compression = dict(complib=filters.complib, complevel=filters.complevel) if filters.complevel else {}
            with pd.HDFStore(tmp, "a", **compression) as target:
                if self.table_format == "fixed":
                    frame = source[self.key]
                    frame = frame.drop(columns=[c for c in frame.columns if str(c).upper() in names])
                    for name, values in chunk(0, self.n_rows).items():
                        frame[name] = values
                    target.put(self.key, frame, format="fixed", track_times=False)
                else:
                    widths = {col: axis.typ.itemsize for axis in storer.values_axes if axis.kind == "string"
                              for col in axis.values}
                    # an index of text keeps the width of its longest value in the file, whichever
                    # chunk that value falls in
                    widths.update({"index": axis.typ.itemsize for axis in storer.index_axes if axis.kind == "string"})
                    widths.update({spec.name: int(spec.fits_format[:-1]) for spec in OUTPUT_COLUMNS
                                   if spec.fits_format.endswith("A")})
                    data_columns = storer.data_columns or None
                    for start in range(0, self.n_rows, CHUNK_ROWS):
                        stop = min(start + CHUNK_ROWS, self.n_rows)
                        frame = source.select(self.key, start=start, stop=stop)
                        frame = frame.drop(columns=[c for c in frame.columns if str(c).upper() in names])
                        for name, values in chunk(start, stop).items():
                            frame[name] = values
                        target.append(self.key, frame, format="table", data_columns=data_columns,
                                      min_itemsize={k: v for k, v in widths.items() if k in frame.columns or k == "index"})
                    if self.n_rows == 0:
                        target.put(self.key, source.select(self.key), format="table", track_times=False)
                written = target.get_storer(self.key).attrs
                for name in storer.attrs._v_attrnamesuser:  # the user's own attributes, pandas' are rewritten
                    if name not in written._v_attrnames:
                        written[name] = storer.attrs[name]
                written.annotate_provenance = json.dumps(cards)

    def _write_astropy(self, tmp: Path, chunk, cards: dict) -> None:
        import h5py


        names = {s.name for s in OUTPUT_COLUMNS}
        text = {s.name: _hdf5_dtype(s) for s in OUTPUT_COLUMNS if s.fits_format.endswith("A")}
        with h5py.File(self.path, "r") as source, h5py.File(tmp, "w") as target:
            table = source[self.key]
            _copy_tree(source, target, skip={self.key.strip("/"), self.key.strip("/") + META_SUFFIX})
            kept = [n for n in table.dtype.names if n.upper() not in names]
            dtype = np.dtype([(n, table.dtype[n]) for n in kept] + [(s.name, _hdf5_dtype(s)) for s in OUTPUT_COLUMNS])
            created = target.create_dataset(self.key, shape=(self.n_rows,), dtype=dtype,
                                             chunks=True if self.n_rows else None,
                                             compression=table.compression, compression_opts=table.compression_opts)
            for name, value in table.attrs.items():
                created.attrs[name] = value
            for start in range(0, self.n_rows, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, self.n_rows)
                rows = np.empty(stop - start, dtype)
                data = table[start:stop]
                for name in kept:
                    rows[name] = data[name]
                for name, values in chunk(start, stop).items():
                    rows[name] = values.astype(text[name]) if name in text else values
                created[start:stop] = rows
            if self.key + META_SUFFIX in source:
                lines = [_attr_text(line) for line in source[self.key + META_SUFFIX][()]]
                target.create_dataset(self.key + META_SUFFIX, data=[line.encode() for line in _meta_lines(lines, dtype, cards)])
            else:
                for key, value in cards.items():
                    created.attrs[key] = value


# set once an HDF5 write failed in this process: the HDF5 library may then hold a file it cannot
# close, and closing it again at interpreter exit crashes (the CLI ends with os._exit instead)
HDF5_WRITE_FAILED = False
PRED_BYTES_PER_ROW = 112  # the PRED_* columns of one row, with room for the format's overhead


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


def _pytables_filters(group):
    """The compression of a pandas object: the filters of its first array."""
    import tables

    for leaf in group._f_walknodes("Leaf"):
        return leaf.filters
    return tables.Filters()


def _is_hdf5_write_error(exc: BaseException) -> bool:
    import sys

    tables = sys.modules.get("tables")
    return tables is not None and isinstance(exc, tables.exceptions.HDF5ExtError)


# pickle opcodes that import or call something: plain pickled values (lists, dicts, str, numbers)
# never contain them
CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2",
                "EXT4", "PERSID", "BINPERSID"}


def refuse_pickled_objects(path: Path) -> None:
    """PyTables unpickles HDF5 string attributes that hold pickles (pandas keeps its table layout
    in such attributes). Before pandas opens a file, every attribute that parses as a pickle is
    checked to hold plain values only; one that would import or call anything is refused."""
    import pickletools

    import h5py

    bad = []

    def check(name, obj):
        for key, value in obj.attrs.items():
            if not isinstance(value, (bytes, np.bytes_)) or not bytes(value).endswith(b"."):
                continue
            try:
                ops = {op.name for op, _, _ in pickletools.genops(bytes(value))}
            except Exception:  # noqa: BLE001 - not a pickle: an ordinary string
                continue
            if ops & CODE_OPCODES:
                bad.append(f"/{name}:{key}")

    with h5py.File(path, "r") as h5:
        check("", h5)
        h5.visititems(check)
    if bad:
        raise CatalogError(f"{path}: refusing to read: attribute {bad[0]} holds a pickled object that would run "
                           "code when pandas/PyTables load it (only plain values are accepted)")


def _hdf5_dtype(spec) -> str:
    return {"6A": "S6", "12A": "S12", "E": "<f4", "D": "<f8", "L": "?", "J": "<i4"}[spec.fits_format]


def _meta_lines(lines: list[str], dtype: np.dtype, cards: dict) -> list[str]:
    """The astropy serialised-meta YAML for the output table (`dtype`): the input's columns with
    their units, descriptions, formats and meta; the PRED_* columns with theirs; the provenance
    in the table meta."""
    from astropy.table import Column, meta


    header = meta.get_header_from_yaml(lines)
    described = {c["name"]: c for c in header["datatype"]}
    described.update({s.name: {"unit": s.unit or None, "description": s.comment} for s in OUTPUT_COLUMNS})
    header["cols"] = [Column(name=name, dtype=dtype[name], length=0, unit=described.get(name, {}).get("unit"),
                             description=described.get(name, {}).get("description"),
                             format=described.get(name, {}).get("format"), meta=described.get(name, {}).get("meta"))
                      for name in dtype.names]
    header.setdefault("meta", {}).update(cards)
    return meta.get_yaml_from_header(header)


def _text(values: np.ndarray) -> np.ndarray:
    """Byte strings decoded to str; object columns of str to a str array."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", "replace")
    if values.dtype.kind == "O" and len(values) and isinstance(values[0], (str, bytes)):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values
