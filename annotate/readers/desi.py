"""DESI coadd-*.fits (healpix and tile coadds, EDR / DR1 data model): HDU FIBERMAP (one row per
target, TARGETID), then per spectrograph arm B, R, Z the images {ARM}_WAVELENGTH (n_wave,) vacuum
Å, {ARM}_FLUX, {ARM}_IVAR, {ARM}_MASK (n_target, n_wave) and {ARM}_RESOLUTION (n_target, n_diag,
n_wave). One file holds up to ~500 targets: `read_targets` reads it once for all the rows that
name it.

The arms overlap by ~40 Å (5760-5800 Å, 7520-7620 Å) on a common 0.8 Å grid; they are joined there
by inverse-variance weighting of the good pixels, as desispec's coadd_cameras does. A pixel is
unusable where its IVAR is 0 or its MASK has any of the survey's `mask_bits_bad` (desispec
specmask; catalogs/desi_dr1.yaml lists them all), or any bit where the survey names none. RESOLUTION is not read (the store holds
spectra at the survey's resolution, and the fit's templates are broadened to a fixed σ).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import FLUX_UNIT, Spectrum, bad_pixels, register
from ..errors import SpectrumError

if TYPE_CHECKING:
    from astropy.io import fits

ARMS = ("B", "R", "Z")
GRID_TOLERANCE = 1e-3  # Å: arms are joined pixel by pixel when their wavelengths agree this well


def identify(hdul: fits.HDUList) -> bool:
    return "FIBERMAP" in hdul and any(f"{arm}_FLUX" in hdul for arm in ARMS)


def _arms(hdul: fits.HDUList) -> list[str]:
    arms = [arm for arm in ARMS if f"{arm}_FLUX" in hdul]
    for arm in arms:
        for part in ("WAVELENGTH", "IVAR"):
            if f"{arm}_{part}" not in hdul:
                raise SpectrumError(f"DESI coadd has {arm}_FLUX but no {arm}_{part} HDU")
    if not arms:
        raise SpectrumError("DESI coadd has none of the B_FLUX, R_FLUX, Z_FLUX HDUs")
    return arms


def target_ids(hdul: fits.HDUList) -> np.ndarray:
    fibermap = hdul["FIBERMAP"].data
    if fibermap is None or "TARGETID" not in fibermap.columns.names:
        raise SpectrumError("DESI coadd FIBERMAP has no TARGETID column")
    return np.asarray(fibermap["TARGETID"]).astype(np.int64)


def _arm_rows(hdul: fits.HDUList, arm: str, rows: np.ndarray, n_targets: int, bad_bits: int | None = None):
    wave = np.asarray(hdul[f"{arm}_WAVELENGTH"].data, dtype=np.float64)
    flux = np.asarray(hdul[f"{arm}_FLUX"].data, dtype=np.float32)
    ivar = np.asarray(hdul[f"{arm}_IVAR"].data, dtype=np.float32)
    if flux.ndim == 1:
        flux, ivar = flux[None], ivar[None]
    if wave.ndim != 1 or flux.shape != (n_targets, wave.size) or ivar.shape != flux.shape:
        raise SpectrumError(f"DESI {arm} arm: FLUX {flux.shape} / IVAR {ivar.shape} do not match "
                            f"{n_targets} FIBERMAP rows x {wave.size} wavelengths")
    bad = ~(ivar[rows] > 0) | ~np.isfinite(flux[rows])
    if f"{arm}_MASK" in hdul and hdul[f"{arm}_MASK"].data is not None:
        mask = np.asarray(hdul[f"{arm}_MASK"].data)
        mask = mask[None] if mask.ndim == 1 else mask
        if mask.shape == flux.shape:
            bad |= bad_pixels(mask[rows], bad_bits)
    return wave, flux[rows], ivar[rows], bad


def join_arms(arms: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength (n,), flux, ivar, bad (k, n)) from per-arm (wave, flux, ivar, bad): on a common
    pixel grid, overlapping pixels are the inverse-variance weighted mean of the good arms; if the
    arms do not share a grid, each keeps its own pixels up to the middle of the overlap."""
    arms = sorted(arms, key=lambda arm: arm[0][0])
    step = np.median(np.diff(arms[0][0]))
    origin = arms[0][0][0]
    index = [np.rint((wave - origin) / step).astype(np.int64) for wave, *_ in arms]
    shared = all(np.abs(origin + i * step - wave).max() < GRID_TOLERANCE for i, (wave, *_) in zip(index, arms))
    if shared:
        n = int(max(i.max() for i in index)) + 1
        k = arms[0][1].shape[0]
        weighted, weight = np.zeros((k, n)), np.zeros((k, n))
        covered = np.zeros(n, bool)
        for i, (wave, flux, ivar, bad) in zip(index, arms):
            w = np.where(bad, 0.0, ivar.astype(np.float64))
            np.add.at(weighted, (slice(None), i), w * np.where(bad, 0.0, flux))
            np.add.at(weight, (slice(None), i), w)
            covered[i] = True
        wave = origin + step * np.arange(n)
        keep = covered
        flux = np.where(weight > 0, weighted / np.maximum(weight, 1e-300), 0.0)[:, keep]
        return wave[keep], flux.astype(np.float32), weight[:, keep].astype(np.float32), (weight[:, keep] <= 0)
    pieces = []
    for j, (wave, flux, ivar, bad) in enumerate(arms):
        lo = -np.inf if j == 0 else 0.5 * (arms[j - 1][0][-1] + wave[0])
        hi = np.inf if j == len(arms) - 1 else 0.5 * (wave[-1] + arms[j + 1][0][0])
        inside = (wave >= lo) & (wave < hi)
        pieces.append((wave[inside], flux[:, inside], ivar[:, inside], bad[:, inside]))
    return tuple(np.concatenate([p[i] for p in pieces], axis=-1) for i in range(4))


