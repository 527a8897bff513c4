"""Ingest: SDSS spec files against an astropy loop; DESI coadds of many targets against opening
each row's file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .common import Row, timed


def _astropy_loop(paths: list[str]) -> int:
    from astropy.io import fits

    for path in paths:
        with fits.open(path) as hdul:
            coadd = hdul[1].data
            for name in ("flux", "loglam", "ivar", "and_mask"):
                np.array(coadd[name])
    return len(paths)


def _ingest_once(paths: list[str], workdir: Path, reader: str = "sdss_spec", object_ids=None) -> int:
    from ..grid import WavelengthGrid
    from ..ingest import ingest
    from ..store import create_store

    store = workdir / f"bench-{time.monotonic_ns()}.h5"
    create_store(store, np.arange(len(paths)) if object_ids is None else object_ids, paths, WavelengthGrid())
    counts = ingest(store, paths, reader=reader, scheduler="sync")
    store.unlink()
    return counts["OK"]


def _per_target_loop(paths: list[str], targets: list[int]) -> int:
    """The naive way: open each row's coadd for its one target (astropy, the B/R/Z arrays)."""
    from astropy.io import fits

    for path, target in zip(paths, targets):
        with fits.open(path) as hdul:
            row = int(np.flatnonzero(np.asarray(hdul["FIBERMAP"].data["TARGETID"]) == target)[0])
            for arm in "BRZ":
                for part in ("WAVELENGTH", "FLUX", "IVAR", "MASK"):
                    data = hdul[f"{arm}_{part}"].data
                    np.array(data if part == "WAVELENGTH" else data[row])
    return len(paths)


def bench_ingest_desi(sizes, workdir: Path) -> Row:
    """DESI healpix coadds of ~n/4 targets each (the demo's layout), read once per file per task."""
    from ..demo import make_desi_sample
    from ..catalogs import read_catalog
    from ..surveys import load_survey

    row = Row("ingest DESI coadds, 4 files of many targets (1 core)", "targets/s",
              baseline_name="astropy, each row's file opened for its target")
    for n in sizes:
        sample = workdir / f"ingest-desi-{n}"
        catalog = make_desi_sample(sample, n, seed=7)
        survey = load_survey("desi_dr1")
        table = read_catalog(catalog, survey)
        paths = [str(sample / p) for p in survey.spectrum_paths(table)]
        targets = [int(t) for t in table["TARGETID"]]
        _per_target_loop(paths[:4], targets[:4])  # warm the page cache and imports
        seconds, ok = timed(_ingest_once, paths, workdir, "desi_coadd", targets, repeat=2)
        base, _ = timed(_per_target_loop, paths, targets, repeat=1)
        row.sizes.append(n)
        row.ours.append(n / seconds)
        row.baseline.append(n / base)
    return row


def bench_ingest(sizes, workdir: Path) -> Row:
    from ..demo import make_sample
    from ..surveys import load_survey
    from ..catalogs import read_catalog

    sample = workdir / "ingest"
    catalog = make_sample(sample, max(sizes), seed=7)
    survey = load_survey("sdss_dr18")
    paths = [str(sample / p) for p in survey.spectrum_paths(read_catalog(catalog, survey))]
    row = Row("ingest SDSS spec files (1 core)", "files/s", baseline_name="astropy loop over the same files")
    _astropy_loop(paths[:10])  # warm the page cache and imports
    for n in sizes:
        seconds, ok = timed(_ingest_once, paths[:n], workdir, repeat=2)
        base, _ = timed(_astropy_loop, paths[:n], repeat=2)
        row.sizes.append(n)
        row.ours.append(n / seconds)
        row.baseline.append(n / base)
    return row
