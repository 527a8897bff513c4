"""The template fit against DESI's redrock 0.21.0, on the same bases and the same spectra.

    pip install -e ".[compare]"
    python -m annotate.fit.redrock_compare --n 50 --seed 11

Writes this project's bases as redrock template files (`write_redrock_templates`), runs
redrock's own coarse scan, refinement and choice on them in-process on one CPU (`run_redrock`),
and scores both on simulated held-out objects (`compare`): throughput, the median velocity
difference between the two, and each one's Ross et al. (2020) success against the truth.

What differs by design, not by bases: redrock fits the basis vectors alone (PCA, no Legendre
polynomials), so where a basis is zero (outside its coverage) redrock's model is zero while this
project's polynomials model the spectrum; redrock's redshift grids use its own default spacings
(GALAXY 3e-4 and QSO 5e-4 in log10(1 + z), STAR 4e-5 in z) over the bases' z ranges; redrock's
ad-hoc penalty on negative [O II] applies to the GALAXY basis. Spectra go in with a unit
resolution matrix (the bases already carry the simulated instrument's broadening) and no IGM
model (the QSO basis already holds the mean Lyα-forest transmission).

redrock is imported only inside `run_redrock`; writing the templates needs astropy alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES, __version__
from ..grid import WavelengthGrid
from ..metrics import velocity_offset_kms
from .bases import Basis, BasisSet, load_bases
from .stage import single_threaded

REDROCK_VERSION = "0.21.0"
INSTALL_HINT = 'redrock is not installed; install the comparison extra with: pip install -e ".[compare]"'
# redrock's own default redshift spacings (redrock/templates.py, templates without a REDSHIFTS HDU):
# (step, 'log' = uniform in log10(1 + z), 'linear' = uniform in z)
REDROCK_Z_SPACING = {"GALAXY": (3e-4, "log"), "QSO": (5e-4, "log"), "STAR": (4e-5, "linear")}
EDGE_MARGIN_PIX = 4  # zero pixels beyond what the observed grid needs at the z range's ends


def redshift_grid(basis: Basis) -> np.ndarray:
    """(n_z,) float64 redshifts redrock scans for `basis`: its z_range at redrock's spacing."""
    step, kind = REDROCK_Z_SPACING[basis.spectype]
    lo, hi = basis.z_range
    if kind == "log":
        lo, hi = np.log10(1.0 + lo), np.log10(1.0 + hi)
    values = lo + step * np.arange(int(np.floor((hi - lo) / step + 1e-9)) + 1)
    return 10.0**values - 1.0 if kind == "log" else values


def template_filename(basis: Basis) -> str:
    """redrock's naming: rrtemplate-{SPECTYPE}-{SUBTYPE or None}-v{version}.fits."""
    return f"rrtemplate-{basis.spectype}-{basis.subtype or 'None'}-v{__version__}.fits"


def padded_basis(basis: Basis, grid: WavelengthGrid) -> tuple[float, np.ndarray, int]:
    """(loglam_start, flux (k, m'), n_pad_blue): the basis extended with zeros so that, at every
    redshift of its z_range, it covers the observed grid's pixel edges — redrock's rebinning
    refuses a template that does not. The step and the pixel centres stay those of the basis."""
    z_lo, z_hi = basis.z_range
    need_lo = np.log10(grid.edges[0]) - np.log10(1.0 + z_hi)
    need_hi = np.log10(grid.edges[-1]) - np.log10(1.0 + z_lo)
    last = basis.loglam_start + basis.step * (basis.n_pix - 1)
    pad_blue = max(0, int(np.ceil((basis.loglam_start - need_lo) / basis.step))) + EDGE_MARGIN_PIX
    pad_red = max(0, int(np.ceil((need_hi - last) / basis.step))) + EDGE_MARGIN_PIX
    flux = np.pad(basis.flux, ((0, 0), (pad_blue, pad_red)))
    return basis.loglam_start - pad_blue * basis.step, flux, pad_blue


