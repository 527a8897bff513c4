"""The fitting stage of a run: the store's spectra and the ViT's predictions in, the final class
and redshift out (`fit_store`); between prediction and write-back in single and sharded runs."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from .. import CLASS_NAMES
from ..flags import PredFlag
from ..parallel import TASK_ROWS
from ..stellarbaseline import LABELS as STELLAR_KEYS  # teff, logg, feh: the order of the labels' columns
from .decide import choose
from .fitter import Fitter, FitSettings
from .stellar import stellar_labels

FIT_KEYS = ("fit_class", "fit_z", "fit_z_err", "fit_deltachi2", "fit_rchi2", "fit_spectype", "fit_flags",
            *(f"fit_{key}" for key in STELLAR_KEYS), *(f"fit_{key}_err" for key in STELLAR_KEYS))
SPECTYPE_WIDTH = 12


def empty_fit(n: int) -> dict:
    """The fit's keys for n rows that were not fitted ('' class, NaN values, no flags)."""
    return {"fit_class": np.full(n, "", dtype="U6"), "fit_z": np.full(n, np.nan), "fit_z_err": np.full(n, np.nan),
            "fit_deltachi2": np.full(n, np.nan), "fit_rchi2": np.full(n, np.nan),
            "fit_spectype": np.full(n, "", dtype=f"U{SPECTYPE_WIDTH}"), "fit_flags": np.zeros(n, np.int64),
            **{f"fit_{key}": np.full(n, np.nan) for key in STELLAR_KEYS},
            **{f"fit_{key}_err": np.full(n, np.nan) for key in STELLAR_KEYS}}


def fit_rows(fitter: Fitter, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, vit: dict | None) -> dict:
    """The fit's keys for one batch of spectra (B, n_pix); `vit` has prob (B, 3), z, z_err (B,)."""
    n = len(flux)
    out = empty_fit(n)
    if n == 0:
        return out
    f, w, spiked = fitter.arrays(flux, ivar, mask)
    candidates = fitter.fit_arrays(f, w, vit)
    star_shifts = {}
    for i in range(n):
        prob = None if vit is None else vit["prob"][i]
        vit_z = np.nan if vit is None else float(vit["z"][i])
        vit_err = np.nan if vit is None else float(vit["z_err"][i])
        choice = choose(candidates[i], prob, vit_z, vit_err, fitter.settings.small_deltachi2, fitter.settings.prior)
        out["fit_flags"][i] = choice.flags | (int(PredFlag.SPIKES_LEFT_OUT) if spiked[i] else 0)
        if choice.best is None:
            continue
        out["fit_class"][i] = choice.spectype
        out["fit_z"][i], out["fit_z_err"][i] = choice.z, choice.z_err
        out["fit_deltachi2"][i], out["fit_rchi2"][i] = choice.deltachi2, choice.rchi2
        if choice.spectype == "STAR":
            sptype, _ = fitter.spectral_type(f[i], w[i], choice.best.shift, choice.subtype)
            out["fit_spectype"][i] = sptype[:SPECTYPE_WIDTH]
            star_shifts[i] = choice.best.shift
    if star_shifts and fitter.settings.stellar_k > 0:
        rows = np.fromiter(star_shifts, int)
        labels, sigma, offset = stellar_labels(fitter.grid, fitter.bases, f[rows], w[rows],
                                       np.fromiter(star_shifts.values(), float), fitter.settings.stellar_k,
                                       fitter.stellar_calibration, fitter.settings.stellar_mix)
        for j, key in enumerate(STELLAR_KEYS):
            out[f"fit_{key}"][rows] = labels[:, j]
            out[f"fit_{key}_err"][rows] = sigma[:, j]
        out["fit_flags"][rows[offset]] |= int(PredFlag.FLUX_OFFSET)
    return out


