"""`annotate demo`: write a small survey-style sample, then annotate it with the real pipeline.

SDSS DR18 (the default): an spAll-like catalog (`dr18.fits`) and `spec-*.fits` files in the DR18
BOSS layout beside it (`v6_0_4/spectra/full/...`). DESI DR1 (`--survey desi_dr1`): a zpix-like
catalog (`zpix-main-dark.fits`) and healpix coadds of many targets each in the DR1 layout
(`healpix/main/dark/PIXGROUP/HEALPIX/coadd-main-dark-HEALPIX.fits`). Both are simulated from the
template library; their stars are drawn from the MILES stars held out of the shipped model's
training, with a different noise seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import SPEED_OF_LIGHT_KMS
from .grid import WavelengthGrid
from .pipeline import RunResult, RunSettings, run
from .simulate.dataset import held_out_star_indices
from .simulate.spectra import draw_sample
from .simulate.templates import load_library
from .simulate.writer import write_catalog, write_desi_coadd, write_sdss_specs
from .surveys import load_survey

RUN2D = "v6_0_4"
NATIVE_GRID = WavelengthGrid(3.5530, 1e-4, 4640)  # a BOSS coadd's own pixels (3572-10386 Å)
FIELDS = (15143, 15170)  # DR18 (v6_0_4) fields are plate-era: folders 15143p/, 15170p/
DESI_GRID = WavelengthGrid.from_range(3590.0, 9835.0)  # simulated on log λ, written on the arms' 0.8 Å pixels
DESI_HEALPIX = (27245, 27246, 27247, 27256)  # nside 64, nested; a few pixels of many targets each
CATALOGS = {"sdss_dr18": "dr18.fits", "desi_dr1": "zpix-main-dark.fits"}


def _simulated(n_objects: int, grid, seed: int, star_err_kms: float, err_kms: float) -> tuple[dict, np.ndarray,
                                                                                       np.random.Generator]:
    """The sample's objects (stars drawn from the held-out MILES stars, so the shipped model never
    saw them), the pipeline's z uncertainty (`star_err_kms` for stars, `err_kms` otherwise) and the
    generator of the catalog's other columns."""
    lib = load_library()
    stars = held_out_star_indices(lib.n_star, 0.15, seed=0)
    sample = draw_sample(n_objects, lib, grid, seed=seed, star_indices=stars)
    z_err = np.where(sample["class"] == "STAR", star_err_kms, err_kms) / SPEED_OF_LIGHT_KMS * (1 + sample["z"])
    return sample, z_err, np.random.default_rng(seed + 1)


