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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import ModelCard, save_checkpoint
from ..blockpatch import model_outputs, supports_blocks
from ..errors import ConfigError
from ..grid import WavelengthGrid
from ..model import ZHead, build_model
from ..render import RenderSettings
from .average import WeightAverage
from .data import (DeviceBatches, RenderedBatches, batch_loader, encode_targets, epoch_batches, fit_label_norm,
                   load_training_data, split_by_object)
from .evaluate import evaluate, held_out_metrics, validation_score
from .loss import multitask_loss
from .ranks import start_ranks
from .recipe import Recipe
from .start import check_resumable, recipe_record, render_settings, resumable_state, start_from


def freeze_unused_heads(model: nn.Module, tasks: tuple) -> None:
    """Heads of tasks the recipe does not train take no gradient (DDP refuses parameters that
    never receive one); their untrained outputs become NaN at inference (predict.py)."""
    from ..tasks import TASKS

    for name, task in TASKS.items():
        if name not in tasks:
            getattr(model, task.head).requires_grad_(False)


def parameter_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """The trainable parameters for AdamW: one group at `lr`, or, with `head_lr`, the backbone at
    `lr` and the heads at `head_lr` (a head that starts anew on a trained backbone)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if recipe.head_lr is None:
        return [{"params": [p for _, p in trainable]}]
    return [{"params": [p for name, p in trainable if name.startswith("backbone.")]},
            {"params": [p for name, p in trainable if not name.startswith("backbone.")], "lr": recipe.head_lr}]


def _schedule(optimiser, recipe: Recipe, total_steps: int):
    warmup = max(1, int(recipe.warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))


def finished_summary(recipe: Recipe, out_dir: Path, log=print) -> dict | None:
    """The summary of the training `out_dir` holds when it has finished with this recipe (said in
    one line: there is nothing to do); None when it has not finished. ConfigError when it finished
    with another recipe."""
    finished = Path(out_dir) / "training.json"
    if not finished.is_file():
        return None
    summary = json.loads(finished.read_text())
    check_resumable(summary.get("recipe", {}), recipe.to_json(), Path(out_dir))
    log(f"{out_dir}: training already finished (best epoch {summary['best_epoch']}); nothing to do")
    return summary


def train(recipe: Recipe, out_dir: str | Path, log=print, max_epochs: int | None = None,
          max_minutes: float | None = None, stop_requested=None, on_step=None) -> dict:
    """Train per `recipe` into `out_dir` (resuming there if it holds an interrupted run of the same
    recipe); returns the summary stored in the checkpoint's card (held-out metrics, split, timing).

    max_epochs / max_minutes cap this call without changing the recipe: it stops once that many of
    the recipe's epochs are done (counting those of earlier calls), or that many minutes after it
    started, with the state saved; rerunning continues. `stop_requested()`, asked after every step,
    stops it the same way when it says True (a SLURM job's timeout signal). A stopped call returns
    {'stopped': True, 'epochs_done', 'step', 'resume' (how to go on)}. `on_step(step, total_steps, loss)` follows every step
    (a progress bar); `log` gets a readable line per epoch and the summary at the end."""
    from .log import summary_lines

    out_dir = Path(out_dir)
    summary = finished_summary(recipe, out_dir, log)
    if summary is not None:
        return summary
    run = _setup(recipe, out_dir, log)
    deadline = run.started + 60.0 * max_minutes if max_minutes is not None else None
    stop = _Stop(deadline, max_minutes, stop_requested)
    stopped = by_epochs = False
    run.model.train()
    while run.state.epoch < recipe.epochs and not run.done():
        if max_epochs is not None and run.state.epoch >= max_epochs:
            stopped = by_epochs = True
            break
        epoch_start = time.time()
        if _run_epoch(run, stop, on_step):
            stopped = True
            break
        _end_epoch(run, epoch_start)
    if stopped:
        # the same command with the same --max-epochs stops at once again: that cap must be raised
        resume = ("rerun without --max-epochs (or with a larger one) to continue" if by_epochs
                  else "rerun the same command to continue")
        log(f"stopped after {run.state.epoch} of {recipe.epochs} epochs (step {run.state.step}), the state saved; {resume}")
        run.ranks.barrier()
        return {"stopped": True, "epochs_done": run.state.epoch, "step": run.state.step, "resume": resume}
    summary = {}
    if run.ranks.main:
        summary = _finish(recipe, out_dir, run.data, run.split, run.norms, run.settings, run.device, run.autocast,
                          run.card_base, run.state, time.time() - run.started)
        for line in summary_lines(summary):
            log(line)
    run.ranks.barrier()
    return summary


@dataclass
class _Stop:
    """When a call stops before its recipe's end: a time cap, or the scheduler's signal."""

    deadline: float | None
    minutes: float | None
    requested: object  # () -> bool, or None

    def reason(self, ranks, now: float) -> str | None:
        """Why to stop now (every rank agreeing), or None."""
        if self.deadline is not None and ranks.agree(now >= self.deadline):
            return f"the {self.minutes:g}-minute cap"
        if self.requested is not None and ranks.agree(self.requested()):
            return "the scheduler's timeout signal"
        return None


@dataclass
class _Run:
    """What one call of `train` sets up once (`_setup`) and its epochs share."""

    recipe: Recipe
    out_dir: Path
    log: object
    ranks: object
    settings: RenderSettings
    data: dict
    split: np.ndarray
    train_rows: np.ndarray
    norms: dict
    dataset: RenderedBatches | DeviceBatches
    val_batches: list
    model: nn.Module
    forward: nn.Module
    optimiser: torch.optim.Optimizer
    schedule: object
    state: object
    total_steps: int
    card_base: dict
    started: float
    last_save: float = 0.0
    average: object = None  # average.WeightAverage when the recipe keeps one (`ema`)

    @property
    def device(self) -> torch.device:
        return self.ranks.device

    @property
    def pin(self) -> bool:
        return self.device.type == "cuda"

    def loader(self, batches: list):
        """The batches (lists of row indices) as model inputs and targets: rendered on the device,
        or by `num_workers` DataLoader processes."""
        if isinstance(self.dataset, DeviceBatches):
            return self.dataset.loader(batches)
        return batch_loader(self.dataset, batches, self.recipe.num_workers, self.pin)

    def autocast(self):
        enabled = self.recipe.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def done(self) -> bool:
        return bool(self.recipe.max_steps) and self.state.step >= self.recipe.max_steps

    def save(self, reason: str) -> None:
        from .state import save_state

        if self.ranks.main:
            where = save_state(self.out_dir, self.state, self.model, self.optimiser, self.schedule,
                               recipe_record(self.recipe), world_size=self.ranks.world_size, average=self.average)
            self.log(f"state saved at step {self.state.step} ({reason}): {where}")
        self.ranks.barrier()
        self.last_save = time.time()


def _setup(recipe: Recipe, out_dir: Path, log) -> _Run:
    """The folder marked, the resumable state checked, the data loaded and split, the model,
    optimiser and schedule built, and the saved state loaded where there is one."""
    from ..checkpoint import backbone_dict
    from .state import TrainState, load_state

    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = start_ranks(recipe.device)
    if ranks.main:  # marks the folder as a training folder from the start (annotate status)
        tmp = out_dir / "recipe.json.tmp"
        tmp.write_text(json.dumps(recipe.to_json(), indent=1) + "\n")
        tmp.replace(out_dir / "recipe.json")
    torch.manual_seed(recipe.seed)
    grid = WavelengthGrid(**recipe.grid)
    settings = render_settings(recipe, grid)
    resume_from = resumable_state(recipe, out_dir, ranks)
    started = time.time()
    data, split, norms = _load_data(recipe, grid, ranks)
    weights, start_norms, new_z_head = start_from(recipe, settings, grid)
    norms = start_norms or norms
    train_rows = np.flatnonzero(split == "train")
    log(f"data: {len(train_rows)} train, {(split == 'val').sum()} val, {(split == 'test').sum()} test rows "
        f"({time.time() - started:.0f} s)")
    val_rows = np.flatnonzero(split == "val")
    val_batches = [b for b in np.array_split(val_rows, max(1, math.ceil(len(val_rows) / recipe.batch_size))) if len(b)]
    z_head = ZHead.from_dict(recipe.z_head)
    model = build_model(recipe.backbone, settings.image_size, pretrained=recipe.pretrained, z_head=z_head,
                        z_norm=norms.get("z")).to(ranks.device)
    if weights is not None:
        model.load_state_dict(weights, strict=not new_z_head)
        if new_z_head:
            log(f"init_from {recipe.init_from}: its z head is not the recipe's ({z_head.kind}); that head starts anew")
    freeze_unused_heads(model, recipe.tasks)
    optimiser = torch.optim.AdamW(parameter_groups(model, recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = len(epoch_batches(train_rows, recipe.batch_size, recipe.seed, 0, ranks.world_size)) \
        // ranks.world_size
    total_steps = recipe.epochs * steps_per_epoch
    if recipe.max_steps:
        total_steps = min(total_steps, recipe.max_steps)
    schedule = _schedule(optimiser, recipe, max(total_steps, 1))
    state = TrainState(history=[])
    average = WeightAverage(model, recipe.ema) if recipe.ema else None
    if resume_from is not None:
        state = load_state(resume_from, model, optimiser, schedule, average)
        log(f"resumed from {resume_from}: step {state.step}, epoch {state.epoch + 1}, batch {state.batch}")
    # one process rendering on the CPU: the 2D Maps as their blocks (annotate.blockpatch), the patch
    # projection's kernels summed per block each step; under DistributedDataParallel, pixels
    dataset = _dataset(recipe, data, norms, settings, ranks.device, log,
                       blocks=supports_blocks(model, settings) and ranks.world_size == 1)
    forward = model
    if ranks.world_size > 1:
        device = ranks.device
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    card_base = dict(backbone=backbone_dict(model.backbone.config), render=settings, grid=grid, label_norm=norms,
                     name=recipe.name, z_head=z_head.to_dict())
    return _Run(recipe, out_dir, log, ranks, settings, data, split, train_rows, norms, dataset, val_batches,
                model, forward, optimiser, schedule, state, total_steps, card_base, started, last_save=time.time(),
                average=average)


def _dataset(recipe: Recipe, data: dict, norms: dict, settings: RenderSettings, device: torch.device, log,
             blocks: bool = False):
    """Batches rendered on the training device (`render_on: device`, or `auto` on a GPU whose free
    memory holds the spectra twice over, without an image store), else by DataLoader workers (as
    2D Map block values with `blocks`, when the data are spectra)."""
    targets = encode_targets(data, norms)
    on_device = recipe.render_on == "device" or (recipe.render_on == "auto" and device.type == "cuda")
    if on_device and recipe.render_on == "auto":
        need = np.asarray(data["flux"]).size * 5  # float32 flux and a bool mask
        on_device = need < 0.5 * torch.cuda.mem_get_info(device)[0]
    if on_device and not data.get("images_path"):
        log(f"batches rendered on {device} (render_on: {recipe.render_on})")
        return DeviceBatches(data, targets, settings, recipe.image_mean, recipe.image_std, device)
    dataset = RenderedBatches(data, targets, settings, recipe.image_mean, recipe.image_std, blocks=blocks)
    if dataset.blocks:
        log("2D Maps as their blocks (the patch projection summed per block)")
    return dataset


def _load_data(recipe: Recipe, grid: WavelengthGrid, ranks) -> tuple[dict, np.ndarray, dict]:
    """(data, split, label normalisation). Rank 0 loads first (a catalog source may have to ingest
    its spectra into the store once) and tells the others whether it could, so that an error there
    does not leave them waiting."""
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
    for part in ("train", "val"):
        if not (split == part).any():
            raise ConfigError(f"the {part} split is empty ({len(split)} rows, val_fraction {recipe.val_fraction}, "
                              f"test_fraction {recipe.test_fraction}): give the recipe more data or other fractions")
    return data, split, fit_label_norm(data, split == "train")


def _run_epoch(run: _Run, stop: _Stop, on_step) -> bool:
    """The rest of the current epoch's batches (from `state.batch`), saving the state on schedule;
    True when the call must stop here (the state saved)."""
    recipe, state, ranks = run.recipe, run.state, run.ranks
    mine = epoch_batches(run.train_rows, recipe.batch_size, recipe.seed, state.epoch, ranks.world_size)
    mine = mine[ranks.rank::ranks.world_size]
    for batch in run.loader(mine[state.batch:]):
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        with run.autocast():
            out = model_outputs(run.model, batch, run.settings, run.forward)
        loss, _ = multitask_loss(out, batch, recipe.loss_weights, recipe.tasks)
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
        run.optimiser.step()
        run.schedule.step()
        state.step, state.batch = state.step + 1, state.batch + 1
        if run.average is not None:
            run.average.update(run.model, state.step)
        state.loss_sum += float(loss.detach())
        if on_step is not None and ranks.main:
            on_step(state.step, run.total_steps, state.loss_sum / state.batch)
        if run.done():
            return False
        now = time.time()
        reason = stop.reason(ranks, now)
        if reason is not None:
            run.save(f"epoch {state.epoch + 1}, batch {state.batch}; {reason}")
            return True
        if (recipe.checkpoint_every and state.step % recipe.checkpoint_every == 0) or \
                ranks.agree(now - run.last_save > 60 * recipe.checkpoint_minutes):
            run.save(f"epoch {state.epoch + 1}, batch {state.batch}")
    return False


def _end_epoch(run: _Run, epoch_start: float) -> None:
    """Validation metrics into the history and the log line, the checkpoint where the epoch is the
    best so far, the learning curve (all with the weights' moving average under `ema`); then the
    next epoch begins with its state saved."""
    if run.ranks.main:
        with run.average.applied(run.model) if run.average is not None else nullcontext():
            _validate(run, epoch_start)
    state = run.state
    state.epoch, state.batch, state.loss_sum = state.epoch + 1, 0, 0.0
    run.save(f"end of epoch {state.epoch}")


def _validate(run: _Run, epoch_start: float) -> None:
    """`_end_epoch`'s validation, history, checkpoint and learning curve for the model's weights."""
    from .log import epoch_line, plot_learning_curve, write_history

    recipe, state = run.recipe, run.state
    val = evaluate(run.model, run.loader(run.val_batches), run.norms,
                   run.device, run.autocast, recipe.tasks, settings=run.settings)
    record = {"epoch": state.epoch + 1, "step": state.step,
              "train_loss": state.loss_sum / max(state.batch, 1), "seconds": round(time.time() - epoch_start, 1),
              **{f"val_{k}": v for k, v in val.items()}}
    record["val_score"] = validation_score(val, recipe.tasks)
    state.history.append(record)
    run.log(epoch_line(record, recipe.epochs))
    if state.best is None or _better(record, state.best, recipe.select_by):
        state.best = {k: record[k] for k in ("epoch", "step", "val_loss", "val_score")}
        card = ModelCard(**run.card_base, training={"recipe": recipe.to_json(), "tasks": list(recipe.tasks),
                                                    "best_epoch": record["epoch"]})
        save_checkpoint(run.model, card, run.out_dir, half=recipe.save_half)
    write_history(run.out_dir, state.history)
    plot_learning_curve(run.out_dir, state.history, recipe.name)


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
