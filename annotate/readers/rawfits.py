"""A minimal reader of binary-table columns from uncompressed FITS files, for the ingest hot path.

astropy parses every header card and builds every HDU of a file; an SDSS spec file carries a
dozen HDUs the store never uses, so reading one coadd that way costs several milliseconds. This
module walks the headers, seeks to one table and decodes the wanted columns with numpy, which is
several times faster. It handles plain numeric and string columns only: anything else (scaled
columns, TDIM, logical or bit columns, variable-length arrays, random groups, compressed files,
a header it cannot parse) returns None, and the caller falls back to astropy.
"""

from __future__ import annotations

import numpy as np

BLOCK = 2880
CARD = 80
# TFORM letter -> numpy big-endian dtype
TFORM_DTYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "A": "S1"}


class Unsupported(Exception):
    """Something this reader leaves to astropy."""


def _parse_value(raw: str):
    raw = raw.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        while end != -1 and raw[end + 1:end + 2] == "'":  # '' is an escaped quote
            end = raw.find("'", end + 2)
        if end == -1:
            raise Unsupported("unterminated string")
        return raw[1:end].replace("''", "'").rstrip()
    value = raw.split("/", 1)[0].strip()
    if value in ("T", "F"):
        return value == "T"
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def read_header(f) -> dict | None:
    """The next header's keyword -> value (COMMENT/HISTORY dropped); None at end of file."""
    cards = {}
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            return None
        text = block.decode("ascii", errors="replace")
        for start in range(0, BLOCK, CARD):
            card = text[start:start + CARD]
            key = card[:8].strip()
            if key == "END":
                return cards
            if card[8:10] == "= " and key not in cards:  # the first of repeated keywords, as astropy
                cards[key] = _parse_value(card[10:])


def _data_size(header: dict) -> int:
    if header.get("GROUPS"):
        raise Unsupported("random groups")
    naxis = header.get("NAXIS", 0)
    if naxis == 0:
        size = abs(header.get("BITPIX", 8)) // 8 * header.get("GCOUNT", 1) * header.get("PCOUNT", 0)
        return -(-size // BLOCK) * BLOCK
    count = 1
    for axis in range(1, naxis + 1):
        count *= header[f"NAXIS{axis}"]
    size = abs(header["BITPIX"]) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + count)
    return -(-size // BLOCK) * BLOCK


def _row_dtype(header: dict) -> np.dtype | None:
    names, formats = [], []
    for i in range(1, header["TFIELDS"] + 1):
        if f"TSCAL{i}" in header or f"TZERO{i}" in header or f"TDIM{i}" in header:
            return None
        tform = str(header[f"TFORM{i}"]).strip()
        digits = len(tform) - len(tform.lstrip("0123456789"))
        repeat = int(tform[:digits]) if digits else 1
        code = tform[digits:digits + 1]
        if code not in TFORM_DTYPES:
            return None
        names.append(str(header.get(f"TTYPE{i}", f"col{i}")).strip())
        base = TFORM_DTYPES[code]
        formats.append(f"S{repeat}" if code == "A" else (base if repeat == 1 else (base, (repeat,))))
    dtype = np.dtype({"names": names, "formats": formats})
    return dtype if dtype.itemsize == header["NAXIS1"] else None


def _decoded(values: np.ndarray) -> np.ndarray:
    """Strings as str with trailing blanks removed (as astropy returns them); numbers as they are."""
    if values.dtype.kind != "S":
        return values
    return np.char.rstrip(np.char.decode(values, "ascii", errors="replace"))


def read_table(path, extname: str | None = None, index: int = 1) -> dict | None:
    """The table HDU named `extname` (else the `index`-th HDU) as lower-case name -> array.

    None when the file is compressed, the table is not found, or anything needs astropy.
    """
    try:
        return _read_table(path, extname, index)
    except (Unsupported, KeyError, ValueError, TypeError, IndexError):
        return None


def _read_table(path, extname: str | None, index: int) -> dict | None:
    with open(path, "rb") as f:
        if f.read(6) != b"SIMPLE":
            return None
        f.seek(0)
        position = 0
        while True:
            header = read_header(f)
            if header is None:
                return None
            data_start = f.tell()
            wanted = (str(header.get("EXTNAME", "")).strip().upper() == extname.upper()) if extname else position == index
            if wanted:
                if header.get("XTENSION") != "BINTABLE" or header.get("PCOUNT", 0):
                    return None
                dtype = _row_dtype(header)
                if dtype is None:
                    return None
                n_rows = header["NAXIS2"]
                raw = f.read(n_rows * dtype.itemsize)
                if len(raw) < n_rows * dtype.itemsize:
                    return None
                rows = np.frombuffer(raw, dtype=dtype, count=n_rows)
                return {name.lower(): _decoded(rows[name]) for name in dtype.names}
            f.seek(data_start + _data_size(header))
            position += 1
