"""The annotated copy of a FITS catalog: the input's HDUs, columns and header cards kept, the
PRED_* columns added to its table HDU, written under a temporary name and renamed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from .. import interrupts
from ..columns import OUTPUT_COLUMNS, OutputColumn, column_description
from ..errors import OutputError


CHUNK_BYTES = 32 * 2**20
BLOCK = 2880


def write_fits(catalog: str | Path, out: str | Path, columns, provenance: dict, hdu_index: int = 1) -> Path:
    """Copy `catalog` to `out` with the prediction `columns` added to table HDU `hdu_index`.

    columns: name -> (n_rows,) array for every OUTPUT_COLUMNS entry, or a function
    `columns(start, stop)` returning them for rows [start, stop) (called in row order, chunk by
    chunk, so that no full-length column need ever exist).
    provenance: FITS keyword -> (value, comment), added to that HDU's header. Rows stream through
    in chunks of CHUNK_BYTES, so memory stays flat in the number of rows; other HDUs are copied
    byte for byte. A compressed input, or a table with variable-length arrays (a heap), goes
    through astropy's in-memory writer instead.
    """
    catalog, out = Path(catalog), Path(out)
    if out.resolve() == catalog.resolve():
        raise OutputError(f"refusing to overwrite the input catalog {catalog}")
    if not out.parent.is_dir():
        raise OutputError(f"output directory does not exist: {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise OutputError(f"output directory is not writable: {out.parent}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(catalog, "rb") as probe:
            plain = probe.read(6) == b"SIMPLE"  # not gzip/bzip2/xz/... whatever the file is named
        with fits.open(catalog, memmap=True, lazy_load_hdus=False) as hdul:
            hdu_index = hdul.index_of(hdu_index)
            table = hdul[hdu_index]
            if not isinstance(table, fits.BinTableHDU):
                raise OutputError(f"{catalog}: HDU {hdu_index} is not a binary table")
            streamable = plain and table.header.get("PCOUNT", 0) == 0 and table.header.get("THEAP") is None
            header = _output_header(table, columns, provenance)
            if streamable:
                _stream_copy(catalog, tmp, hdul, hdu_index, header, columns)
            else:
                _astropy_copy(hdul, hdu_index, header, columns, tmp)
        interrupts.check()  # an interrupt swallowed by a finaliser still stops the replace
        os.replace(tmp, out)
        _fsync_directory(out.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# per-column keywords astropy does not renumber when columns go: moved (or dropped) by hand
EXTRA_COLUMN_KEYWORDS = ("TCOMM", "TUCD", "TDMIN", "TDMAX", "TLMIN", "TLMAX", "TCROT", "TWCS")


def _kept_columns(table: fits.BinTableHDU) -> list:
    """The input's columns except earlier PRED_* ones (which are replaced, not duplicated)."""
    replaced = {c.name for c in OUTPUT_COLUMNS}
    return [col for col in table.columns if col.name.upper() not in replaced]


