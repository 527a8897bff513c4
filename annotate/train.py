"""Fine-tune a Spectromer model from a recipe (YAML): data, backbone, optimiser, epochs.

Training data come from simulated spectra built from the template library (`data.simulate`) or
from a spectra store whose `/labels` group holds the labels (`data.store`). Regression targets are
normalised (saved in the checkpoint), rows without a label are masked out of that task's loss,
and the split is by object, seeded, and stored with the checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import CLASS_NAMES, __version__
from .checkpoint import LabelNorm, ModelCard, save_checkpoint
from .errors import ConfigError
from .grid import WavelengthGrid
from .model import BACKBONES, STELLAR_LABELS, build_model, check_backbone_name
from .render import RenderSettings, render, to_model_input


@dataclass(frozen=True)
class Recipe:
    """A training recipe. `data` is {'simulate': {...}} or {'store': path}; see training/README.md."""

    name: str
    data: dict
    backbone: str = "vit-tiny"
    pretrained: bool = True
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    loss_weights: dict = field(default_factory=lambda: {"class": 1.0, "z": 1.0, "stellar": 1.0})
    render: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    image_mean: float = 0.5
    image_std: float = 0.5
    num_workers: int = 0
    device: str = "auto"
    precision: str = "fp32"
    save_half: bool = False
    max_steps: int | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        from .yamlconfig import read_fields

        recipe = cls(**read_fields(path, cls, "recipe"))
        recipe.validate()
        return recipe

    def validate(self) -> None:
        check_backbone_name(self.backbone)
        sources = set(self.data) - {"images"}
        if sources - {"simulate", "store"} or len(sources) != 1 or ("images" in self.data and "store" not in self.data):
            raise ConfigError("recipe 'data' must have exactly one of: simulate, store "
                              "(and, with store, optionally images: an image store made by annotate render)")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError("precision must be fp32 or bf16")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        RenderSettings.from_dict(self.render)


# ------------------------------------------------------------------------------------------------
# data

def load_training_data(recipe: Recipe, grid: WavelengthGrid) -> dict:
    """flux, mask (n, n_pix) and labels class (n,) str, z, teff, logg, feh, plus 'object' ids."""
    if "simulate" in recipe.data:
        from .simulate.dataset import simulate_training_set

        return simulate_training_set(grid=grid, **recipe.data["simulate"])
    from .store import open_store, read_labels, read_rows

    info = open_store(recipe.data["store"])
    if info.grid != grid:
        raise ConfigError(f"store grid {info.grid} differs from the recipe grid {grid}")
    rows = read_rows(info.path, 0, info.n_rows)
    labels = read_labels(info.path)
    ok = rows["status"] == 1
    data = {"flux": rows["flux"][ok], "mask": rows["mask"][ok]}
    for key in ("class", "z", "teff", "logg", "feh"):
        if key not in labels:
            raise ConfigError(f"store {info.path} has no /labels/{key}")
        data[key] = np.asarray(labels[key])[ok]
    data["object"] = np.asarray(labels.get("object", np.arange(info.n_rows)))[ok]
    data["split"] = np.asarray(labels["split"])[ok] if "split" in labels else None
    if "images" in recipe.data:
        data["images_path"] = str(recipe.data["images"])
        data["image_rows"] = np.flatnonzero(ok)
        _check_image_store(data["images_path"], info.path, info.n_rows, data["image_rows"])
    return data


def image_store_settings(path: str | Path) -> RenderSettings:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return RenderSettings.from_dict(json.loads(h5.attrs["render"]))
    except (OSError, KeyError) as exc:
        raise ConfigError(f"{path}: not an image store made by annotate render ({exc})") from None


def _check_image_store(path: str, spectra_store: str | Path, n_rows: int, rows: np.ndarray) -> None:
    import h5py

    from .errors import StoreError
    from .images import check_image_store

    image_store_settings(path)
    try:
        check_image_store(Path(path), n_rows, Path(spectra_store))
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    with h5py.File(path, "r") as h5:
        done = h5["done"][()]
    if not done[rows].all():
        raise ConfigError(f"{path}: {int((~done[rows]).sum())} rows are not rendered yet; run annotate render again")


def split_by_object(objects: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """(n,) array of 'train'/'val'/'test', all rows of one object in the same split (seeded)."""
    unique = np.unique(objects)
    # a stream of its own: default_rng(seed) would repeat the simulator's draws for the same seed
    rng = np.random.default_rng([seed, 0x53504C54])
    draw = rng.random(len(unique))
    assign = np.where(draw < test_fraction, "test", np.where(draw < test_fraction + val_fraction, "val", "train"))
    lookup = dict(zip(unique.tolist(), assign))
    return np.array([lookup[o] for o in objects.tolist()])


def fit_label_norm(data: dict, train: np.ndarray) -> dict:
    norms = {}
    z = np.log10(1.0 + data["z"][train])
    norms["z"] = LabelNorm(float(np.mean(z)), float(np.std(z) or 1.0), "log1p10")
    for key in STELLAR_LABELS:
        values = data[key][train]
        values = values[np.isfinite(values)]
        norms[key] = LabelNorm(float(values.mean()) if len(values) else 0.0,
                               float(values.std()) if len(values) > 1 and values.std() > 0 else 1.0)
    return norms


class RenderedBatches(torch.utils.data.Dataset):
    """Map-style dataset indexed by a list of row indices: renders the whole batch at once, or
    reads it from an image store when `data` names one (images_path, image_rows)."""

    def __init__(self, data: dict, targets: dict, settings: RenderSettings, mean: float, std: float):
        self.data, self.targets, self.settings, self.mean, self.std = data, targets, settings, mean, std
        self._images = None  # h5py dataset, opened in the process that reads (DataLoader workers)

    def __len__(self):
        return len(self.data["flux"])

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def _stored_images(self, indices: np.ndarray) -> np.ndarray:
        if self._images is None:
            import h5py

            self._images = h5py.File(self.data["images_path"], "r")["images"]
        return self._images[self.data["image_rows"][indices]]  # increasing rows, as h5py needs

    def __getitem__(self, indices):
        indices = np.sort(np.asarray(indices))
        if self.data.get("images_path"):
            images = self._stored_images(indices)
        else:
            images = render(self.data["flux"][indices], self.data["mask"][indices], self.settings)
        batch = {"pixels": to_model_input(images, self.mean, self.std)}
        for key, values in self.targets.items():
            batch[key] = torch.from_numpy(values[indices])
        return batch


def encode_targets(data: dict, norms: dict) -> dict:
    class_index = np.array([CLASS_NAMES.index(c) if c in CLASS_NAMES else -100 for c in data["class"]], np.int64)
    stellar = np.stack([norms[k].encode(data[k]) for k in STELLAR_LABELS], axis=1).astype(np.float32)
    is_star = (class_index == CLASS_NAMES.index("STAR"))[:, None]
    stellar_mask = np.isfinite(stellar) & is_star
    z = norms["z"].encode(data["z"]).astype(np.float32)
    return {"class": class_index, "z": np.nan_to_num(z), "z_mask": np.isfinite(z),
            "stellar": np.nan_to_num(stellar), "stellar_mask": stellar_mask}


# ------------------------------------------------------------------------------------------------
# losses and metrics

def multitask_loss(out: dict, batch: dict, weights: dict) -> tuple[torch.Tensor, dict]:
    """Cross-entropy (class) + Gaussian NLL (z mean and σ) + masked MSE (stellar, stars only)."""
    parts = {"class": nn.functional.cross_entropy(out["class_logits"].float(), batch["class"], ignore_index=-100)}
    z_mask = batch["z_mask"]
    if z_mask.any():
        mu, log_sigma = out["z_mean"].float()[z_mask], out["z_log_sigma"].float()[z_mask]
        parts["z"] = (0.5 * ((batch["z"][z_mask] - mu) / log_sigma.exp()) ** 2 + log_sigma).mean()
    else:
        parts["z"] = out["z_mean"].sum() * 0.0
    s_mask = batch["stellar_mask"]
    if s_mask.any():
        parts["stellar"] = ((out["stellar"].float() - batch["stellar"]) ** 2)[s_mask].mean()
    else:
        parts["stellar"] = out["stellar"].sum() * 0.0
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def evaluate(model, loader, norms: dict, device, autocast) -> dict:
    """Validation/test metrics in physical units: accuracy, z R², NMAD, η, CRPS, stellar R²."""
    from .metrics import accuracy, gaussian_crps, nmad, outlier_fraction, r2_score

    model.eval()
    rows = {k: [] for k in ("cls_true", "cls_pred", "z_true", "z_mu", "z_sigma", "stellar_true", "stellar_pred",
                            "stellar_mask", "loss")}
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                out = model(batch["pixels"])
            loss, _ = multitask_loss(out, batch, {})
            rows["loss"].append(float(loss.detach()))
            rows["cls_true"].append(batch["class"].cpu().numpy())
            rows["cls_pred"].append(out["class_logits"].float().argmax(1).cpu().numpy())
            rows["z_true"].append(batch["z"].cpu().numpy())
            rows["z_mu"].append(out["z_mean"].float().cpu().numpy())
            rows["z_sigma"].append(out["z_log_sigma"].float().exp().cpu().numpy())
            rows["stellar_true"].append(batch["stellar"].cpu().numpy())
            rows["stellar_pred"].append(out["stellar"].float().cpu().numpy())
            rows["stellar_mask"].append(batch["stellar_mask"].cpu().numpy())
    model.train()
    cat = {k: np.concatenate(v) if k != "loss" else np.array(v) for k, v in rows.items()}
    z_norm = norms["z"]
    z_true, z_pred = z_norm.decode(cat["z_true"].astype(float)), z_norm.decode(cat["z_mu"].astype(float))
    z_sigma = z_norm.decode_sigma(cat["z_mu"].astype(float), cat["z_sigma"].astype(float))
    metrics = {"loss": float(cat["loss"].mean()), "n": int(len(z_true)),
               "class_accuracy": accuracy(cat["cls_true"], cat["cls_pred"]),
               "z_r2": r2_score(z_true, z_pred), "z_nmad": nmad(z_true, z_pred),
               "z_eta": outlier_fraction(z_true, z_pred), "z_crps": gaussian_crps(z_true, z_pred, z_sigma)}
    for i, key in enumerate(STELLAR_LABELS):
        m = cat["stellar_mask"][:, i]
        true = norms[key].decode(cat["stellar_true"][m, i].astype(float))
        pred = norms[key].decode(cat["stellar_pred"][m, i].astype(float))
        metrics[f"{key}_r2"], metrics[f"{key}_n"] = r2_score(true, pred), int(m.sum())
    return metrics


# ------------------------------------------------------------------------------------------------
# the loop

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(recipe: Recipe, out_dir: str | Path, log=print) -> dict:
    """Train per `recipe`; write the best checkpoint (lowest validation loss) to `out_dir` with
    metrics.json (per-epoch log) and the held-out test metrics in the checkpoint's config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    grid = WavelengthGrid(**recipe.grid)
    settings = RenderSettings.from_dict(recipe.render)
    if "images" in recipe.data:
        stored = image_store_settings(recipe.data["images"])
        if recipe.render and stored != settings:
            raise ConfigError(f"recipe render settings differ from those of the image store {recipe.data['images']}")
        settings = stored
    settings.check_grid(grid.n_pix)
    device = pick_device(recipe.device)
    started = time.time()
    data = load_training_data(recipe, grid)
    split = data.get("split")
    if split is None:
        split = split_by_object(np.asarray(data["object"]), recipe.val_fraction, recipe.test_fraction, recipe.seed)
    train_rows = split == "train"
    norms = fit_label_norm(data, train_rows)
    targets = encode_targets(data, norms)
    log(f"data: {train_rows.sum()} train, {(split == 'val').sum()} val, {(split == 'test').sum()} test rows "
        f"({time.time() - started:.0f} s)")

    dataset = RenderedBatches(data, targets, settings, recipe.image_mean, recipe.image_std)
    generator = torch.Generator().manual_seed(recipe.seed)

    def loader(rows: np.ndarray, shuffle: bool):
        indices = np.flatnonzero(rows).tolist()
        sampler = torch.utils.data.SubsetRandomSampler(indices, generator=generator) if shuffle else indices
        batches = torch.utils.data.BatchSampler(sampler, recipe.batch_size, drop_last=False)
        return torch.utils.data.DataLoader(dataset, sampler=batches, batch_size=None, num_workers=recipe.num_workers,
                                           pin_memory=device.type == "cuda",
                                           persistent_workers=recipe.num_workers > 0)

    train_loader, val_loader = loader(train_rows, True), loader(split == "val", False)
    test_loader = loader(split == "test", False)
    model = build_model(recipe.backbone, settings.image_size, pretrained=recipe.pretrained).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    total_steps = recipe.epochs * len(train_loader)
    if recipe.max_steps:
        total_steps = min(total_steps, recipe.max_steps)
    warmup = max(1, int(recipe.warmup_fraction * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0))))
    use_bf16 = recipe.precision == "bf16" and device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    card_base = dict(backbone=backbone_dict(model.backbone.config), render=settings, grid=grid, label_norm=norms,
                     name=recipe.name)
    history, best, step = [], None, 0
    model.train()
    for epoch in range(recipe.epochs):
        epoch_start, losses = time.time(), []
        for batch in train_loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast():
                out = model(batch["pixels"])
            loss, _ = multitask_loss(out, batch, recipe.loss_weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            step += 1
            if recipe.max_steps and step >= recipe.max_steps:
                break
        val = evaluate(model, val_loader, norms, device, autocast)
        record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)), "seconds": time.time() - epoch_start,
                  **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
        if best is None or val["loss"] < best["val_loss"]:
            best = record
            card = ModelCard(**card_base, training={"recipe": asdict(recipe), "best_epoch": epoch + 1})
            save_checkpoint(model, card, out_dir, half=recipe.save_half)
        (out_dir / "metrics.json").write_text(json.dumps(history, indent=1) + "\n")
        if recipe.max_steps and step >= recipe.max_steps:
            break
    # held-out test metrics of the best checkpoint
    from .checkpoint import load_checkpoint

    best_model, card = load_checkpoint(out_dir, str(device))
    test, held_out = held_out_metrics(best_model, recipe, data, split, norms, settings, device, autocast)
    summary = {"best_epoch": best["epoch"], "test": test, "held_out_stars": held_out, "device": str(device),
               "seconds": round(time.time() - started, 1), "annotate_version": __version__,
               "split_counts": {s: int((split == s).sum()) for s in ("train", "val", "test")}}
    card = ModelCard(**card_base, training={"recipe": asdict(recipe), **summary})
    save_checkpoint(best_model, card, out_dir, half=recipe.save_half)
    log(json.dumps({"test": test, "held_out_stars": held_out}))
    return summary


