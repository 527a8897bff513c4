"""Class accuracy of checkpoints on the robustness sets of several training runs: the new objects
that `simulate_training_set` draws for a recipe with data seed S (seed S + 2, stars from the
held-out ones), once at the training's realism (`matched`) and once at `harder_strength` times its
strongest (`harder`), as `held_out_metrics` scores them at the end of a run. A run's own
`training.json` holds its figures on its own sets; this scores every checkpoint on every set, so
that a drop from matched to harder compares between models on the same objects.

    python training/robustness_sets.py runs/tiny-weaklines runs/tiny-ema \
        --recipe training/default-tiny-ema.yaml --seeds 11 12
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import numpy as np
import torch

from annotate.checkpoint import load_checkpoint
from annotate.grid import WavelengthGrid
from annotate.simulate.dataset import HELD_OUT_STAR_FRACTION, held_out_star_indices, robustness_sets
from annotate.simulate.realism import Realism
from annotate.simulate.templates import load_library
from annotate.training import Recipe
from annotate.training.evaluate import held_out_metrics

def sets_of(recipe: Recipe, seed: int, workers: int = 2) -> dict:
    """{'matched', 'harder'}: the robustness sets a run of `recipe` with data seed `seed` draws."""
    sim = recipe.data["simulate"]
    held = held_out_star_indices(load_library().n_star, HELD_OUT_STAR_FRACTION, sim.get("held_out_seed", seed))
    return robustness_sets(int(sim["n_robustness_spectra"]), WavelengthGrid(**recipe.grid), seed, held,
                           Realism.from_dict(sim["realism"]), sim.get("harder_strength", 2.0), workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders")
    parser.add_argument("--recipe", required=True, help="the recipe whose realism, held-out stars and set size are used")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training runs' data seeds (sets at seed + 2)")
    args = parser.parse_args(argv)
    recipe = Recipe.from_yaml(args.recipe)
    models = {folder: load_checkpoint(folder, "cpu") for folder in args.checkpoints}
    for seed in args.seeds:
        data = {"robustness": sets_of(recipe, seed)}
        for folder, (model, card) in models.items():
            _, _, scores = held_out_metrics(model, recipe, data, np.array([]), card.label_norm, card.render,
                                            torch.device("cpu"), nullcontext)
            a, b = scores["matched"]["class_accuracy"], scores["harder"]["class_accuracy"]
            print(f"sets of data seed {seed} (objects at seed {seed + 2}), {folder}: class accuracy matched {a:.4f}, "
                  f"harder {b:.4f}, drop {100 * (a - b):.2f} points", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