def _output_header(table: fits.BinTableHDU, columns: dict, provenance: dict) -> fits.Header:
    """The table header with the kept columns, the PRED_* columns (units, comments) and the
    provenance cards; NAXIS2 as the input's. Checksums of the input no longer apply and go."""
    n_rows = table.header["NAXIS2"]
    for name, values in (columns.items() if isinstance(columns, dict) else ()):
        if len(values) != n_rows:
            raise OutputError(f"column {name} has {len(values)} values for {n_rows} catalog rows")
    header = table.header.copy()
    # cards this writer owns (an earlier run's provenance), checksums that no longer hold, and the
    # heap offset of the input (the table gets wider)
    owned = set(provenance) | {f"PFLAG{i}" for i in range(32)} | {"PFLAGBIT", "CHECKSUM", "DATASUM", "THEAP"}
    for key in owned:
        header.remove(key, ignore_missing=True, remove_all=True)
    # TTYPE comments and the per-column keywords astropy leaves behind, keyed by column name
    names = table.columns.names
    carried = {}
    for index, name in enumerate(names, start=1):
        cards = [(f"TTYPE{index}", None, header.comments[f"TTYPE{index}"])] if f"TTYPE{index}" in header else []
        for prefix in EXTRA_COLUMN_KEYWORDS:
            key = f"{prefix}{index}"
            if key in header:
                cards.append((prefix, header[key], header.comments[key]))
                header.remove(key, remove_all=True)
        carried[name] = cards
    kept = [fits.Column(name=c.name, format=c.format, unit=c.unit, null=c.null, bscale=c.bscale, bzero=c.bzero,
                        disp=c.disp, dim=c.dim, coord_type=c.coord_type, coord_unit=c.coord_unit,
                        coord_ref_point=c.coord_ref_point, coord_ref_value=c.coord_ref_value,
                        coord_inc=c.coord_inc, time_ref_pos=c.time_ref_pos) for c in _kept_columns(table)]
    new = [fits.Column(spec.name, spec.fits_format, unit=spec.unit or None) for spec in OUTPUT_COLUMNS]
    shell = fits.BinTableHDU.from_columns(fits.ColDefs(kept + new), header=header, nrows=0, name=table.name)
    out = shell.header
    out["NAXIS2"] = n_rows
    for i, name in enumerate(shell.columns.names, start=1):
        spec = next((s for s in OUTPUT_COLUMNS if s.name == name), None)
        if spec is not None:
            out.comments[f"TTYPE{i}"] = spec.comment
            # TOPCAT and other readers show TCOMMn as the column's description
            out.set(f"TCOMM{i}", column_description(spec), after=f"TUNIT{i}" if f"TUNIT{i}" in out else f"TFORM{i}")
            continue
        for prefix, value, comment in carried.get(name, []):
            if prefix.startswith("TTYPE"):
                out.comments[f"TTYPE{i}"] = comment
            else:
                out.set(f"{prefix}{i}", value, comment, after=f"TFORM{i}")
    for key, (value, comment) in provenance.items():
        out[key] = (header_text(value), comment)
    return out


def header_text(value):
    """A FITS card value: strings with each character outside printable ASCII written as its
    Python escape (a catalog path `cat ä.fits` becomes `cat \\xe4.fits`); other values as they are."""
    if not isinstance(value, str):
        return value
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in value)


FITS_DTYPES = {"E": ">f4", "D": ">f8", "J": ">i4", "L": "u1"}


def _column_dtype(spec: OutputColumn) -> str:
    return f"S{spec.fits_format[:-1]}" if spec.fits_format.endswith("A") else FITS_DTYPES[spec.fits_format]


def _fill(rows: np.ndarray, spec: OutputColumn, values: np.ndarray) -> None:
    """Write one output column of a chunk into the structured `rows`, FITS-encoded (big-endian;
    logicals as 'T'/'F'; strings ASCII, NUL-padded)."""
    values = np.asarray(values)
    if spec.fits_format == "L":
        rows[spec.name] = np.where(values.astype(bool), ord("T"), ord("F"))
    elif spec.fits_format.endswith("A") and values.dtype.kind == "U":
        width = int(spec.fits_format[:-1])
        codes = np.ascontiguousarray(values.astype(f"U{width}")).view(np.uint32).reshape(len(values), width)
        if codes.max(initial=0) > 127:
            raise OutputError(f"{spec.name} holds non-ASCII text")
        rows[spec.name] = codes.astype(np.uint8).view(f"S{width}").ravel()
    else:
        rows[spec.name] = values


