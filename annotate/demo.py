"""`annotate demo`: write a small SDSS DR18-style sample, then annotate it with the real pipeline.

The sample is an spAll-like catalog (`dr18.fits`) and `spec-*.fits` files in the DR18 BOSS
layout beside it (`v6_0_4/spectra/full/...`), simulated from the template library. Its stars are
drawn from the MILES stars held out of the shipped model's training, with a different noise seed.
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
from .simulate.writer import write_catalog, write_sdss_spec
from .surveys import load_survey

RUN2D = "v6_0_4"
NATIVE_GRID = WavelengthGrid(3.5530, 1e-4, 4640)  # a BOSS coadd's own pixels (3572-10386 Å)
FIELDS = (15143, 15170)  # DR18 (v6_0_4) fields are plate-era: folders 15143p/, 15170p/


def make_sample(out_dir: str | Path, n_objects: int = 300, seed: int = 2026, progress: bool = False) -> Path:
    """Write the demo catalog and its spectra; returns the catalog path."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    lib = load_library()
    stars = held_out_star_indices(lib.n_star, 0.15, seed=0)
    sample = draw_sample(n_objects, lib, NATIVE_GRID, seed=seed, star_indices=stars)
    rng = np.random.default_rng(seed + 1)
    n = n_objects
    field = np.array([FIELDS[i % 2] for i in range(n)], dtype=np.int64)
    mjd = np.where(field == FIELDS[0], 59205, 60130).astype(np.int64)
    catalogid = 27021600000000000 + rng.choice(10**9, size=n, replace=False).astype(np.int64)
    z_err = np.where(sample["class"] == "STAR", 10.0, 30.0) / SPEED_OF_LIGHT_KMS * (1 + sample["z"])
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
    loglam = NATIVE_GRID.loglam
    for i in tqdm(range(n), desc="write sample", unit="file", disable=not progress, mininterval=0.5):
        row = {key: values[i] for key, values in columns.items()}
        header = {"FIELD": int(field[i]), "MJD": int(mjd[i]), "CATID": int(catalogid[i]), "RUN2D": RUN2D}
        write_sdss_spec(spectra_root / relative[i], loglam, sample["flux"][i], sample["ivar"][i], sample["mask"][i],
                        row, header)
    return write_catalog(out_dir / "dr18.fits", columns,
                         header={"ORIGIN": "annotate demo", "COMMENT": "simulated SDSS DR18-style spAll sample"})


def run_demo(out_dir: str | Path = "annotate-demo", n_objects: int = 300, seed: int = 2026,
             scheduler: str = "distributed", progress: bool = True, fit: bool = True) -> RunResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = out_dir / "dr18.fits"
    if not catalog.exists():
        make_sample(out_dir, n_objects, seed, progress)
    return run(RunSettings(catalog=catalog, survey="sdss_dr18", spectra_root=out_dir,
                           scheduler=scheduler, progress=progress, fit=fit))