def write_redrock_templates(folder: str | Path, bases: BasisSet | None = None,
                            grid: WavelengthGrid | None = None) -> list[Path]:
    """Write each Basis of `bases` (default: `load_bases()`) as one redrock template file in
    `folder`, padded with zeros to cover `grid` (default: the store's) over its z range.

    The file (redrock's format, read by redrock.templates.Template): HDU 0 'BASIS_VECTORS', the
    (k, m) float64 basis vectors (dimensionless), with CRVAL1/CDELT1 the log10 rest-frame vacuum
    wavelength (Å) of pixel 0 and its step (dex), LOGLAM = 1, RRTYPE, RRSUBTYP, RRVER (the redrock
    version written for), VERSION, RRMETHOD = PCA, RRIGM = None, ZMIN/ZMAX (the basis' z_range)
    and provenance (ANNVER, BASESHA); HDU 'REDSHIFTS', the (n_z,) float64 redshifts to scan.
    Each file is written under a temporary name and renamed. Returns the paths, in basis order."""
    from astropy.io import fits

    bases = bases or load_bases()
    grid = grid or WavelengthGrid()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for basis in bases.bases:
        loglam_start, flux, pad_blue = padded_basis(basis, grid)
        header = fits.Header()
        header["EXTNAME"] = "BASIS_VECTORS"
        header["CRVAL1"] = (loglam_start, "log10 rest vacuum wavelength [A] of pixel 0")
        header["CDELT1"] = (basis.step, "log10 wavelength step [dex]")
        header["LOGLAM"] = (1, "wavelength grid sampled in log10(lambda)")
        header["RRTYPE"] = (basis.spectype, "spectral class")
        header["RRSUBTYP"] = (basis.subtype, "subtype (star group), blank if none")
        header["RRVER"] = (REDROCK_VERSION, "redrock version the file is written for")
        header["VERSION"] = (__version__, "template version (annotate version)")
        header["RRMETHOD"] = ("PCA", "linear least squares, coefficients of any sign")
        header["RRIGM"] = ("None", "no IGM model: QSO basis holds the mean forest")
        header["ZMIN"] = (basis.z_range[0], "lowest redshift scanned (basis z_range)")
        header["ZMAX"] = (basis.z_range[1], "highest redshift scanned (basis z_range)")
        header["NPADBLUE"] = (pad_blue, "zero pixels added blueward of the basis")
        header["ANNVER"] = (__version__, "annotate version that wrote this file")
        header["BASESHA"] = bases.sha256  # sha256 of the bases file (no room for a comment)
        header["BASESRC"] = (bases.path.name, "bases file")
        redshifts = fits.ImageHDU(redshift_grid(basis), name="REDSHIFTS")
        redshifts.header["BUNIT"] = ("", "redshift (dimensionless)")
        hdus = fits.HDUList([fits.PrimaryHDU(flux.astype(np.float64), header=header), redshifts])
        path = folder / template_filename(basis)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            hdus.writeto(tmp, overwrite=True, checksum=True)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def import_redrock():
    """The redrock modules run_redrock needs; ImportError with the install line if missing."""
    try:
        import redrock
        from redrock.targets import DistTargetsCopy, Spectrum, Target
        from redrock.templates import DistTemplate, Template
        from redrock.zfind import zfind
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None
    if redrock.__version__ != REDROCK_VERSION:
        print(f"warning: redrock {redrock.__version__} found, the comparison is made for {REDROCK_VERSION}",
              file=sys.stderr)
    return {"version": redrock.__version__, "Spectrum": Spectrum, "Target": Target,
            "DistTargetsCopy": DistTargetsCopy, "Template": Template, "DistTemplate": DistTemplate,
            "zfind": zfind}


