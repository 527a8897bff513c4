"""Fine-tune a Spectromer model from a recipe (YAML): data, backbone, tasks, optimiser, epochs.

The loop is resumable: every `checkpoint_every` steps (and every `checkpoint_minutes`, and at the
end of each epoch) the whole training state is saved under `<out>/state/` (see state.py); a
re-run of the same recipe into the same folder continues from the newest state, with the same
batches in the same order, so an interrupted run ends where an uninterrupted one would (up to
floating-point nondeterminism on GPUs). Under torchrun or a SLURM job of several tasks it runs
DistributedDataParallel, one process per GPU. The best epoch (by validation score, or loss) is
the checkpoint in `<out>`; metrics.json / metrics.csv / learning-curve.png log every epoch.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import ModelCard, save_checkpoint
from ..errors import ConfigError
from ..grid import WavelengthGrid
from ..model import build_model
from ..render import RenderSettings
from .data import (RenderedBatches, batch_loader, encode_targets, epoch_batches, fit_label_norm, image_store_settings,
                   load_training_data, split_by_object)

from .evaluate import evaluate, held_out_metrics, validation_score
from .loss import multitask_loss
from .ranks import start_ranks
from .recipe import RESUMABLE_CHANGES, Recipe


def freeze_unused_heads(model: nn.Module, tasks: tuple) -> None:
    """Heads of tasks the recipe does not train take no gradient (DDP refuses parameters that
    never receive one); their untrained outputs become NaN at inference (predict.py)."""
    for task, head in (("class", model.class_head), ("z", model.z_head), ("stellar", model.stellar_head)):
        if task not in tasks:
            head.requires_grad_(False)


def _check_resumable(saved: dict, recipe: Recipe, folder: Path) -> None:
    current = recipe.to_json()
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        raise ConfigError(f"{folder} holds an interrupted run of a different recipe ({', '.join(changed)} changed); "
                          "train into a new --out folder, or delete its state/ to start over")


def _schedule(optimiser, recipe: Recipe, total_steps: int):
    warmup = max(1, int(recipe.warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))


def train(recipe: Recipe, out_dir: str | Path, log=print, max_epochs: int | None = None,
          max_minutes: float | None = None, stop_requested=None, on_step=None) -> dict:
    """Train per `recipe` into `out_dir` (resuming there if it holds an interrupted run of the same
    recipe); returns the summary stored in the checkpoint's card (held-out metrics, split, timing).

    max_epochs / max_minutes cap this call without changing the recipe: it stops once that many of
    the recipe's epochs are done (counting those of earlier calls), or that many minutes after it
    started, with the state saved; rerunning continues. `stop_requested()`, asked after every step,
    stops it the same way when it says True (a SLURM job's timeout signal). A stopped call returns
    {'stopped': True, 'epochs_done', 'step'}. `on_step(step, total_steps, loss)` follows every step
    (a progress bar); `log` gets a readable line per epoch and the summary at the end."""
    from .log import epoch_line, plot_learning_curve, summary_lines, write_history
    from .state import TrainState, latest_state, load_state, read_state_json, save_state

    out_dir = Path(out_dir)
    finished = out_dir / "training.json"
    if finished.is_file():
        summary = json.loads(finished.read_text())
        _check_resumable(summary.get("recipe", {}), recipe, out_dir)
        log(f"{out_dir}: training already finished (best epoch {summary['best_epoch']}); nothing to do")
        return summary
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = start_ranks(recipe.device)
    if ranks.main:  # marks the folder as a training folder from the start (annotate status)
        tmp = out_dir / "recipe.json.tmp"
        tmp.write_text(json.dumps(recipe.to_json(), indent=1) + "\n")
        tmp.replace(out_dir / "recipe.json")
    device = ranks.device
    torch.manual_seed(recipe.seed)
    grid = WavelengthGrid(**recipe.grid)
    settings = RenderSettings.from_dict(recipe.render)
    if "images" in recipe.data:
        stored = image_store_settings(recipe.data["images"])
        if recipe.render and stored != settings:
            raise ConfigError(f"recipe render settings differ from those of the image store {recipe.data['images']}")
        settings = stored
    settings.check_grid(grid.n_pix)
    resume_from = latest_state(out_dir)
    if resume_from is not None:
        saved = read_state_json(resume_from)
        _check_resumable(saved["recipe"], recipe, out_dir)
        if saved.get("world_size", ranks.world_size) != ranks.world_size:  # states of older versions lack it
            raise ConfigError(f"{out_dir} holds a run interrupted with {saved['world_size']} processes; resume it "
                              f"with as many (now {ranks.world_size}): the data order depends on them")
    started = time.time()
    # rank 0 loads first (a catalog source may have to ingest its spectra into the store once) and
    # tells the others whether it could, so that an error there does not leave them waiting
    if ranks.main:
        try:
            data = load_training_data(recipe.data, grid)
        except BaseException:
            ranks.agree(False)
            raise
        ranks.agree(True)
    else:
        if not ranks.agree(False):
            raise ConfigError("rank 0 could not load the training data (its log says why)")
        data = load_training_data(recipe.data, grid)
    split = data.get("split")
    if split is None:
        split = split_by_object(np.asarray(data["object"]), recipe.val_fraction, recipe.test_fraction, recipe.seed)
    train_rows = np.flatnonzero(split == "train")
    for part in ("train", "val"):
        if not (split == part).any():
            raise ConfigError(f"the {part} split is empty ({len(split)} rows, val_fraction {recipe.val_fraction}, "
                              f"test_fraction {recipe.test_fraction}): give the recipe more data or other fractions")
    norms = fit_label_norm(data, split == "train")
    targets = encode_targets(data, norms)
    log(f"data: {len(train_rows)} train, {(split == 'val').sum()} val, {(split == 'test').sum()} test rows "
        f"({time.time() - started:.0f} s)")

    dataset = RenderedBatches(data, targets, settings, recipe.image_mean, recipe.image_std)
    pin = device.type == "cuda"
    val_batches = [b for b in np.array_split(np.flatnonzero(split == "val"),
                                             max(1, math.ceil((split == "val").sum() / recipe.batch_size))) if len(b)]
    model = build_model(recipe.backbone, settings.image_size, pretrained=recipe.pretrained).to(device)
    freeze_unused_heads(model, recipe.tasks)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = len(epoch_batches(train_rows, recipe.batch_size, recipe.seed, 0, ranks.world_size)) \
        // ranks.world_size
    total_steps = recipe.epochs * steps_per_epoch
    if recipe.max_steps:
        total_steps = min(total_steps, recipe.max_steps)
    schedule = _schedule(optimiser, recipe, max(total_steps, 1))
    state = TrainState(history=[])
    if resume_from is not None:
        state = load_state(resume_from, model, optimiser, schedule)
        log(f"resumed from {resume_from}: step {state.step}, epoch {state.epoch + 1}, batch {state.batch}")
    use_bf16 = recipe.precision == "bf16" and device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    forward = model
    if ranks.world_size > 1:
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from ..checkpoint import backbone_dict

    card_base = dict(backbone=backbone_dict(model.backbone.config), render=settings, grid=grid, label_norm=norms,
                     name=recipe.name)
    last_save = time.time()

    def save(reason: str) -> None:
        nonlocal last_save
        if ranks.main:
            where = save_state(out_dir, state, model, optimiser, schedule, recipe.to_json(), world_size=ranks.world_size)
            log(f"state saved at step {state.step} ({reason}): {where}")
        ranks.barrier()
        last_save = time.time()

    def done() -> bool:
        return bool(recipe.max_steps) and state.step >= recipe.max_steps

    deadline = started + 60.0 * max_minutes if max_minutes is not None else None
    stopped = False
    model.train()
    while state.epoch < recipe.epochs and not done():
        if max_epochs is not None and state.epoch >= max_epochs:
            stopped = True
            break
        mine = epoch_batches(train_rows, recipe.batch_size, recipe.seed, state.epoch, ranks.world_size)
        mine = mine[ranks.rank::ranks.world_size]
        loader = batch_loader(dataset, mine[state.batch:], recipe.num_workers, pin)
        epoch_start = time.time()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast():
                out = forward(batch["pixels"])
            loss, _ = multitask_loss(out, batch, recipe.loss_weights, recipe.tasks)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            state.step, state.batch = state.step + 1, state.batch + 1
            state.loss_sum += float(loss.detach())
            if on_step is not None and ranks.main:
                on_step(state.step, total_steps, state.loss_sum / state.batch)
            if done():
                break
            now = time.time()
            if deadline is not None and ranks.agree(now >= deadline):
                save(f"epoch {state.epoch + 1}, batch {state.batch}; the {max_minutes:g}-minute cap")
                stopped = True
                break
            if stop_requested is not None and ranks.agree(stop_requested()):
                save(f"epoch {state.epoch + 1}, batch {state.batch}; the scheduler's timeout signal")
                stopped = True
                break
            if (recipe.checkpoint_every and state.step % recipe.checkpoint_every == 0) or \
                    ranks.agree(now - last_save > 60 * recipe.checkpoint_minutes):
                save(f"epoch {state.epoch + 1}, batch {state.batch}")
        if stopped:
            break
        if ranks.main:
            val = evaluate(model, batch_loader(dataset, val_batches, recipe.num_workers, pin), norms, device,
                           autocast, recipe.tasks)
            record = {"epoch": state.epoch + 1, "step": state.step,
                      "train_loss": state.loss_sum / max(state.batch, 1), "seconds": round(time.time() - epoch_start, 1),
                      **{f"val_{k}": v for k, v in val.items()}}
            record["val_score"] = validation_score(val, recipe.tasks)
            state.history.append(record)
            log(epoch_line(record, recipe.epochs))
            if state.best is None or _better(record, state.best, recipe.select_by):
                state.best = {k: record[k] for k in ("epoch", "step", "val_loss", "val_score")}
                card = ModelCard(**card_base, training={"recipe": recipe.to_json(), "tasks": list(recipe.tasks),
                                                        "best_epoch": record["epoch"]})
                save_checkpoint(model, card, out_dir, half=recipe.save_half)
            write_history(out_dir, state.history)
            plot_learning_curve(out_dir, state.history, recipe.name)
        state.epoch, state.batch, state.loss_sum = state.epoch + 1, 0, 0.0
        save(f"end of epoch {state.epoch}")

    if stopped:
        log(f"stopped after {state.epoch} of {recipe.epochs} epochs (step {state.step}), the state saved; "
            f"rerun the same command to continue")
        ranks.barrier()
        return {"stopped": True, "epochs_done": state.epoch, "step": state.step}
    summary = {}
    if ranks.main:
        summary = _finish(recipe, out_dir, data, split, norms, settings, device, autocast, card_base, state,
                          time.time() - started)
        for line in summary_lines(summary):
            log(line)
    ranks.barrier()
    return summary


def _better(record: dict, best: dict, select_by: str) -> bool:
    if select_by == "loss":
        return record["val_loss"] < best["val_loss"]
    return record["val_score"] > best["val_score"]


def _finish(recipe, out_dir, data, split, norms, settings, device, autocast, card_base, state, seconds) -> dict:
    """Held-out metrics of the best checkpoint into its card, training.json, and the state removed."""
    import shutil

    from ..checkpoint import load_checkpoint
    from .state import STATE_DIR

    best_model, _ = load_checkpoint(out_dir, str(device))
    test, held_out, robustness = held_out_metrics(best_model, recipe, data, split, norms, settings, device, autocast)
    summary = {"tasks": list(recipe.tasks), "best_epoch": state.best["epoch"], "test": test,
               "held_out_stars": held_out, **({"robustness": robustness} if robustness else {}), "device": str(device), "seconds": round(seconds, 1),
               "steps": state.step, "annotate_version": __version__,
               "split_counts": {s: int((split == s).sum()) for s in ("train", "val", "test")}}
    card = ModelCard(**card_base, training={"recipe": recipe.to_json(), **summary})
    save_checkpoint(best_model, card, out_dir, half=recipe.save_half)
    tmp = out_dir / "training.json.tmp"
    tmp.write_text(json.dumps({**summary, "recipe": recipe.to_json()}, indent=1) + "\n")
    tmp.replace(out_dir / "training.json")
    shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
    return summary
