"""The choice among a spectrum's refined candidates, and the ViT's say in it.

The rule (documented in the README, its inputs written as columns):
1. The solution is the candidate with the lowest χ²; PRED_DELTACHI2 is the χ² of the best
   candidate of another class, or of the same class more than 1,000 km/s away, minus that.
2. Near-tie: when the best does not agree with the ViT (the ViT's most probable class, its z
   within max(3σ_vit, 1,000 km/s) of the ViT's z) and a candidate that does lies within
   small_deltachi2 of it, the lowest such candidate is taken; Δχ² then is negative (the χ² paid
   for the ViT's choice). Otherwise the lowest χ² stands.
3. Flags: SMALL_DELTACHI2 (Δχ² < small_deltachi2 · max(χ²_ν, 1): where the fit is worse than
   the noise, as when a survey's ivar is too large, every χ² difference is inflated by χ²_ν, as
   σ_z is), Z_AT_EDGE (the minimum lies at the edge of the
   range scanned), FIT_VIT_DISAGREE (the final class is not the ViT's, or the final z fails the
   Ross et al. 2020 rule against the ViT's z by more than 3σ_vit), FIT_FAILED (no candidate:
   the ViT's answer is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from ..flags import PredFlag
from ..metrics import CATASTROPHIC_KMS
from .settings import Candidate

FAR_KMS = 1000.0


@dataclass
class Choice:
    spectype: str
    subtype: str
    z: float
    z_err: float
    deltachi2: float
    rchi2: float
    flags: int
    rule: str  # 'chi2', 'vit-tie' or 'no-fit'
    best: Candidate | None


def velocity_kms(z_a: float, z_b: float) -> float:
    return abs(z_a - z_b) * SPEED_OF_LIGHT_KMS / (1.0 + z_b)


def distinct(a: Candidate, b: Candidate) -> bool:
    """Another solution: another class, or the same class more than FAR_KMS away."""
    return a.spectype != b.spectype or velocity_kms(a.z, b.z) > FAR_KMS


def agrees_with_vit(cand: Candidate, vit_class: str, vit_z: float, vit_z_err: float) -> bool:
    if cand.spectype != vit_class or not np.isfinite(vit_z):
        return False
    tolerance = max(3.0 * (vit_z_err if np.isfinite(vit_z_err) else 0.0), FAR_KMS / SPEED_OF_LIGHT_KMS * (1.0 + vit_z))
    return abs(cand.z - vit_z) <= tolerance


def choose(candidates: list[Candidate], vit_prob: np.ndarray | None, vit_z: float, vit_z_err: float,
           small_deltachi2: float = 9.0, prior: bool = True) -> Choice:
    """The solution for one spectrum (see the module's rule)."""
    has_vit = vit_prob is not None and np.isfinite(vit_prob).all()
    vit_class = CLASS_NAMES[int(np.argmax(vit_prob))] if has_vit else ""
    if not candidates:
        return Choice(vit_class, "", vit_z, vit_z_err, np.nan, np.nan, int(PredFlag.FIT_FAILED), "no-fit", None)
    ordered = sorted(candidates, key=lambda c: c.chi2)
    best = ordered[0]
    runner = next((c for c in ordered[1:] if distinct(c, best)), None)
    deltachi2 = runner.chi2 - best.chi2 if runner is not None else np.inf
    rule = "chi2"
    if prior and has_vit and not agrees_with_vit(best, vit_class, vit_z, vit_z_err):
        backed = next((c for c in ordered[1:] if c.chi2 - best.chi2 < small_deltachi2 and c.source != "coarse"
                       and agrees_with_vit(c, vit_class, vit_z, vit_z_err)), None)  # a refined one only
        if backed is not None:
            best, deltachi2, rule = backed, best.chi2 - backed.chi2, "vit-tie"
    flags = 0
    excess = best.rchi2 if np.isfinite(best.rchi2) and best.rchi2 > 1.0 else 1.0
    if deltachi2 < small_deltachi2 * excess:
        flags |= int(PredFlag.SMALL_DELTACHI2)
    if best.at_edge:
        flags |= int(PredFlag.Z_AT_EDGE)
    if has_vit:
        offset = velocity_kms(best.z, vit_z) if np.isfinite(vit_z) else np.inf
        limit = CATASTROPHIC_KMS.get(best.spectype, FAR_KMS)
        beyond_sigma = abs(best.z - vit_z) > 3.0 * (vit_z_err if np.isfinite(vit_z_err) else 0.0)
        if best.spectype != vit_class or (offset > limit and beyond_sigma):
            flags |= int(PredFlag.FIT_VIT_DISAGREE)
    return Choice(best.spectype, best.subtype, best.z, best.z_err, float(deltachi2), best.rchi2, flags, rule, best)