def run_redrock(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, grid: WavelengthGrid,
                template_folder: str | Path) -> dict:
    """redrock's zfind on (B, n_pix) spectra on `grid` (flux in any unit, ivar its inverse
    variance, mask True = bad) with the rrtemplate-*.fits files of `template_folder`, in this
    process, one CPU, no MPI, redrock's output to stdout swallowed.

    Returns z, zerr, deltachi2, chi2 (B,) float64, zwarn (B,) int, spectype, subtype (B,) str
    (the best solution, znum 0, per spectrum in input order), and the costs: seconds (all),
    seconds_setup (reading and rebinning the templates onto the grid at every redshift, numba
    compilation excluded), seconds_jit (numba compilation), seconds_fit (zfind), cpu_seconds_fit
    (process CPU time of zfind) and the redrock version."""
    rr = import_redrock()
    import scipy.sparse

    from redrock.rebin import trapz_rebin

    flux = np.asarray(flux, np.float64)
    ivar = np.where(np.asarray(mask, bool) | ~np.isfinite(ivar) | ~np.isfinite(flux), 0.0,
                    np.asarray(ivar, np.float64))
    flux = np.where(ivar > 0, flux, 0.0)
    wave = grid.wavelength
    n_pix = len(wave)
    files = sorted(Path(template_folder).glob("rrtemplate-*.fits"))
    if not files:
        raise FileNotFoundError(f"no rrtemplate-*.fits in {template_folder}")
    start = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log), single_threaded():
        jit = time.perf_counter()
        trapz_rebin(np.arange(10.0), np.ones((1, 10)), edges=np.array([1.0, 2.0, 3.0]), myz=np.array([0.0]))
        jit = time.perf_counter() - jit
        setup = time.perf_counter()
        identity = scipy.sparse.dia_matrix((np.ones((1, n_pix)), [0]), shape=(n_pix, n_pix))
        targets = [rr["Target"](i, [rr["Spectrum"](wave, flux[i].copy(), ivar[i].copy(), identity, identity.tocsr())])
                   for i in range(len(flux))]
        dtargets = rr["DistTargetsCopy"](targets)
        dwave = dtargets.wavegrids()
        templates = [rr["Template"](str(path)) for path in files]
        dtemplates = [rr["DistTemplate"](t, dwave, mp_procs=1) for t in templates]
        setup = time.perf_counter() - setup
        fit, cpu = time.perf_counter(), time.process_time()
        _, zfit = rr["zfind"](dtargets, dtemplates, mp_procs=1, nminima=3)
        fit, cpu = time.perf_counter() - fit, time.process_time() - cpu
    best = zfit[zfit["znum"] == 0]
    row = {int(t): i for i, t in enumerate(best["targetid"])}
    order = np.array([row[i] for i in range(len(flux))], dtype=int)
    best = best[order]
    return {"z": np.asarray(best["z"], np.float64), "zerr": np.asarray(best["zerr"], np.float64),
            "deltachi2": np.asarray(best["deltachi2"], np.float64), "chi2": np.asarray(best["chi2"], np.float64),
            "zwarn": np.asarray(best["zwarn"], np.int64),
            "spectype": np.array([str(s).strip() for s in best["spectype"]]),
            "subtype": np.array([str(s).strip() for s in best["subtype"]]),
            "seconds": time.perf_counter() - start, "seconds_setup": setup, "seconds_jit": jit,
            "seconds_fit": fit, "cpu_seconds_fit": cpu, "version": rr["version"]}


def run_annotate_fit(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, grid: WavelengthGrid,
                     bases: BasisSet | None = None) -> dict:
    """This project's fit as evaluate.py runs it (prior off: no ViT): z, zerr, deltachi2, spectype
    and the costs, named as `run_redrock` names them (setup: the bases' shifted copies built before
    the clock starts)."""
    from .fitter import Fitter, FitSettings
    from .stage import fit_rows

    start = time.perf_counter()
    with single_threaded():
        setup = time.perf_counter()
        fitter = Fitter(grid, FitSettings(prior=False), bases=bases)
        for basis in fitter.bases.bases:
            basis.phases  # noqa: B018  (cached: built once, outside the timed fit)
        setup = time.perf_counter() - setup
        fit, cpu = time.perf_counter(), time.process_time()
        out = fit_rows(fitter, flux, ivar, mask, None)
        fit, cpu = time.perf_counter() - fit, time.process_time() - cpu
    return {"z": out["fit_z"], "zerr": out["fit_z_err"], "deltachi2": out["fit_deltachi2"], "spectype": out["fit_class"],
            "seconds": time.perf_counter() - start, "seconds_setup": setup, "seconds_fit": fit,
            "cpu_seconds_fit": cpu}


