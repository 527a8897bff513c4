"""`annotate bench`: throughput and memory of each pipeline step beside the plain way of doing it.

Every row is measured at three sizes, so that a cost that grows faster than the work shows. Rates
are per core where the target is per core (the step runs in one process with one thread); the
end-to-end row uses the whole machine. Peak memory is measured in a child process per case
(`os.wait4` reports the child's own maximum RSS). Results print as a table and go to JSON.

The baselines are what a user would write without this package:
- ingest: an astropy loop opening each SDSS spec file and copying its COADD columns;
- render: matplotlib drawing the same 2D Map as Spectromer does (figure 2.24 in at 100 dpi, imshow,
  savefig to PNG);
- end to end: the same model fed one PNG per spectrum (the paper's way);
- template fit: redrock 0.21.0's zfind with the same bases in its template format (the `compare`
  extra; without it the baseline is NaN and the row says so);
- write-back: `cp` of the input file, and astropy reading the whole table, appending the columns
  and writing it all out.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SIZES = {"ingest": (250, 500, 1000), "render": (1000, 2000, 4000), "end_to_end": (500, 1000, 2000),
         "writeback": (10_000, 1_000_000, 5_000_000), "merge": (100_000, 1_000_000, 5_000_000),
         "fit": (100, 200, 400), "ingest_desi": (250, 500, 1000)}
QUICK_SIZES = {"ingest": (20, 40, 80), "render": (100, 200, 400), "end_to_end": (30, 60, 120),
               "writeback": (1_000, 2_000, 4_000), "merge": (1_000, 2_000, 4_000), "fit": (10, 20, 40),
               "ingest_desi": (20, 40, 80)}
BASELINE_LIMIT = {"render": 200, "end_to_end": 60, "fit": 40}  # the slow baselines run on at most this many items


@dataclass
class Row:
    step: str
    unit: str
    sizes: list = field(default_factory=list)
    ours: list = field(default_factory=list)  # rate (items/s) or seconds, per size
    baseline: list = field(default_factory=list)
    baseline_name: str = ""
    extra: dict = field(default_factory=dict)

    def ratio(self) -> list:
        if self.unit.endswith("/s"):
            return [o / b if b else float("nan") for o, b in zip(self.ours, self.baseline)]
        return [b / o if o else float("nan") for o, b in zip(self.ours, self.baseline)]


def _timed(func, *args, repeat: int = 1):
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


# ------------------------------------------------------------------------------------------------
# ingest

def _astropy_loop(paths: list[str]) -> int:
    from astropy.io import fits

    for path in paths:
        with fits.open(path) as hdul:
            coadd = hdul[1].data
            for name in ("flux", "loglam", "ivar", "and_mask"):
                np.array(coadd[name])
    return len(paths)


def _ingest_once(paths: list[str], workdir: Path, reader: str = "sdss_spec", object_ids=None) -> int:
    from .grid import WavelengthGrid
    from .store import create_store, ingest

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
    from .demo import make_desi_sample
    from .catalogs import read_catalog
    from .surveys import load_survey

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
        seconds, ok = _timed(_ingest_once, paths, workdir, "desi_coadd", targets, repeat=2)
        base, _ = _timed(_per_target_loop, paths, targets, repeat=1)
        row.sizes.append(n)
        row.ours.append(n / seconds)
        row.baseline.append(n / base)
    return row


def bench_ingest(sizes, workdir: Path) -> Row:
    from .demo import make_sample
    from .surveys import load_survey
    from .catalogs import read_catalog

    sample = workdir / "ingest"
    catalog = make_sample(sample, max(sizes), seed=7)
    survey = load_survey("sdss_dr18")
    paths = [str(sample / p) for p in survey.spectrum_paths(read_catalog(catalog, survey))]
    row = Row("ingest SDSS spec files (1 core)", "files/s", baseline_name="astropy loop over the same files")
    _astropy_loop(paths[:10])  # warm the page cache and imports
    for n in sizes:
        seconds, ok = _timed(_ingest_once, paths[:n], workdir, repeat=2)
        base, _ = _timed(_astropy_loop, paths[:n], repeat=2)
        row.sizes.append(n)
        row.ours.append(n / seconds)
        row.baseline.append(n / base)
    return row


# ------------------------------------------------------------------------------------------------
# rendering

def _synthetic_batch(n: int, n_pix: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    flux = (1.0 + 0.3 * np.sin(np.linspace(0, 20, n_pix))[None, :] + rng.normal(0, 0.2, (n, n_pix))).astype(np.float32)
    mask = np.zeros((n, n_pix), bool)
    mask[:, :50] = True
    return flux, mask


def matplotlib_2dmap_png(flux: np.ndarray, mask: np.ndarray, settings) -> bytes:
    """The reference rendering of one spectrum: the 2D Map drawn and saved by matplotlib, as
    Spectromer renders (figure 2.24 in, 100 dpi, no axes, savefig PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .normalise import normalise_flux

    m, b = settings.blocks_per_side, settings.block_size
    values = np.full(m * m, np.nan)
    norm = normalise_flux(flux[None], mask[None], settings.normalise)[0]
    values[: flux.size] = np.where(mask, np.nan, norm)
    image = np.kron(values.reshape(m, m), np.ones((b, b)))
    fig = plt.figure(figsize=(settings.image_size / 100, settings.image_size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(image, cmap=settings.colormap, vmin=settings.flux_min, vmax=settings.flux_max, interpolation="nearest")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def matplotlib_line_png(flux: np.ndarray, mask: np.ndarray, settings) -> bytes:
    """The reference Simple / Overlap rendering of one spectrum: matplotlib line plots (one line,
    or the three thirds in red, green and blue) on black, figure 2.24 in at 100 dpi, savefig PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .normalise import normalise_flux
    from .render_lines import segment_bounds

    norm = np.where(mask, np.nan, normalise_flux(flux[None], mask[None], settings.normalise)[0])
    fig = plt.figure(figsize=(settings.image_size / 100, settings.image_size / 100), dpi=100, facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_ylim(settings.flux_min, settings.flux_max)
    if settings.encoding == "simple":
        ax.plot(norm, color="white", linewidth=1.5)
        ax.set_xlim(0, len(norm) - 1)
    else:
        for colour, (start, stop) in zip(("red", "lime", "blue"), segment_bounds(len(norm), 3)):
            ax.plot(norm[start:stop], color=colour, linewidth=1.5)
        ax.set_xlim(0, len(norm) // 3 - 1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="black")
    plt.close(fig)
    return buffer.getvalue()


REFERENCES = {"2dmap": ("matplotlib imshow + savefig PNG per spectrum", matplotlib_2dmap_png),
              "simple": ("matplotlib plot + savefig PNG per spectrum", matplotlib_line_png),
              "overlap": ("matplotlib 3 × plot + savefig PNG per spectrum", matplotlib_line_png)}
ENCODING_NAMES = {"2dmap": "2D Map", "simple": "Simple", "overlap": "Overlap"}


def bench_render(sizes, encoding: str = "2dmap") -> Row:
    from .grid import WavelengthGrid
    from .render import RenderSettings, render

    settings = RenderSettings(encoding=encoding)
    n_pix = WavelengthGrid().n_pix
    reference_name, reference = REFERENCES[encoding]
    row = Row(f"render {ENCODING_NAMES[encoding]} (1 core)", "spectra/s", baseline_name=reference_name)
    for n in sizes:
        flux, mask = _synthetic_batch(n, n_pix)
        render(flux[:256], mask[:256], settings)  # warm-up: LUTs, allocator
        seconds, _ = _timed(lambda: [render(flux[i:i + 256], mask[i:i + 256], settings) for i in range(0, n, 256)],
                            repeat=3)
        m = min(n, BASELINE_LIMIT["render"])
        reference(flux[0], mask[0], settings)
        base, _ = _timed(lambda: [reference(flux[i], mask[i], settings) for i in range(m)])
        row.sizes.append(n)
        row.ours.append(n / seconds)
        row.baseline.append(m / base)
    return row


# ------------------------------------------------------------------------------------------------
# end to end

def _png_pipeline(catalog: Path, n: int) -> int:
    """The paper's way: read each spectrum, render a PNG, decode it, run the model one batch."""
    import torch
    from PIL import Image

    from .checkpoint import load_checkpoint
    from .grid import resample
    from .catalogs import read_catalog
    from .readers import read_spectrum
    from .surveys import load_survey

    model, card = load_checkpoint(None, "cpu")
    survey = load_survey("sdss_dr18")
    paths = survey.spectrum_paths(read_catalog(catalog, survey))[:n]
    images = []
    for rel in paths:
        spectrum = read_spectrum(catalog.parent / rel)
        flux, _, mask = resample(spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.bad, card.grid)
        png = matplotlib_2dmap_png(flux, mask, card.render)
        images.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        for i in range(0, len(pixels), 64):
            model(pixels[i:i + 64])
    return len(images)


def bench_end_to_end(sizes, workdir: Path) -> Row:
    from .demo import make_sample
    from .pipeline import RunSettings, run

    from .checkpoint import load_checkpoint

    row = Row(f"end-to-end annotate run ({os.cpu_count()} cores)", "spectra/s",
              baseline_name="same model, one matplotlib PNG per spectrum")
    load_checkpoint(None, "cpu")  # imports (torch, transformers) are not part of the rate
    for n in sizes:
        folder = workdir / f"e2e-{n}"
        catalog = make_sample(folder, n, seed=11)
        settings = RunSettings(catalog=catalog, progress=False,
                               out=folder / "out.fits", store=folder / "store.h5")
        seconds, result = _timed(lambda: run(settings))
        m = min(n, BASELINE_LIMIT["end_to_end"])
        base, _ = _timed(_png_pipeline, catalog, m)
        row.sizes.append(n)
        row.ours.append(n / seconds)
        row.baseline.append(m / base)
        for path in (folder / "out.fits", folder / "store.h5"):
            path.unlink(missing_ok=True)
    return row


def bench_fit(sizes, workdir: Path) -> Row:
    """The template fit on held-out simulated objects (seed 11), one process and
    one thread, seeded by the shipped ViT (whose own time is the end-to-end row's), against
    redrock's zfind on the first BASELINE_LIMIT of them with the same bases. Also recorded: the
    rate without the prior, each one's Ross success against the truth, the median |Δv| between
    them, and the fit's peak memory above what the process held before it (`batch_rss_mb`: what one
    batch costs; a run fits tasks of 256 rows, so that is what bounds its memory)."""
    from .checkpoint import load_checkpoint
    from .fit.evaluate import held_out_sample, ross_success
    from .fit.fitter import Fitter, FitSettings
    from .fit.redrock_compare import import_redrock, run_redrock, write_redrock_templates
    from .fit.stage import fit_rows, single_threaded
    from .grid import WavelengthGrid
    from .metrics import velocity_offset_kms
    from .predict import predict_batch

    row = Row("template fit seeded by the ViT, 1 core", "spectra/s", baseline_name="redrock zfind, same bases")
    grid = WavelengthGrid()
    model, card = load_checkpoint(None, "cpu")
    try:
        import_redrock()
        templates = workdir / "rrtemplates"
        write_redrock_templates(templates, grid=grid)
    except ImportError as exc:
        templates, row.extra["baseline_missing"] = None, str(exc)
    extra = {key: [] for key in ("rate_without_prior", "success", "baseline_success", "median_dv_between_kms",
                                 "batch_rss_mb")}
    with single_threaded():
        fitters = {prior: Fitter(grid, FitSettings(prior=prior)) for prior in (True, False)}
        for n in sizes:
            sample = held_out_sample(n, 11, grid)
            vit = predict_batch(model, card, sample["flux"], sample["mask"])
            rates = {}
            for prior, fitter in fitters.items():
                fit_rows(fitter, sample["flux"][:2], sample["ivar"][:2], sample["mask"][:2],
                         {k: v[:2] for k, v in vit.items()})  # caches built outside the clock
                resident = peak_rss_mb("VmRSS")
                _reset_peak_rss()
                seconds, out = _timed(fit_rows, fitter, sample["flux"], sample["ivar"], sample["mask"], vit)
                rates[prior] = n / seconds
                if prior:
                    ours = out
                    extra["batch_rss_mb"].append(peak_rss_mb() - resident)
            row.sizes.append(n)
            row.ours.append(rates[True])
            extra["rate_without_prior"].append(rates[False])
            extra["success"].append(float(ross_success(ours["fit_class"], ours["fit_z"], sample["class"], sample["z"]).mean()))
            m = min(n, BASELINE_LIMIT["fit"])
            if templates is None:
                row.baseline.append(float("nan"))
                extra["baseline_success"].append(float("nan"))
                extra["median_dv_between_kms"].append(float("nan"))
                continue
            theirs = run_redrock(sample["flux"][:m], sample["ivar"][:m], sample["mask"][:m], grid, templates)
            row.baseline.append(m / theirs["seconds_fit"])
            extra["baseline_success"].append(float(ross_success(theirs["spectype"], theirs["z"], sample["class"][:m],
                                                                sample["z"][:m]).mean()))
            extra["median_dv_between_kms"].append(float(np.nanmedian(velocity_offset_kms(ours["fit_z"][:m], theirs["z"]))))
    row.extra.update(extra)
    return row


# ------------------------------------------------------------------------------------------------
# write-back: each case in a child process, for its own peak RSS

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
    from .writeback import prediction_columns

    rng = np.random.default_rng(1)
    pred = {"prob": rng.dirichlet(np.ones(3), n), "z": rng.uniform(0, 3, n), "z_err": rng.uniform(0, 0.1, n),
            "teff": rng.uniform(3000, 9000, n), "logg": rng.uniform(0, 5, n), "feh": rng.uniform(-2, 0.5, n)}
    reference = {"class": np.array(["GALAXY", "QSO", "STAR"], dtype=object)[rng.integers(0, 3, n)],
                 "z": rng.uniform(0, 3, n)}
    return prediction_columns(pred, reference, np.zeros(n, np.int64))


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory in MB. Unlike getrusage's
    ru_maxrss, VmHWM does not count the memory of the parent that forked it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs), so the peak is that of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


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

    from .catalogs.fits_writer import write_fits
    from .writeback import provenance_cards

    with fits.open(catalog, memmap=True) as hdul:
        n = hdul[1].header["NAXIS2"]
    columns = _prediction_columns(n)
    import gc

    gc.collect()
    _reset_peak_rss()
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
        command = [sys.executable, "-c", "import sys; from annotate.bench import writeback_case; "
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


# ------------------------------------------------------------------------------------------------
# merge of a sharded run (the shard files are synthetic: only the merge is measured), in a child

def merge_case(n_rows: str, workdir: str, shard_size: str = "500000") -> str:
    """Write a catalog, a plan and synthetic shard files for n_rows, then run the merge; returns
    'seconds peak_rss_mb baseline_rss_mb' (called in a child process by `bench_merge`)."""
    from .checkpoint import DEFAULT_MODEL
    from .fit.stage import empty_fit
    from .pipeline import RunSettings
    from .shards import make_plan, plan_shards, run_folder, run_sharded

    n, size, work = int(n_rows), int(shard_size), Path(workdir)
    catalog = make_catalog(work / f"merge-{n}.fits", n)
    out = work / f"merge-{n}.annotated.fits"
    folder = run_folder(out)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    shards = plan_shards(n, size)
    plan = make_plan(catalog, n, size, DEFAULT_MODEL, "sdss_dr18", fit=True)
    (folder / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    rng = np.random.default_rng(0)
    for shard in shards:
        m = shard.stop - shard.start
        np.savez(folder / "shards" / f"{shard.name}.npz", start=shard.start, stop=shard.stop, errors=np.array([""] * m),
                 prob=rng.dirichlet(np.ones(3), m), z=rng.uniform(0, 3, m), z_err=rng.uniform(0, 0.1, m),
                 teff=rng.uniform(3000, 9000, m), logg=rng.uniform(0, 5, m), feh=rng.uniform(-2, 0.5, m),
                 coverage=np.ones(m), status=np.ones(m, np.int8), **empty_fit(m))
    import gc

    gc.collect()
    _reset_peak_rss()
    baseline = peak_rss_mb("VmRSS")
    start = time.perf_counter()
    run_sharded(RunSettings(catalog=catalog, out=out, progress=False), size, log=lambda line: None)
    return f"{time.perf_counter() - start} {peak_rss_mb()} {baseline}"


def bench_merge(sizes, workdir: Path) -> Row:
    row = Row("merge of a sharded run", "seconds", baseline_name="the same run's write-back alone is in the write-back row")
    row.extra.update({"rss_mb": [], "baseline_rss_mb": []})
    for n in sizes:
        done = subprocess.run([sys.executable, "-c", "import sys; from annotate.bench import merge_case; "
                               "print(merge_case(*sys.argv[1:]))", str(n), str(workdir)],
                              stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError("merge benchmark failed")
        seconds, rss, baseline = (float(v) for v in done.stdout.split()[-3:])
        row.sizes.append(n)
        row.ours.append(seconds)
        row.baseline.append(float("nan"))
        row.extra["rss_mb"].append(rss)
        row.extra["baseline_rss_mb"].append(baseline)
    return row


# ------------------------------------------------------------------------------------------------

def machine() -> str:
    import torch

    return (f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def linearity(row: Row) -> float:
    """Cost per item at the largest size over cost per item at the smallest (1.0 = linear)."""
    per_item = [1 / r if row.unit.endswith("/s") else r / n for r, n in zip(row.ours, row.sizes)]
    return per_item[-1] / per_item[0]


def format_table(rows: list[Row]) -> str:
    lines = ["| step | sizes | ours | baseline | ratio | cost/item largest÷smallest |", "|---|---|---|---|---|---|"]
    for row in rows:
        fmt = (lambda v: f"{v:,.0f}") if row.unit.endswith("/s") else (lambda v: f"{v:.3f}")
        lines.append(f"| {row.step} ({row.unit}) | {' / '.join(f'{n:,}' for n in row.sizes)} | "
                     f"{' / '.join(fmt(v) for v in row.ours)} | {' / '.join(fmt(v) for v in row.baseline)} "
                     f"({row.baseline_name}) | {' / '.join(f'{r:.1f}×' for r in row.ratio())} | {linearity(row):.2f} |")
        if row.step.startswith("template fit"):
            e = row.extra
            lines.append(f"| ↳ without the prior (spectra/s); Ross success ours / redrock; median \\|Δv\\| between (km/s) | | "
                         f"{' / '.join(f'{v:,.0f}' for v in e['rate_without_prior'])} | "
                         f"{' / '.join(f'{a:.3f} / {b:.3f}' for a, b in zip(e['success'], e['baseline_success']))} | "
                         f"{' / '.join(f'{v:.1f}' for v in e['median_dv_between_kms'])} | |")
            lines.append(f"| ↳ fit's peak memory above the process's before it, MB | | "
                         f"{' / '.join(f'{v:.0f}' for v in e['batch_rss_mb'])} | | | |")
        if row.step.startswith("merge"):
            lines.append(f"| ↳ merge peak RSS, MB (interpreter and torch before it) | | "
                         f"{' / '.join(f'{v:.0f} ({b:.0f})' for v, b in zip(row.extra['rss_mb'], row.extra['baseline_rss_mb']))} | | | |")
        if row.step.startswith("write-back"):
            e = row.extra
            lines.append(f"| ↳ write-back peak RSS, MB (of which the writer's own) | | "
                         f"{' / '.join(f'{v:.0f} ({w:.0f})' for v, w in zip(e['rss_mb'], e['writer_rss_mb']))} | "
                         f"astropy: {' / '.join(f'{v:.0f}' for v in e['astropy_rss_mb'])} MB, "
                         f"{' / '.join(f'{v:.2f}' for v in e['astropy_seconds'])} s; read/write copy "
                         f"{' / '.join(f'{v:.3f}' for v in e['userspace_copy_seconds'])} s | input "
                         f"{' / '.join(f'{v:.1f}' for v in e['input_mb'])} MB | |")
    return "\n".join(lines)


def run_bench(quick: bool = False, steps: tuple = ("ingest", "render", "end_to_end", "writeback"),
              out: Path | None = None, workdir: Path | None = None) -> list[Row]:
    sizes = QUICK_SIZES if quick else SIZES
    rows = []
    with tempfile.TemporaryDirectory(prefix="annotate-bench-", dir=workdir) as tmp:
        tmp = Path(tmp)
        for step in steps:
            if step == "ingest":
                rows.append(bench_ingest(sizes["ingest"], tmp))
            elif step == "render":
                rows.extend(bench_render(sizes["render"], encoding) for encoding in ("simple", "overlap", "2dmap"))
            elif step == "end_to_end":
                rows.append(bench_end_to_end(sizes["end_to_end"], tmp))
            elif step == "writeback":
                rows.append(bench_writeback(sizes["writeback"], tmp))
            elif step == "merge":
                rows.append(bench_merge(sizes["merge"], tmp))
            elif step == "fit":
                rows.append(bench_fit(sizes["fit"], tmp))
            elif step == "ingest_desi":
                rows.append(bench_ingest_desi(sizes["ingest_desi"], tmp))
            else:
                raise ValueError(f"unknown step {step!r}")
    if out is not None:
        payload = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "quick": quick,
                   "rows": [row.__dict__ | {"ratio": row.ratio(), "linearity": linearity(row)} for row in rows]}
        out.write_text(json.dumps(payload, indent=1))
    return rows
