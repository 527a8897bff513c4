"""Resumable training: the state of a run, saved every N steps, without pickle.

A state is a folder `<out>/state/step-00001200/` holding

    model.safetensors       the weights being trained (float32)
    ema.safetensors         their moving average, when the recipe keeps one (`ema`; average.py)
    optimizer.safetensors   the AdamW moments per parameter, the RNG states
    state.json              step, epoch, batch within the epoch, the optimiser's hyper-parameters,
                            the LR schedule, the history so far, the best score, the recipe

written as `step-00001200.tmp/` and renamed when complete, so a folder without `.tmp` is whole;
older states are then removed. After a crash (or a SLURM requeue) `latest_state` finds the newest
whole state and training continues from the batch after it, with the same data order.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

STATE_DIR = "state"


@dataclass
class TrainState:
    """Where a run stands: `step` optimiser steps done; the next batch is `batch` of `epoch` (0-based)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    history: list | None = None
    best: dict | None = None
    loss_sum: float = 0.0  # training loss summed over the batches of this epoch so far

    def to_json(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch, "history": self.history or [],
                "best": self.best, "loss_sum": self.loss_sum}


def save_state(out_dir: str | Path, state: TrainState, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
               schedule, recipe: dict, keep: int = 1, world_size: int = 1, average=None) -> Path:
    """Write the state atomically (tmp folder + rename), then drop all but the `keep` newest. A
    state saved again at the same step (end of an epoch after a save on its last batch) replaces
    the first only after the new one is in place."""
    from safetensors.torch import save_file

    root = Path(out_dir) / STATE_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_on_cpu(model.state_dict()), str(tmp / "model.safetensors"))
    if average is not None:
        save_file(_on_cpu(average.tensors), str(tmp / "ema.safetensors"))
    optim = optimiser.state_dict()
    tensors, per_param = {}, {}
    for index, values in optim["state"].items():
        per_param[str(index)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                per_param[str(index)][key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    payload = {**state.to_json(), "recipe": recipe, "world_size": world_size, "param_groups": optim["param_groups"],
               "param_scalars": per_param, "schedule": schedule.state_dict()}
    (tmp / "state.json").write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    aside = root / (final.name + ".old")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
    tmp.rename(final)
    older = sorted(p for p in root.iterdir() if p.name.startswith("step-") and p != final)
    for old in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _on_cpu(tensors: dict) -> dict:
    """Named tensors as safetensors writes them: detached, on the CPU, contiguous."""
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if torch.is_tensor(value):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


def latest_state(out_dir: str | Path) -> Path | None:
    """The newest whole state folder of a run, or None."""
    root = Path(out_dir) / STATE_DIR
    if not root.is_dir():
        return None
    whole = [p for p in root.iterdir() if p.name.startswith("step-") and not p.name.endswith(".tmp")
             and (p / "state.json").is_file()]
    # newest step first; at the same step a state set aside (".old") only when its successor is missing
    whole.sort(key=lambda p: (p.name.split(".")[0], not p.name.endswith(".old")))
    return whole[-1] if whole else None


def read_state_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder}: unreadable training state ({exc})") from None


def load_state(folder: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer, schedule,
               average=None) -> TrainState:
    """Restore weights, optimiser moments, schedule and RNG from a state folder, and the weights'
    moving average into `average` (an average.WeightAverage) when the recipe keeps one."""
    from safetensors.torch import load_file

    raw = read_state_json(folder)
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors"), device="cpu"))
        tensors = load_file(str(folder / "optimizer.safetensors"), device="cpu")
        if average is not None:
            average.load(load_file(str(folder / "ema.safetensors"), device="cpu"))
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{folder}: training state does not load ({str(exc).splitlines()[0]})") from None
    device = next(model.parameters()).device
    per_param: dict = {}
    for name, tensor in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = tensor if key == "step" else tensor.to(device)
    for index, scalars in raw["param_scalars"].items():
        per_param.setdefault(int(index), {}).update(scalars)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in raw["param_groups"]]
    try:
        optimiser.load_state_dict({"state": per_param, "param_groups": groups})
    except (ValueError, KeyError) as exc:  # e.g. a state saved by a version that trained other parameters
        raise CheckpointError(f"{folder}: the optimiser state does not fit this model "
                              f"({str(exc).splitlines()[0]}); train into a new --out") from None
    schedule.load_state_dict(raw["schedule"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return TrainState(step=raw["step"], epoch=raw["epoch"], batch=raw["batch"], history=raw["history"],
                      best=raw["best"], loss_sum=raw["loss_sum"])
