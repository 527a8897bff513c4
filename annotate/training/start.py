"""Where a training run starts: its rendering settings, the checkpoint of a warm start
(`init_from`), and the saved state of an interrupted run of the same recipe."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..grid import WavelengthGrid
from ..render import RenderSettings
from .data import image_store_settings
from .recipe import RESUMABLE_CHANGES, Recipe


def recipe_record(recipe: Recipe) -> dict:
    """The recipe as a run's saved state records it: with `init_from`, also the SHA-256 of the
    weights it starts from, so that a resumption after that checkpoint changed is refused."""
    record = recipe.to_json()
    if recipe.init_from:
        from ..checkpoint import model_folder, weights_sha256

        record["init_from_sha256"] = weights_sha256(model_folder(recipe.init_from))
    return record


def check_resumable(saved: dict, current: dict, folder: Path) -> None:
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        raise ConfigError(f"{folder} holds an interrupted run of a different recipe ({', '.join(changed)} changed); "
                          "train into a new --out folder, or delete its state/ to start over")


def start_from(recipe: Recipe, settings: RenderSettings, grid: WavelengthGrid) -> tuple[dict | None, dict | None, bool]:
    """(weights, label normalisation, whether the z head starts anew) of the checkpoint the recipe
    starts from (`init_from`), or (None, None, False). Its backbone, rendering and grid must be
    the recipe's; its label normalisation is kept, so that its heads go on meaning what they
    meant. A recipe whose `z_head` differs from the checkpoint's takes everything but that head."""
    if not recipe.init_from:
        return None, None, False
    from ..checkpoint import backbone_dict, load_checkpoint
    from ..model import ZHead, vit_config

    model, card = load_checkpoint(recipe.init_from, "cpu")
    wanted = backbone_dict(vit_config(recipe.backbone, settings.image_size))
    trained = card.training.get("recipe", {})
    scale = (trained.get("image_mean", recipe.image_mean), trained.get("image_std", recipe.image_std))
    same = {"backbone": card.backbone == wanted, "render settings": card.render == settings, "grid": card.grid == grid,
            "image_mean/image_std": scale == (recipe.image_mean, recipe.image_std)}
    if not all(same.values()):
        what = [name for name, ok in same.items() if not ok]
        raise ConfigError(f"init_from {recipe.init_from}: its {', '.join(what)} differ from the recipe's; "
                          "a warm start keeps them")
    weights = model.state_dict()
    new_z_head = ZHead.from_dict(card.z_head).uncalibrated() != ZHead.from_dict(recipe.z_head).uncalibrated()
    if new_z_head:
        weights = {name: value for name, value in weights.items() if not name.startswith("z_head.")}
    return weights, card.label_norm, new_z_head


def render_settings(recipe: Recipe, grid: WavelengthGrid) -> RenderSettings:
    """The recipe's rendering, or the image store's (which a recipe may not contradict)."""
    settings = RenderSettings.from_dict(recipe.render)
    if "images" in recipe.data:
        stored = image_store_settings(recipe.data["images"])
        if recipe.render and stored != settings:
            raise ConfigError(f"recipe render settings differ from those of the image store {recipe.data['images']}")
        settings = stored
    settings.check_grid(grid.n_pix)
    return settings


def resumable_state(recipe: Recipe, out_dir: Path, ranks) -> Path | None:
    """The newest saved state of an interrupted run of this recipe with as many processes, or None."""
    from .state import latest_state, read_state_json

    resume_from = latest_state(out_dir)
    if resume_from is not None:
        saved = read_state_json(resume_from)
        check_resumable(saved["recipe"], recipe_record(recipe), out_dir)
        if saved.get("world_size", ranks.world_size) != ranks.world_size:  # states of older versions lack it
            raise ConfigError(f"{out_dir} holds a run interrupted with {saved['world_size']} processes; resume it "
                              f"with as many (now {ranks.world_size}): the data order depends on them")
    return resume_from
