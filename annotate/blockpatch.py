"""The ViT's patch embedding of a 2D Map computed from its blocks rather than its pixels.

A 2D Map is constant over each `block_size` × `block_size` block (and over the border the blocks
do not fill), so the patch projection — a convolution whose kernel and stride are the patch size
— sums, for each patch, each block's value times the sum of the kernel's weights over the block's
pixels inside that patch. Those sums are a smaller kernel per patch (for the default 224 px map of
3 px blocks and 32 px patches: 12 × 12 blocks instead of 32 × 32 pixels), made once from the
convolution's weights in float64, so the embedding costs about a seventh of the convolution's
arithmetic and the image itself is never made (`render.block_values` gives the blocks). The result
is the convolution's up to float32 rounding: the sums are taken in another order.

`forward_blocks` runs the backbone on such embeddings through its own forward: for the call, its
patch embedding module is replaced by one that returns them, and the pixel input it is given is a
zero-strided placeholder of the image's shape (no memory). Only ViT-style backbones whose patch
projection is an unpadded convolution with stride equal to its kernel qualify (`supports_blocks`:
ViT, DINO and DINOv2 do); other models render the image as before.

Inference (`predict.predict_batch` on the host) sums the kernels once in float64 and keeps them on
the model (`block_embedding`); training (`model_outputs` with gradients on, a single-process run
rendering on the CPU) sums them from the projection's weights in every step, so the gradient
reaches those weights as it would through the image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .render import RenderSettings


def _projection(model) -> nn.Conv2d | None:
    patches = getattr(getattr(getattr(model, "backbone", None), "embeddings", None), "patch_embeddings", None)
    projection = getattr(patches, "projection", None)
    return projection if isinstance(projection, nn.Conv2d) else None


def supports_blocks(model, settings: RenderSettings) -> bool:
    """Whether `forward_blocks` can run `model` on 2D Maps of `settings`."""
    projection = _projection(model)
    if settings.encoding != "2dmap" or projection is None:
        return False
    kernel, stride = tuple(projection.kernel_size), tuple(projection.stride)
    return (kernel == stride and kernel[0] == kernel[1] and tuple(projection.padding) == (0, 0)
            and tuple(projection.dilation) == (1, 1) and projection.groups == 1
            and settings.image_size % kernel[0] == 0)


class BlockGeometry:
    """Where the blocks of 2D Maps of `settings` fall in the patches of a `patch` px projection with
    `channels` input channels: `local` (n, w, patch) float64, 1 where pixel row i of patch row k lies
    in the patch's local block row a (the border past m·b pixels is block m), and `flat` (N, C·w·w),
    each patch's window as flat indices into one map's (C, m + 1, m + 1) block values (n patches a
    side, N = n², windows of w blocks a side; a window slot past the last block holds no pixel and
    reads the last one: its weight is 0)."""

    def __init__(self, settings: RenderSettings, patch: int, channels: int):
        b, size, m = settings.block_size, settings.image_size, settings.blocks_per_side
        n = size // patch
        first = [(patch * k) // b for k in range(n)]
        width = max((patch * k + patch - 1) // b - first[k] + 1 for k in range(n))
        self.local = np.zeros((n, width, patch))
        for k in range(n):
            rows = np.minimum((patch * k + np.arange(patch)) // b, m)
            self.local[k, rows - first[k], np.arange(patch)] = 1.0
        side = m + 1
        index = np.minimum(np.array(first)[:, None] + np.arange(width)[None, :], m)      # (n, w)
        flat = (np.arange(channels)[None, None, :, None, None] * side * side
                + index[:, None, None, :, None] * side + index[None, :, None, None, :])  # (n, n, C, w, w)
        self.flat = torch.from_numpy(flat.reshape(n * n, -1))
        self.n = n

    def kernels(self, weight: torch.Tensor) -> torch.Tensor:
        """(N, C·w·w, D): per patch, the weights (D, C, p, p) summed over each block's pixels in it;
        differentiable in `weight` (for training)."""
        local = torch.as_tensor(self.local, dtype=weight.dtype, device=weight.device)
        kernels = torch.einsum("Pai,dcij,Qbj->PQcabd", local, weight, local)
        return kernels.reshape(self.n * self.n, -1, weight.shape[0])

    def tokens(self, blocks: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(B, N, D) patch tokens of blocks (B, C, m + 1, m + 1), which must be finite (colours, as
        `render.block_values` gives them: a slot of weight 0 then adds exactly 0)."""
        flat = self.flat.to(blocks.device)
        windows = blocks.reshape(len(blocks), -1).T[flat]                  # (N, C·w·w, B)
        tokens = torch.bmm(windows.transpose(1, 2), kernels).transpose(0, 1)   # (B, N, D)
        return tokens if bias is None else tokens + bias


