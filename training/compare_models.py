"""Class accuracy, z NMAD and Ross et al. (2020) success of checkpoints on the same new simulated objects, at several strengths
of the simulator's realism effects (evaluation only: objects of a seed no recipe trains on, stars
from the held-out MILES stars). With --stars N, also Teff, log g and [Fe/H] of N new spectra of the
held-out MILES stars (realism strength 1): R² at S/N >= 20 and RMSE by S/N of each checkpoint and
of the k-nearest-templates baseline (`annotate.stellarbaseline`, on the training stars), all on
the same spectra.

    python training/compare_models.py OLD_CHECKPOINT annotate/models/spectromer-tiny --n 1500 --seed 777 --stars 3000
"""

from __future__ import annotations

import argparse

import numpy as np

from annotate import CLASS_NAMES
from annotate.checkpoint import load_checkpoint
from annotate.grid import WavelengthGrid
from annotate.metrics import nmad
from annotate.fit.evaluate import ross_success
from annotate.predict import predict_batch
from annotate.simulate.dataset import HELD_OUT_STAR_FRACTION, held_out_star_indices
from annotate.simulate.realism import Realism
from annotate.simulate.spectra import SimulationSettings, draw_sample
from annotate.simulate.templates import load_library


def predict(folder: str, sample: dict, batch: int = 250, keys=("prob", "z", "z_err")) -> dict:
    model, card = load_checkpoint(folder, "cpu")
    parts = [predict_batch(model, card, sample["flux"][a:a + batch], sample["mask"][a:a + batch])
             for a in range(0, len(sample["flux"]), batch)]
    return {key: np.concatenate([p[key] for p in parts]) for key in keys}


def within(out: dict, sample: dict, k: float) -> float:
    """The share of objects whose |Δz| is at most k of the model's own σ (calibrated: 0.683, 0.954)."""
    return float(np.mean(np.abs(out["z"] - sample["z"]) <= k * out["z_err"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders")
    parser.add_argument("--n", type=int, default=1500, help="objects per realism strength (default 1500)")
    parser.add_argument("--seed", type=int, default=777, help="seed of the simulated objects (default 777)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                        help="realism strengths; 0: the plain simulator (default 0 1 2)")
    parser.add_argument("--stars", type=int, default=0, help="held-out star spectra for the stellar comparison (default 0: none)")
    parser.add_argument("--star-forming", action="store_true",
                        help="galaxies with lines of EW(Hα) >= 3 Å given the continua of ongoing star formation "
                             "(Realism.star_forming_continuum), at each strength above 0")
    parser.add_argument("--starburst", type=float, default=0.0,
                        help="share of the galaxies with lines given a starburst's EW(Hα) of 150-1,000 Å "
                             "(Realism.starburst_share), at each strength above 0 (default 0: none)")
    parser.add_argument("--weak-lines", action="store_true",
                        help="galaxies with lines also given the weaker nebular lines (Realism.weak_nebular_lines), "
                             "at each strength above 0")
    args = parser.parse_args(argv)
    if not 0.0 <= args.starburst <= 1.0:
        parser.error(f"--starburst {args.starburst:g}: a share in [0, 1]")
    lib, grid = load_library(), WavelengthGrid()
    stars = held_out_star_indices(lib.n_star, HELD_OUT_STAR_FRACTION, seed=0)
    for strength in args.strengths:
        settings = SimulationSettings(realism=Realism(strength=strength, star_forming_continuum=args.star_forming,
                                                      starburst_share=args.starburst, weak_nebular_lines=args.weak_lines)
                                    if strength > 0 else None)
        sample = draw_sample(args.n, lib, grid, seed=args.seed, star_indices=stars, settings=settings)
        for folder in args.checkpoints:
            out = predict(folder, sample)
            predicted = np.array(CLASS_NAMES)[np.argmax(out["prob"], axis=1)]
            recall = ", ".join(f"{c} {np.mean(predicted[sample['class'] == c] == c):.3f}" for c in CLASS_NAMES)
            success = ross_success(predicted, out["z"], sample["class"], sample["z"])
            by_class = ", ".join(f"{c} {np.mean(success[sample['class'] == c]):.3f}" for c in CLASS_NAMES)
            extragalactic = ", ".join(f"{c} {nmad(sample['z'][sample['class'] == c], out['z'][sample['class'] == c]):.4f}"
                                      for c in CLASS_NAMES[:2])
            print(f"realism {strength:g}, {folder}: class accuracy {np.mean(predicted == sample['class']):.3f} "
                  f"({recall}), z NMAD {nmad(sample['z'], out['z']):.4f} ({extragalactic}), "
                  f"Ross success {np.mean(success):.3f} ({by_class}), "
                  f"|Δz| within 1σ / 2σ {within(out, sample, 1):.3f} / {within(out, sample, 2):.3f}")
            star_forming = np.char.endswith(sample["template"].astype(str), ":sf")
            if star_forming.any():
                print(f"  star-forming galaxies ({star_forming.sum()}): GALAXY {np.mean(predicted[star_forming] == 'GALAXY'):.3f}, "
                      f"QSO {np.mean(predicted[star_forming] == 'QSO'):.3f}, Ross success {np.mean(success[star_forming]):.3f}")
            starburst = np.char.startswith(sample["template"].astype(str), "starburst:")
            if starburst.any():
                print(f"  starbursts ({starburst.sum()}): GALAXY {np.mean(predicted[starburst] == 'GALAXY'):.3f}, "
                      f"QSO {np.mean(predicted[starburst] == 'QSO'):.3f}, Ross success {np.mean(success[starburst]):.3f}")
    if args.stars:
        compare_stellar(args.checkpoints, args.stars, args.seed + 1, lib, grid, stars)
    return 0


def compare_stellar(checkpoints: list[str], n: int, seed: int, lib, grid: WavelengthGrid, held: np.ndarray) -> None:
    from annotate import stellarbaseline

    settings = SimulationSettings(class_fractions=(0.0, 0.0, 1.0), realism=Realism(strength=1.0))
    sample = draw_sample(n, lib, grid, seed=seed, star_indices=held, settings=settings)
    true = np.stack([sample[k] for k in stellarbaseline.LABELS], axis=1)
    templates, usable, labels = stellarbaseline.template_stars(lib, np.setdiff1d(np.arange(lib.n_star), held), grid)
    results = {"baseline (5 nearest training stars by χ²)":
               stellarbaseline.nearest_templates(sample["flux"], sample["ivar"], templates, usable, labels)}
    for folder in checkpoints:
        out = predict(folder, sample, keys=stellarbaseline.LABELS)
        results[folder] = np.stack([out[k] for k in stellarbaseline.LABELS], axis=1)
    print(f"{n} spectra of the held-out MILES stars (seed {seed}, realism strength 1), R² at S/N >= 20; "
          "RMSE at S/N 0-10 / 10-20 / 20-50 / >= 50:")
    for name, pred in results.items():
        report = stellarbaseline.stellar_report(true, pred, sample["snr"])
        words = [f"{key} {report[key]['r2_snr_ge_20']:.3f} ("
                 + " / ".join(f"{row['rmse']:.3g}" for row in report[key]["by_snr"]) + ")"
                 for key in stellarbaseline.LABELS]
        print(f"  {name}: " + ", ".join(words))


if __name__ == "__main__":
    raise SystemExit(main())
