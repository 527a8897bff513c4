"""Synthetic training sets: many simulated spectra on the store grid, simulated in parallel.

A fraction of the MILES stars is held out by star (never used in the training sample) and
simulated separately, so that stellar-parameter figures measure stars the model has not seen.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from ..errors import ConfigError
from ..grid import WavelengthGrid
from .realism import Realism
from .spectra import SimulationSettings, draw_sample
from .templates import load_library

CHUNK = 500


def held_out_star_indices(n_star: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of MILES stars held out from training (seeded, by star)."""
    rng = np.random.default_rng(seed + 7919)
    return np.sort(rng.choice(n_star, size=int(round(fraction * n_star)), replace=False))


def check_fractions(class_fractions) -> tuple:
    """The recipe's class_fractions as a tuple of three non-negative numbers that sum above 0."""
    try:
        fractions = tuple(float(f) for f in class_fractions)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ConfigError(f"data.simulate.class_fractions must be three shares (GALAXY, QSO, STAR) >= 0 "
                          f"that sum above 0, got {class_fractions!r}")
    return fractions


def _chunk(args) -> dict:
    n, seed, grid_dict, star_indices, settings = args
    return draw_sample(n, load_library(), WavelengthGrid(**grid_dict), seed=seed, star_indices=star_indices,
                       settings=settings)


def simulate(n_objects: int, grid: WavelengthGrid, seed: int, star_indices: np.ndarray | None = None,
             settings: SimulationSettings = SimulationSettings(), workers: int | None = None) -> dict:
    """`draw_sample` in chunks of CHUNK objects over processes; deterministic for a given seed."""
    chunks = [(min(CHUNK, n_objects - start), seed * 100003 + i, grid.to_dict(), star_indices, settings)
              for i, start in enumerate(range(0, n_objects, CHUNK))]
    workers = workers or min(len(chunks), os.cpu_count() or 1)
    if workers <= 1 or len(chunks) == 1:
        parts = [_chunk(c) for c in chunks]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_chunk, chunks))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


HELD_OUT_STAR_FRACTION = 0.15  # share of the MILES stars held out by star (simulate_training_set)


def robustness_sets(n: int, grid: WavelengthGrid, seed: int, held: np.ndarray, effects: Realism,
                    harder_strength: float, workers: int | None = None, hold: tuple = ()) -> dict:
    """{'matched', 'harder'}: the robustness sets of a training run with data seed `seed` (see
    `simulate_training_set`): n new objects (seed + 2, stars from `held`) at the realism `effects`
    and the same objects with every effect `harder_strength` times the strongest (`Realism.top`),
    except those of the groups in `hold` (realism.HOLD_GROUPS), which the harder set gives at the
    mean strength of the matched one."""
    settings = SimulationSettings(realism=effects)
    stronger = replace(effects, strength=effects.top * harder_strength, strength_max=None)
    if hold:
        stronger = stronger.holding(hold, (effects.strength + effects.top) / 2)
    harder = replace(settings, realism=stronger)
    return {"matched": simulate(n, grid, seed + 2, held, settings, workers),
            "harder": simulate(n, grid, seed + 2, held, harder, workers)}


def simulate_training_set(n_objects: int, grid: WavelengthGrid, seed: int = 0,
                          held_out_star_fraction: float = HELD_OUT_STAR_FRACTION,
                          n_held_out_spectra: int = 0, workers: int | None = None,
                          class_fractions: tuple | None = None, realism: dict | float | None = None,
                          n_robustness_spectra: int = 0, harder_strength: float = 2.0,
                          held_out_seed: int | None = None, low_z_fraction: float = 0.0,
                          star_blend_fraction: float = 0.0) -> dict:
    """A training sample (flux, mask, class, z, teff, logg, feh, object) plus, when
    n_held_out_spectra > 0, 'held_out_stars': spectra of the held-out MILES stars only.

    realism: the recipe's `realism:` (`Realism.from_dict`); None is the plain simulator.
    n_robustness_spectra > 0 (with realism) adds 'robustness': {'matched': ..., 'harder': ...},
    the same new objects (all classes, stars from the held-out ones) with the training's realism
    and with every effect `harder_strength` times stronger than the training's strongest
    (`Realism.top`: its `strength_max` where it has a range).
    held_out_seed: the seed that picks the held-out stars (default `seed`), so that a run on new
    objects (another `seed`) can keep the stars an earlier run held out.
    low_z_fraction, star_blend_fraction, class_fractions: `SimulationSettings.low_z_fraction`,
    `.star_blend_probability` and `.class_fractions` of the training sample only; the held-out
    and robustness sets keep the plain redshift distribution, real MILES stars and the plain
    class fractions, so that their figures stay comparable between runs."""
    low_z_fraction, star_blend_fraction = float(low_z_fraction), float(star_blend_fraction)
    for key, value in (("low_z_fraction", low_z_fraction), ("star_blend_fraction", star_blend_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.simulate.{key} must be between 0 and 1, got {value:g}")
    lib = load_library()
    held = held_out_star_indices(lib.n_star, held_out_star_fraction, seed if held_out_seed is None else held_out_seed)
    train_stars = np.setdiff1d(np.arange(lib.n_star), held)
    effects = Realism.from_dict(realism)
    settings = SimulationSettings(realism=effects)
    training = replace(settings, low_z_fraction=low_z_fraction, star_blend_probability=star_blend_fraction)
    if class_fractions is not None:
        training = replace(training, class_fractions=check_fractions(class_fractions))
    data = simulate(n_objects, grid, seed, train_stars, training, workers)
    data["object"] = np.arange(n_objects)
    if n_held_out_spectra:
        star_only = replace(settings, class_fractions=(0.0, 0.0, 1.0))
        data["held_out_stars"] = simulate(n_held_out_spectra, grid, seed + 1, held, star_only, workers)
    if n_robustness_spectra and effects is not None:
        data["robustness"] = robustness_sets(n_robustness_spectra, grid, seed, held, effects, harder_strength, workers)
    data["held_out_star_names"] = lib.star_name[held]
    data["train_star_indices"] = train_stars
    return data
