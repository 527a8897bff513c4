"""Which z head reads redshift best from a trained backbone: the Gaussian head (mean and σ by
Gaussian NLL) against the binned head (`annotate.model.ZHead`), each linear or behind a 512-unit
layer, fitted on the CLS features of a checkpoint's frozen backbone (new simulated objects with the
realism effects, stars from the training stars) and scored on other new objects (stars from the
held-out MILES stars).

    python training/z_head_probe.py --model runs/tiny-lowz --n-fit 20000 --n-score 3000
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from torch import nn

from annotate.checkpoint import load_checkpoint
from annotate.metrics import nmad, outlier_fraction
from annotate.model import ZHead, bin_centres, read_bins, two_hot
from annotate.render import render, to_model_input
from annotate.simulate.dataset import HELD_OUT_STAR_FRACTION, held_out_star_indices
from annotate.simulate.realism import Realism
from annotate.simulate.spectra import SimulationSettings, draw_sample
from annotate.simulate.templates import load_library


def features(model, card, n: int, seed: int, stars: np.ndarray, batch: int = 256,
             settings: SimulationSettings = SimulationSettings(realism=Realism(strength=1.0))) -> tuple:
    """(CLS features of the frozen backbone, the sample) of n new simulated objects (`settings`:
    all classes with the realism effects at strength 1 unless given), stars from `stars`."""
    sample = draw_sample(n, load_library(), card.grid, seed=seed, star_indices=stars, settings=settings)
    parts = []
    with torch.inference_mode():
        for a in range(0, n, batch):
            pixels = to_model_input(render(sample["flux"][a:a + batch], sample["mask"][a:a + batch], card.render))
            parts.append(model.backbone(pixel_values=pixels).last_hidden_state[:, 0].float())
    return torch.cat(parts), sample


def fit_head(head: nn.Module, x: torch.Tensor, batch_loss, epochs: int = 60, lr: float = 2e-3) -> nn.Module:
    """AdamW with cosine decay over `epochs`, batches of 256 rows of `x`; batch_loss(out, rows)
    gives the loss of the head's output for those rows."""
    torch.manual_seed(0)
    steps = epochs * math.ceil(len(x) / 256)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for a in range(0, len(x), 256):
            rows = order[a:a + 256]
            loss = batch_loss(head(x[rows]), rows)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return head


def z_loss(y: torch.Tensor, centres: torch.Tensor | None):
    """The batch loss of a z head: cross-entropy against two-bin targets when `centres` is given,
    else Gaussian NLL of (mean, log σ)."""
    def loss(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if centres is not None:
            return -(two_hot(y[rows], centres) * out.log_softmax(1)).sum(1).mean()
        log_sigma = out[:, 1].clamp(-7.0, 5.0)
        return (0.5 * ((y[rows] - out[:, 0]) / log_sigma.exp()) ** 2 + log_sigma).mean()
    return loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="spectromer-tiny", help="checkpoint whose backbone is read")
    parser.add_argument("--n-fit", type=int, default=20000)
    parser.add_argument("--n-score", type=int, default=3000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, card = load_checkpoint(args.model, "cpu")
    n_star = load_library().n_star
    held = held_out_star_indices(n_star, HELD_OUT_STAR_FRACTION, seed=0)
    train_stars = np.setdiff1d(np.arange(n_star), held)
    x_fit, fit_sample = features(model, card, args.n_fit, 101, train_stars)
    x_score, score_sample = features(model, card, args.n_score, 102, held)
    z_fit, z_score, cls_score = fit_sample["z"], score_sample["z"], score_sample["class"]
    norm = card.label_norm["z"]
    y = torch.tensor(norm.encode(z_fit), dtype=torch.float32)
    bins = ZHead(kind="bins")
    centres = bin_centres(bins, norm)
    hidden = x_fit.shape[1]
    extragalactic = cls_score != "STAR"
    for name, head, binned in (
            ("Gaussian, linear", nn.Linear(hidden, 2), False),
            ("binned, linear", nn.Linear(hidden, bins.n_bins), True),
            ("Gaussian, 512-unit layer", nn.Sequential(nn.Linear(hidden, 512), nn.GELU(), nn.Linear(512, 2)), False),
            ("binned, 512-unit layer", nn.Sequential(nn.Linear(hidden, 512), nn.GELU(), nn.Linear(512, bins.n_bins)),
             True)):
        fit_head(head, x_fit, z_loss(y, centres if binned else None))
        with torch.inference_mode():
            out = head(x_score)
            mean = read_bins(out, centres, bins.window)["z_mean"] if binned else out[:, 0]
        z = norm.decode(mean.numpy().astype(float))
        print(f"{name}: z NMAD {nmad(z_score, z):.4f}, galaxies and quasars {nmad(z_score[extragalactic], z[extragalactic]):.4f}"
              f" (η {outlier_fraction(z_score[extragalactic], z[extragalactic]):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
