"""The multi-task loss: each task's own loss (`annotate.tasks`: cross-entropy for the class, a
Gaussian negative log-likelihood for z, mean squared error for the stellar parameters where they
are known), weighted per task."""

from __future__ import annotations

import torch

from ..tasks import TASK_NAMES, TASKS


def multitask_loss(out: dict, batch: dict, weights: dict, tasks: tuple = TASK_NAMES) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the losses of `tasks`; a task with no labelled row in the batch adds zero."""
    parts = {name: TASKS[name].loss(out, batch) for name in tasks}
    total = sum(weights.get(k, 1.0) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}