class BlockPatchEmbedding(nn.Module):
    """`projection` (a Conv2d, kernel = stride = p) applied to 2D Maps of `settings`, from their
    block values (B, C, m + 1, m + 1) (`render.block_values`) to the patch tokens (B, N, D) that
    `projection(image).flatten(2).transpose(1, 2)` gives, with the per-patch kernels summed once in
    float64 from the weights as they are now (for inference)."""

    def __init__(self, projection: nn.Conv2d, settings: RenderSettings):
        super().__init__()
        weight = projection.weight.detach()
        self.geometry = _geometry(settings, projection.kernel_size[0], weight.shape[1])
        kernels = self.geometry.kernels(weight.double().cpu())
        self.register_buffer("kernels", kernels.to(weight.dtype), persistent=False)
        self.register_buffer("bias", projection.bias.detach().clone() if projection.bias is not None
                             else torch.zeros(weight.shape[0], dtype=weight.dtype), persistent=False)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        return self.geometry.tokens(blocks, self.kernels, self.bias)


class _GivenTokens(nn.Module):
    """Stands in for a backbone's patch embedding for one call: returns `tokens` whatever it is given."""

    def __init__(self, tokens: torch.Tensor, projection: nn.Conv2d):
        super().__init__()
        self.tokens, self.projection = tokens, projection

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.tokens


def block_embedding(model, settings: RenderSettings) -> BlockPatchEmbedding:
    """The model's `BlockPatchEmbedding` for `settings`, made on first use and kept on the model;
    made again when the projection's weights have changed since (in place or replaced). Its kernels
    carry no gradient: training takes `forward_blocks(..., trainable=True)`."""
    projection = _projection(model)
    cache = model.__dict__.setdefault("_block_embeddings", {})
    key = (settings, projection.weight.data_ptr(), projection.weight._version, str(projection.weight.device))
    if key not in cache:
        cache.clear()
        cache[key] = BlockPatchEmbedding(projection, settings).to(projection.weight.device)
    return cache[key]


def forward_blocks(model, blocks: torch.Tensor, settings: RenderSettings, trainable: bool = False) -> dict:
    """`model(pixels)` for the 2D Maps whose `render.block_values` are `blocks`: the same outputs up
    to float32 rounding (see the module's docstring). `trainable`: the kernels are summed from the
    projection's weights in this call, so gradients reach them (training); else the model's
    `block_embedding` serves."""
    if trainable:
        projection = _projection(model)
        geometry = _geometry(settings, projection.kernel_size[0], projection.weight.shape[1])
        tokens = geometry.tokens(blocks, geometry.kernels(projection.weight), projection.bias)
    else:
        tokens = block_embedding(model, settings)(blocks)
    embeddings = model.backbone.embeddings
    original = embeddings.patch_embeddings
    size = settings.image_size
    weight = original.projection.weight   # the dtype the backbone casts its input to: no copy made
    placeholder = torch.zeros((), dtype=weight.dtype, device=weight.device).expand(len(tokens), blocks.shape[1], size, size)
    embeddings.patch_embeddings = _GivenTokens(tokens, original.projection)
    try:
        return model(placeholder)
    finally:
        embeddings.patch_embeddings = original


@lru_cache(maxsize=8)
def _geometry(settings: RenderSettings, patch: int, channels: int) -> BlockGeometry:
    return BlockGeometry(settings, patch, channels)


def model_outputs(model, batch: dict, settings: RenderSettings | None = None, forward=None) -> dict:
    """The model's outputs for a training or evaluation batch: from its 'blocks' (2D Map block
    values, `render.block_values`; `settings` are the map's), trainable while gradients are on, or
    from its 'pixels' through `forward` (the model itself, or its DistributedDataParallel wrapper)."""
    if "blocks" in batch:
        return forward_blocks(model, batch["blocks"], settings, trainable=torch.is_grad_enabled())
    return (forward or model)(batch["pixels"])
