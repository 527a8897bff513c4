"""A training recipe (YAML): data, backbone, tasks, optimiser, epochs, checked whole when it is read."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..model import ZHead, check_backbone_name
from ..render import RenderSettings
from ..tasks import TASK_NAMES


TASKS = TASK_NAMES  # annotate.tasks: class, z, stellar


# recipe fields that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = ("device", "num_workers", "checkpoint_every", "checkpoint_minutes", "render_on")
RENDER_ON = ("auto", "cpu", "device")
FLOAT_KEYS = ("lr", "head_lr", "weight_decay", "warmup_fraction", "val_fraction", "test_fraction", "image_mean",
              "image_std", "checkpoint_minutes", "ema")


@dataclass(frozen=True)
class Recipe:
    """A training recipe; every field is documented in training/README.md."""

    name: str
    data: dict
    backbone: str = "vit-tiny"
    pretrained: bool = True
    init_from: str | None = None
    tasks: tuple = TASKS
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    loss_weights: dict = field(default_factory=lambda: {"class": 1.0, "z": 1.0, "stellar": 1.0})
    select_by: str = "score"
    z_head: dict = field(default_factory=dict)
    render: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    image_mean: float = 0.5
    image_std: float = 0.5
    num_workers: int = 0
    render_on: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    save_half: bool = False
    max_steps: int | None = None
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    ema: float | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        from ..yamlconfig import read_fields

        raw = read_fields(path, cls, "recipe")
        for key in FLOAT_KEYS:  # YAML 1.1 reads 1e-4 (no dot) as a string
            if isinstance(raw.get(key), str):
                try:
                    raw[key] = float(raw[key])
                except ValueError:
                    raise ConfigError(f"{path}: {key} must be a number, got {raw[key]!r}") from None
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
        if ZHead.from_dict(self.z_head).sigma_scale:
            raise ConfigError("recipe z_head: sigma_scale is a trained checkpoint's calibration "
                              "(training/calibrate_z_sigma.py), not a recipe's; leave it out")
        if self.head_lr is not None and not (isinstance(self.head_lr, (int, float)) and 0 < self.head_lr < 1):
            raise ConfigError(f"head_lr must be a learning rate between 0 and 1, got {self.head_lr!r}")
        if self.ema is not None and not (isinstance(self.ema, (int, float)) and not isinstance(self.ema, bool)
                                         and 0 < self.ema < 1):
            raise ConfigError(f"ema must be a decay between 0 and 1 (e.g. 0.999), got {self.ema!r}")
        if self.select_by not in ("score", "loss"):
            raise ConfigError("select_by must be score (validation accuracy / R²) or loss")
        if self.render_on not in RENDER_ON:
            raise ConfigError(f"render_on must be one of {', '.join(RENDER_ON)}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError("precision must be fp32 or bf16")
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 0:
            raise ConfigError("epochs and batch_size must be >= 1, checkpoint_every >= 0")
        RenderSettings.from_dict(self.render)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))
