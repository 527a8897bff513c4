"""Train a recipe for as many epochs as fit in a wall-clock budget on this machine.

For a fixed allocation (a GPU lent for so many minutes, a SLURM slot): it measures first, on this
machine, the backbone's training step (synthetic batches of the recipe's size, precision and
device, rendering included where the run renders on the device) and the simulator's rate with the
recipe's workers; then it sets `epochs` to what fits, writes that recipe as `<out>/recipe.yaml`
and trains it with `annotate.training.train`, capped at the budget (a run stopped at the cap keeps
its best epoch's checkpoint and its resumable state). The learning-rate schedule is built for the
epochs chosen, so a run that fits is annealed to its end, unlike one cut short by --max-minutes.

    python training/timed_run.py --recipe training/default-medium.yaml --out runs/medium --minutes 7
    python training/timed_run.py --recipe ... --out ... --minutes 7 --probe-only   # the plan alone
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from annotate.grid import WavelengthGrid
from annotate.render import RenderSettings
from annotate.training import Recipe, train

FINISH_S = 45.0  # held-out metrics, the stellar baseline and the last checkpoint, measured on an H200 node


def step_seconds(recipe: Recipe, n_steps: int = 20) -> float:
    """Seconds per training step of the recipe's backbone on its device (after 5 warm-up steps)."""
    from annotate import render_torch
    from annotate.checkpoint import LabelNorm
    from annotate.model import ZHead, build_model
    from annotate.training.ranks import pick_device

    device = pick_device(recipe.device)
    settings = RenderSettings.from_dict(recipe.render)
    grid = WavelengthGrid(**recipe.grid)
    model = build_model(recipe.backbone, settings.image_size, pretrained=False, z_head=ZHead.from_dict(recipe.z_head),
                        z_norm=LabelNorm(0.16, 0.2, "log1p10")).to(device)  # any z scale times the same
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator(device="cpu").manual_seed(0)
    flux = (1 + 0.1 * torch.randn(recipe.batch_size, grid.n_pix, generator=generator)).to(device)
    mask = torch.zeros_like(flux, dtype=torch.bool)
    bf16 = recipe.precision == "bf16" and device.type == "cuda"
    on_device = recipe.render_on == "device" or (recipe.render_on == "auto" and device.type == "cuda")
    cpu_pixels = render_torch.to_model_input(render_torch.render(flux.cpu(), mask.cpu(), settings))

    def one_step():
        pixels = render_torch.to_model_input(render_torch.render(flux, mask, settings)) if on_device \
            else cpu_pixels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(pixels)
        loss = out["class_logits"].float().logsumexp(1).mean() + out["z_mean"].square().mean() \
            + out["stellar"].square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return float(loss.detach())  # the loop reads each step's loss too

    for _ in range(5):
        one_step()
    start = time.perf_counter()
    for _ in range(n_steps):
        one_step()
    return (time.perf_counter() - start) / n_steps


def simulation_rate(recipe: Recipe) -> float:
    """Simulated objects per second with the recipe's realism and workers (one chunk per worker)."""
    import os

    from annotate.simulate.dataset import CHUNK, simulate_training_set

    spec = dict(recipe.data["simulate"])
    n = CHUNK * (spec.get("workers") or os.cpu_count() or 1)
    start = time.perf_counter()
    simulate_training_set(n_objects=n, grid=WavelengthGrid(**recipe.grid), seed=spec.get("seed", 0) + 99,
                          workers=spec.get("workers"), realism=spec.get("realism"),
                          class_fractions=spec.get("class_fractions"),
                          star_blend_fraction=spec.get("star_blend_fraction", 0.0))
    return n / (time.perf_counter() - start)


def plan(recipe: Recipe, minutes: float, elapsed: float, step_s: float, sim_rate: float) -> dict:
    """The epochs that fit in what is left of `minutes`, and the estimate behind them."""
    spec = recipe.data["simulate"]
    n_objects = int(spec["n_objects"])
    n_sim = n_objects + int(spec.get("n_held_out_spectra", 0)) + 2 * int(spec.get("n_robustness_spectra", 0))
    sim_s = n_sim / sim_rate
    n_train = n_objects * (1 - recipe.val_fraction - recipe.test_fraction)
    steps = math.ceil(n_train / recipe.batch_size)
    val_s = math.ceil(n_objects * recipe.val_fraction / recipe.batch_size) * step_s / 3
    # + the state saved and the curve drawn each epoch: on an H200 node epochs took 0.9-1.1x this
    # estimate with 735 steps and 1.1-1.2x with 368 (the steps' Python work was not in the probe)
    epoch_s = 1.1 * steps * step_s + val_s + 3.0
    left = 60 * minutes - elapsed - sim_s - FINISH_S
    epochs = max(1, min(recipe.epochs, int(left // epoch_s)))
    return {"step_s": step_s, "simulated_per_s": sim_rate, "simulation_s": sim_s, "steps_per_epoch": steps,
            "epoch_s": epoch_s, "epochs": epochs, "epochs_cap": recipe.epochs,
            "images_per_s": recipe.batch_size / step_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of this whole command")
    parser.add_argument("--probe-only", action="store_true", help="print the plan and stop")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    recipe = Recipe.from_yaml(args.recipe)
    if "simulate" not in recipe.data:
        print("timed_run: the recipe must simulate its data (data.simulate)", file=sys.stderr)
        return 2
    step_s = step_seconds(recipe)
    sim_rate = simulation_rate(recipe)
    chosen = plan(recipe, args.minutes, time.perf_counter() - started, step_s, sim_rate)
    print("plan: " + json.dumps(chosen), flush=True)
    if args.probe_only:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timed = replace(recipe, epochs=chosen["epochs"])
    import yaml

    (out / "recipe.yaml").write_text(yaml.safe_dump(timed.to_json(), sort_keys=False))
    left = args.minutes - (time.perf_counter() - started) / 60 - FINISH_S / 60
    train(timed, out, log=lambda line: print(line, flush=True), max_minutes=max(left, 0.5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