def held_out_metrics(model, recipe: Recipe, data: dict, split: np.ndarray, norms: dict, settings: RenderSettings,
                     device, autocast) -> tuple[dict, dict]:
    """Metrics on the test split and on the spectra of held-out stars (empty dicts where absent)."""

    def batches(part: dict, rows: np.ndarray):
        dataset = RenderedBatches(part, encode_targets(part, norms), settings, recipe.image_mean, recipe.image_std)
        return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=torch.utils.data.BatchSampler(
            np.flatnonzero(rows).tolist(), recipe.batch_size, False))

    test = evaluate(model, batches(data, split == "test"), norms, device, autocast) if (split == "test").any() else {}
    extra = data.get("held_out_stars")
    held_out = {}
    if extra is not None:
        held_out = evaluate(model, batches(extra, np.ones(len(extra["flux"]), bool)), norms, device, autocast)
    return test, held_out


def evaluate_checkpoint(recipe: Recipe, folder: str | Path, log=print) -> dict:
    """Recompute the held-out metrics of the checkpoint in `folder`, trained with `recipe` (same
    data, same split, same label normalisation), and store them in its card; the weights are
    untouched. For when the metric definitions change after training."""
    from .checkpoint import load_checkpoint, write_card

    device = pick_device(recipe.device)
    model, card = load_checkpoint(folder, str(device))
    data = load_training_data(recipe, card.grid)
    split = data.get("split")
    if split is None:
        split = split_by_object(np.asarray(data["object"]), recipe.val_fraction, recipe.test_fraction, recipe.seed)
    use_bf16 = recipe.precision == "bf16" and device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    test, held_out = held_out_metrics(model, recipe, data, split, card.label_norm, card.render, device, autocast)
    training = {**card.training, "test": test, "held_out_stars": held_out, "annotate_version": __version__}
    write_card(folder, ModelCard(**{**card.__dict__, "training": training}))
    log(json.dumps({"test": test, "held_out_stars": held_out}))
    return training


def backbone_dict(config) -> dict:
    """The ViT config fields needed to rebuild the backbone (portable across transformers versions)."""
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias")
    return {k: getattr(config, k) for k in keys}
