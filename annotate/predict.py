"""Inference: rows of a spectra store -> per-row predictions (arrays), in batches."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from . import CLASS_NAMES
from .checkpoint import ModelCard
from .errors import CheckpointError
from .blockpatch import forward_blocks, supports_blocks
from .render import block_values, model_input
from .store import STATUS, open_store, read_rows

PREDICTION_KEYS = ("prob", "z", "z_err", "teff", "logg", "feh", "coverage", "status")


def check_compatible(card: ModelCard, grid) -> None:
    """The store's grid must be the one the model was trained on (rendering depends on it)."""
    if card.grid != grid:
        raise CheckpointError(f"model was trained on grid {card.grid} but the store uses {grid}; "
                              "re-ingest with the model's grid")


def precision(device: str) -> str:
    """'bf16' on CUDA GPUs with native bfloat16 (compute capability 8 and up: A100, H100, ...),
    else 'fp32'. Recorded with the predictions (ANNPREC)."""
    target = torch.device(device)
    if target.type == "cuda" and torch.cuda.is_available() and \
            torch.cuda.get_device_capability(target if target.index is not None else None)[0] >= 8:
        return "bf16"
    return "fp32"


@torch.no_grad()
def predict_batch(model: torch.nn.Module, card: ModelCard, flux: np.ndarray, mask: np.ndarray,
                  device: str = "cpu", render_on_device: bool | None = None, bf16: bool | None = None) -> dict:
    """Predictions for (B, n_pix) flux and mask: prob (B, 3), z, z_err, teff, logg, feh (B,).

    render_on_device: render with the torch renderers on `device` (default: on a GPU), sending
    the spectra rather than the 50× larger images; the images are the same as numpy's. Rendered
    here, a 2D Map reaches a ViT backbone as its blocks, not its pixels (`annotate.blockpatch`:
    the same outputs up to float32 rounding, the step about 40 % faster on the CPU).
    bf16: run the backbone under bfloat16 autocast (default: on GPUs with native bf16, see
    `precision`; attention is SDPA either way); the heads always run in float32."""
    on_gpu = torch.device(device).type == "cuda"
    if render_on_device is None:
        render_on_device = on_gpu
    if bf16 is None:
        bf16 = precision(device) == "bf16"
    if render_on_device:
        from . import render_torch

        flux_t = torch.from_numpy(np.ascontiguousarray(flux, dtype=np.float32)).to(device)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).to(device)
        pixels = render_torch.to_model_input(render_torch.render(flux_t, mask_t, card.render))
    elif supports_blocks(model, card.render):  # a 2D Map's blocks, never the image (annotate.blockpatch)
        pixels, blocks = None, block_values(flux, mask, card.render).to(device)
    else:
        pixels = model_input(flux, mask, card.render).to(device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        out = model(pixels) if pixels is not None else forward_blocks(model, blocks, card.render)
    prob = torch.softmax(out["class_logits"].float(), dim=1).cpu().numpy()
    z_mean = out["z_mean"].float().cpu().numpy().astype(np.float64)
    z_sigma = np.exp(out["z_log_sigma"].float().cpu().numpy().astype(np.float64))
    stellar = out["stellar"].float().cpu().numpy().astype(np.float64)
    norm = card.label_norm
    result = {"prob": prob, "z": norm["z"].decode(z_mean), "z_err": norm["z"].decode_sigma(z_mean, z_sigma)}
    for i, name in enumerate(("teff", "logg", "feh")):
        result[name] = norm[name].decode(stellar[:, i])
    # a head the model was not trained for predicts nothing
    from .tasks import TASK_NAMES, TASKS

    trained = card.training.get("tasks", TASK_NAMES)
    for name, task in TASKS.items():
        if name not in trained:
            for key in task.outputs:
                result[key] = np.full_like(result[key], np.nan, dtype=float)
    return result


def predict_store(model: torch.nn.Module, card: ModelCard, store_path, start: int = 0, stop: int | None = None,
                  batch_size: int = 64, device: str = "cpu", progress: Callable[[int], None] | None = None) -> dict:
    """Predict rows [start, stop) of a store. Rows not ingested OK get NaN; 'status' is the store's
    status per row and 'coverage' the fraction of usable grid pixels."""
    info = open_store(store_path)
    check_compatible(card, info.grid)
    stop = info.n_rows if stop is None else stop
    n = stop - start
    out = {"prob": np.full((n, len(CLASS_NAMES)), np.nan), "status": np.zeros(n, np.int8),
           "coverage": np.zeros(n)}
    for key in ("z", "z_err", "teff", "logg", "feh"):
        out[key] = np.full(n, np.nan)
    firsts = list(range(start, stop, batch_size))
    bf16 = precision(device) == "bf16"
    # the next batch is read (HDF5 + LZF) in a thread while the model works on this one
    with ThreadPoolExecutor(1) as reader:
        upcoming = reader.submit(read_rows, store_path, firsts[0], min(firsts[0] + batch_size, stop)) if firsts else None
        for i, first in enumerate(firsts):
            last = min(first + batch_size, stop)
            rows = upcoming.result()
            if i + 1 < len(firsts):
                upcoming = reader.submit(read_rows, store_path, firsts[i + 1], min(firsts[i + 1] + batch_size, stop))
            local = slice(first - start, last - start)
            out["status"][local] = rows["status"]
            out["coverage"][local] = 1.0 - rows["mask"].mean(axis=1)
            ok = rows["status"] == STATUS["OK"]
            if ok.any():
                batch = predict_batch(model, card, rows["flux"][ok], rows["mask"][ok], device, bf16=bf16)
                idx = np.arange(first - start, last - start)[ok]
                for key, values in batch.items():
                    out[key][idx] = values
            if progress is not None:
                progress(last - first)
    return out
