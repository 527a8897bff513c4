"""Values a survey file works with: the path fields derived from catalog columns (SDSS-V field
folders, legacy subfolders, DESI healpix groups), and catalog values as text, numbers or path
parts, with one message for a value no path can be made of."""

from __future__ import annotations

import numpy as np

from .errors import CatalogError


def _is_v6_0(fields: dict) -> bool:
    return str(fields["run2d"]).strip() in ("v6_0_1", "v6_0_2", "v6_0_3", "v6_0_4")


def sdss5_field_dir(fields: dict) -> str:
    """SDSS-V BOSS field folder (sdss_access `isplate`/`pad_fieldid`): run2d v6_0_1..v6_0_4 (DR18) use
    the unpadded field id plus 'p' (`15170p`); later reductions (DR19 v6_1_x) pad to 6 digits (`015000`)."""
    return f"{int(fields['field'])}p" if _is_v6_0(fields) else f"{int(fields['field']):06d}"


def sdss5_field_name(fields: dict) -> str:
    """The field id as written in SDSS-V spec file names: unpadded for v6_0_x, 6 digits after."""
    return str(int(fields["field"])) if _is_v6_0(fields) else f"{int(fields['field']):06d}"


def sdss5_catalogid(fields: dict) -> str:
    """CATALOGID in SDSS-V spec file names: zero-padded to 11 digits for v6_0_x, as is after."""
    return f"{int(fields['catalogid']):011d}" if _is_v6_0(fields) else str(int(fields["catalogid"]))


def legacy_subdir(fields: dict) -> str:
    """SDSS-I/II spectrograph reductions (run2d 26, 103, 104) keep spec files in `spectra/{plate}`;
    BOSS/eBOSS ones (v5_*) in `spectra/full/{plate}`."""
    return "spectra" if str(fields["run2d"]).strip() in ("26", "103", "104") else "spectra/full"


def desi_pixel_group(fields: dict) -> str:
    """DESI healpix coadds are grouped in folders of 100 pixels: PIXGROUP = HEALPIX // 100."""
    return str(int(fields["healpix"]) // 100)


DERIVED_FIELDS = {"sdss5_field_dir": sdss5_field_dir, "sdss5_field_name": sdss5_field_name,
                  "sdss5_catalogid": sdss5_catalogid, "legacy_subdir": legacy_subdir,
                  "desi_pixel_group": desi_pixel_group}


def text_array(values: np.ndarray) -> np.ndarray:
    """(n,) str array, stripped, from bytes, str or numbers (vectorised)."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        values = np.char.decode(values, "utf-8", errors="replace")
    elif values.dtype.kind == "O":
        values = np.array([text(v) for v in values], dtype=str)
    else:
        values = values.astype(str)
    return np.char.strip(values) if values.size else values.astype(str)


def text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode(errors="replace").strip()
    return str(value).strip()


class PathValueError(ValueError):
    """A path column's value that no path can be made of (the message says which and why)."""


def path_value(value, column: str):
    """One path column's value as str, int or float, or PathValueError."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise PathValueError(f"{column} is not UTF-8 text ({bytes(value)[:20]!r})") from None
    if isinstance(value, str):
        if "\0" in value:
            raise PathValueError(f"{column} holds a NUL byte")
        return value.strip()
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not np.isfinite(value):
        raise PathValueError(f"{column} is {value}")
    return value


def as_integer(value):
    """An integral float or a digit string as int; anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    return value


def as_float(values: np.ndarray) -> np.ndarray:
    try:
        out = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise CatalogError(f"column of type {values.dtype} cannot be read as numbers") from None
    if np.ma.isMaskedArray(values):
        out[np.ma.getmaskarray(values)] = np.nan
    return out
