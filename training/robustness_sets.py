"""Class accuracy of checkpoints on the robustness sets of several training runs: the new objects
that `simulate_training_set` draws for a recipe with data seed S (seed S + 2, stars from the
held-out ones), once at the training's realism (`matched`) and once at `harder_strength` times its
strongest (`harder`), as `held_out_metrics` scores them at the end of a run. A run's own
`training.json` holds its figures on its own sets; this scores every checkpoint on every set, so
that a drop from matched to harder compares between models on the same objects.

    python training/robustness_sets.py runs/tiny-weaklines runs/tiny-ema \
        --recipe training/default-tiny-ema.yaml --seeds 11 12

Each set prints its class accuracy and each class's recall, matched → harder. With several seeds
a last line per checkpoint pools them: the accuracy over all their objects, the mean drop with
its standard error over the sets, the sets' spread, and how many sets dropped by more than
--limit points. A single set of 2,000 is a noisy measure of the drop (the same model's varies by
about 0.3 points from set to set).

`--hold GROUP ...` gives the harder sets the effects of those groups (annotate.simulate.realism.
HOLD_GROUPS) at the matched sets' mean strength and every other effect as before: what is left of
the drop is what the other effects cost.

    python training/robustness_sets.py annotate/models/spectromer-tiny \
        --recipe training/default-tiny-ema.yaml --seeds $(seq 101 120)
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import numpy as np
import torch

from annotate import CLASS_NAMES
from annotate.checkpoint import load_checkpoint
from annotate.grid import WavelengthGrid
from annotate.simulate.dataset import HELD_OUT_STAR_FRACTION, held_out_star_indices, robustness_sets
from annotate.simulate.realism import HOLD_GROUPS, Realism
from annotate.simulate.templates import load_library
from annotate.training import Recipe
from annotate.training.evaluate import part_batches, predict_rows


def sets_of(recipe: Recipe, seed: int, workers: int = 2, hold: tuple = ()) -> dict:
    """{'matched', 'harder'}: the robustness sets a run of `recipe` with data seed `seed` draws
    (the harder one with the effects of `hold` kept at the matched sets' mean strength)."""
    sim = recipe.data["simulate"]
    held = held_out_star_indices(load_library().n_star, HELD_OUT_STAR_FRACTION, sim.get("held_out_seed", seed))
    return robustness_sets(int(sim["n_robustness_spectra"]), WavelengthGrid(**recipe.grid), seed, held,
                           Realism.from_dict(sim["realism"]), sim.get("harder_strength", 2.0), workers, hold)


def classified(model, card, recipe: Recipe, part: dict) -> tuple[np.ndarray, np.ndarray]:
    """(true class, ViT class) index per object of a simulated set."""
    rows = predict_rows(model, part_batches(model, recipe, part, card.label_norm, card.render), torch.device("cpu"),
                        nullcontext, tuple(recipe.tasks), card.render)
    return rows["cls_true"], rows["cls_pred"]


def drop_summary(sets: list, limit: float = 2.0) -> dict:
    """Pooled figures of (true, matched prediction, harder prediction) per set: accuracies over all
    objects and the drop between them in points (sets of equal size: the mean of the sets'
    drops), the standard error of the sets' mean drop, their spread, how many dropped by more than
    `limit` points, each class's recall and the harder sets' errors by true → predicted class."""
    true = np.concatenate([t for t, _, _ in sets])
    predicted = np.concatenate([h for _, _, h in sets])
    matched = np.concatenate([m for _, m, _ in sets]) == true
    harder = predicted == true
    drops = np.array([100 * (np.mean(m == t) - np.mean(h == t)) for t, m, h in sets])
    errors = {f"{CLASS_NAMES[a]}→{CLASS_NAMES[b]}": int(np.sum((true == a) & (predicted == b)))
              for a in range(len(CLASS_NAMES)) for b in range(len(CLASS_NAMES)) if a != b}
    return {"n_sets": len(sets), "n": len(true), "matched": float(matched.mean()), "harder": float(harder.mean()),
            "drop": 100 * float(matched.mean() - harder.mean()), "mean_drop": float(drops.mean()),
            "stderr": float(drops.std(ddof=1) / np.sqrt(len(drops))) if len(drops) > 1 else float("nan"),
            "sd": float(drops.std(ddof=1)) if len(drops) > 1 else float("nan"),
            "min": float(drops.min()), "max": float(drops.max()), "above": int((drops > limit).sum()), "limit": limit,
            "recall": {name: (float(np.mean(matched[true == k])), float(np.mean(harder[true == k])))
                       for k, name in enumerate(CLASS_NAMES) if (true == k).any()},
            "harder_errors": {pair: n for pair, n in errors.items() if n}}


def recalls(summary: dict) -> str:
    return ", ".join(f"{name} {a:.4f} → {b:.4f}" for name, (a, b) in summary["recall"].items())


def errors(summary: dict) -> str:
    return ", ".join(f"{pair} {n}" for pair, n in sorted(summary["harder_errors"].items(), key=lambda item: -item[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders")
    parser.add_argument("--recipe", required=True, help="the recipe whose realism, held-out stars and set size are used")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training runs' data seeds (sets at seed + 2)")
    parser.add_argument("--hold", nargs="+", default=[], choices=sorted(HOLD_GROUPS),
                        help="effect groups the harder sets keep at the matched sets' mean strength")
    parser.add_argument("--limit", type=float, default=2.0, help="the drop (points) the last line counts sets above")
    args = parser.parse_args(argv)
    recipe = Recipe.from_yaml(args.recipe)
    models = {folder: load_checkpoint(folder, "cpu") for folder in args.checkpoints}
    scored = {folder: [] for folder in models}
    held = f", harder with {' '.join(args.hold)} held at the matched sets' mean strength" if args.hold else ""
    for seed in args.seeds:
        data = sets_of(recipe, seed, hold=tuple(args.hold))
        for folder, (model, card) in models.items():
            true, matched = classified(model, card, recipe, data["matched"])
            _, harder = classified(model, card, recipe, data["harder"])
            scored[folder].append((true, matched, harder))
            one = drop_summary([(true, matched, harder)], args.limit)
            print(f"sets of data seed {seed} (objects at seed {seed + 2}{held}), {folder}: class accuracy matched "
                  f"{one['matched']:.4f}, harder {one['harder']:.4f}, drop {one['drop']:.2f} points; recall {recalls(one)}",
                  flush=True)
    for folder, sets in scored.items():
        if len(sets) > 1:
            s = drop_summary(sets, args.limit)
            print(f"{folder}, {s['n_sets']} sets ({s['n']} objects{held}): class accuracy matched {s['matched']:.5f}, "
                  f"harder {s['harder']:.5f}, drop {s['drop']:.2f} points (the sets' mean {s['mean_drop']:.2f} ± "
                  f"{s['stderr']:.2f} standard error; sd {s['sd']:.2f}, {s['min']:.2f} to {s['max']:.2f}; "
                  f"{s['above']} of {s['n_sets']} above {s['limit']:g}); recall {recalls(s)}; the harder sets' errors "
                  f"{errors(s)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
