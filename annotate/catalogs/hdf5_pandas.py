"""HDF5 catalogs written by pandas / PyTables (`df.to_hdf(path, key=..., format="table" | "fixed")`,
read back with `pd.read_hdf`): a group whose `pandas_type` attribute is `frame_table` or `frame`.
The provenance of an annotated copy is the storer's `annotate_provenance` attribute (JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..columns import OUTPUT_COLUMNS
from ..errors import CatalogError
from . import hdf5
from .hdf5 import CONVENTIONS, HDF5Table, _copy_tree, _text


class PandasCatalog(HDF5Table):
    convention = "pandas"

    def __init__(self, path: str | Path, key: str):
        import pandas as pd

        super().__init__(path, key)
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

    def read(self, names, rows: slice | None = None) -> dict:
        start, stop, _ = (rows or slice(None)).indices(self.n_rows)
        frame = self._frame(start, stop)
        return {name: _text(frame[name].to_numpy()) for name in names}

    def read_column(self, name: str, chunk_rows: int | None = None) -> np.ndarray:
        """`chunk_rows` (default hdf5.CHUNK_ROWS) rows at a time, only that column of each slice
        kept; the fixed format, which cannot be sliced, is read whole."""
        chunk_rows = chunk_rows or hdf5.CHUNK_ROWS
        import pandas as pd

        if self.table_format == "fixed" or self.n_rows == 0:
            return self.read([name])[name]
        return np.concatenate([_text(pd.read_hdf(self.path, self.key, start=start, columns=[name],
                                                 stop=min(start + chunk_rows, self.n_rows))[name].to_numpy())
                               for start in range(0, self.n_rows, chunk_rows)])

    def provenance(self) -> dict:
        import pandas as pd

        with pd.HDFStore(self.path, "r") as store:
            text = getattr(store.get_storer(self.key).attrs, "annotate_provenance", None)
        return json.loads(text) if text else {}

    def _frame(self, start: int, stop: int):
        import pandas as pd

        if self.table_format == "table":
            return pd.read_hdf(self.path, self.key, start=start, stop=stop)
        return pd.read_hdf(self.path, self.key).iloc[start:stop]

    def _write(self, tmp: Path, chunk, cards: dict) -> None:
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
                    for start in range(0, self.n_rows, hdf5.CHUNK_ROWS):
                        stop = min(start + hdf5.CHUNK_ROWS, self.n_rows)
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

def _pytables_filters(group):
    """The compression of a pandas object: the filters of its first array."""
    import tables

    for leaf in group._f_walknodes("Leaf"):
        return leaf.filters
    return tables.Filters()


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


CONVENTIONS["pandas"] = PandasCatalog
