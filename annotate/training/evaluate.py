"""Metrics of a model on rows of the training data: per epoch on the validation split, and at the
end on the held-out sets, with the stellar baseline beside the ViT."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..blockpatch import model_outputs, supports_blocks
from ..checkpoint import ModelCard
from ..grid import WavelengthGrid
from ..render import RenderSettings
from .data import RenderedBatches, batch_loader, encode_targets, load_training_data, split_by_object


from ..tasks import TASKS as REGISTRY
from ..tasks import stellar_physical
from .loss import multitask_loss
from .ranks import pick_device
from .recipe import Recipe, TASKS


def predict_rows(model, loader, device, autocast, tasks: tuple = TASKS, settings: RenderSettings | None = None) -> dict:
    """Per-row targets and outputs over `loader`, in its order (normalised units) and the losses;
    `settings`: the 2D Maps' where its batches hold block values (`blockpatch.model_outputs`)."""
    model.eval()
    rows = {k: [] for k in ("cls_true", "cls_pred", "z_true", "z_mask", "z_mu", "z_sigma", "stellar_true",
                            "stellar_pred", "stellar_mask", "loss")}
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                out = model_outputs(model, batch, settings)
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


def evaluate(model, loader, norms: dict, device, autocast, tasks: tuple = TASKS, rows: dict | None = None,
             settings: RenderSettings | None = None) -> dict:
    """Metrics in physical units over `loader` (or over `rows` from `predict_rows`): loss, and each
    task's own (`annotate.tasks`: accuracy / z R², NMAD, η, CRPS / Teff, logg, [Fe/H] R², with the
    number of labelled rows each used)."""
    cat = predict_rows(model, loader, device, autocast, tasks, settings) if rows is None else rows
    metrics = {"loss": float(cat["loss"].mean()), "n": int(len(cat["cls_true"]))}
    for name in tasks:
        metrics.update(REGISTRY[name].metrics(cat, norms))
    return metrics


def validation_score(metrics: dict, tasks: tuple) -> float:
    """Higher is better: the mean over tasks of class accuracy, z R² and the mean stellar R²."""
    parts = [REGISTRY[name].score(metrics) for name in tasks]
    finite = [p for p in parts if math.isfinite(p)]
    return sum(finite) / len(finite) if finite else -math.inf


def part_batches(model, recipe: Recipe, part: dict, norms: dict, settings: RenderSettings, rows: np.ndarray | None = None):
    """Batches of the rows of a simulated set `part` (a bool selection; None: all), rendered and
    normalised as `model` was trained (`recipe`, its card's label norms and render settings)."""
    dataset = RenderedBatches(part, encode_targets(part, norms), settings, recipe.image_mean, recipe.image_std,
                              blocks=supports_blocks(model, settings))
    indices = np.arange(len(part["flux"])) if rows is None else np.flatnonzero(rows)
    return batch_loader(dataset, [indices[i:i + recipe.batch_size] for i in range(0, len(indices), recipe.batch_size)])


def held_out_metrics(model, recipe: Recipe, data: dict, split: np.ndarray, norms: dict, settings: RenderSettings,
                     device, autocast) -> tuple[dict, dict, dict]:
    """Metrics on the test split, on the spectra of held-out stars (with RMSE by S/N next to the
    k-nearest-templates baseline, `stellarbaseline`) and on the robustness sets (empty where
    absent)."""

    def everything(part: dict):
        return part_batches(model, recipe, part, norms, settings)

    tasks = tuple(recipe.tasks)
    test = evaluate(model, part_batches(model, recipe, data, norms, settings, split == "test"), norms, device, autocast,
                    tasks, settings=settings) if (split == "test").any() else {}
    extra = data.get("held_out_stars")
    held_out = {}
    if extra is not None:
        rows = predict_rows(model, everything(extra), device, autocast, tasks, settings)
        held_out = evaluate(model, None, norms, device, autocast, tasks, rows=rows)
        if "stellar" in tasks and "train_star_indices" in data and "snr" in extra:
            held_out["stellar"] = stellar_comparison(rows, norms, extra, data["train_star_indices"], WavelengthGrid(**recipe.grid))
    robustness = {name: evaluate(model, everything(part), norms, device, autocast, tasks, settings=settings)
                  for name, part in data.get("robustness", {}).items()}
    return test, held_out, robustness


def stellar_comparison(rows: dict, norms: dict, stars: dict, train_star_indices: np.ndarray, grid: WavelengthGrid) -> dict:
    """The ViT's and the k-nearest-templates baseline's Teff / log g / [Fe/H] on held-out stars, by
    S/N: {'vit': report, 'baseline': report} (`stellarbaseline.stellar_report`)."""
    from .. import stellarbaseline
    from ..simulate.templates import load_library

    true, vit = stellar_physical(rows, norms)
    templates, usable, labels = stellarbaseline.template_stars(load_library(), np.asarray(train_star_indices), grid)
    baseline = stellarbaseline.nearest_templates(stars["flux"], stars["ivar"], templates, usable, labels)
    snr = np.asarray(stars["snr"], float)
    return {"vit": stellarbaseline.stellar_report(true, vit, snr),
            "baseline": stellarbaseline.stellar_report(true, baseline, snr),
            "baseline_method": f"mean labels of the {stellarbaseline.K} training stars nearest by χ²"}


# what makes a recipe's held-out objects and its images: a checkpoint is evaluated only with the
# recipe whose values of these it was trained with (the simulation's worker count changes nothing)
SPLIT_KEYS = ("data", "val_fraction", "test_fraction", "seed", "render", "grid", "image_mean", "image_std")


def check_evaluable(recipe: Recipe, folder: Path, trained: dict) -> None:
    """ConfigError where `folder` is a training run that has not finished, or its checkpoint was
    trained (its card's `recipe`, `trained`) with other data, split, rendering or grid than
    `recipe`: its 'held-out' objects would then include ones it trained on."""
    if (folder / "state").is_dir() and not (folder / "training.json").is_file():
        raise ConfigError(f"{folder} is a training run that has not finished (its state/ is there, its training.json "
                          "is not): finish it with annotate train first")

    def key(name: str, recipe_json: dict):
        value = recipe_json.get(name)
        if name == "data" and isinstance(value, dict):
            value = {**value, **({"simulate": {k: v for k, v in value["simulate"].items() if k != "workers"}}
                                 if isinstance(value.get("simulate"), dict) else {})}
        return value

    current = recipe.to_json()
    changed = [name for name in SPLIT_KEYS if name in trained and key(name, trained) != key(name, current)]
    if changed:
        raise ConfigError(f"{folder} was trained with another {', '.join(changed)} than recipe {recipe.name}'s: its "
                          "held-out objects would not be the ones it never saw; evaluate it with the recipe it was "
                          "trained with")


def evaluate_checkpoint(recipe: Recipe, folder: str | Path, log=print) -> dict:
    """Recompute the held-out metrics of the checkpoint in `folder`, trained with `recipe` (same
    data, same split, same label normalisation: `check_evaluable`), and store them in its card;
    the weights are untouched. For when the metric definitions change after training."""
    from ..checkpoint import load_checkpoint, write_card

    device = pick_device(recipe.device)
    model, card = load_checkpoint(folder, str(device))
    check_evaluable(recipe, Path(folder), card.training.get("recipe") or {})
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
    from .log import summary_lines

    for line in summary_lines(training):
        log(line)
    return training
