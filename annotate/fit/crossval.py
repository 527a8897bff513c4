"""Choose the bases' settings without the held-out templates: leave-a-fold-out fits of the
training templates (`calibrate.fold_fits`: for each of 4 folds, bases built without it fit objects
simulated from it, with the realism effects), scored as `evaluate` scores the held-out ones.

    python -m annotate.fit.crossval --star-pca 5 10

The held-out templates stay the evaluation's alone: a setting chosen here is measured there once.
"""

from __future__ import annotations

import argparse

import numpy as np

from .. import CLASS_NAMES
from .build import N_STAR_PCA
from .calibrate import fold_fits
from .evaluate import ross_success, success_by_target_bin


def crossval(n: int, seed: int, n_star_pca: int = N_STAR_PCA) -> dict:
    """Per class: rows, class accuracy and Ross success in the target S/N bins
    (`evaluate.success_by_target_bin`) of `fold_fits(n, seed)`."""
    fits = fold_fits(n, seed, n_star_pca=n_star_pca)
    success = ross_success(fits["fit_class"], fits["fit_z"], fits["class"], fits["z"])
    out = {"n_star_pca": n_star_pca, "class_accuracy": float(np.mean(fits["fit_class"] == fits["class"]))}
    for cls in CLASS_NAMES:
        chosen = fits["class"] == cls
        out[cls] = {"n": int(chosen.sum()), "accuracy": float(np.mean(fits["fit_class"][chosen] == cls)),
                    **success_by_target_bin(success, chosen, fits["snr"])}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2400, help="objects over all folds")
    parser.add_argument("--seed", type=int, default=3030)
    parser.add_argument("--star-pca", type=int, nargs="+", default=[N_STAR_PCA],
                        help="PCA vectors per star group to compare (default: the shipped bases')")
    args = parser.parse_args(argv)
    for k in args.star_pca:
        result = crossval(args.n, args.seed, k)
        print(f"star PCA {k}: class accuracy {result['class_accuracy']:.4f}")
        for cls in CLASS_NAMES:
            row = result[cls]
            print(f"  {cls:<6} n={row['n']}: accuracy {row['accuracy']:.4f}; success S/N≥5 "
                  f"{row['success_snr_ge_5']:.3f}, S/N 2-5 {row['success_snr_2_5']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
