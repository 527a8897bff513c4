"""Fine-tune a Spectromer model from a recipe (YAML): data, backbone, tasks, optimiser, epochs.

The loop is resumable: every `checkpoint_every` steps (and every `checkpoint_minutes`, and at the
end of each epoch) the whole training state is saved under `<out>/state/` (see trainstate.py); a
re-run of the same recipe into the same folder continues from the newest state, with the same
batches in the same order, so an interrupted run ends where an uninterrupted one would (up to
floating-point nondeterminism on GPUs). Under torchrun or a SLURM job of several tasks it runs
DistributedDataParallel, one process per GPU. The best epoch (by validation score, or loss) is
the checkpoint in `<out>`; metrics.json / metrics.csv / learning-curve.png log every epoch.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import ModelCard, save_checkpoint
from .errors import ConfigError
from .grid import WavelengthGrid
from .model import STELLAR_LABELS, build_model, check_backbone_name
from .render import RenderSettings
from .traindata import (RenderedBatches, batch_loader, encode_targets, epoch_batches, fit_label_norm,
                        image_store_settings, load_training_data, split_by_object)

TASKS = ("class", "z", "stellar")
# recipe fields that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = ("device", "num_workers", "checkpoint_every", "checkpoint_minutes")
DISTRIBUTED_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class Recipe:
    """A training recipe; every field is documented in training/README.md."""

    name: str
    data: dict
    backbone: str = "vit-tiny"
    pretrained: bool = True
    tasks: tuple = TASKS
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    loss_weights: dict = field(default_factory=lambda: {"class": 1.0, "z": 1.0, "stellar": 1.0})
    select_by: str = "score"
    render: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    image_mean: float = 0.5
    image_std: float = 0.5
    num_workers: int = 0
    device: str = "auto"
    precision: str = "fp32"
    save_half: bool = False
    max_steps: int | None = None
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        from .yamlconfig import read_fields

        raw = read_fields(path, cls, "recipe")
        if "tasks" in raw:
            raw["tasks"] = tuple(raw["tasks"]) if isinstance(raw["tasks"], (list, tuple)) else (raw["tasks"],)
        recipe = cls(**raw)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        check_backbone_name(self.backbone)
        sources = {"catalog"} if "catalog" in self.data else set(self.data) & {"simulate", "store"}
        if len(sources) != 1 or ("images" in self.data and set(self.data) - {"store", "images"}) \
                or ("catalog" in self.data and "simulate" in self.data):
            raise ConfigError("recipe 'data' must have exactly one of: simulate, store, catalog "
                              "(and, with store alone, optionally images: an image store made by annotate render)")
        if "simulate" in self.data and len(self.data) != 1:
            raise ConfigError("recipe 'data.simulate' takes no other data keys")
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ConfigError(f"recipe tasks must be a non-empty list of {', '.join(TASKS)}")
        if self.select_by not in ("score", "loss"):
            raise ConfigError("select_by must be score (validation accuracy / R²) or loss")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError("precision must be fp32 or bf16")
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 0:
            raise ConfigError("epochs and batch_size must be >= 1, checkpoint_every >= 0")
        RenderSettings.from_dict(self.render)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# ------------------------------------------------------------------------------------------------
# losses and metrics

def multitask_loss(out: dict, batch: dict, weights: dict, tasks: tuple = TASKS) -> tuple[torch.Tensor, dict]:
    """Cross-entropy (class) + Gaussian NLL (z mean and σ) + masked MSE (stellar, stars only),
    over `tasks`; a task with no labelled row in the batch adds zero."""
    parts = {}
    if "class" in tasks:
        labelled = batch["class"] != -100
        parts["class"] = (nn.functional.cross_entropy(out["class_logits"].float(), batch["class"], ignore_index=-100)
                          if labelled.any() else out["class_logits"].sum() * 0.0)
    if "z" in tasks:
        z_mask = batch["z_mask"]
        if z_mask.any():
            mu, log_sigma = out["z_mean"].float()[z_mask], out["z_log_sigma"].float()[z_mask]
            parts["z"] = (0.5 * ((batch["z"][z_mask] - mu) / log_sigma.exp()) ** 2 + log_sigma).mean()
        else:
            parts["z"] = (out["z_mean"].sum() + out["z_log_sigma"].sum()) * 0.0
    if "stellar" in tasks:
        s_mask = batch["stellar_mask"]
        parts["stellar"] = (((out["stellar"].float() - batch["stellar"]) ** 2)[s_mask].mean() if s_mask.any()
                            else out["stellar"].sum() * 0.0)
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def predict_rows(model, loader, device, autocast, tasks: tuple = TASKS) -> dict:
    """Per-row targets and outputs over `loader`, in its order (normalised units) and the losses."""
    model.eval()
    rows = {k: [] for k in ("cls_true", "cls_pred", "z_true", "z_mask", "z_mu", "z_sigma", "stellar_true",
                            "stellar_pred", "stellar_mask", "loss")}
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                out = model(batch["pixels"])
            loss, _ = multitask_loss(out, batch, {}, tasks)
            rows["loss"].append(float(loss.detach()))
            rows["cls_true"].append(batch["class"].cpu().numpy())
            rows["cls_pred"].append(out["class_logits"].float().argmax(1).cpu().numpy())
            rows["z_true"].append(batch["z"].cpu().numpy())
            rows["z_mask"].append(batch["z_mask"].cpu().numpy())
            rows["z_mu"].append(out["z_mean"].float().cpu().numpy())
            rows["z_sigma"].append(out["z_log_sigma"].float().exp().cpu().numpy())
            rows["stellar_true"].append(batch["stellar"].cpu().numpy())
            rows["stellar_pred"].append(out["stellar"].float().cpu().numpy())
            rows["stellar_mask"].append(batch["stellar_mask"].cpu().numpy())
    model.train()
    return {k: np.concatenate(v) if k != "loss" else np.array(v) for k, v in rows.items()}


def stellar_physical(rows: dict, norms: dict) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) (n, 3) Teff, log g, [Fe/H] in physical units, NaN where unlabelled."""
    true = np.full(rows["stellar_true"].shape, np.nan)
    pred = np.full(rows["stellar_pred"].shape, np.nan)
    for i, key in enumerate(STELLAR_LABELS):
        m = rows["stellar_mask"][:, i]
        true[m, i] = norms[key].decode(rows["stellar_true"][m, i].astype(float))
        pred[:, i] = norms[key].decode(rows["stellar_pred"][:, i].astype(float))
    return true, pred


