"""The Spectromer model: a Hugging Face ViT backbone, CLS token -> one linear head per task.

Backbones are named in a registry (`BACKBONES`): small random-init presets for tests and CPU
training, and pretrained ids such as `facebook/dino-vitb16` that load from a local directory or
the Hugging Face cache only (nothing is downloaded at run time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import CLASS_NAMES
from .errors import CheckpointError, ConfigError

STELLAR_LABELS = ("teff", "logg", "feh")


@dataclass(frozen=True)
class Preset:
    """A random-init ViT shape (patch 16, 224 px unless stated)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int = 16


BACKBONES = {
    "vit-micro": Preset(32, 1, 2, 64, patch_size=32),
    "vit-tiny": Preset(128, 4, 4, 512),
    "vit-tiny-p32": Preset(128, 4, 4, 512, patch_size=32),
    "vit-mini-p32": Preset(128, 2, 4, 512, patch_size=32),
    "vit-wide-p32": Preset(192, 6, 6, 768, patch_size=32),
    "vit-medium-p28": Preset(256, 8, 4, 1024, patch_size=28),
    "vit-small": Preset(384, 12, 6, 1536),
}
PRETRAINED = ("facebook/dino-vitb16", "facebook/dino-vits16", "google/vit-base-patch16-224-in21k")


BACKBONE_TYPES = ("vit", "dinov2")  # transformers model types: ViT / DINO (v1) and DINOv2


def vit_config(backbone: str, image_size: int = 224):
    """A transformers config for a preset name (ViTConfig), or the config of a local/cached
    pretrained ViT, DINO or DINOv2 model."""
    from transformers import AutoConfig, ViTConfig

    if backbone in BACKBONES:
        preset = BACKBONES[backbone]
        return ViTConfig(hidden_size=preset.hidden_size, num_hidden_layers=preset.num_hidden_layers,
                         num_attention_heads=preset.num_attention_heads,
                         intermediate_size=preset.intermediate_size, patch_size=preset.patch_size,
                         image_size=image_size, num_channels=3)
    location = resolve_pretrained(backbone)
    config = AutoConfig.from_pretrained(location, local_files_only=True)
    if config.model_type not in BACKBONE_TYPES:
        raise ConfigError(f"backbone {backbone!r} is a {config.model_type!r} model; supported: "
                          f"{', '.join(BACKBONE_TYPES)} (ViT, DINO, DINOv2)")
    return config


def backbone_class(config) -> tuple:
    """(transformers model class, its extra arguments) for a backbone config: Dinov2Model (which
    interpolates its position embeddings to the image size), or ViTModel without its pooler."""
    from transformers import Dinov2Model, ViTModel

    if getattr(config, "model_type", "vit") == "dinov2":
        return Dinov2Model, {}
    return ViTModel, {"add_pooling_layer": False}


def resolve_pretrained(backbone: str) -> str:
    """A local directory or a Hub id present in the local cache; CheckpointError saying where it looked."""
    if Path(backbone).is_dir():
        return str(Path(backbone))
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(backbone, "config.json")
    if isinstance(cached, str):
        return backbone
    raise CheckpointError(
        f"backbone {backbone!r} is neither a preset ({', '.join(BACKBONES)}), a local directory, nor in the "
        f"Hugging Face cache at {constants.HF_HUB_CACHE}; nothing is downloaded at run time")


class SpectromerModel(nn.Module):
    """ViT backbone -> CLS token -> heads.

    forward(pixel_values (B, 3, S, S) float) -> dict with
      'class_logits' (B, 3) over CLASS_NAMES; 'z_mean', 'z_log_sigma' (B,) in the normalised
      redshift space; 'stellar' (B, 3) normalised teff, logg, feh.
    """

    def __init__(self, config):
        super().__init__()
        cls, extra = backbone_class(config)
        self.backbone = cls(config, **extra)
        hidden = config.hidden_size
        self.class_head = nn.Linear(hidden, len(CLASS_NAMES))
        self.z_head = nn.Linear(hidden, 2)
        self.stellar_head = nn.Linear(hidden, len(STELLAR_LABELS))

    def forward(self, pixel_values: torch.Tensor) -> dict:
        cls = self.backbone(pixel_values=pixel_values).last_hidden_state[:, 0]
        # the heads run in float32 even under bf16 autocast: z needs more than bf16's 8 bits
        with torch.autocast(device_type=cls.device.type, enabled=False):
            cls = cls.float()
            z = self.z_head(cls)
            return {"class_logits": self.class_head(cls), "z_mean": z[:, 0],
                    "z_log_sigma": z[:, 1].clamp(-7.0, 5.0), "stellar": self.stellar_head(cls)}


def build_model(backbone: str, image_size: int = 224, pretrained: bool = True) -> SpectromerModel:
    """A model with a preset (random init) or a pretrained backbone (weights from disk/cache)."""
    config = vit_config(backbone, image_size)
    config._attn_implementation = "sdpa"
    model = SpectromerModel(config)
    if backbone not in BACKBONES and pretrained:
        location = resolve_pretrained(backbone)
        cls, extra = backbone_class(config)
        loaded = cls.from_pretrained(location, local_files_only=True, **extra)
        model.backbone.load_state_dict(loaded.state_dict())
    return model


def check_backbone_name(backbone: str) -> None:
    if backbone in BACKBONES or backbone in PRETRAINED or os.path.isdir(backbone) or "/" in backbone:
        return
    raise ConfigError(f"unknown backbone {backbone!r}; presets: {', '.join(BACKBONES)}; or a Hub id / local directory")
