"""HDF5 catalogs written by astropy / h5py (`Table.write(path, path=..., serialize_meta=True)`, read
back with `Table.read(path, path=...)`): a compound dataset, with its units, descriptions and
table meta in a `<path>.__table_column_meta__` dataset when serialised (the provenance of an
annotated copy goes into that meta, or into the dataset's attributes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..columns import OUTPUT_COLUMNS
from . import hdf5
from .hdf5 import (CONVENTIONS, META_SUFFIX, HDF5Table, _attr_text, _copy_tree, _text)


class AstropyCatalog(HDF5Table):
    convention = "astropy"

    def __init__(self, path: str | Path, key: str):
        import h5py

        super().__init__(path, key)
        with h5py.File(self.path, "r") as h5:
            self.n_rows = int(h5[self.key].shape[0])
            self.colnames = list(h5[self.key].dtype.names)

    def read(self, names, rows: slice | None = None) -> dict:
        import h5py

        start, stop, _ = (rows or slice(None)).indices(self.n_rows)
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

    def read_column(self, name: str, chunk_rows: int | None = None) -> np.ndarray:
        """`chunk_rows` (default hdf5.CHUNK_ROWS) rows at a time: only that column, and its mask, of
        each slice."""
        chunk_rows = chunk_rows or hdf5.CHUNK_ROWS
        import h5py

        if self.n_rows == 0:
            return self.read([name])[name]
        parts = []
        with h5py.File(self.path, "r") as h5:
            fields = [name] + ([f"{name}.mask"] if f"{name}.mask" in self.colnames else [])
            for start in range(0, self.n_rows, chunk_rows):
                data = h5[self.key].fields(fields)[start:min(start + chunk_rows, self.n_rows)]
                parts.append(self._masked(name, _text(data[name]), data))
        return np.ma.concatenate(parts) if any(np.ma.isMaskedArray(p) for p in parts) else np.concatenate(parts)

    def provenance(self) -> dict:
        import h5py

        with h5py.File(self.path, "r") as h5:
            if self.key + META_SUFFIX in h5:
                from astropy.table import meta

                lines = [_attr_text(line) for line in h5[self.key + META_SUFFIX][()]]
                return dict(meta.get_header_from_yaml(lines).get("meta", {}))
            return {k: _attr_text(v) if isinstance(v, bytes) else v for k, v in h5[self.key].attrs.items()}

    def _write(self, tmp: Path, chunk, cards: dict) -> None:
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
            for start in range(0, self.n_rows, hdf5.CHUNK_ROWS):
                stop = min(start + hdf5.CHUNK_ROWS, self.n_rows)
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


CONVENTIONS["astropy"] = AstropyCatalog
