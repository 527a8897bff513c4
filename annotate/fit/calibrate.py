"""Calibrate the fit's σ_z: σ_v = √((scale · σ_stat)² + floor_class²), σ_stat from the curvature
of χ² (already scaled by √χ²_ν where that exceeds 1) and a floor per class for what the curvature
cannot see (template mismatch, which sets a limit at high S/N).

    python -m annotate.fit.calibrate            # writes annotate/fit/data/calibration.json

Fitted on the calibration half of the held-out templates (`evaluate.held_out_sample(half=
"calibration")`, its own seed), never on the evaluation half: one scale and three floors chosen
so that the pulls' robust spread is 1 in every S/N bin of every class.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from ..grid import WavelengthGrid
from ..metrics import robust_spread
from .decide import choose
from .evaluate import held_out_sample, ross_success
from .fitter import CALIBRATION_PATH, Fitter, FitSettings

SEED = 2027
SNR_EDGES = (0.0, 3.0, 8.0, 20.0, np.inf)
SCALES = np.round(np.arange(0.8, 2.51, 0.05), 2)
FLOORS_KMS = np.arange(0.0, 60.1, 1.0)


def calibrate(n: int = 600, seed: int = SEED) -> dict:
    grid = WavelengthGrid()
    sample = held_out_sample(n, seed, grid, half="calibration")
    fitter = Fitter(grid, FitSettings(prior=False, calibrated=False))
    choices = [choose(c, None, np.nan, np.nan, prior=False)
               for c in fitter.fit(sample["flux"], sample["ivar"], sample["mask"])]
    z = np.array([c.z for c in choices])
    sigma_v = np.array([c.z_err for c in choices]) * SPEED_OF_LIGHT_KMS / (1 + z)
    dv = (z - sample["z"]) * SPEED_OF_LIGHT_KMS / (1 + sample["z"])
    good = ross_success(np.array([c.spectype for c in choices]), z, sample["class"], sample["z"]) & np.isfinite(sigma_v)
    bins = np.digitize(sample["snr"], SNR_EDGES) - 1

    def cost(scale: float, floors: dict) -> float:
        total = 0.0
        for cls in CLASS_NAMES:
            for b in range(len(SNR_EDGES) - 1):
                chosen = good & (sample["class"] == cls) & (bins == b)
                if chosen.sum() >= 5:
                    sigma = np.hypot(scale * sigma_v[chosen], floors[cls])
                    total += np.log(robust_spread(dv[chosen] / sigma)) ** 2
        return total

    best = None
    for scale in SCALES:  # the floors are independent given the scale: one class at a time
        floors = {}
        for cls in CLASS_NAMES:
            floors[cls] = min(FLOORS_KMS, key=lambda f: cost(scale, {**{c: 0.0 for c in CLASS_NAMES}, cls: f})
                              - cost(scale, {c: 0.0 for c in CLASS_NAMES}))
        value = cost(scale, floors)
        if best is None or value < best[0]:
            best = (value, float(scale), {c: float(v) for c, v in floors.items()})
    _, scale, floors = best
    return {"scale": scale, "floor_kms": floors, "n": n, "seed": seed, "rows_used": int(good.sum()),
            "sample": "calibration half of the held-out MILES stars and populations, quasar draws of this seed",
            "made_by": "python -m annotate.fit.calibrate"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--out", type=Path, default=CALIBRATION_PATH)
    args = parser.parse_args(argv)
    result = calibrate(args.n)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"scale {result['scale']}, floors (km/s) {result['floor_kms']} from {result['rows_used']} rows: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