def _spectra(hdul: fits.HDUList, rows: np.ndarray, bad_bits: int | None = None) -> list[Spectrum]:
    ids = target_ids(hdul)
    arms = [_arm_rows(hdul, arm, rows, len(ids), bad_bits) for arm in _arms(hdul)]
    wave, flux, ivar, bad = join_arms(arms)
    unit = str(hdul[f"{_arms(hdul)[0]}_FLUX"].header.get("BUNIT", "")).replace(" ", "")
    flux_unit = FLUX_UNIT if unit in ("", "10**-17erg/(scm2Angstrom)", "1e-17erg/(scm2Angstrom)") else unit
    return [Spectrum(wave, flux[j], ivar[j], bad[j], flux_unit, {"TARGETID": int(ids[r])})
            for j, r in enumerate(rows)]


def read_targets(hdul: fits.HDUList, targets, bad_bits: int | None = None) -> list:
    """For each requested TARGETID, its Spectrum, or a SpectrumError when the file lacks it."""
    ids = target_ids(hdul)
    position = {int(t): i for i, t in enumerate(ids)}
    wanted = [position.get(int(t)) if t is not None else (0 if len(ids) == 1 else None) for t in targets]
    found = sorted({i for i in wanted if i is not None})
    spectra = dict(zip(found, _spectra(hdul, np.array(found, dtype=np.int64), bad_bits))) if found else {}
    out = []
    for target, i in zip(targets, wanted):
        if i is None:
            out.append(SpectrumError(f"TARGETID {target} is not in this coadd's FIBERMAP ({len(ids)} targets)"))
        else:
            out.append(spectra[i])
    return out


@register("desi_coadd", identify, priority=20, read_targets=read_targets)
def read(hdul: fits.HDUList, bad_bits: int | None = None) -> Spectrum:
    """The file's only target; a file of several targets needs `read_targets` (a TARGETID)."""
    ids = target_ids(hdul)
    if len(ids) != 1:
        raise SpectrumError(f"DESI coadd holds {len(ids)} targets; a catalog row must name one by TARGETID")
    return _spectra(hdul, np.array([0]), bad_bits)[0]
