"""Calibrate a binned z head's σ (`annotate.model.ZHead.sigma_scale`) and write it into the checkpoint.

Uncalibrated, the binned head's σ is the RMS of its whole distribution: every bin's probability
and the bin width widen it, and on new objects far more than 68 % lie within it. Calibrated, σ is
the width of the peak z is read from times one factor per predicted class, chosen so that 68.27 %
of new objects of each class lie within 1σ (`annotate.model.calibrate_sigma`).

The factors are fitted on new objects simulated as the checkpoint's training data was (its
realism strength; stars from its training stars, never the held-out ones), and checked on other
new objects whose stars are the held-out MILES stars; both tables are printed. Without --write
nothing is changed.

    python training/calibrate_z_sigma.py --model annotate/models/spectromer-tiny --write
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from annotate import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from annotate.checkpoint import load_checkpoint, write_card
from annotate.model import ONE_SIGMA, ZHead, calibrate_sigma
from annotate.render import render, to_model_input
from annotate.simulate.dataset import HELD_OUT_STAR_FRACTION, held_out_star_indices
from annotate.simulate.realism import Realism
from annotate.simulate.spectra import SimulationSettings, draw_sample
from annotate.simulate.templates import load_library


def peaks(model, card, sample: dict, batch: int = 128) -> dict:
    """|z − true z|, σ_peak and σ (as the card stands) in z units, and the predicted class index."""
    out = {"mean": [], "log_peak": [], "log_sigma": [], "cls": []}
    with torch.inference_mode():
        for a in range(0, len(sample["z"]), batch):
            pixels = to_model_input(render(sample["flux"][a:a + batch], sample["mask"][a:a + batch], card.render))
            pred = model(pixels)
            out["mean"].append(pred["z_mean"].double().numpy())
            out["log_peak"].append(pred["z_log_peak"].double().numpy())
            out["log_sigma"].append(pred["z_log_sigma"].double().numpy())
            out["cls"].append(pred["class_logits"].argmax(1).numpy())
    mean, cls = np.concatenate(out["mean"]), np.concatenate(out["cls"])
    norm = card.label_norm["z"]
    z = norm.decode(mean)
    return {"error": np.abs(z - sample["z"]), "z": z, "cls": cls,
            "peak": norm.decode_sigma(mean, np.exp(np.concatenate(out["log_peak"]))),
            "sigma": norm.decode_sigma(mean, np.exp(np.concatenate(out["log_sigma"])))}


def coverage(result: dict, sigma: np.ndarray, title: str) -> None:
    print(title)
    for c, name in enumerate(CLASS_NAMES):
        mine = result["cls"] == c
        if not mine.any():
            continue
        pull = result["error"][mine] / sigma[mine]
        velocity = np.median(sigma[mine] / (1 + result["z"][mine])) * SPEED_OF_LIGHT_KMS
        print(f"  predicted {name:6s} n {mine.sum():5d}: within 1σ {np.mean(pull <= 1):.3f}, 2σ {np.mean(pull <= 2):.3f},"
              f" 3σ {np.mean(pull <= 3):.3f}; median σ {velocity:,.0f} km/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder with a binned z head")
    parser.add_argument("--n", type=int, default=4000, help="new objects to fit the factors on")
    parser.add_argument("--n-check", type=int, default=2000, help="other new objects (held-out stars) to check them on")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--write", action="store_true", help="write sigma_scale into the checkpoint's config.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model, card = load_checkpoint(args.model, "cpu")
    head = ZHead.from_dict(card.z_head)
    if head.kind != "bins":
        parser.error(f"{args.model}: its z head is {head.kind}; only a binned head is calibrated here")
    spec = card.training.get("recipe", {}).get("data", {}).get("simulate", {})
    realism = Realism.from_dict(spec.get("realism", 1.0))  # as the checkpoint was trained (strength 1 if unknown)
    lib = load_library()
    held = held_out_star_indices(lib.n_star, float(spec.get("held_out_star_fraction", HELD_OUT_STAR_FRACTION)),
                                 int(spec.get("held_out_seed", spec.get("seed", 0))))
    settings = SimulationSettings(realism=realism)
    fit_sample = draw_sample(args.n, lib, card.grid, seed=args.seed, settings=settings,
                             star_indices=np.setdiff1d(np.arange(lib.n_star), held))
    check_sample = draw_sample(args.n_check, lib, card.grid, seed=args.seed + 1, settings=settings, star_indices=held)
    fitted, checked = peaks(model, card, fit_sample), peaks(model, card, check_sample)
    scale = calibrate_sigma(fitted["error"], fitted["peak"], fitted["cls"])
    strength = "0" if realism is None else f"{realism.strength:g}" + (f"–{realism.top:g}" if realism.strength_max is not None else "")
    print(f"realism strength {strength}; sigma_scale ({', '.join(CLASS_NAMES)}): {list(scale)} "
          f"(the {ONE_SIGMA:.2%} quantile of |Δz| / σ_peak on {args.n} new objects, seed {args.seed})")
    factor = np.asarray(scale)
    coverage(checked, checked["sigma"], f"check ({args.n_check} new objects, held-out stars, seed {args.seed + 1}), σ as the card stands:")
    coverage(checked, factor[checked["cls"]] * checked["peak"], "the same, calibrated:")
    if args.write:
        write_card(args.model, replace(card, z_head=replace(head, sigma_scale=scale).to_dict()))
        print(f"wrote sigma_scale into {args.model}/config.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
