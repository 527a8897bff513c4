"""The multi-task loss: cross-entropy for the class, a Gaussian negative log-likelihood for z,
mean squared error for the stellar parameters where they are known, weighted per task."""

from __future__ import annotations

import torch
from torch import nn

from .recipe import TASKS


def multitask_loss(out: dict, batch: dict, weights: dict, tasks: tuple = TASKS) -> tuple[torch.Tensor, dict]:
    """Cross-entropy (class) + Gaussian NLL (z mean and σ) + masked MSE (stellar, stars only),
    over `tasks`; a task with no labelled row in the batch adds zero."""
    parts = {}
    if "class" in tasks:
        labelled = batch["class"] != -100
        parts["class"] = (nn.functional.cross_entropy(out["class_logits"].float(), batch["class"], ignore_index=-100)
                          if labelled.any() else out["class_logits"].sum() * 0.0)
    if "z" in tasks:
        z_mask = batch["z_mask"]
        if z_mask.any():
            mu, log_sigma = out["z_mean"].float()[z_mask], out["z_log_sigma"].float()[z_mask]
            parts["z"] = (0.5 * ((batch["z"][z_mask] - mu) / log_sigma.exp()) ** 2 + log_sigma).mean()
        else:
            parts["z"] = (out["z_mean"].sum() + out["z_log_sigma"].sum()) * 0.0
    if "stellar" in tasks:
        s_mask = batch["stellar_mask"]
        parts["stellar"] = (((out["stellar"].float() - batch["stellar"]) ** 2)[s_mask].mean() if s_mask.any()
                            else out["stellar"].sum() * 0.0)
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}