def evaluate(model, loader, norms: dict, device, autocast, tasks: tuple = TASKS, rows: dict | None = None) -> dict:
    """Metrics in physical units over `loader` (or over `rows` from `predict_rows`): loss, and per
    task accuracy / z R², NMAD, η, CRPS / Teff, logg, [Fe/H] R² (and the number of labelled rows
    each used)."""
    from .metrics import accuracy, gaussian_crps, nmad, outlier_fraction, r2_score

    cat = predict_rows(model, loader, device, autocast, tasks) if rows is None else rows
    metrics = {"loss": float(cat["loss"].mean()), "n": int(len(cat["cls_true"]))}
    if "class" in tasks:
        labelled = cat["cls_true"] != -100
        metrics["class_accuracy"] = accuracy(cat["cls_true"][labelled], cat["cls_pred"][labelled])
        metrics["class_n"] = int(labelled.sum())
    if "z" in tasks:
        m, z_norm = cat["z_mask"], norms["z"]
        mu, sigma = cat["z_mu"][m].astype(float), cat["z_sigma"][m].astype(float)
        z_true, z_pred = z_norm.decode(cat["z_true"][m].astype(float)), z_norm.decode(mu)
        z_sigma = z_norm.decode_sigma(mu, sigma)
        metrics.update({"z_r2": r2_score(z_true, z_pred), "z_nmad": nmad(z_true, z_pred),
                        "z_eta": outlier_fraction(z_true, z_pred), "z_crps": gaussian_crps(z_true, z_pred, z_sigma),
                        "z_n": int(m.sum())})
    if "stellar" in tasks:
        true, pred = stellar_physical(cat, norms)
        for i, key in enumerate(STELLAR_LABELS):
            m = cat["stellar_mask"][:, i]
            metrics[f"{key}_r2"], metrics[f"{key}_n"] = r2_score(true[m, i], pred[m, i]), int(m.sum())
    return metrics


def validation_score(metrics: dict, tasks: tuple) -> float:
    """Higher is better: the mean over tasks of class accuracy, z R² and the mean stellar R²."""
    parts = []
    if "class" in tasks:
        parts.append(metrics.get("class_accuracy", math.nan))
    if "z" in tasks:
        parts.append(metrics.get("z_r2", math.nan))
    if "stellar" in tasks:
        stellar = [metrics.get(f"{k}_r2", math.nan) for k in STELLAR_LABELS]
        stellar = [v for v in stellar if math.isfinite(v)]
        parts.append(sum(stellar) / len(stellar) if stellar else math.nan)
    finite = [p for p in parts if math.isfinite(p)]
    return sum(finite) / len(finite) if finite else -math.inf


# ------------------------------------------------------------------------------------------------
# devices and processes

