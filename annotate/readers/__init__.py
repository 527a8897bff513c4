"""Spectrum readers: one small loader per file format, chosen by content, not by if/elif.

Each loader module registers itself with :func:`register`, giving a name, an `identify` function
that looks at an opened FITS file, and a priority (higher wins when several identify a file).
`read_spectrum` opens a file once and hands it to the best loader.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from astropy.io import fits

from ..errors import SpectrumError

FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"


@dataclass(frozen=True)
class Spectrum:
    """One observed spectrum as read from its file.

    wavelength: (n,) float64 vacuum Å, ascending; flux: (n,) float32 in `flux_unit`;
    ivar: (n,) float32 inverse variance of flux; bad: (n,) bool, pixels flagged unusable by the
    survey's pixel mask; labels: the survey pipeline's values found in the file (class, z, ...).
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    bad: np.ndarray
    flux_unit: str = FLUX_UNIT
    labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Loader:
    name: str
    identify: Callable[[fits.HDUList], bool]
    read: Callable[[fits.HDUList], Spectrum]
    priority: int = 0
    # optional fast path from a file path, without labels; returns None where it cannot read the file
    read_path: Callable[[Path], "Spectrum | None"] | None = None


_LOADERS: dict[str, Loader] = {}


def register(name: str, identify: Callable[[fits.HDUList], bool], priority: int = 0,
             read_path: Callable[[Path], "Spectrum | None"] | None = None):
    """Decorator registering `read(hdul) -> Spectrum` as the loader `name`; `read_path`, when
    given, reads flux, ivar and mask without astropy (and without labels) for bulk ingest."""

    def decorate(read):
        _LOADERS[name] = Loader(name, identify, read, priority, read_path)
        return read

    return decorate


def loader_names() -> list[str]:
    return sorted(_LOADERS)


def identify_loader(hdul: fits.HDUList) -> Loader:
    """The highest-priority loader whose identifier accepts `hdul`."""
    for loader in sorted(_LOADERS.values(), key=lambda item: -item.priority):
        try:
            if loader.identify(hdul):
                return loader
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    raise SpectrumError(f"no reader recognises this file (known formats: {', '.join(loader_names())})")


def read_spectrum(path: str | Path, loader: str | None = None, labels: bool = True) -> Spectrum:
    """Read one spectrum file (FITS, optionally gzip-compressed) with the named or identified loader.

    labels=False lets a named loader take its fast path (no astropy, no pipeline labels) where it
    has one and the file allows. Raises SpectrumError with a one-line reason for a missing,
    truncated or unrecognised file.
    """
    path = Path(path)
    if not path.is_file():
        raise SpectrumError(f"spectrum file not found: {path}")
    fast = _LOADERS[loader].read_path if not labels and loader in _LOADERS else None
    if fast is not None:
        try:
            spectrum = fast(path)
        except (OSError, ValueError, KeyError, IndexError, TypeError, SpectrumError):
            spectrum = None  # astropy below reads it, or says why it cannot
        if spectrum is not None:
            return validate(spectrum)
    try:
        # astropy's warnings (e.g. "File may have been truncated") would reach the user's terminal
        # once per file; the row's error says what went wrong instead
        with warnings.catch_warnings(), fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            warnings.simplefilter("ignore")
            if loader is None:
                chosen = identify_loader(hdul)
            elif loader in _LOADERS:
                chosen = _LOADERS[loader]
            else:
                raise SpectrumError(f"unknown reader {loader!r}; known: {', '.join(loader_names())}")
            spectrum = chosen.read(hdul)
    except SpectrumError as exc:
        raise SpectrumError(f"{path}: {exc}") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpectrumError(f"{path}: unreadable FITS ({reason})") from None
    return validate(spectrum)


def validate(spectrum: Spectrum) -> Spectrum:
    """Check shapes and wavelength order; sort a descending spectrum. Raises SpectrumError."""
    wave = np.asarray(spectrum.wavelength, dtype=np.float64)
    n = wave.shape[0] if wave.ndim == 1 else -1
    arrays = (spectrum.flux, spectrum.ivar, spectrum.bad)
    if n < 2 or any(np.shape(a) != (n,) for a in arrays):
        raise SpectrumError("wavelength, flux, ivar and mask must be 1-D arrays of one length")
    if not np.all(np.isfinite(wave)) or wave.min() <= 0:
        raise SpectrumError("wavelengths must be finite and positive")
    step = np.diff(wave)
    if np.all(step < 0):
        order = np.argsort(wave)
        return Spectrum(wave[order], spectrum.flux[order], spectrum.ivar[order], spectrum.bad[order],
                        spectrum.flux_unit, spectrum.labels)
    if not np.all(step > 0):
        raise SpectrumError("wavelengths are not monotonic")
    return Spectrum(wave, spectrum.flux, spectrum.ivar, spectrum.bad, spectrum.flux_unit, spectrum.labels)


def table_column(table, *names: str) -> np.ndarray:
    """The first of `names` found in a FITS table (case-insensitive), as an array."""
    lookup = {name.lower(): name for name in table.columns.names}
    for name in names:
        if name.lower() in lookup:
            return np.asarray(table[lookup[name.lower()]])
    raise SpectrumError(f"table has none of the columns {', '.join(names)}")


# Explicit list of loader modules (not a glob): importing each registers its loader.
from . import lamost, sdss  # noqa: E402,F401
