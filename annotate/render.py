"""Spectra to images (Spectromer's encodings). Pure numpy functions over batches.

Three encodings, chosen by `RenderSettings.encoding`: "2dmap" (below), "simple" and "overlap"
(line plots, in render_lines.py). torch versions of all three, for rendering on a GPU inside
inference, are in render_torch.py.

2D Map: each flux value of the store grid fills a `block_size` × `block_size` block of an
`image_size` × `image_size` image, row-major from the top-left; flux is normalised per spectrum
(divided by its median over usable pixels), scaled linearly between fixed thresholds
`flux_min`..`flux_max` (clipped), and coloured with a matplotlib colormap. Masked pixels and
non-finite flux become background (black), as do the blocks past the end of the spectrum and
the image border the blocks do not fill. A grid with more pixels than blocks is refused when the
settings are checked against it: spectra are never silently cut.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .normalise import normalise_flux
from .render_lines import render_overlap, render_simple

ENCODINGS = ("2dmap", "simple", "overlap")
NORMALISATIONS = ("median", "none")


@dataclass(frozen=True)
class RenderSettings:
    """How spectra become images; saved in every checkpoint so inference renders as training did."""

    encoding: str = "2dmap"
    image_size: int = 224
    block_size: int = 3
    flux_min: float = -0.5
    flux_max: float = 3.0
    normalise: str = "median"
    colormap: str = "viridis"
    line_width: int = 2  # Simple/Overlap, pixels (matplotlib's default 1.5 pt at 100 dpi)

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"unknown encoding {self.encoding!r}; valid: {', '.join(ENCODINGS)}")
        if self.normalise not in NORMALISATIONS:
            raise ConfigError(f"unknown normalise {self.normalise!r}; valid: {', '.join(NORMALISATIONS)}")
        if not self.flux_max > self.flux_min:
            raise ConfigError("flux_max must be greater than flux_min")
        if self.block_size < 1 or self.image_size < self.block_size:
            raise ConfigError("need 1 <= block_size <= image_size")
        if not 1 <= self.line_width <= 8:
            raise ConfigError("line_width must be 1 to 8 pixels")

    @property
    def blocks_per_side(self) -> int:
        return self.image_size // self.block_size

    @property
    def capacity(self) -> int:
        """How many flux values one image holds."""
        return self.blocks_per_side**2

    def check_grid(self, n_pix: int) -> None:
        """Refuse a grid this encoding cannot show whole: more pixels than 2D Map blocks, or fewer
        samples per line than the image has columns (Simple: the grid; Overlap: each third)."""
        if self.encoding in ("simple", "overlap"):
            per_line = n_pix if self.encoding == "simple" else n_pix // 3
            if per_line < self.image_size:
                raise ConfigError(f"a {self.image_size}px {self.encoding} plot needs at least {self.image_size} "
                                  f"samples per line; the grid gives {per_line}")
            return
        if n_pix > self.capacity:
            raise ConfigError(f"a {self.image_size}px 2D Map with {self.block_size}px blocks holds "
                              f"{self.capacity} pixels; the grid has {n_pix}: use a coarser grid or smaller blocks")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "RenderSettings":
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown render settings {', '.join(sorted(unknown))}; "
                              f"valid: {', '.join(cls.__dataclass_fields__)}")
        return cls(**raw)


STORED_COLORMAPS_PATH = Path(__file__).resolve().parent / "data" / "colormaps.npz"
STORED_COLORMAPS = ("viridis", "plasma", "inferno", "magma", "cividis", "gray")


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """(257, 3) uint8: the colormap's 256 colours, then the background colour (black) at index 256.
    The colormaps of STORED_COLORMAPS (the default, viridis, among them) are read from
    data/colormaps.npz, matplotlib's own colours written by `write_stored_colormaps`: importing
    matplotlib for them took 0.3 s of every run; the others come from matplotlib."""
    if name in STORED_COLORMAPS and STORED_COLORMAPS_PATH.is_file():
        with np.load(STORED_COLORMAPS_PATH, allow_pickle=False) as stored:
            rgb = stored[name] if name in stored.files else None
        if rgb is not None:
            return np.vstack([rgb, np.zeros((1, 3), np.uint8)])
    return np.vstack([_matplotlib_rgb(name), np.zeros((1, 3), np.uint8)])


def _matplotlib_rgb(name: str) -> np.ndarray:
    """(256, 3) uint8 colours of matplotlib's colormap `name`."""
    from matplotlib import colormaps

    try:
        cmap = colormaps[name]
    except KeyError:
        raise ConfigError(f"unknown colormap {name!r}") from None
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def write_stored_colormaps(path: Path = STORED_COLORMAPS_PATH) -> None:
    """Write STORED_COLORMAPS' colours from matplotlib to `path` (how data/colormaps.npz is made:
    `python -c "from annotate.render import write_stored_colormaps; write_stored_colormaps()"`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, **{name: _matplotlib_rgb(name) for name in STORED_COLORMAPS})
    temporary.replace(path)


def colour_index(flux: np.ndarray, mask: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """(B, n) uint16 colormap index 0..255 per pixel, 256 for background (masked or non-finite)."""
    norm = normalise_flux(flux, mask, settings.normalise)
    scaled = np.nan_to_num((norm - settings.flux_min) / (settings.flux_max - settings.flux_min),
                           nan=0.0, posinf=1.0, neginf=0.0)
    index = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint16)
    background = mask | ~np.isfinite(flux)
    index[background] = 256
    return index


def render_2dmap(flux: np.ndarray, mask: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """Render a batch as 2D Maps.

    flux: (B, n_pix) float, mask: (B, n_pix) bool (True = no data). Returns (B, S, S, 3) uint8 with
    S = settings.image_size (a view of an RGBA buffer: strided, not C-contiguous); pixel value k
    of a spectrum lands in block (k // m, k % m), m = settings.blocks_per_side.
    """
    flux = np.atleast_2d(flux)
    mask = np.atleast_2d(mask).astype(bool)
    batch, n_pix = flux.shape
    settings.check_grid(n_pix)
    m, b, size = settings.blocks_per_side, settings.block_size, settings.image_size
    index = np.full((batch, m * m), 256, np.uint16)
    index[:, :n_pix] = colour_index(flux, mask, settings)
    # gather 4-byte RGBA words (one memory op per block), widen each block row to b pixels, then
    # copy that image row b times (contiguous rows of m*b words: far faster than a 5-D broadcast)
    words = _packed_lut(settings.colormap)[index].reshape(batch, m, m)
    rows = np.repeat(words, b, axis=2)
    packed = np.zeros((batch, size, size), np.uint32)
    packed[:, : m * b, : m * b].reshape(batch, m, b, m * b)[...] = rows[:, :, None, :]
    return packed.view(np.uint8).reshape(batch, size, size, 4)[..., :3]


@lru_cache(maxsize=8)
def _packed_lut(name: str) -> np.ndarray:
    """(257,) uint32: the colormap LUT as RGBA words (alpha 0), for one-word gathers."""
    rgba = np.zeros((257, 4), np.uint8)
    rgba[:, :3] = colormap_lut(name)
    return rgba.view(np.uint32).ravel()



RENDERERS = {"2dmap": render_2dmap, "simple": render_simple, "overlap": render_overlap}


def render(flux: np.ndarray, mask: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """Render a batch with the encoding named in `settings`: (B, S, S, 3) uint8."""
    return RENDERERS[settings.encoding](flux, mask, settings)


def to_model_input(images: np.ndarray, mean: float = 0.5, std: float = 0.5):
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 torch tensor scaled to [0, 1] then (x - mean) / std."""
    import torch

    channels_first = torch.from_numpy(images).permute(0, 3, 1, 2)
    tensor = channels_first.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    return tensor.sub_(mean).div_(std)


def model_input(flux: np.ndarray, mask: np.ndarray, settings: RenderSettings, mean: float = 0.5, std: float = 0.5):
    """`to_model_input(render(flux, mask, settings), mean, std)`, the same values to the bit. A 2D
    Map is made straight in the model's layout, (B, 3, S, S) float32, from `block_values`: neither
    the uint8 image nor its conversion to channels-first float is made (together a third of the
    ViT step's time on the CPU before)."""
    import torch

    if settings.encoding != "2dmap":
        return to_model_input(render(flux, mask, settings), mean, std)
    blocks = block_values(flux, mask, settings, mean, std).numpy()
    background = _input_lut(settings.colormap, float(mean), float(std))[:, 256]
    batch = len(blocks)
    m, b, size = settings.blocks_per_side, settings.block_size, settings.image_size
    out = np.empty((batch, 3, size, size), np.float32)
    filled = m * b
    for channel in range(3):
        plane = out[:, channel]
        plane[:, filled:, :] = background[channel]   # the border the blocks do not fill
        plane[:, :filled, filled:] = background[channel]
        rows = np.repeat(blocks[:, channel, :m, :m], b, axis=2)   # (B, m, m·b)
        view = plane[:, :filled, :filled]
        view.shape = (batch, m, b, filled)   # a view (raises rather than copy)
        view[...] = rows[:, :, None, :]
    return torch.from_numpy(out)


def block_values(flux: np.ndarray, mask: np.ndarray, settings: RenderSettings, mean: float = 0.5, std: float = 0.5):
    """The 2D Map in the model's values, one per block: (B, 3, m + 1, m + 1) float32 torch tensor
    (m = blocks_per_side) whose [:, :, :m, :m] are the blocks' colours through `to_model_input`
    (row-major from the top left, as `render_2dmap` places them) and whose last row and column hold
    the background, the colour of the image's border that the blocks do not fill. Pixel (r, s) of
    the rendered image has the value at [r // block_size, s // block_size]."""
    import torch

    if settings.encoding != "2dmap":
        raise ConfigError(f"block values are a 2D Map's; this model renders {settings.encoding}")
    flux = np.atleast_2d(flux)
    mask = np.atleast_2d(mask).astype(bool)
    batch, n_pix = flux.shape
    settings.check_grid(n_pix)
    m = settings.blocks_per_side
    blocks = np.full((batch, m * m), 256, np.uint16)
    blocks[:, :n_pix] = colour_index(flux, mask, settings)
    index = np.full((batch, m + 1, m + 1), 256, np.uint16)
    index[:, :m, :m] = blocks.reshape(batch, m, m)
    table = _input_lut(settings.colormap, float(mean), float(std))   # (3, 257)
    index = index.astype(np.intp)
    out = np.empty((batch, 3, m + 1, m + 1), np.float32)
    for channel in range(3):
        out[:, channel] = table[channel][index]
    return torch.from_numpy(out)


@lru_cache(maxsize=8)
def _input_lut(name: str, mean: float, std: float) -> np.ndarray:
    """(3, 257) float32: `colormap_lut(name)` through `to_model_input`, channels first."""
    lut = colormap_lut(name)
    return to_model_input(lut[None, :, None, :], mean, std)[0, :, :, 0].numpy()
