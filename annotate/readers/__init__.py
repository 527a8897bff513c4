"""Spectrum readers: one small loader per file format, chosen by content, not by if/elif.

Each loader module registers itself with :func:`register`, giving a name, an `identify` function
that looks at an opened FITS file, and a priority (higher wins when several identify a file).
`read_spectrum` opens a file once and hands it to the best loader.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..errors import SpectrumError

if TYPE_CHECKING:  # astropy is imported where a file needs it: the SDSS reader's fast path does not
    from astropy.io import fits

FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"
RELATIVE_FLUX_UNIT = "relative flux (survey calibration)"  # flux calibrated in shape, not in scale


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
    # for files of several targets: (hdul, target ids) -> [Spectrum or SpectrumError per target]
    read_targets: Callable[[fits.HDUList, list], list] | None = None
    # another layout of the format `layout_of` names (an older one): a survey whose reader is that
    # format reads files of this layout too
    layout_of: str | None = None


_LOADERS: dict[str, Loader] = {}


def bad_pixels(mask_words, bad_bits: int | None, default_bits: int | None = None) -> np.ndarray:
    """Pixels whose mask word has any of `bad_bits` (the survey definition's `mask_bits_bad`), or,
    where the survey names none, any of the reader's `default_bits` (None: any bit at all)."""
    words = np.asarray(mask_words).astype(np.int64)
    bits = bad_bits if bad_bits is not None else default_bits
    return words != 0 if bits is None else (words & bits) != 0


def register(name: str, identify: Callable[[fits.HDUList], bool], priority: int = 0,
             read_path: Callable[[Path], "Spectrum | None"] | None = None,
             read_targets: Callable[[fits.HDUList, list], list] | None = None, layout_of: str | None = None):
    """Decorator registering `read(hdul, bad_bits=None) -> Spectrum` as the loader `name`;
    `read_path`, when given, reads flux, ivar and mask without astropy (and without labels) for
    bulk ingest; `read_targets`, for formats of several targets per file, reads the named ones at
    once; `layout_of`, the format this loader reads another layout of (a survey naming that format
    as its reader reads both layouts). Each takes `bad_bits`, the pixel-mask bits the survey counts
    as unusable (None: the loader's own rule; see `bad_pixels`)."""

    def decorate(read):
        _LOADERS[name] = Loader(name, identify, read, priority, read_path, read_targets, layout_of)
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


def _accepts(loader: Loader, hdul: fits.HDUList) -> bool:
    try:
        return bool(loader.identify(hdul))
    except (KeyError, IndexError, TypeError, ValueError):
        return False


def _checked(loader: Loader, hdul: fits.HDUList) -> Loader:
    """The named loader when it recognises the file, or a loader of another layout of its format
    (`layout_of`) that does; otherwise an error that says what the file is."""
    if _accepts(loader, hdul):
        return loader
    for layout in sorted(_LOADERS.values(), key=lambda item: -item.priority):
        if layout.layout_of == loader.name and _accepts(layout, hdul):
            return layout
    other = identify_loader(hdul)  # raises the registry's message when no loader knows the file
    raise SpectrumError(f"a {other.name} file, not {loader.name} (the survey's reader): choose the survey of "
                        f"this file's format")


def read_spectrum(path: str | Path, loader: str | None = None, labels: bool = True, target=None,
                  bad_bits: int | None = None) -> Spectrum:
    """Read one spectrum file (FITS, optionally gzip-compressed) with the named or identified loader.

    labels=False lets a named loader take its fast path (no astropy, no pipeline labels) where it
    has one and the file allows. target: the object id of the row, which picks the spectrum in a
    file of several targets (ignored by single-target formats). bad_bits: the pixel-mask bits that
    make a pixel unusable (a survey's `mask_bits_bad`; None: the loader's own rule). Raises
    SpectrumError with a one-line reason for a missing, truncated or unrecognised file.
    """
    path = Path(path)
    if not path.is_file():
        raise SpectrumError(f"spectrum file not found: {path}")
    fast = _LOADERS[loader].read_path if not labels and loader in _LOADERS else None
    if fast is not None:
        try:
            spectrum = fast(path, bad_bits=bad_bits)
        except (OSError, ValueError, KeyError, IndexError, TypeError, SpectrumError):
            spectrum = None  # astropy below reads it, or says why it cannot
        if spectrum is not None:
            return validate(spectrum)
    result = read_spectra(path, [target], loader, bad_bits)[0]
    if isinstance(result, SpectrumError):
        raise result
    return result


def read_spectra(path: str | Path, targets: list, loader: str | None = None, bad_bits: int | None = None) -> list:
    """Open a file once and read the spectrum of each of `targets` (object ids; None where a row
    has none): [Spectrum or SpectrumError] in their order. A single-target format gives its one
    spectrum to every target; a file that cannot be read gives every target its error."""
    from astropy.io import fits

    path = Path(path)
    try:
        if not path.is_file():
            raise SpectrumError(f"spectrum file not found: {path}")
        try:
            # astropy's warnings (e.g. "File may have been truncated") would reach the user's terminal
            # once per file; the row's error says what went wrong instead
            with warnings.catch_warnings(), fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                warnings.simplefilter("ignore")
                if loader is None:
                    chosen = identify_loader(hdul)
                elif loader in _LOADERS:
                    chosen = _checked(_LOADERS[loader], hdul)
                else:
                    raise SpectrumError(f"unknown reader {loader!r}; known: {', '.join(loader_names())}")
                if chosen.read_targets is not None and any(t is not None for t in targets):
                    results = chosen.read_targets(hdul, list(targets), bad_bits=bad_bits)
                else:
                    results = [chosen.read(hdul, bad_bits=bad_bits)] * len(targets)
        except SpectrumError as exc:
            raise SpectrumError(f"{path}: {exc}") from None
        except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpectrumError(f"{path}: unreadable FITS ({reason})") from None
    except SpectrumError as exc:
        return [exc] * len(targets)
    out = []
    for result in results:
        if isinstance(result, SpectrumError):
            out.append(SpectrumError(f"{path}: {result}"))
            continue
        try:
            out.append(validate(result))
        except SpectrumError as exc:
            out.append(SpectrumError(f"{path}: {exc}"))
    return out


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
from . import desi, lamost, sdss  # noqa: E402,F401
