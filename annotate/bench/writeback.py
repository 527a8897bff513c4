"""Write-back, each case in a child process for its own peak RSS: ours, `cp`, a user-space copy,
astropy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import Row, peak_rss_mb, reset_peak_rss


def make_catalog(path: Path, n: int, seed: int = 0) -> Path:
    """An spAll-like FITS table of n rows (about 150 bytes a row) for the write-back benchmark."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    columns = [
        fits.Column("SPECOBJID", "K", array=np.arange(n, dtype=np.int64) + 4_000_000_000_000_000),
        fits.Column("CATALOGID", "K", array=np.arange(n, dtype=np.int64) + 27021600000000000),
        fits.Column("FIELD", "J", array=rng.integers(15000, 16000, n).astype(np.int32)),
        fits.Column("MJD", "J", array=rng.integers(59000, 60500, n).astype(np.int32)),
        fits.Column("RUN2D", "6A", array=np.array(["v6_0_4"] * n)),
        fits.Column("RACAT", "D", array=rng.uniform(0, 360, n)),
        fits.Column("DECCAT", "D", array=rng.uniform(-10, 80, n)),
        fits.Column("CLASS", "6A", array=np.array(["GALAXY", "QSO", "STAR"])[rng.integers(0, 3, n)]),
        fits.Column("SUBCLASS", "21A", array=np.array([""] * n)),
        fits.Column("Z", "E", array=rng.uniform(0, 3, n).astype(np.float32)),
        fits.Column("Z_ERR", "E", array=rng.uniform(0, 0.01, n).astype(np.float32)),
        fits.Column("ZWARNING", "J", array=np.zeros(n, np.int32)),
        fits.Column("SN_MEDIAN_ALL", "E", array=rng.uniform(1, 50, n).astype(np.float32)),
        fits.Column("SPECTROFLUX", "5E", array=rng.uniform(0, 100, (n, 5)).astype(np.float32)),
        fits.Column("XCSAO_TEFF", "E", array=rng.uniform(3000, 9000, n).astype(np.float32)),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns, name="SPALL")]).writeto(path, overwrite=True)
    return path


def _prediction_columns(n: int) -> dict:
    from ..writeback import prediction_columns

    rng = np.random.default_rng(1)
    pred = {"prob": rng.dirichlet(np.ones(3), n), "z": rng.uniform(0, 3, n), "z_err": rng.uniform(0, 0.1, n),
            "teff": rng.uniform(3000, 9000, n), "logg": rng.uniform(0, 5, n), "feh": rng.uniform(-2, 0.5, n)}
    reference = {"class": np.array(["GALAXY", "QSO", "STAR"], dtype=object)[rng.integers(0, 3, n)],
                 "z": rng.uniform(0, 3, n)}
    return prediction_columns(pred, reference, np.zeros(n, np.int64))


def userspace_copy(src: str, dst: str, chunk: int = 32 * 2**20) -> None:
    """Copy through user space with read/write (what any writer of new bytes must at least do;
    `cp` on Linux copies in the kernel with copy_file_range and never touches the bytes)."""
    with open(src, "rb") as a, open(dst, "wb") as b:
        while block := a.read(chunk):
            b.write(block)


def writeback_case(case: str, catalog: str, out: str) -> str:
    """Run one write-back case in this (child) process; returns 'seconds peak_rss_mb', the seconds
    and the peak leaving out imports and making the prediction columns (which stay resident)."""
    from astropy.io import fits
    from astropy.table import Table

    from ..catalogs.fits_writer import write_fits
    from ..writeback import provenance_cards

    with fits.open(catalog, memmap=True) as hdul:
        n = hdul[1].header["NAXIS2"]
    columns = _prediction_columns(n)
    import gc

    gc.collect()
    reset_peak_rss()
    resident = peak_rss_mb("VmRSS")
    start = time.perf_counter()
    if case == "copy":
        userspace_copy(catalog, out)
    elif case == "ours":
        write_fits(catalog, out, columns, provenance_cards("bench", "0" * 64, "2dmap", "bench", 0))
    elif case == "astropy":
        table = Table.read(catalog, hdu=1)
        for name, values in columns.items():
            table[name] = values
        table.write(out, overwrite=True)
    else:
        raise ValueError(case)
    return f"{time.perf_counter() - start} {peak_rss_mb()} {resident}"


def _child(case: str, catalog: Path, out: Path) -> tuple[float, float, float]:
    """(seconds, peak RSS MB, RSS MB before the write) of one case in its own process: `cp` itself (wall time; no RSS), or a
    fresh interpreter running `writeback_case` (its RSS includes the interpreter, numpy, astropy
    and the prediction columns, about 65 bytes a row)."""
    if case == "cp":
        command = ["cp", str(catalog), str(out)]
    else:
        command = [sys.executable, "-c", "import sys; from annotate.bench.writeback import writeback_case; "
                   "print(writeback_case(*sys.argv[1:]))", case, str(catalog), str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    out.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"write-back case {case} failed")
    if case == "cp":
        return wall, float("nan"), float("nan")
    seconds, rss, before = done.stdout.split()[-3:]
    return float(seconds), float(rss), float(before)


def bench_writeback(sizes, workdir: Path) -> Row:
    row = Row("write-back PRED_* columns", "seconds", baseline_name="cp of the input; astropy read/append/write")
    row.extra.update({"rss_mb": [], "writer_rss_mb": [], "cp_seconds": [], "astropy_seconds": [], "astropy_rss_mb": [], "input_mb": [],
                      "userspace_copy_seconds": []})
    for n in sizes:
        catalog = make_catalog(workdir / f"catalog-{n}.fits", n)
        out = workdir / f"catalog-{n}.out.fits"
        cp_seconds, _, _ = _child("cp", catalog, out)
        ours, rss, before = _child("ours", catalog, out)
        copy_seconds, _, _ = _child("copy", catalog, out)
        astropy_seconds, astropy_rss, _ = _child("astropy", catalog, out)
        row.sizes.append(n)
        row.ours.append(ours)
        row.baseline.append(cp_seconds)
        row.extra["rss_mb"].append(rss)
        row.extra["writer_rss_mb"].append(rss - before)
        row.extra["cp_seconds"].append(cp_seconds)
        row.extra["astropy_seconds"].append(astropy_seconds)
        row.extra["astropy_rss_mb"].append(astropy_rss)
        row.extra["input_mb"].append(catalog.stat().st_size / 1e6)
        row.extra["userspace_copy_seconds"].append(copy_seconds)
        catalog.unlink()
    return row
