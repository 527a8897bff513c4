"""What the model learns, one registry entry per task: the head that answers it, its loss, its
metrics, its part of the validation score, and the prediction keys it fills.

Training (the loss, the metrics, the score, the heads left untrained) and prediction (NaN from a
head a model was not trained for) go through `TASKS` instead of naming the tasks one by one, so a
new task is one entry here and a head in `model.SpectromerModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .model import STELLAR_LABELS


@dataclass(frozen=True)
class Task:
    name: str
    head: str                  # the SpectromerModel attribute of its linear head
    outputs: tuple             # the keys of `predict_batch`'s result it fills
    loss: Callable             # (model output, batch) -> scalar tensor; 0 with a graph when nothing is labelled
    metrics: Callable          # (rows of `training.evaluate.predict_rows`, label norms) -> dict
    score: Callable            # (metrics) -> its part of the validation score, higher is better


def _class_loss(out: dict, batch: dict) -> torch.Tensor:
    if (batch["class"] != -100).any():
        return nn.functional.cross_entropy(out["class_logits"].float(), batch["class"], ignore_index=-100)
    return out["class_logits"].sum() * 0.0


def _z_loss(out: dict, batch: dict) -> torch.Tensor:
    """Gaussian negative log-likelihood of the normalised z, with the predicted σ; for a binned
    head (`model.ZHead`), cross-entropy against the true z shared between its two nearest bins."""
    z_mask = batch["z_mask"]
    binned = "z_logits" in out
    if not z_mask.any():
        return (out["z_logits"].sum() if binned else out["z_mean"].sum() + out["z_log_sigma"].sum()) * 0.0
    if binned:
        from .model import two_hot

        target = two_hot(batch["z"][z_mask].float(), out["z_centres"])
        return -(target * out["z_logits"].float()[z_mask].log_softmax(dim=1)).sum(1).mean()
    mu, log_sigma = out["z_mean"].float()[z_mask], out["z_log_sigma"].float()[z_mask]
    return (0.5 * ((batch["z"][z_mask] - mu) / log_sigma.exp()) ** 2 + log_sigma).mean()


def _stellar_loss(out: dict, batch: dict) -> torch.Tensor:
    """Mean squared error over the known stellar parameters of stars."""
    s_mask = batch["stellar_mask"]
    if not s_mask.any():
        return out["stellar"].sum() * 0.0
    return ((out["stellar"].float() - batch["stellar"]) ** 2)[s_mask].mean()


def _class_metrics(rows: dict, norms: dict) -> dict:
    from .metrics import accuracy

    labelled = rows["cls_true"] != -100
    return {"class_accuracy": accuracy(rows["cls_true"][labelled], rows["cls_pred"][labelled]),
            "class_n": int(labelled.sum())}


def _z_metrics(rows: dict, norms: dict) -> dict:
    from .metrics import gaussian_crps, nmad, outlier_fraction, r2_score

    m, z_norm = rows["z_mask"], norms["z"]
    mu, sigma = rows["z_mu"][m].astype(float), rows["z_sigma"][m].astype(float)
    z_true, z_pred = z_norm.decode(rows["z_true"][m].astype(float)), z_norm.decode(mu)
    z_sigma = z_norm.decode_sigma(mu, sigma)
    return {"z_r2": r2_score(z_true, z_pred), "z_nmad": nmad(z_true, z_pred),
            "z_eta": outlier_fraction(z_true, z_pred), "z_crps": gaussian_crps(z_true, z_pred, z_sigma),
            "z_n": int(m.sum())}


def stellar_physical(rows: dict, norms: dict) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) (n, 3) Teff, log g, [Fe/H] in physical units, NaN where unlabelled."""
    true = np.full(rows["stellar_true"].shape, np.nan)
    pred = np.full(rows["stellar_pred"].shape, np.nan)
    for i, key in enumerate(STELLAR_LABELS):
        m = rows["stellar_mask"][:, i]
        true[m, i] = norms[key].decode(rows["stellar_true"][m, i].astype(float))
        pred[:, i] = norms[key].decode(rows["stellar_pred"][:, i].astype(float))
    return true, pred


def _stellar_metrics(rows: dict, norms: dict) -> dict:
    from .metrics import r2_score

    true, pred = stellar_physical(rows, norms)
    metrics = {}
    for i, key in enumerate(STELLAR_LABELS):
        m = rows["stellar_mask"][:, i]
        metrics[f"{key}_r2"], metrics[f"{key}_n"] = r2_score(true[m, i], pred[m, i]), int(m.sum())
    return metrics


def _stellar_score(metrics: dict) -> float:
    values = [metrics.get(f"{k}_r2", math.nan) for k in STELLAR_LABELS]
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


TASKS = {task.name: task for task in (
    Task("class", "class_head", ("prob",), _class_loss, _class_metrics,
         lambda metrics: metrics.get("class_accuracy", math.nan)),
    Task("z", "z_head", ("z", "z_err"), _z_loss, _z_metrics, lambda metrics: metrics.get("z_r2", math.nan)),
    Task("stellar", "stellar_head", STELLAR_LABELS, _stellar_loss, _stellar_metrics, _stellar_score),
)}
TASK_NAMES = tuple(TASKS)
