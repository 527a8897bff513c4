"""Ingest: the spectrum files of a catalog's rows read (in parallel, on Dask workers: `ingest_rows`),
resampled onto the store's grid, and written into its PENDING rows by this process (`ingest`).
A row that cannot be read gets a status and its reason instead of data; a rerun reads only the
rows still PENDING.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import SpectrumError, StoreError
from .grid import WavelengthGrid, resample
from .parallel import TASK_ROWS
from .store import STATUS, open_store, read_object_ids, read_status, record_flux_units, write_rows

MIN_GOOD_PIXELS = 100


def ingest_rows(task: dict) -> dict:
    """Read and resample the spectra of one task (runs on a Dask worker).

    task: {'start': int, 'paths': [str | None], 'refused': [bool], 'grid': dict, 'reader': str | None,
    'reasons': [str] (optional: why a row has no path), 'targets': [str] (optional: the rows'
    object ids, which pick the spectrum in files of several targets), 'bad_bits': int | None
    (optional: the survey's unusable pixel-mask bits)}.
    Rows that name the same file are read from one opening of it.
    Returns the rows' flux, ivar, mask, status and error arrays and the flux units read.
    """
    from .readers import read_spectra, read_spectrum

    grid = WavelengthGrid(**task["grid"])
    n = len(task["paths"])
    out = {
        "flux": np.zeros((n, grid.n_pix), np.float32), "ivar": np.zeros((n, grid.n_pix), np.float32),
        "mask": np.ones((n, grid.n_pix), np.uint8), "status": np.zeros(n, np.int8), "error": [""] * n,
        "flux_units": [],
    }
    reasons = task.get("reasons") or [""] * n
    bad_bits = task.get("bad_bits")
    targets = [_target(t) for t in task.get("targets") or [None] * n]
    by_file: dict[str, list[int]] = {}
    for i, path in enumerate(task["paths"]):
        if task["refused"][i]:
            out["status"][i], out["error"][i] = STATUS["PATH_REFUSED"], reasons[i] or "path outside the spectra root"
        elif not path:
            out["status"][i], out["error"][i] = STATUS["NO_SPECTRUM"], reasons[i] or "no spectrum path for this row"
        else:
            by_file.setdefault(path, []).append(i)
    for path, rows in by_file.items():
        with warnings.catch_warnings():  # astropy's per-file warnings: the row's error says it
            warnings.simplefilter("ignore")
            if len(rows) == 1:
                try:
                    results = [read_spectrum(path, task["reader"], labels=False, target=targets[rows[0]],
                                             bad_bits=bad_bits)]
                except SpectrumError as exc:
                    results = [exc]
            else:
                results = read_spectra(path, [targets[i] for i in rows], task["reader"], bad_bits)
        for i, spectrum in zip(rows, results):
            _resampled_row(out, i, path, spectrum, grid)
            if not isinstance(spectrum, SpectrumError) and spectrum.flux_unit not in out["flux_units"]:
                out["flux_units"].append(spectrum.flux_unit)
    return out


def _target(object_id):
    """An object id as the integer target id multi-target files use, or None."""
    text = str(object_id).strip() if object_id is not None else ""
    return int(text) if text.lstrip("-").isdigit() else None


def _resampled_row(out: dict, i: int, path: str, spectrum, grid: WavelengthGrid) -> None:
    if isinstance(spectrum, SpectrumError):
        out["status"][i], out["error"][i] = STATUS["NO_SPECTRUM"], str(spectrum)
        return
    flux, ivar, mask = resample(spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.bad, grid)
    n_good = int((~mask).sum())
    out["flux"][i], out["ivar"][i], out["mask"][i] = flux, ivar, mask
    if n_good < MIN_GOOD_PIXELS:
        out["status"][i] = STATUS["NO_USABLE_PIXELS"]
        out["error"][i] = f"{path}: {n_good} usable pixels on the grid (need {MIN_GOOD_PIXELS})"
    elif not flux[~mask].any():  # a placeholder: nothing to predict from
        out["status"][i] = STATUS["NO_USABLE_PIXELS"]
        out["error"][i] = f"{path}: the flux is 0 at every usable pixel (no information)"
    else:
        out["status"][i] = STATUS["OK"]


def ingest(store_path: str | Path, paths: list, refused: np.ndarray | None = None, reader: str | None = None,
           scheduler: str = "auto", n_workers: int | None = None, rows_per_task: int = TASK_ROWS,
           progress: Callable[[int], None] | None = None, address: str | None = None,
           reasons: list | None = None, bad_bits: int | None = None) -> dict:
    """Fill the PENDING rows of an existing store from spectrum files, in parallel (on the Dask
    scheduler at `address`, an address or a parallel.SharedCluster, when given).

    paths: (n_rows,) absolute spectrum paths (None or '' where the row has none); refused: rows whose
    path was refused (outside the spectra root); reasons: why a row has no path (`resolve_paths`);
    bad_bits: the pixel-mask bits that make a pixel unusable (`Survey.bad_pixel_bits`; None: each
    reader's own rule). The flux unit of the spectra read goes into the store's `flux_unit`
    attribute (several, joined by '; ', where the files differ). Returns counts per status name.
    """
    from .parallel import map_unordered

    info = open_store(store_path)
    if len(paths) != info.n_rows:
        raise StoreError(f"{store_path}: store has {info.n_rows} rows, catalog has {len(paths)}")
    refused = np.zeros(info.n_rows, bool) if refused is None else np.asarray(refused, bool)
    status, _ = read_status(store_path)
    object_ids = read_object_ids(store_path)
    tasks = []
    for start in range(0, info.n_rows, rows_per_task):
        stop = min(start + rows_per_task, info.n_rows)
        pending = np.flatnonzero(status[start:stop] == STATUS["PENDING"])
        if len(pending) == 0:
            continue
        first, last = start + pending[0], start + pending[-1] + 1
        tasks.append({"start": int(first), "paths": [paths[i] or None for i in range(first, last)],
                      "refused": [bool(refused[i]) for i in range(first, last)],
                      "grid": info.grid.to_dict(), "reader": reader, "bad_bits": bad_bits,
                      "reasons": [reasons[i] if reasons else "" for i in range(first, last)],
                      "targets": object_ids[first:last]})
    units: list[str] = []
    for index, rows in map_unordered(ingest_rows, tasks, scheduler=scheduler, n_workers=n_workers, address=address):
        new_units = [unit for unit in rows["flux_units"] if unit not in units]
        if new_units:  # recorded before the rows are marked read: a resumed run does not read them again
            record_flux_units(store_path, new_units)
            units += new_units
        write_rows(store_path, tasks[index]["start"], rows)
        if progress is not None:
            progress(len(rows["status"]))
    status, _ = read_status(store_path)
    return {name: int((status == code).sum()) for name, code in STATUS.items()}
