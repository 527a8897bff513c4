"""The three encodings in torch, so that a GPU renders a batch inside inference.

Same geometry and arithmetic as render.py and render_lines.py (float32, round half to even, the
same median, true divisions by tensors, the mean-|flux| fallback summed in float64), so for
float32 input the images are identical to the numpy renderers; tests/test_render_torch.py checks
that on the CPU for every encoding, and on a GPU when there is one.
"""

from __future__ import annotations

import numpy as np
import torch

from .render import RenderSettings, colormap_lut
from .render_lines import column_starts, segment_bounds


def row_median(values: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
    """(B,) mean of the two middle usable values of each row (NaN where none), as numpy's."""
    ordered, _ = torch.sort(torch.where(good, values, torch.full_like(values, float("nan"))), dim=1)
    n_good = good.sum(dim=1)
    lo = torch.gather(ordered, 1, torch.clamp((n_good - 1) // 2, min=0)[:, None])[:, 0]
    hi = torch.gather(ordered, 1, torch.clamp(n_good // 2, min=0)[:, None])[:, 0]
    middle = torch.where(n_good % 2 == 1, hi, 0.5 * (lo + hi))  # odd: the middle value itself, as numpy
    return torch.where(n_good > 0, middle, torch.full_like(lo, float("nan")))


def normalise_flux(flux: torch.Tensor, mask: torch.Tensor, how: str = "median") -> torch.Tensor:
    good = ~mask & torch.isfinite(flux)
    zero = torch.zeros_like(flux)
    if how == "none":
        return torch.where(good, flux, zero)
    scale = row_median(flux, good)
    n_good = torch.clamp(good.sum(dim=1), min=1)
    fallback = (torch.where(good, flux.abs(), zero).double().sum(dim=1) / n_good).to(flux.dtype)
    scale = torch.where(scale > 0, scale, fallback)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    return torch.where(good, flux / scale[:, None], zero)


def _span(settings: RenderSettings, device) -> torch.Tensor:
    """flux_max − flux_min as a float32 tensor: CUDA divides by a Python number as a multiply by
    its reciprocal, by a tensor with a true IEEE division (what numpy does)."""
    return torch.tensor(np.float32(settings.flux_max - settings.flux_min), device=device)


def render_2dmap(flux: torch.Tensor, mask: torch.Tensor, settings: RenderSettings) -> torch.Tensor:
    batch, n_pix = flux.shape
    settings.check_grid(n_pix)
    m, b, size = settings.blocks_per_side, settings.block_size, settings.image_size
    norm = normalise_flux(flux, mask, settings.normalise)
    scaled = torch.nan_to_num((norm - settings.flux_min) / _span(settings, flux.device), nan=0.0, posinf=1.0, neginf=0.0)
    index = torch.round(torch.clamp(scaled, 0.0, 1.0) * 255.0).to(torch.int64)
    index = torch.where(mask | ~torch.isfinite(flux), torch.full_like(index, 256), index)
    full = torch.full((batch, m * m), 256, dtype=torch.int64, device=flux.device)
    full[:, :n_pix] = index
    lut = torch.from_numpy(colormap_lut(settings.colormap)).to(flux.device)
    blocks = lut[full].reshape(batch, m, m, 3)
    pixels = blocks.repeat_interleave(b, dim=1).repeat_interleave(b, dim=2)
    image = torch.zeros((batch, size, size, 3), dtype=torch.uint8, device=flux.device)
    image[:, : m * b, : m * b] = pixels
    return image


def _line_mask(scaled: torch.Tensor, good: torch.Tensor, size: int, width: int) -> torch.Tensor:
    batch, n = scaled.shape
    device = scaled.device
    rows = torch.round((1.0 - scaled) * (size - 1)).to(torch.int32)
    starts = torch.from_numpy(column_starts(n, size)).to(device)
    columns = torch.from_numpy(((np.arange(n) * size) // n).astype(np.int64)).to(device).expand(batch, n)
    big = torch.full((batch, size), size, dtype=torch.int32, device=device)
    low = big.scatter_reduce(1, columns, torch.where(good, rows, torch.full_like(rows, size)), "amin")
    high = torch.full_like(big, -1).scatter_reduce(1, columns, torch.where(good, rows, torch.full_like(rows, -1)), "amax")
    last, first_next = starts[1:] - 1, starts[1:]
    joined = good[:, last] & good[:, first_next]
    low[:, :-1] = torch.where(joined, torch.minimum(low[:, :-1], rows[:, first_next]), low[:, :-1])
    high[:, :-1] = torch.where(joined, torch.maximum(high[:, :-1], rows[:, first_next]), high[:, :-1])
    if width > 1:
        empty = low > high
        low = torch.where(empty, torch.full_like(low, torch.iinfo(torch.int32).max), low)
        high = torch.where(empty, torch.full_like(high, -1), high + (width - 1))
        out_low, out_high = low.clone(), high.clone()
        for shift in range(1, width):
            out_low[:, shift:] = torch.minimum(out_low[:, shift:], low[:, :-shift])
            out_high[:, shift:] = torch.maximum(out_high[:, shift:], high[:, :-shift])
        low, high = out_low, out_high
    r = torch.arange(size, dtype=torch.int32, device=device)[None, :, None]
    return (r >= low[:, None, :]) & (r <= high[:, None, :])


def _scaled(flux: torch.Tensor, mask: torch.Tensor, settings: RenderSettings):
    good = ~mask & torch.isfinite(flux)
    norm = normalise_flux(flux, mask, settings.normalise)
    scaled = torch.clamp((norm - settings.flux_min) / _span(settings, flux.device), 0.0, 1.0)
    return scaled, good


def render_simple(flux: torch.Tensor, mask: torch.Tensor, settings: RenderSettings) -> torch.Tensor:
    settings.check_grid(flux.shape[1])
    scaled, good = _scaled(flux, mask, settings)
    drawn = _line_mask(scaled, good, settings.image_size, settings.line_width).to(torch.uint8) * 255
    return drawn[..., None].expand(-1, -1, -1, 3).contiguous()


def render_overlap(flux: torch.Tensor, mask: torch.Tensor, settings: RenderSettings) -> torch.Tensor:
    settings.check_grid(flux.shape[1])
    scaled, good = _scaled(flux, mask, settings)
    channels = [_line_mask(scaled[:, a:b], good[:, a:b], settings.image_size, settings.line_width)
                for a, b in segment_bounds(flux.shape[1], 3)]
    return torch.stack(channels, dim=3).to(torch.uint8) * 255


RENDERERS = {"2dmap": render_2dmap, "simple": render_simple, "overlap": render_overlap}


def render(flux: torch.Tensor, mask: torch.Tensor, settings: RenderSettings) -> torch.Tensor:
    """(B, n) float32 flux and bool mask (True = no data) on any device -> (B, S, S, 3) uint8."""
    return RENDERERS[settings.encoding](flux.to(torch.float32), mask.to(torch.bool), settings)


def to_model_input(images: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32, scaled to [0, 1] then (x - mean) / std."""
    return images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0).sub_(mean).div_(std)
