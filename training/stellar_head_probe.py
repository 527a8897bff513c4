"""Whether a checkpoint's stellar parameters are limited by its linear stellar head or by its
backbone: heads refitted on the CLS features of the frozen backbone (a linear one, one behind a
512-unit layer, one behind two), on new spectra of the training MILES stars, scored by R² at
S/N >= 20 on new spectra of the held-out MILES stars (realism strength 1), beside the trained
head and the k-nearest-templates baseline on the same spectra.

    python training/stellar_head_probe.py --model runs/tiny-zbins --n-fit 15000 --n-score 2000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from annotate import stellarbaseline
from annotate.checkpoint import load_checkpoint
from annotate.metrics import r2_score
from annotate.simulate.dataset import HELD_OUT_STAR_FRACTION, held_out_star_indices
from annotate.simulate.realism import Realism
from annotate.simulate.spectra import SimulationSettings
from annotate.simulate.templates import load_library
from z_head_probe import features, fit_head  # training/, the script's folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="spectromer-tiny")
    parser.add_argument("--n-fit", type=int, default=15000)
    parser.add_argument("--n-score", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, card = load_checkpoint(args.model, "cpu")
    lib = load_library()
    held = held_out_star_indices(lib.n_star, HELD_OUT_STAR_FRACTION, seed=0)
    train_stars = np.setdiff1d(np.arange(lib.n_star), held)
    stars_only = SimulationSettings(class_fractions=(0, 0, 1), realism=Realism(strength=1.0))
    x_fit, fit_sample = features(model, card, args.n_fit, 201, train_stars, settings=stars_only)
    x_score, score_sample = features(model, card, args.n_score, 202, held, settings=stars_only)
    with torch.inference_mode():
        trained = model.stellar_head(x_score).numpy()
    norms = [card.label_norm[k] for k in stellarbaseline.LABELS]
    y = torch.tensor(np.stack([n.encode(fit_sample[k]) for n, k in zip(norms, stellarbaseline.LABELS)], 1),
                     dtype=torch.float32)
    known = torch.isfinite(y).float()
    y = torch.nan_to_num(y)
    true = np.stack([score_sample[k] for k in stellarbaseline.LABELS], 1)
    high = score_sample["snr"] >= 20

    def show(name: str, physical: np.ndarray) -> None:
        print(f"{name}: " + ", ".join(f"{k} {r2_score(true[high, j], physical[high, j]):.3f}"
                                       for j, k in enumerate(stellarbaseline.LABELS)))

    def decode(normalised: np.ndarray) -> np.ndarray:
        return np.stack([n.decode(normalised[:, j].astype(float)) for j, n in enumerate(norms)], 1)

    print(f"R² at S/N >= 20 of {high.sum()} held-out star spectra; heads fitted on {args.n_fit} training-star spectra")
    show("trained head", decode(trained))
    width = x_fit.shape[1]
    for name, head in (("linear, refitted", nn.Linear(width, 3)),
                       ("512-unit layer", nn.Sequential(nn.Linear(width, 512), nn.GELU(), nn.Linear(512, 3))),
                       ("two 512-unit layers", nn.Sequential(nn.Linear(width, 512), nn.GELU(), nn.Linear(512, 512),
                                                             nn.GELU(), nn.Linear(512, 3)))):
        fit_head(head, x_fit, lambda out, rows: (((out - y[rows]) ** 2) * known[rows]).sum() / known[rows].sum())
        with torch.inference_mode():
            show(name, decode(head(x_score).numpy()))
    templates, usable, labels = stellarbaseline.template_stars(lib, train_stars, card.grid)
    show("baseline (5 nearest training stars by χ²)",
         stellarbaseline.nearest_templates(score_sample["flux"], score_sample["ivar"], templates, usable, labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