def single_threaded():
    """A context in which BLAS runs on one thread: the fit's numbers then do not depend on how
    many threads the process's BLAS would use (matrix products split over threads round
    differently), so a shard fitted in a worker and one fitted in the main process agree to the
    bit. Its parallelism comes from the tasks instead (annotate.parallel)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


@lru_cache(maxsize=2)
def _fitter(grid: tuple, settings: tuple) -> Fitter:
    """One Fitter per process and configuration (its bases and their caches are reused)."""
    from ..grid import WavelengthGrid

    return Fitter(WavelengthGrid(*grid), FitSettings(*settings))


def _warm_fitter(grid: tuple, settings: tuple) -> None:
    """Build this process's Fitter and, where stellar labels are fitted, its training stars
    (0.4-0.5 s together): worker processes forked after this inherit them instead of each
    building its own, which on 2 cores took as long in parallel as this once."""
    from .stellar import training_stars

    fitter = _fitter(grid, settings)
    if fitter.settings.stellar_k > 0:
        training_stars(fitter.grid, fitter.bases)


def fit_batch(grid: tuple, settings: tuple, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray,
              vit: dict | None) -> dict:
    """`fit_rows` as a run fits a batch: with this process's Fitter for the grid and settings
    (WavelengthGrid and FitSettings fields) and BLAS on one thread (`single_threaded`)."""
    with single_threaded():
        return fit_rows(_fitter(grid, settings), flux, ivar, mask, vit)


def fit_task(task: dict) -> dict:
    """Fit rows [start, stop) of a spectra store (runs on a Dask worker). task: {'store', 'start',
    'stop', 'grid' (WavelengthGrid fields), 'settings' (FitSettings fields), 'prob', 'z', 'z_err'
    (the ViT's predictions for those rows)}. Rows whose store status is not OK are not fitted."""
    from ..store import STATUS, read_rows

    rows = read_rows(task["store"], task["start"], task["stop"])
    out = empty_fit(task["stop"] - task["start"])
    ok = rows["status"] == STATUS["OK"]
    vit = {key: np.asarray(task[key])[ok] for key in ("prob", "z", "z_err")}
    result = fit_batch(tuple(task["grid"]), tuple(task["settings"]), rows["flux"][ok], rows["ivar"][ok],
                       rows["mask"][ok], vit)
    for key in FIT_KEYS:
        out[key][ok] = result[key]
    return out


def fit_store(store_path, pred: dict, grid, settings: FitSettings = FitSettings(), scheduler: str = "sync",
              n_workers: int | None = None, rows_per_task: int = TASK_ROWS,
              progress: Callable[[int], None] | None = None, address: str | None = None) -> dict:
    """Fit every row of a spectra store whose ViT predictions are `pred` (predict_store's output);
    returns the FIT_KEYS arrays. Tasks of `rows_per_task` rows run with `scheduler` (as the
    ingest does: annotate.parallel; on `address`, an address or a parallel.SharedCluster, when
    given)."""
    from dataclasses import astuple

    from ..parallel import map_unordered, resolve_scheduler
    from ..store import open_store

    n = open_store(store_path).n_rows
    out = empty_fit(n)
    tasks = [{"store": str(store_path), "start": first, "stop": min(first + rows_per_task, n),
              "grid": astuple(grid), "settings": astuple(settings),
              **{key: pred[key][first:first + rows_per_task] for key in ("prob", "z", "z_err")}}
             for first in range(0, n, rows_per_task)]
    if address is None:  # the torch backend is not forked: torch may have run in this process
        scheduler = resolve_scheduler(scheduler, len(tasks), n_workers, forkable=settings.backend == "numpy")
        if scheduler == "processes":
            _warm_fitter(astuple(grid), astuple(settings))
    for index, result in map_unordered(fit_task, tasks, scheduler=scheduler, n_workers=n_workers,
                                         address=address):
        rows = slice(tasks[index]["start"], tasks[index]["stop"])
        for key in FIT_KEYS:
            out[key][rows] = result[key]
        if progress is not None:
            progress(rows.stop - rows.start)
    return out


def final_columns(pred: dict) -> dict:
    """class (U6), z, z_err and the ViT's class: the fit's values where it found a solution, the
    ViT's elsewhere (and everywhere when the fit did not run); teff, logg, feh: the fit's where it
    found a star and has the label (annotate.fit.stellar), the ViT's elsewhere; teff_err, logg_err,
    feh_err: the fit's σ of those labels, NaN where the ViT's stand (the ViT gives none)."""
    prob = pred["prob"]
    vit_class = np.where(np.isfinite(prob).all(axis=1), np.array(CLASS_NAMES)[np.nan_to_num(prob, nan=0).argmax(axis=1)], "")
    fitted = pred["fit_class"] != ""
    star = pred["fit_class"] == "STAR"
    stellar = {}
    for key in STELLAR_KEYS:
        fit_has = star & np.isfinite(pred[f"fit_{key}"])
        stellar[key] = np.where(fit_has, pred[f"fit_{key}"], pred[key])
        stellar[f"{key}_err"] = np.where(fit_has, pred[f"fit_{key}_err"], np.nan)
    return {"class": np.where(fitted, pred["fit_class"], vit_class).astype("U6"),
            "z": np.where(fitted, pred["fit_z"], pred["z"]), "z_err": np.where(fitted, pred["fit_z_err"], pred["z_err"]),
            "vit_class": vit_class.astype("U6"), "fitted": fitted, **stellar}

