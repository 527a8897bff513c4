"""The Spectromer model: a Hugging Face ViT backbone, CLS token -> one linear head per task.

Backbones are named in a registry (`BACKBONES`): small random-init presets for tests and CPU
training, and pretrained ids such as `facebook/dino-vitb16` that load from a local directory or
the Hugging Face cache only (nothing is downloaded at run time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
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


Z_HEAD_KINDS = ("gaussian", "bins")


@dataclass(frozen=True)
class ZHead:
    """How the model answers z.

    'gaussian' (the Spectromer paper's): a linear layer -> mean and log σ of the normalised z,
    trained by Gaussian negative log-likelihood.
    'bins': a probability for each of `n_bins` bins uniform in log10(1 + z) from `z_min` to
    `z_max` (an MLP with `hidden` units, or linear with 0), trained by cross-entropy against the
    true z shared between its two nearest bin centres. z is the probability-weighted mean of the
    `window` bins either side of the most probable one, so a second peak (another line
    identification) does not pull z between the two; σ is the RMS of the whole distribution about
    that z, so a second peak widens it.

    sigma_scale: a calibration of a trained binned head (`calibrate_sigma`, written into the
    checkpoint by training/calibrate_z_sigma.py): one factor per class of CLASS_NAMES; σ is then
    that factor, for the class the model predicts, times the RMS of the `window` bins either side
    of the most probable one (the width of the peak z is read from), so that 68 % of new objects
    of each class lie within 1σ. () (the default): σ as above, uncalibrated."""

    kind: str = "gaussian"
    n_bins: int = 768
    z_min: float = -0.01
    z_max: float = 7.0
    hidden: int = 512
    window: int = 4
    sigma_scale: tuple = ()

    @classmethod
    def from_dict(cls, raw: dict | None) -> "ZHead":
        """A ZHead from a card's or recipe's `z_head` mapping ({} or None: gaussian); ConfigError
        saying what is wrong."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"z_head: unknown key(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}")
        try:
            head = cls(**raw)
            ints = (head.n_bins, head.hidden, head.window)
            numbers = (float(head.z_min), float(head.z_max))
        except (TypeError, ValueError):
            raise ConfigError(f"z_head: malformed {raw}") from None
        if head.kind not in Z_HEAD_KINDS:
            raise ConfigError(f"z_head kind must be one of {', '.join(Z_HEAD_KINDS)}, got {head.kind!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in ints) or not (
                2 <= head.n_bins <= 16384 and 0 <= head.hidden <= 16384 and 0 <= head.window < head.n_bins):
            raise ConfigError(f"z_head: n_bins must be an integer from 2 to 16384, hidden from 0 to 16384 and "
                              f"window from 0 to n_bins - 1 (got {head.n_bins!r}, {head.hidden!r}, {head.window!r})")
        if not -1.0 < numbers[0] < numbers[1] <= 20.0:
            raise ConfigError(f"z_head: needs -1 < z_min < z_max <= 20 (got {head.z_min!r}, {head.z_max!r})")
        return replace(head, sigma_scale=cls._check_scale(head))

    @staticmethod
    def _check_scale(head: "ZHead") -> tuple:
        scale = head.sigma_scale
        if scale is None or (isinstance(scale, (list, tuple)) and len(scale) == 0):
            return ()
        try:
            values = tuple(float(v) for v in scale)
        except (TypeError, ValueError):
            values = ()
        if head.kind != "bins" or len(values) != len(CLASS_NAMES) or not all(0.0 < v < 1e3 for v in values) \
                or any(isinstance(v, bool) for v in scale):
            raise ConfigError(f"z_head: sigma_scale must be {len(CLASS_NAMES)} positive factors ({', '.join(CLASS_NAMES)}) "
                              f"of a binned head, got {scale!r}")
        return values

    def to_dict(self) -> dict:
        """{} for the gaussian head, so that cards and recipes without one stay as they were (and
        no sigma_scale key for an uncalibrated binned head)."""
        if self.kind == "gaussian":
            return {}
        out = dict(vars(self))
        out["sigma_scale"] = list(self.sigma_scale)
        return out if self.sigma_scale else {k: v for k, v in out.items() if k != "sigma_scale"}

    def uncalibrated(self) -> "ZHead":
        """The same head without its sigma_scale: what a warm start compares, since a calibration
        belongs to the weights it was measured on, not to the head's shape."""
        return replace(self, sigma_scale=())


def two_hot(target: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, n_bins) weights: each target shared between its two nearest of the uniform `centres`
    in inverse proportion to the distance (clipped to the range), so Σ w·centre = target."""
    width = centres[1] - centres[0]
    position = ((target - centres[0]) / width).clamp(0.0, len(centres) - 1.0)
    low = position.floor().long().clamp(max=len(centres) - 2)
    upper = position - low
    weights = torch.zeros(len(target), len(centres), device=target.device, dtype=torch.float32)
    weights.scatter_(1, low[:, None], (1.0 - upper)[:, None].float())
    weights.scatter_add_(1, (low + 1)[:, None], upper[:, None].float())
    return weights


def bin_centres(z_head: ZHead, z_norm) -> torch.Tensor:
    """(n_bins,) centres of a binned head's bins in the normalised z space of `z_norm` (LabelNorm)."""
    low, high = (float(z_norm.encode(z)) for z in (z_head.z_min, z_head.z_max))
    return torch.linspace(low, high, z_head.n_bins)


# the least log σ_peak (normalised units): about 3e-6 in z, under 1 km/s. The Gaussian head's floor,
# -7 (about 125 km/s with the default model's z scale), is above a calibrated star's σ (~60 km/s)
LOG_PEAK_MIN = -12.0


def read_bins(logits: torch.Tensor, centres: torch.Tensor, window: int) -> dict:
    """'z_mean' and 'z_log_sigma' (normalised) of (B, n_bins) logits: the probability-weighted mean
    of the `window` bins either side of the most probable one (cut short at an end of the range),
    and the log of the distribution's RMS about that mean (see ZHead); 'z_log_peak': the log of
    the RMS of those bins alone about it (the peak's width, what a sigma_scale multiplies)."""
    prob = logits.softmax(dim=1)
    n = len(centres)
    around = prob.argmax(dim=1, keepdim=True) + torch.arange(-window, window + 1, device=logits.device)
    inside = (around >= 0) & (around < n)
    around = around.clamp(0, n - 1)
    weight = prob.gather(1, around) * inside
    mean = (weight * centres[around]).sum(1) / weight.sum(1).clamp_min(1e-30)
    spread = (prob * (centres[None] - mean[:, None]) ** 2).sum(1).clamp_min(1e-12).sqrt()
    peak = ((weight * (centres[around] - mean[:, None]) ** 2).sum(1) / weight.sum(1).clamp_min(1e-30))
    return {"z_mean": mean, "z_log_sigma": spread.log().clamp(-7.0, 5.0),
            "z_log_peak": peak.clamp_min(1e-24).sqrt().log().clamp(LOG_PEAK_MIN, 5.0)}


ONE_SIGMA = 0.6827  # the share of a Gaussian within 1σ


def calibrate_sigma(abs_error: np.ndarray, peak: np.ndarray, classes: np.ndarray, min_count: int = 50) -> tuple:
    """sigma_scale (one factor per class of CLASS_NAMES) from new objects: |z − true z|, the peak
    widths σ_peak (same units; `read_bins`' z_log_peak) and the predicted class index of each.
    Each factor is the ONE_SIGMA quantile of |error| / σ_peak over the objects predicted in that
    class (over all objects for a class with fewer than `min_count`), rounded to 4 figures."""
    ratio = np.asarray(abs_error, float) / np.asarray(peak, float)
    classes = np.asarray(classes)
    ok = np.isfinite(ratio)
    pooled = float(np.quantile(ratio[ok], ONE_SIGMA))
    scales = []
    for c in range(len(CLASS_NAMES)):
        mine = ok & (classes == c)
        scales.append(float(np.quantile(ratio[mine], ONE_SIGMA)) if mine.sum() >= min_count else pooled)
    return tuple(float(f"{max(s, 1e-3):.4g}") for s in scales)


class SpectromerModel(nn.Module):
    """ViT backbone -> CLS token -> heads.

    forward(pixel_values (B, 3, S, S) float) -> dict with
      'class_logits' (B, 3) over CLASS_NAMES; 'z_mean', 'z_log_sigma' (B,) in the normalised
      redshift space (with a binned z head also 'z_logits' (B, n_bins) and 'z_centres', the
      bins' centres); 'stellar' (B, 3) normalised teff, logg, feh.

    z_head: a ZHead; z_norm: the label normalisation of z (a checkpoint's LabelNorm), which puts
    a binned head's bins into the normalised space."""

    def __init__(self, config, z_head: ZHead = ZHead(), z_norm=None):
        super().__init__()
        cls, extra = backbone_class(config)
        self.backbone = cls(config, **extra)
        hidden = config.hidden_size
        self.class_head = nn.Linear(hidden, len(CLASS_NAMES))
        self.z_kind = z_head.kind
        if z_head.kind == "bins":
            if z_norm is None:
                raise ConfigError("a binned z head needs the z label normalisation")
            if z_head.hidden:
                self.z_head = nn.Sequential(nn.Linear(hidden, z_head.hidden), nn.GELU(),
                                            nn.Linear(z_head.hidden, z_head.n_bins))
            else:
                self.z_head = nn.Linear(hidden, z_head.n_bins)
            self.register_buffer("z_centres", bin_centres(z_head, z_norm), persistent=False)
            self.z_window = z_head.window
            scale = torch.tensor(z_head.sigma_scale, dtype=torch.float32) if z_head.sigma_scale else None
            self.register_buffer("z_sigma_scale", scale, persistent=False)
        else:
            self.z_head = nn.Linear(hidden, 2)
        self.stellar_head = nn.Linear(hidden, len(STELLAR_LABELS))

    def _z_from_bins(self, logits: torch.Tensor) -> dict:
        return {**read_bins(logits, self.z_centres, self.z_window), "z_logits": logits, "z_centres": self.z_centres}

    def forward(self, pixel_values: torch.Tensor) -> dict:
        cls = self.backbone(pixel_values=pixel_values).last_hidden_state[:, 0]
        # the heads run in float32 even under bf16 autocast: z needs more than bf16's 8 bits
        with torch.autocast(device_type=cls.device.type, enabled=False):
            cls = cls.float()
            z = self.z_head(cls)
            class_logits = self.class_head(cls)
            if self.z_kind == "bins":
                z_out = self._z_from_bins(z)
                if self.z_sigma_scale is not None:  # calibrated: the peak's width times its class's factor
                    factor = self.z_sigma_scale[class_logits.argmax(dim=1)]
                    z_out["z_log_sigma"] = (z_out["z_log_peak"] + factor.log()).clamp(LOG_PEAK_MIN, 5.0)
            else:
                z_out = {"z_mean": z[:, 0], "z_log_sigma": z[:, 1].clamp(-7.0, 5.0)}
            return {"class_logits": class_logits, **z_out, "stellar": self.stellar_head(cls)}


def build_model(backbone: str, image_size: int = 224, pretrained: bool = True, z_head: ZHead = ZHead(),
                z_norm=None) -> SpectromerModel:
    """A model with a preset (random init) or a pretrained backbone (weights from disk/cache)."""
    config = vit_config(backbone, image_size)
    config._attn_implementation = "sdpa"
    model = SpectromerModel(config, z_head, z_norm)
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