def make_sample(out_dir: str | Path, n_objects: int = 300, seed: int = 2026, progress: bool = False) -> Path:
    """Write the demo catalog and its spectra; returns the catalog path."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    sample, z_err, rng = _simulated(n_objects, NATIVE_GRID, seed, 10.0, 30.0)
    n = n_objects
    field = np.array([FIELDS[i % 2] for i in range(n)], dtype=np.int64)
    mjd = np.where(field == FIELDS[0], 59205, 60130).astype(np.int64)
    catalogid = 27021600000000000 + rng.choice(10**9, size=n, replace=False).astype(np.int64)
    zwarning = np.where(rng.random(n) < 0.03, 4, 0).astype(np.int32)  # a few SMALL_DELTA_CHI2 rows
    is_star = sample["class"] == "STAR"
    columns = {
        # spAll-v6_0_4 SPECOBJID is an int64; these are unique, not the survey's bit packing
        "SPECOBJID": (field.astype(np.int64) << 40) + (mjd.astype(np.int64) << 16) + np.arange(n, dtype=np.int64),
        "FIELD": field, "MJD": mjd, "CATALOGID": catalogid, "RUN2D": np.array([RUN2D] * n),
        "FIBERID": (np.arange(n) % 500 + 1).astype(np.int32),
        "RACAT": rng.uniform(150.0, 160.0, n), "DECCAT": rng.uniform(0.0, 5.0, n),
        "OBJTYPE": np.array(["SCIENCE"] * n), "CLASS": sample["class"],
        "SUBCLASS": np.array([""] * n), "Z": sample["z"], "Z_ERR": z_err, "ZWARNING": zwarning,
        "SN_MEDIAN_ALL": sample["snr"].astype(np.float32),
        "XCSAO_TEFF": np.where(is_star, sample["teff"], np.nan).astype(np.float32),
        "XCSAO_LOGG": np.where(is_star, sample["logg"], np.nan).astype(np.float32),
        "XCSAO_FEH": np.where(is_star, sample["feh"], np.nan).astype(np.float32),
        "SPECPRIMARY": np.ones(n, dtype=np.int16),
    }
    survey = load_survey("sdss_dr18")
    relative = survey.spectrum_paths(columns)
    spectra_root = out_dir  # the run2d folders sit beside the catalog, as on the SAS
    headers = [{"FIELD": int(field[i]), "MJD": int(mjd[i]), "CATID": int(catalogid[i]), "RUN2D": RUN2D}
               for i in range(n)]
    with tqdm(total=n, desc="write sample", unit="file", disable=not progress, mininterval=0.5) as bar:
        for start in range(0, n, 50):  # 50 files a call: their HDUs are built once
            rows = slice(start, start + 50)
            written = write_sdss_specs([spectra_root / path for path in relative[rows]], NATIVE_GRID.loglam,
                                       sample["flux"][rows], sample["ivar"][rows], sample["mask"][rows],
                                       {k: v[rows] for k, v in columns.items()}, headers[rows])
            bar.update(len(written))
    return write_catalog(out_dir / "dr18.fits", columns,
                         header={"ORIGIN": "annotate demo", "COMMENT": "simulated SDSS DR18-style spAll sample"})


def make_desi_sample(out_dir: str | Path, n_objects: int = 300, seed: int = 2026, progress: bool = False) -> Path:
    """Write the DESI demo catalog (zpix-like) and its healpix coadds; returns the catalog path."""
    out_dir = Path(out_dir)
    sample, z_err, rng = _simulated(n_objects, DESI_GRID, seed, 5.0, 15.0)
    n = n_objects
    healpix = np.array([DESI_HEALPIX[i % len(DESI_HEALPIX)] for i in range(n)], dtype=np.int32)
    target = 39627000000000000 + rng.choice(10**9, size=n, replace=False).astype(np.int64)
    zwarn = np.where(rng.random(n) < 0.03, 4, 0).astype(np.int64)  # a few SMALL_DELTA_CHI2 rows
    columns = {
        "TARGETID": target, "SURVEY": np.array(["main"] * n), "PROGRAM": np.array(["dark"] * n), "HEALPIX": healpix,
        "TARGET_RA": rng.uniform(150.0, 160.0, n), "TARGET_DEC": rng.uniform(0.0, 5.0, n),
        "SPECTYPE": sample["class"], "SUBTYPE": np.array([""] * n), "Z": sample["z"], "ZERR": z_err, "ZWARN": zwarn,
        "DELTACHI2": np.where(zwarn == 0, 10 ** rng.uniform(1.8, 4.0, n), rng.uniform(1.0, 9.0, n)),
        "ZCAT_PRIMARY": np.ones(n, bool), "COADD_FIBERSTATUS": np.zeros(n, np.int32),
    }
    survey = load_survey("desi_dr1")
    relative = survey.spectrum_paths(columns)
    from tqdm.auto import tqdm

    for pixel in tqdm(DESI_HEALPIX, desc="write sample", unit="file", disable=not progress):
        rows = np.flatnonzero(healpix == pixel)
        fibermap = {"TARGETID": target[rows], "TARGET_RA": columns["TARGET_RA"][rows],
                    "TARGET_DEC": columns["TARGET_DEC"][rows], "COADD_FIBERSTATUS": np.zeros(len(rows), np.int32)}
        header = {"SPGRP": "healpix", "SPGRPVAL": int(pixel), "HPXPIXEL": int(pixel), "HPXNSIDE": 64,
                  "HPXNEST": True, "SURVEY": "main", "PROGRAM": "dark"}
        write_desi_coadd(out_dir / relative[rows[0]], fibermap, DESI_GRID.wavelength, sample["flux"][rows],
                         sample["ivar"][rows], sample["mask"][rows], header)
    return write_catalog(out_dir / CATALOGS["desi_dr1"], columns,
                         header={"ORIGIN": "annotate demo", "COMMENT": "simulated DESI DR1-style zpix sample"})


def run_demo(out_dir: str | Path = "annotate-demo", n_objects: int = 300, seed: int = 2026,
             scheduler: str = "auto", progress: bool = True, fit: bool = True,
             survey: str = "sdss_dr18") -> RunResult:
    """Write the sample of `survey` (sdss_dr18 or desi_dr1) into `out_dir` unless it is there, and
    run the pipeline on it."""
    if survey not in CATALOGS:
        from .errors import ConfigError

        raise ConfigError(f"the demo has samples for {', '.join(CATALOGS)}, not {survey!r}")
    from .pipeline import writable_folder

    out_dir = writable_folder(Path(out_dir), "the demo's folder", make=True)
    catalog = out_dir / CATALOGS[survey]
    if not catalog.exists():
        (make_desi_sample if survey == "desi_dr1" else make_sample)(out_dir, n_objects, seed, progress)
    return run(RunSettings(catalog=catalog, survey=survey, spectra_root=out_dir,
                           scheduler=scheduler, progress=progress, fit=fit))
