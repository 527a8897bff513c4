"""An exponential moving average of the weights being trained (a recipe's `ema`).

After each optimiser step t (1, 2, …) every floating-point tensor of the model's state moves the
average A toward the weights W: A ← d_t · A + (1 − d_t) · W, with d_t = min(ema, (1 + t) / (10 + t))
(the `num_updates` rule of TensorFlow's ExponentialMovingAverage), so that the average is not held
near the starting weights for the first thousands of steps: step 1's weights weigh 9/11. Validation, the best
checkpoint and the held-out figures then use A, not W (`applied`); the training itself goes on
with W. Other tensors (integer buffers) are copied as they are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def decay_at(ema: float, step: int) -> float:
    """The decay d_t of step `step` (1-based) for a recipe's `ema`."""
    return min(ema, (1.0 + step) / (10.0 + step))


class WeightAverage:
    """The average of a model's state: one tensor per state_dict entry, on the model's device."""

    def __init__(self, model: nn.Module, ema: float):
        self.ema = float(ema)
        self.tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average toward the model's weights after optimiser step `step` (1-based)."""
        d = decay_at(self.ema, step)
        for name, value in model.state_dict().items():
            mine = self.tensors[name]
            if mine.is_floating_point():
                mine.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                mine.copy_(value)

    @contextmanager
    def applied(self, model: nn.Module):
        """The model holds the average inside the block and its own weights again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.tensors)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def load(self, tensors: dict) -> None:
        """Restore a saved average (its `tensors`, as a training state holds them); its entries must
        be the model's."""
        if set(tensors) != set(self.tensors):
            missing = sorted(set(self.tensors) ^ set(tensors))[:3]
            raise ValueError(f"the saved weight average does not fit this model (entries {', '.join(missing)} differ)")
        for name, value in tensors.items():
            self.tensors[name].copy_(value)