def _scores(result: dict, sample: dict) -> dict:
    from .evaluate import ross_success

    truth, z_true = sample["class"], sample["z"]
    success = ross_success(result["spectype"], result["z"], truth, z_true)
    n = len(truth)
    out = {"success": float(success.mean()), "class_accuracy": float(np.mean(result["spectype"] == truth)),
           "spectra_per_s": n / result["seconds_fit"],
           "spectra_per_cpu_s": n / max(result["cpu_seconds_fit"], 1e-9),
           "seconds_fit": result["seconds_fit"], "seconds_setup": result["seconds_setup"],
           "by_class": {}}
    for cls in CLASS_NAMES:
        chosen = truth == cls
        out["by_class"][cls] = {"n": int(chosen.sum()),
                                "success": float(success[chosen].mean()) if chosen.any() else float("nan")}
    out["_success"] = success
    return out


def compare(n: int, seed: int, template_folder: str | Path | None = None) -> dict:
    """Both fits on `held_out_sample(n, seed, WavelengthGrid())` with the same bases.

    Returns per method ('annotate', 'redrock'): success (Ross, against the truth), class accuracy,
    spectra/s (wall) and spectra per CPU-second (the per-core figure: CPU time of the fit over all
    its threads), fit and setup seconds, success by true class; and between them: the median
    |Δv| (km/s) over all spectra and over those both fit right, and the class agreement."""
    import tempfile

    from .evaluate import held_out_sample

    import_redrock()  # fail before simulating anything
    grid = WavelengthGrid()
    sample = held_out_sample(n, seed, grid)
    bases = load_bases()
    with contextlib.ExitStack() as stack:
        if template_folder is None:
            template_folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="rrtemplates-"))
        write_redrock_templates(template_folder, bases, grid)
        theirs = run_redrock(sample["flux"], sample["ivar"], sample["mask"], grid, template_folder)
    ours = run_annotate_fit(sample["flux"], sample["ivar"], sample["mask"], grid, bases)
    scores = {"annotate": _scores(ours, sample), "redrock": _scores(theirs, sample)}
    both = scores["annotate"].pop("_success") & scores["redrock"].pop("_success")
    dv = velocity_offset_kms(ours["z"], theirs["z"])
    return {"n": n, "seed": seed, "redrock_version": theirs["version"], **scores,
            "median_dv_kms_all": float(np.nanmedian(dv)),
            "median_dv_kms_both_right": float(np.median(dv[both])) if both.any() else float("nan"),
            "n_both_right": int(both.sum()),
            "class_agreement": float(np.mean(ours["spectype"] == theirs["spectype"]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: python -m annotate.fit.redrock_compare --n 50 --seed 11")
    parser.add_argument("--n", type=int, default=50, help="simulated held-out objects (default 50)")
    parser.add_argument("--seed", type=int, default=11, help="seed of the simulation (default 11)")
    parser.add_argument("--templates", type=Path, default=None,
                        help="folder to write the redrock templates to and keep (default: a temporary one)")
    args = parser.parse_args(argv)
    try:
        result = compare(args.n, args.seed, args.templates)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['n']} held-out objects (seed {result['seed']}), same bases, redrock {result['redrock_version']}")
    for name in ("annotate", "redrock"):
        row = result[name]
        per_class = ", ".join(f"{c} {row['by_class'][c]['success']:.3f} (n={row['by_class'][c]['n']})"
                              for c in CLASS_NAMES)
        print(f"  {name:<8} success {row['success']:.3f}, class accuracy {row['class_accuracy']:.3f}; "
              f"{row['spectra_per_cpu_s']:.2f} spectra per CPU-second, {row['spectra_per_s']:.2f} spectra/s wall "
              f"(fit {row['seconds_fit']:.1f} s, setup {row['seconds_setup']:.1f} s); by class: {per_class}")
    print(f"  between them: median |dv| {result['median_dv_kms_all']:.1f} km/s over all, "
          f"{result['median_dv_kms_both_right']:.1f} km/s over the {result['n_both_right']} both fit right; "
          f"class agreement {result['class_agreement']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