def _stream_copy(catalog: Path, tmp: Path, hdul: fits.HDUList, hdu_index: int, header: fits.Header,
                 columns: dict) -> None:
    table = hdul[hdu_index]
    info = hdul.fileinfo(hdu_index)
    row_in = table.header["NAXIS1"]
    n_rows = table.header["NAXIS2"]
    kept_names = {c.name for c in _kept_columns(table)}
    # byte ranges of the kept columns inside an input row, merged where adjacent
    spans = []
    for col, offset in zip(table.columns, _column_offsets(table)):
        if col.name in kept_names:
            width = table.columns.dtype.fields[col.name][0].itemsize
            if spans and spans[-1][1] == offset:
                spans[-1][1] = offset + width
            else:
                spans.append([offset, offset + width])
    # input rows as opaque spans; output rows as those spans followed by the encoded columns
    in_dtype = np.dtype({"names": [f"span{i}" for i in range(len(spans))],
                         "formats": [f"V{hi - lo}" for lo, hi in spans],
                         "offsets": [lo for lo, _ in spans], "itemsize": row_in})
    out_dtype = np.dtype([(f"span{i}", f"V{hi - lo}") for i, (lo, hi) in enumerate(spans)]
                         + [(spec.name, _column_dtype(spec)) for spec in OUTPUT_COLUMNS])
    row_out = header["NAXIS1"]
    if out_dtype.itemsize != row_out:
        raise OutputError(f"internal error: output row of {out_dtype.itemsize} bytes, header says {row_out}")
    chunk_rows = max(1, CHUNK_BYTES // max(row_in, row_out))
    with open(catalog, "rb") as src, open(tmp, "xb") as dst:
        _copy_range(src, dst, 0, info["hdrLoc"])
        dst.write(header.tostring().encode("ascii"))
        src.seek(info["datLoc"])
        rows = np.empty(chunk_rows, out_dtype)
        for start in range(0, n_rows, chunk_rows):
            m = min(chunk_rows, n_rows - start)
            raw = np.frombuffer(src.read(m * row_in), in_dtype, count=m)
            chunk = rows[:m]
            for name in in_dtype.names:
                chunk[name] = raw[name]
            values = columns(start, start + m) if callable(columns) else \
                {name: column[start:start + m] for name, column in columns.items()}
            for spec in OUTPUT_COLUMNS:
                if len(values[spec.name]) != m:
                    raise OutputError(f"column {spec.name} has {len(values[spec.name])} values for rows {start}-{start + m}")
                _fill(chunk, spec, values[spec.name])
            dst.write(memoryview(chunk).cast("B"))
        written = n_rows * row_out
        dst.write(b"\0" * (-written % BLOCK))
        _copy_range(src, dst, info["datLoc"] + info["datSpan"], None)
        dst.flush()
        os.fsync(dst.fileno())


def _column_offsets(table: fits.BinTableHDU) -> list:
    return [table.columns.dtype.fields[name][1] for name in table.columns.names]


def _copy_range(src, dst, start: int, end: int | None) -> None:
    src.seek(start)
    remaining = None if end is None else end - start
    while remaining is None or remaining > 0:
        block = src.read(CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining))
        if not block:
            break
        dst.write(block)
        if remaining is not None:
            remaining -= len(block)


def _astropy_copy(hdul: fits.HDUList, hdu_index: int, header: fits.Header, columns: dict, tmp: Path) -> None:
    """In memory, for compressed inputs and tables with a heap: the kept columns are rebuilt from
    their decoded data (variable-length arrays included), then the header made by _output_header
    is applied."""
    table = hdul[hdu_index]
    data = table.data
    if callable(columns):
        columns = columns(0, table.header["NAXIS2"])
    kept = [fits.Column(name=c.name, format=c.format, unit=c.unit, null=c.null, bscale=c.bscale, bzero=c.bzero,
                        disp=c.disp, dim=c.dim, array=data[c.name]) for c in _kept_columns(table)]
    new = [fits.Column(spec.name, spec.fits_format, unit=spec.unit or None, array=columns[spec.name])
           for spec in OUTPUT_COLUMNS]
    new_table = fits.BinTableHDU.from_columns(fits.ColDefs(kept + new), header=header, name=table.name)
    hdus = [h if i != hdu_index else new_table for i, h in enumerate(hdul)]
    fits.HDUList(hdus).writeto(tmp, overwrite=False, output_verify="silentfix")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