@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank (decisions taken from the clock must be the same on all)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start_ranks(device_name: str) -> Ranks:
    """Join the process group when WORLD_SIZE > 1 (torchrun, or a SLURM job of several tasks
    through submitit); each rank uses the GPU of its LOCAL_RANK, or the CPU with gloo."""
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(device=device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        # rank 0 alone evaluates each epoch and may first ingest a catalog's spectra: the others
        # wait at a barrier meanwhile, so the collective timeout must outlast both
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=DISTRIBUTED_TIMEOUT_S))
    return Ranks(torch.distributed.get_rank(), world, device)


# ------------------------------------------------------------------------------------------------
# the loop

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
    from .trainlog import epoch_line, plot_learning_curve, summary_lines, write_history
    from .trainstate import TrainState, latest_state, load_state, read_state_json, save_state

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
    from .checkpoint import backbone_dict

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

    from .checkpoint import load_checkpoint
    from .trainstate import STATE_DIR

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


def held_out_metrics(model, recipe: Recipe, data: dict, split: np.ndarray, norms: dict, settings: RenderSettings,
                     device, autocast) -> tuple[dict, dict, dict]:
    """Metrics on the test split, on the spectra of held-out stars (with RMSE by S/N next to the
    k-nearest-templates baseline, `stellarbaseline`) and on the robustness sets (empty where
    absent)."""

    def batches(part: dict, rows: np.ndarray):
        dataset = RenderedBatches(part, encode_targets(part, norms), settings, recipe.image_mean, recipe.image_std)
        indices = np.flatnonzero(rows)
        return batch_loader(dataset, [indices[i:i + recipe.batch_size] for i in range(0, len(indices), recipe.batch_size)])

    def everything(part: dict):
        return batches(part, np.ones(len(part["flux"]), bool))

    tasks = tuple(recipe.tasks)
    test = evaluate(model, batches(data, split == "test"), norms, device, autocast, tasks) \
        if (split == "test").any() else {}
    extra = data.get("held_out_stars")
    held_out = {}
    if extra is not None:
        rows = predict_rows(model, everything(extra), device, autocast, tasks)
        held_out = evaluate(model, None, norms, device, autocast, tasks, rows=rows)
        if "stellar" in tasks and "train_star_indices" in data and "snr" in extra:
            held_out["stellar"] = stellar_comparison(rows, norms, extra, data["train_star_indices"], WavelengthGrid(**recipe.grid))
    robustness = {name: evaluate(model, everything(part), norms, device, autocast, tasks)
                  for name, part in data.get("robustness", {}).items()}
    return test, held_out, robustness


def stellar_comparison(rows: dict, norms: dict, stars: dict, train_star_indices: np.ndarray, grid: WavelengthGrid) -> dict:
    """The ViT's and the k-nearest-templates baseline's Teff / log g / [Fe/H] on held-out stars, by
    S/N: {'vit': report, 'baseline': report} (`stellarbaseline.stellar_report`)."""
    from . import stellarbaseline
    from .simulate.templates import load_library

    true, vit = stellar_physical(rows, norms)
    templates, usable, labels = stellarbaseline.template_stars(load_library(), np.asarray(train_star_indices), grid)
    baseline = stellarbaseline.nearest_templates(stars["flux"], stars["ivar"], templates, usable, labels)
    snr = np.asarray(stars["snr"], float)
    return {"vit": stellarbaseline.stellar_report(true, vit, snr),
            "baseline": stellarbaseline.stellar_report(true, baseline, snr),
            "baseline_method": f"mean labels of the {stellarbaseline.K} training stars nearest by χ²"}


def evaluate_checkpoint(recipe: Recipe, folder: str | Path, log=print) -> dict:
    """Recompute the held-out metrics of the checkpoint in `folder`, trained with `recipe` (same
    data, same split, same label normalisation), and store them in its card; the weights are
    untouched. For when the metric definitions change after training."""
    from .checkpoint import load_checkpoint, write_card

    device = pick_device(recipe.device)
    model, card = load_checkpoint(folder, str(device))
    data = load_training_data(recipe.data, card.grid)
    split = data.get("split")
    if split is None:
        split = split_by_object(np.asarray(data["object"]), recipe.val_fraction, recipe.test_fraction, recipe.seed)
    use_bf16 = recipe.precision == "bf16" and device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    test, held_out, robustness = held_out_metrics(model, recipe, data, split, card.label_norm, card.render, device,
                                                  autocast)
    training = {**card.training, "test": test, "held_out_stars": held_out, "annotate_version": __version__,
                **({"robustness": robustness} if robustness else {})}
    write_card(folder, ModelCard(**{**card.__dict__, "training": training}))
    from .trainlog import summary_lines

    for line in summary_lines(training):
        log(line)
    return training
