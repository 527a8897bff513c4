"""Checkpoints: a folder holding `model.safetensors` and `config.json`. Never pickle.

config.json carries everything inference needs to reproduce training exactly: the backbone's
ViT config, the rendering settings, the wavelength grid, the label normalisation, the class
names, the package version, and the training summary (recipe, split, metrics).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import CLASS_NAMES, __version__
from .errors import CheckpointError, ConfigError
from .grid import WavelengthGrid
from .render import RenderSettings

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = SHIPPED_MODELS / "spectromer-tiny"


def model_folder(model: str | Path | None) -> Path:
    """The checkpoint folder a run uses: the default model for None, a folder that exists, or
    the name of a model shipped in annotate/models (e.g. `spectromer-medium`)."""
    if model is None or str(model) == "":
        return DEFAULT_MODEL
    path = Path(model)
    if not path.exists() and path.name == str(model) and (SHIPPED_MODELS / path.name).is_dir():
        return SHIPPED_MODELS / path.name
    return path


@dataclass(frozen=True)
class LabelNorm:
    """Regression targets are trained as (transform(value) - mean) / std.

    transform 'log1p10' is log10(1 + value) (redshift); 'identity' otherwise.
    """

    mean: float
    std: float
    transform: str = "identity"

    def encode(self, value):
        value = np.log10(1.0 + value) if self.transform == "log1p10" else value
        return (value - self.mean) / self.std

    def decode(self, encoded):
        value = encoded * self.std + self.mean
        return 10.0**value - 1.0 if self.transform == "log1p10" else value

    def decode_sigma(self, encoded_mean, encoded_sigma):
        """σ in physical units from σ in the normalised space (delta method)."""
        sigma = encoded_sigma * self.std
        if self.transform == "log1p10":
            return np.log(10.0) * (1.0 + self.decode(encoded_mean)) * sigma
        return sigma


@dataclass(frozen=True)
class ModelCard:
    backbone: dict
    render: RenderSettings
    grid: WavelengthGrid
    label_norm: dict
    class_names: tuple = CLASS_NAMES
    name: str = ""
    annotate_version: str = __version__
    training: dict = field(default_factory=dict)
    z_head: dict = field(default_factory=dict)  # model.ZHead.to_dict(); {}: the Gaussian head

    def to_json(self) -> dict:
        card = {
            "format_version": FORMAT_VERSION, "name": self.name, "annotate_version": self.annotate_version,
            "class_names": list(self.class_names), "backbone": self.backbone, "render": self.render.to_dict(),
            "grid": self.grid.to_dict(),
            "label_norm": {k: vars(v) for k, v in self.label_norm.items()}, "training": self.training,
        }
        return {**card, "z_head": self.z_head} if self.z_head else card


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(model: torch.nn.Module, card: ModelCard, folder: str | Path, half: bool = False) -> Path:
    """Write weights (safetensors, optionally float16) and config into `folder`, atomically per file."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "annotate_version": __version__})
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates the file private; a checkpoint is meant to be shared
    tmp.replace(folder / WEIGHTS)
    return write_card(folder, card)


def write_card(folder: str | Path, card: ModelCard) -> Path:
    """Write (or replace) the checkpoint's config.json, atomically."""
    folder = Path(folder)
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(card.to_json(), indent=2) + "\n")
    tmp.replace(folder / CONFIG)
    return folder


def read_card(folder: str | Path) -> ModelCard:
    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(f"{folder}: a checkpoint is a folder with {WEIGHTS} and {CONFIG}; "
                              "weights are only loaded from safetensors, never from pickle files")
    try:
        raw = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {CONFIG} (not a checkpoint folder)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder}/{CONFIG}: unreadable ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{folder}/{CONFIG}: holds a {type(raw).__name__}, not a mapping of settings")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: checkpoint format {raw.get('format_version')}, expected {FORMAT_VERSION}")
    try:
        for key in ("backbone", "render", "grid", "label_norm"):
            if not isinstance(raw[key], dict):
                raise CheckpointError(f"{folder}/{CONFIG}: '{key}' is a {type(raw[key]).__name__}, not a mapping")
        card = ModelCard(
            backbone=raw["backbone"], render=RenderSettings.from_dict(raw["render"]),
            grid=WavelengthGrid(**raw["grid"]),
            label_norm={k: LabelNorm(**v) for k, v in raw["label_norm"].items()},
            class_names=tuple(raw["class_names"]), name=raw.get("name", folder.name),
            annotate_version=raw.get("annotate_version", ""), training=raw.get("training", {}),
            z_head=raw.get("z_head", {}),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{folder}/{CONFIG}: missing or malformed entry {exc}") from None
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"{folder}/{CONFIG}: {exc}") from None
    problem = card_problem(card)
    if problem:
        raise CheckpointError(f"{folder}/{CONFIG}: {problem}")
    return card


