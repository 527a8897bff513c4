"""Calibrate the fit's σ_z: σ_v = √((scale_class · σ_stat)² + floor_class²), σ_stat from the curvature
of χ² (already scaled by √χ²_ν where that exceeds 1) and a floor per class for what the curvature
cannot see (template mismatch, which sets a limit at high S/N).

    python -m annotate.fit.calibrate            # writes annotate/fit/data/calibration.json

The sample carries the simulator's realism effects (REALISM), as the default model's training data
and real spectra do: sky residuals, calibration errors, dust and quasar diversity leave errors the
curvature does not see. Never on the held-out templates (those are the evaluation's): the training templates are split
in FOLDS; for each fold, bases are built without it (`build.build_in_memory`) and spectra simulated
from it are fitted, so every fitted object comes from templates its bases never saw, as in use.
For each class (and, for quasars, each bin of fitted z: Z_EDGES) a scale and a floor are then
chosen so that 68.27 % of the pulls lie within ±1 in every S/N bin (what "σ" promises; the
robust spread of the pulls follows): a quasar's broad lines and a star's narrow ones leave the
curvature's σ wrong by different factors, and a quasar's by a factor that changes with the lines
in view.

Galaxies are calibrated on folds of whole population libraries (`library_fold_fits`): the
galaxies of each library (BC03, Maraston 2011, MaStar) are fitted with a galaxy basis built from
the other libraries' populations alone. A real galaxy comes from no library, so its mismatch with
the basis is more like another library's than like a neighbouring age or metallicity of the
same library, which folds of single populations leave in the basis (their figures are kept in
the output as 'galaxy_population_folds', for comparison).

The stellar labels' σ (annotate.fit.stellar) is calibrated the same way, on spectra of stars
only (`--part stellar` redoes that part alone): the fold's stars are fitted with bases, and
neighbours, built without them, and per label a scale of the neighbours' spread and a floor are
chosen so that 68.27 % of the errors lie within 1σ in every S/N bin and every third of the
spread.

    python -m annotate.fit.calibrate --part stellar
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from ..grid import WavelengthGrid
from ..simulate.realism import Realism
from ..simulate.spectra import SimulationSettings, draw_sample
from ..simulate.templates import load_library
from ..stellarbaseline import LABELS as STELLAR_LABELS
from .build import N_STAR_PCA, build_in_memory, held_out_populations, held_out_stars, qso_basis
from .evaluate import ross_success
from .fitter import Fitter
from .settings import CALIBRATION_PATH, QSO_LINE_SCATTER, FitSettings
from .stage import fit_rows

SEED = 2027
FOLDS = 4
SNR_EDGES = (0.0, 3.0, 8.0, 20.0, np.inf)
REALISM = 1.0  # the simulator's realism effects on the calibration sample (as in the default model's data)
SCALES = np.round(np.arange(0.8, 12.01, 0.05), 2)
# up to 1,000 km/s: a quasar's broad lines sit hundreds of km/s from its systemic velocity
# (realism.QSO_LINE_SCATTER_KMS), which no curvature sees
FLOORS_KMS = np.concatenate([np.arange(0.0, 60.0, 1.0), np.arange(60.0, 300.0, 5.0), np.arange(300.0, 1000.1, 10.0)])
ONE_SIGMA = 0.6827  # the fraction of a Gaussian within 1σ
N_OBJECTS = 4800
N_GALAXIES = 1800  # galaxies of the library folds (a third per library)
FOLD_KEYS = ("class", "z", "snr", "fit_class", "fit_z", "fit_z_err")  # what a fold's fit gives the calibration
# fitted-z bins with a scale and floor each: a quasar's σ_stat errs by a factor that depends on
# the lines in view (blueshifted C IV from z ≈ 1.4, the Lyα forest from z ≈ 2.1), 0.96 of pulls
# within ±1 at z < 0.8 against 0.32 at z 2.4–3.2 with one scale for all
Z_EDGES = {"GALAXY": (), "QSO": (0.8, 1.6, 2.4, 3.2), "STAR": ()}
N_STARS = 3000
STELLAR_SCALES = np.round(np.arange(0.2, 4.01, 0.05), 2)
STELLAR_FLOORS = {"teff": np.arange(0.0, 600.1, 10.0), "logg": np.round(np.arange(0.0, 0.601, 0.01), 2),
                  "feh": np.round(np.arange(0.0, 0.401, 0.01), 2)}
STAR_FIT_KEYS = ("teff", "logg", "feh", *(f"fit_{key}" for key in STELLAR_LABELS),
                *(f"fit_{key}_err" for key in STELLAR_LABELS))


def fold_fits(n: int, seed: int = SEED, folds: int = FOLDS, realism: float = REALISM,
              n_star_pca: int = N_STAR_PCA, stars_only: bool = False) -> dict:
    """Class, z, S/N, truth and the uncalibrated fit (class, z, σ_z) of n objects simulated from
    the training templates fold by fold (with the realism effects at `realism` strength), each
    fitted with bases built without its fold (stars with `n_star_pca` vectors per group). With
    `stars_only`: only stars, and also their true and fitted labels and the labels' uncalibrated
    σ (the neighbours' spread)."""
    grid = WavelengthGrid()
    lib, populations, stars = training_templates()
    qso = qso_basis(log=lambda _: None)
    parts = []
    for fold in range(folds):
        pop_fold, star_fold = populations[fold::folds], stars[fold::folds]
        bases = build_in_memory(np.setdiff1d(populations, pop_fold), np.setdiff1d(stars, star_fold), qso, n_star_pca)
        sample = draw_sample(n // folds, lib.with_populations(pop_fold), grid, seed=seed + fold, star_indices=star_fold,
                             settings=SimulationSettings(realism=Realism(strength=realism, qso_line_scatter=QSO_LINE_SCATTER)
                                                         if realism > 0 else None,
                                                         **({"class_fractions": (0.0, 0.0, 1.0)} if stars_only else {})))
        parts.append(uncalibrated_fit(grid, bases, sample, FOLD_KEYS + (STAR_FIT_KEYS if stars_only else ())))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def training_templates() -> tuple:
    """(library, indices of its training populations, of its training stars): the templates
    outside the held-out ones, which the calibration folds."""
    lib = load_library()
    return (lib, np.setdiff1d(np.arange(lib.n_gal), held_out_populations(lib.n_gal)),
            np.setdiff1d(np.arange(lib.n_star), held_out_stars(lib.n_star)))


def uncalibrated_fit(grid, bases, sample: dict, keys: tuple) -> dict:
    """`keys` of a simulated `sample` and of its fit with `bases` (no prior, σ uncalibrated)."""
    fit = fit_rows(Fitter(grid, FitSettings(prior=False, calibrated=False), bases),
                   sample["flux"], sample["ivar"], sample["mask"], None)
    both = {**sample, **fit}
    return {key: both[key] for key in keys}


def library_folds(lib, populations: np.ndarray) -> dict:
    """Library name -> the indices among `populations` of its populations (`gal_set`), in the
    library's order."""
    populations = np.asarray(populations, int)
    return {str(name): populations[lib.gal_set[populations] == name] for name in dict.fromkeys(lib.gal_set[populations])}


def library_fold_fits(n: int, seed: int = SEED + 200, realism: float = REALISM) -> dict:
    """`fold_fits`'s keys for n galaxies of the training populations, a fold per library
    (`library_folds`): each library's galaxies fitted with a galaxy basis built from the other
    libraries' training populations (the stars and quasars of the bases as in use); 'library'
    names each row's."""
    grid = WavelengthGrid()
    lib, populations, stars = training_templates()
    qso = qso_basis(log=lambda _: None)
    folds = library_folds(lib, populations)
    parts = []
    for k, (name, fold) in enumerate(folds.items()):
        bases = build_in_memory(np.setdiff1d(populations, fold), stars, qso)
        sample = draw_sample(n // len(folds), lib.with_populations(fold), grid, seed=seed + k,
                             settings=SimulationSettings(realism=Realism(strength=realism) if realism > 0 else None,
                                                         class_fractions=(1.0, 0.0, 0.0)))
        part = uncalibrated_fit(grid, bases, sample, FOLD_KEYS)
        parts.append({**part, "library": np.full(len(part["fit_z"]), name)})
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def scale_and_floor(fits: dict, chosen: np.ndarray, scales: np.ndarray = SCALES,
                    floors: np.ndarray = FLOORS_KMS) -> tuple[float, float]:
    """The (scale, floor km/s) of the grids `scales` × `floors` whose σ_v = √((scale · σ_stat)² + floor²)
    holds 68.27 % of the velocity errors of the rows `chosen` of `fits` (`fold_fits`'s keys) in
    every S/N bin (quantile_cost)."""
    z = fits["fit_z"]
    sigma_v = fits["fit_z_err"] * SPEED_OF_LIGHT_KMS / (1 + z)
    dv = (z - fits["z"]) * SPEED_OF_LIGHT_KMS / (1 + fits["z"])
    bins = np.digitize(fits["snr"], SNR_EDGES) - 1
    groups = [chosen & (bins == b) for b in range(len(SNR_EDGES) - 1)]
    cost_of = {(float(scale), float(floor)): quantile_cost(dv, np.hypot(scale * sigma_v, floor), groups)
               for scale in scales for floor in floors}
    return min(cost_of, key=cost_of.get)


def usable(fits: dict) -> np.ndarray:
    """The rows a σ_z is calibrated on: Ross et al. successes with a finite σ."""
    return ross_success(fits["fit_class"], fits["fit_z"], fits["class"], fits["z"]) & np.isfinite(fits["fit_z_err"])


def calibrate(n: int = N_OBJECTS, seed: int = SEED, n_galaxies: int = N_GALAXIES) -> dict:
    fits = fold_fits(n, seed)
    good = usable(fits)
    scales, floors = {}, {}
    for cls in CLASS_NAMES:  # each class its own scale and floor: their σ_stat err differently
        scales[cls], floors[cls] = [], []
        z_bin = np.searchsorted(Z_EDGES[cls], fits["fit_z"], side="right")   # by the fitted z, as in use
        for k in range(len(Z_EDGES[cls]) + 1):
            best = scale_and_floor(fits, good & (fits["class"] == cls) & (z_bin == k))
            scales[cls].append(best[0])
            floors[cls].append(best[1])
    population_folds = {"scale": scales["GALAXY"], "floor_kms": floors["GALAXY"]}
    galaxies = library_fold_fits(n_galaxies, seed + 200)
    galaxy_good = usable(galaxies)
    best = scale_and_floor(galaxies, galaxy_good)
    scales["GALAXY"], floors["GALAXY"] = [best[0]], [best[1]]
    return {"scale": scales, "floor_kms": floors, "z_edges": {cls: list(Z_EDGES[cls]) for cls in CLASS_NAMES},
            "n": n, "seed": seed, "rows_used": int(good.sum()),
            "sample": f"training templates in {FOLDS} folds, each fitted with bases built without it; "
                      f"quasar draws of seeds from this one; realism effects at strength {REALISM:g}, "
                      f"quasar line offsets at {QSO_LINE_SCATTER:g} × Shen et al. 2016",
            "galaxy_sample": f"{n_galaxies} galaxies of the training populations, seed {seed + 200}, a fold per "
                             f"library ({', '.join(dict.fromkeys(galaxies['library']))}), each fitted with a "
                             f"galaxy basis built from the other libraries; realism effects at strength "
                             f"{REALISM:g}; {int(galaxy_good.sum())} rows used",
            "galaxy_population_folds": population_folds,
            "made_by": "python -m annotate.fit.calibrate"}


def quantile_cost(errors: np.ndarray, sigma: np.ndarray, groups: list[np.ndarray]) -> float:
    """Σ over `groups` (boolean row selections) of log²(the 68.27th percentile of |error / σ|):
    0 where 68.27 % of each group's rows lie within 1σ, as for a Gaussian, whatever the tails;
    groups of under 5 rows do not count."""
    total = 0.0
    for part in groups:
        if part.sum() >= 5:
            total += np.log(np.quantile(np.abs(errors[part] / sigma[part]), ONE_SIGMA)) ** 2
    return total


def calibrate_stellar_sigma(errors: np.ndarray, spread: np.ndarray, snr: np.ndarray,
                            scales: np.ndarray, floors: np.ndarray) -> tuple[float, float]:
    """(scale, floor) of σ = √((scale · spread)² + floor²) for one label: the pair of the grids
    `scales` × `floors` whose σ holds 68.27 % of |errors| in each S/N bin (SNR_EDGES) and each
    third of the spread (rows with finite error and spread; a spread of 0 leaves the floor alone)."""
    ok = np.isfinite(errors) & np.isfinite(spread)
    errors, spread, snr = np.abs(errors[ok]), spread[ok], snr[ok]
    bins = np.digitize(snr, SNR_EDGES) - 1
    thirds = np.digitize(spread, np.quantile(spread, [1 / 3, 2 / 3]))
    groups = [bins == b for b in range(len(SNR_EDGES) - 1)] + [thirds == t for t in range(3)]
    cost_of = {}
    for scale in scales:
        for floor in floors:
            sigma = np.hypot(scale * spread, floor)
            if np.all(sigma > 0):
                cost_of[(float(scale), float(floor))] = quantile_cost(errors, sigma, groups)
    return min(cost_of, key=cost_of.get)


def calibrate_stellar(n: int = N_STARS, seed: int = SEED + 100) -> dict:
    """The 'stellar' part of the calibration: {label: {'scale', 'floor'}, 'n', 'rows_used', ...}
    from n star spectra of the training stars, fold by fold (`fold_fits(stars_only=True)`),
    over the rows the fit classed STAR."""
    fits = fold_fits(n, seed, stars_only=True)
    star = fits["fit_class"] == "STAR"
    out = {}
    for key in STELLAR_LABELS:
        errors = np.where(star, fits[f"fit_{key}"] - fits[key], np.nan)
        scale, floor = calibrate_stellar_sigma(errors, fits[f"fit_{key}_err"], fits["snr"], STELLAR_SCALES,
                                               STELLAR_FLOORS[key])
        out[key] = {"scale": scale, "floor": floor}
    out.update({"n": n, "seed": seed, "rows_used": int(star.sum()),
                "sample": f"star spectra of the training stars in {FOLDS} folds, each fitted with bases and "
                          f"neighbours built without it; realism effects at strength {REALISM:g}",
                "made_by": "python -m annotate.fit.calibrate --part stellar"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N_OBJECTS)
    parser.add_argument("--n-stars", type=int, default=N_STARS)
    parser.add_argument("--n-galaxies", type=int, default=N_GALAXIES, help="galaxies of the library folds")
    parser.add_argument("--part", choices=("all", "stellar"), default="all",
                        help="stellar: redo only the stellar labels' σ, keeping the rest of --out")
    parser.add_argument("--out", type=Path, default=CALIBRATION_PATH)
    args = parser.parse_args(argv)
    if args.part == "stellar":
        if not args.out.is_file():
            parser.error(f"--part stellar keeps the rest of {args.out}, which does not exist (run --part all)")
        result = json.loads(args.out.read_text())
    else:
        result = calibrate(args.n, n_galaxies=args.n_galaxies)
    result["stellar"] = calibrate_stellar(args.n_stars)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"scales {result['scale']}, floors (km/s) {result['floor_kms']} from {result['rows_used']} rows; "
          f"stellar σ {json.dumps({key: result['stellar'][key] for key in STELLAR_LABELS})} "
          f"from {result['stellar']['rows_used']} stars: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