BACKBONE_LIMITS = {"hidden_size": 8192, "num_hidden_layers": 128, "num_attention_heads": 128,
                   "intermediate_size": 32768, "image_size": 1024, "patch_size": 1024, "num_channels": 16}


def card_problem(card: ModelCard) -> str:
    """What makes a card unusable ('' if nothing), checked when it is loaded, before any
    spectrum is read: backbone sizes that are not positive integers within BACKBONE_LIMITS (a
    typo there would allocate without bound), a patch larger than the image, a grid beyond
    any spectrograph's or one the encoding cannot show, other class names than the heads', label
    normalisations without a finite mean and a positive, finite std, a z_head that
    `model.ZHead` refuses (or a binned one without a z normalisation)."""
    backbone = card.backbone
    for key, limit in BACKBONE_LIMITS.items():
        if key not in backbone:
            continue
        value = backbone[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            return f"backbone {key} must be an integer from 1 to {limit}, got {value!r}"
    if backbone.get("hidden_size", 1) % backbone.get("num_attention_heads", 1):
        return f"backbone hidden_size {backbone['hidden_size']} is not a multiple of num_attention_heads " \
               f"{backbone['num_attention_heads']}"
    if backbone.get("patch_size", 1) > backbone.get("image_size", 1 << 30):
        return f"backbone patch_size {backbone['patch_size']} exceeds image_size {backbone['image_size']}"
    grid = card.grid
    if not (isinstance(grid.n_pix, int) and grid.n_pix <= 100_000 and 2.5 <= grid.loglam_start <= 5.5
            and 0 < grid.loglam_step <= 0.01):
        return f"grid {grid} is beyond any spectrograph's (n_pix ≤ 100,000, start 10^2.5–10^5.5 Å, step ≤ 0.01 dex)"
    try:
        card.render.check_grid(grid.n_pix)
    except Exception as exc:  # ConfigError: the encoding cannot show this grid
        return str(exc)
    from .model import ZHead

    if not isinstance(card.z_head, dict):
        return f"z_head is a {type(card.z_head).__name__}, not a mapping"
    try:
        z_head = ZHead.from_dict(card.z_head)
    except ConfigError as exc:
        return str(exc)
    if z_head.kind == "bins" and "z" not in card.label_norm:
        return "a binned z head needs label_norm z"
    if tuple(card.class_names) != tuple(CLASS_NAMES):
        return f"class_names {list(card.class_names)}, but the heads predict {list(CLASS_NAMES)}"
    for name, norm in card.label_norm.items():
        try:
            mean, std = float(norm.mean), float(norm.std)
        except (TypeError, ValueError):
            return f"label_norm {name}: mean and std must be numbers"
        if not (np.isfinite(mean) and abs(mean) < 1e6 and np.isfinite(std) and 0 < std < 1e6):
            return f"label_norm {name}: needs a finite mean and a positive, finite std (got {mean}, {std})"
        if norm.transform not in ("identity", "log1p10"):
            return f"label_norm {name}: unknown transform {norm.transform!r} (identity or log1p10)"
    return ""


BACKBONE_KEYS = {
    "vit": ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias"),
    "dinov2": ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "hidden_act",
               "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias", "layerscale_value",
               "use_swiglu_ffn"),
}


def backbone_dict(config) -> dict:
    """The config fields needed to rebuild the backbone (portable across transformers versions);
    `model_type` is stored for DINOv2 only, so ViT cards stay as they were."""
    kind = getattr(config, "model_type", "vit")
    fields = {k: getattr(config, k) for k in BACKBONE_KEYS[kind]}
    return {"model_type": kind, **fields} if kind != "vit" else fields


def backbone_config(fields: dict):
    """A transformers config from a card's backbone fields."""
    from transformers import Dinov2Config, ViTConfig

    fields = dict(fields)
    kind = fields.pop("model_type", "vit")
    return (Dinov2Config if kind == "dinov2" else ViTConfig)(**fields)


def weights_sha256(folder: str | Path) -> str:
    from .digest import file_sha256

    return file_sha256(Path(folder) / WEIGHTS)


def load_checkpoint(folder: str | Path | None = None, device: str = "cpu"):
    """(model in eval mode, ModelCard) from a checkpoint folder (default: the shipped model)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from .model import SpectromerModel, ZHead

    folder = model_folder(folder)
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS}")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from None
    config = backbone_config(card.backbone)
    config._attn_implementation = "sdpa"
    model = SpectromerModel(config, ZHead.from_dict(card.z_head), card.label_norm.get("z"))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: tensors do not match the model (missing: {', '.join(missing[:3]) or 'none'}"
                              f"{'…' if len(missing) > 3 else ''}; unexpected: {', '.join(unexpected[:3]) or 'none'})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{weights}: tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"model expects {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval(), card
