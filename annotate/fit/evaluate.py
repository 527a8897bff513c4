"""Score the template fit on simulated objects made from templates its bases never saw: the
held-out MILES stars, the held-out populations, quasar-model draws of another seed (the σ_z
calibration, `annotate.fit.calibrate`, never sees them: it leaves training templates out instead).

    python -m annotate.fit.evaluate --n 300 --seed 11

Prints, per class, the Ross et al. (2020) success rate at S/N ≥ 5 and 2–5, the NMAD of
Δz/(1+z) at S/N ≥ 5, the class accuracy, the pulls' robust spread, the fraction within 1σ, and
the fit's time per spectrum. By default the ViT is not used (prior off: the fit's own figures);
`--prior` seeds it with the shipped ViT as `annotate run` does.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from .. import CLASS_NAMES
from ..grid import WavelengthGrid
from ..metrics import catastrophic, nmad, robust_spread
from ..simulate.realism import Realism
from ..simulate.spectra import SimulationSettings, draw_sample
from ..simulate.templates import load_library
from .bases import load_bases
from .fitter import Fitter, FitSettings
from .settings import QSO_LINE_SCATTER, load_calibration
from .stage import fit_rows


def held_out_sample(n: int, seed: int, grid: WavelengthGrid, realism: float = 0.0, stars_only: bool = False,
                    cosmic_rays: float = 0.0, qso_line_scatter: float = QSO_LINE_SCATTER,
                    star_forming: bool = False, starburst: float = 0.0, weak_lines: bool = False) -> dict:
    """n simulated spectra from the held-out stars and populations and quasar draws of `seed`,
    with the simulator's realism effects at `realism` strength (0: none), the quasars' lines off
    their systemic velocity by `qso_line_scatter` × Shen et al.'s scatter (as the σ_z calibration's
    sample; 0: at it, as before 2026-12-07) and cosmic-ray hits left in a `cosmic_rays` share of
    them (`Realism.cosmic_ray_probability`; both need realism > 0); with `star_forming`, galaxies
    with lines of EW(Hα) ≥ 3 Å given the continua of ongoing star formation
    (`Realism.star_forming_continuum`), with `starburst` that share of the galaxies with lines
    given a starburst's (`Realism.starburst_share`), with `weak_lines` the weaker nebular lines
    (`Realism.weak_nebular_lines`); only stars with `stars_only`."""
    if cosmic_rays > 0 and realism <= 0:
        raise ValueError("cosmic rays are a realism effect: give realism > 0 with them")
    if (star_forming or starburst > 0 or weak_lines) and realism <= 0:
        raise ValueError("star-forming continua, starbursts and weak lines are realism effects: give realism > 0 with them")
    bases = load_bases()
    lib = load_library()
    stars, held = bases.held_out_stars, bases.held_out_populations
    settings = SimulationSettings(realism=Realism(strength=realism, cosmic_ray_probability=cosmic_rays,
                                                  qso_line_scatter=qso_line_scatter,
                                                  star_forming_continuum=star_forming, starburst_share=starburst,
                                                  weak_nebular_lines=weak_lines)
                                  if realism > 0 else None)
    if stars_only:
        settings = replace(settings, class_fractions=(0.0, 0.0, 1.0))
    return draw_sample(n, lib.with_populations(held), grid, seed=seed, star_indices=stars, settings=settings)


def ross_success(spectype: np.ndarray, z: np.ndarray, true_class: np.ndarray, true_z: np.ndarray) -> np.ndarray:
    """(n,) bool: the class right and the z within the Ross et al. (2020) limits of the truth
    (|Δv| under 1,000 km/s for galaxies and stars, 3,000 km/s for quasars)."""
    z = np.asarray(z, float)
    return (np.asarray(spectype) == np.asarray(true_class)) & np.isfinite(z) & ~catastrophic(z, true_z, true_class)


TARGET_SNR_BINS = (("snr_ge_5", 5.0, np.inf), ("snr_2_5", 2.0, 5.0))  # the targets: S/N ≥ 5 and 2–5


def success_by_target_bin(success: np.ndarray, chosen: np.ndarray, snr: np.ndarray) -> dict:
    """{'n_<bin>': rows, 'success_<bin>': their success rate (NaN for none)} of rows `chosen` in
    each of TARGET_SNR_BINS."""
    row = {}
    for name, lo, hi in TARGET_SNR_BINS:
        part = chosen & (snr >= lo) & (snr < hi)
        row[f"n_{name}"] = int(part.sum())
        row[f"success_{name}"] = float(success[part].mean()) if part.any() else float("nan")
    return row


def evaluate(n: int, seed: int, prior: bool = False, realism: float = 0.0, skip_below: float | None = None,
             model: str | None = None, stars_only: bool = False, cosmic_rays: float = 0.0,
             flux_offset: tuple | None = None, qso_line_scatter: float = QSO_LINE_SCATTER, star_forming: bool = False,
             starburst: float = 0.0, weak_lines: bool = False, **settings) -> dict:
    """The fit's figures on `held_out_sample(n, seed, realism, stars_only)`; with `prior`, seeded
    by the ViT of `model` (default: the shipped default model) as in `annotate run` (the ViT's
    own time not counted). `settings`: other FitSettings fields than the defaults. 'stellar':
    stellarbaseline.stellar_report of the fit's labels (and the ViT's, with `prior`) on the
    held-out stars the fit classed STAR. With `cosmic_rays`, 'cosmic_rays': the figures of the
    spectra with hits and of those without (`_hit_figures`). `flux_offset` (lo, hi): a constant
    uniform in [lo, hi] times each spectrum's median |flux| added to its usable pixels (a sky
    subtracted wrongly; `add_flux_offset`), 'flux_offset_flagged' the share of the true stars the
    fit classed STAR that got PredFlag.FLUX_OFFSET."""
    grid = WavelengthGrid()
    sample = held_out_sample(n, seed, grid, realism, stars_only, cosmic_rays, qso_line_scatter, star_forming,
                             starburst, weak_lines)
    if flux_offset is not None:
        sample["flux"] = add_flux_offset(sample["flux"], sample["mask"], flux_offset, seed)
    vit = None
    if prior:
        from ..checkpoint import load_checkpoint
        from ..predict import predict_batch

        import torch

        vit_model, card = load_checkpoint(model, "cpu")
        with torch.inference_mode():
            vit = predict_batch(vit_model, card, sample["flux"], sample["mask"])
    if skip_below is not None:
        settings["skip_below"] = skip_below
    fitter = Fitter(grid, FitSettings(prior=prior, **settings))
    start = time.perf_counter()
    fit = fit_rows(fitter, sample["flux"], sample["ivar"], sample["mask"], vit)
    seconds = time.perf_counter() - start
    z_fit, z_err, cls_fit = fit["fit_z"], fit["fit_z_err"], fit["fit_class"]
    truth, z_true, snr = sample["class"], sample["z"], sample["snr"]
    success = ross_success(cls_fit, z_fit, truth, z_true)
    pull = (z_fit - z_true) / z_err
    out = {"n": n, "seed": seed, "prior": prior, "realism": realism, "seconds_per_spectrum": seconds / n, "class_accuracy": float(np.mean(cls_fit == truth))}
    for cls in CLASS_NAMES:
        row = success_by_target_bin(success, truth == cls, snr)
        good = (truth == cls) & (snr >= 5) & success
        row["nmad_snr_ge_5"] = nmad(z_true[good], z_fit[good])
        ok = (truth == cls) & success & np.isfinite(pull)
        p = pull[ok]
        row["pull_spread"] = robust_spread(p)
        row["within_1sigma"] = float(np.mean(np.abs(p) <= 1)) if ok.any() else float("nan")
        if cls == "QSO":   # a scale and floor per bin of fitted z (the calibration's edges)
            edges = load_calibration()["z_edges"]["QSO"]
            row["z_edges"] = edges
            z_bin = np.searchsorted(edges, z_fit, side="right")
            row["within_1sigma_by_z"] = [float(np.mean(np.abs(pull[ok & (z_bin == k)]) <= 1))
                                         if (ok & (z_bin == k)).any() else float("nan") for k in range(len(edges) + 1)]
        if vit is not None:   # the ViT's own σ (PRED_Z_ERR_VIT) over the same rows
            vit_pull = (vit["z"] - z_true) / vit["z_err"]
            row["vit_within_1sigma"] = float(np.mean(np.abs(vit_pull[ok]) <= 1)) if ok.any() else float("nan")
        out[cls] = row
    out["stellar"] = _stellar_figures(sample, fit, vit)
    from ..flags import PredFlag

    stars = (truth == "STAR") & (cls_fit == "STAR")
    out["flux_offset_flagged"] = float(np.mean((fit["fit_flags"][stars] & int(PredFlag.FLUX_OFFSET)) != 0)) \
        if stars.any() else float("nan")
    if "cosmic_ray_pixels" in sample:
        out["cosmic_rays"] = _hit_figures(sample, fit, success)
    return out


def add_flux_offset(flux: np.ndarray, mask: np.ndarray, span: tuple, seed: int) -> np.ndarray:
    """`flux` (n, n_pix) with a constant uniform in span = (lo, hi) times each row's median |flux|
    over its usable pixels added to those pixels (its own stream of `seed`)."""
    rng = np.random.default_rng([int(seed), 0x0FF5E7])
    usable = ~np.asarray(mask, bool)
    level = np.array([np.median(np.abs(row[good])) if good.any() else 0.0 for row, good in zip(flux, usable)])
    constant = rng.uniform(span[0], span[1], len(flux)) * level
    return np.where(usable, flux + constant[:, None], flux).astype(flux.dtype)


def _hit_figures(sample: dict, fit: dict, success: np.ndarray) -> dict:
    """{'hit'/'clean': {'n', 'success', 'flagged' (PredFlag.SPIKES_LEFT_OUT), 'wrong_unflagged'
    (failed Ross et al. without SMALL_DELTACHI2 or FIT_VIT_DISAGREE)}} over the spectra with and
    without cosmic-ray hits."""
    from ..flags import PredFlag

    flags = fit["fit_flags"]
    spikes = (flags & int(PredFlag.SPIKES_LEFT_OUT)) != 0
    warned = (flags & int(PredFlag.SMALL_DELTACHI2 | PredFlag.FIT_VIT_DISAGREE)) != 0
    figures = {}
    for name, rows in (("hit", sample["cosmic_ray_pixels"] > 0), ("clean", sample["cosmic_ray_pixels"] == 0)):
        figures[name] = {"n": int(rows.sum()),
                         "success": float(success[rows].mean()) if rows.any() else float("nan"),
                         "flagged": float(spikes[rows].mean()) if rows.any() else float("nan"),
                         "wrong_unflagged": int((rows & ~success & ~warned).sum())}
    return figures


def _stellar_figures(sample: dict, fit: dict, vit: dict | None) -> dict:
    """{'n', 'fit': report[, 'vit': report]} over true stars that the fit classed STAR."""
    from ..stellarbaseline import LABELS, stellar_report

    rows = (sample["class"] == "STAR") & (fit["fit_class"] == "STAR")
    true = np.stack([sample[key][rows] for key in LABELS], axis=1)
    figures = {"n": int(rows.sum()),
               "fit": stellar_report(true, np.stack([fit[f"fit_{key}"][rows] for key in LABELS], axis=1), sample["snr"][rows],
                                     sigma=np.stack([fit[f"fit_{key}_err"][rows] for key in LABELS], axis=1))}
    if vit is not None:
        figures["vit"] = stellar_report(true, np.stack([vit[key][rows] for key in LABELS], axis=1), sample["snr"][rows])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--prior", action="store_true", help="seed the fit with the shipped ViT, as annotate run does")
    parser.add_argument("--model", default=None, help="with --prior: the checkpoint folder (default: the shipped model)")
    parser.add_argument("--realism", type=float, default=0.0,
                        help="strength of the simulator's realism effects (annotate/simulate/realism.py); 0: none")
    parser.add_argument("--skip-below", type=float, default=None,
                        help="with --prior: skip classes whose ViT probability is under this when the ViT is "
                             "confident (FitSettings.skip_below; default: scan every class)")
    parser.add_argument("--cosmic-rays", type=float, default=0.0, metavar="P",
                        help="with --realism: leave cosmic-ray hits in this share of the spectra (0: none)")
    parser.add_argument("--flux-offset", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="add to each spectrum a constant uniform in [LO, HI] times its median |flux| "
                             "(a sky subtracted wrongly)")
    parser.add_argument("--stars", action="store_true", help="a sample of held-out stars only (stellar parameters)")
    parser.add_argument("--qso-line-scatter", type=float, default=QSO_LINE_SCATTER, metavar="S",
                        help="with --realism: quasars' lines off their systemic velocity by S times Shen et al. "
                             f"(2016)'s scatter (default {QSO_LINE_SCATTER:g}, as the σ_z calibration; 0: at it)")
    parser.add_argument("--star-forming", action="store_true",
                        help="with --realism: star-forming galaxies with the continua of ongoing star formation "
                             "(Realism.star_forming_continuum; off by default, as in the earlier figures)")
    parser.add_argument("--starburst", type=float, default=0.0, metavar="SHARE",
                        help="with --realism: that share of the galaxies with lines given a starburst's EW(Hα) "
                             "(Realism.starburst_share; default 0)")
    parser.add_argument("--weak-lines", action="store_true",
                        help="with --realism: galaxies with lines also given the weaker nebular lines "
                             "(Realism.weak_nebular_lines; off by default)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="another FitSettings value than the default, e.g. --set walk_margin=inf (numbers only)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        if field not in FitSettings.__dataclass_fields__ or not value:
            parser.error(f"--set {item}: not FIELD=VALUE with a FitSettings field")
        overrides[field] = type(getattr(FitSettings(), field))(float(value))
    if args.cosmic_rays > 0 and args.realism <= 0:
        parser.error("--cosmic-rays needs --realism above 0")
    if not 0.0 <= args.starburst <= 1.0:
        parser.error(f"--starburst {args.starburst:g}: a share in [0, 1]")
    for flag, value in (("--star-forming", args.star_forming), ("--starburst", args.starburst > 0),
                        ("--weak-lines", args.weak_lines)):
        if value and args.realism <= 0:
            parser.error(f"{flag} needs --realism above 0")
    result = evaluate(args.n, args.seed, args.prior, args.realism, args.skip_below, args.model, args.stars,
                      args.cosmic_rays, args.flux_offset, args.qso_line_scatter, args.star_forming, args.starburst,
                      args.weak_lines, **overrides)
    print("\n".join(report_lines(result)))
    return 0


def report_lines(result: dict) -> list[str]:
    """The figures of `evaluate` in words: a line for the sample, then one per class."""
    head = (f"{result['n']} held-out objects (seed {result['seed']}, prior {'on' if result['prior'] else 'off'}, "
            f"realism {result['realism']:g}): class accuracy {result['class_accuracy']:.3f}, "
            f"{1e3 * result['seconds_per_spectrum']:.1f} ms per spectrum")
    lines = [head] + [
        f"  {cls:<6} success S/N≥5 {row['success_snr_ge_5']:.3f} (n={row['n_snr_ge_5']}), S/N 2-5 "
        f"{row['success_snr_2_5']:.3f} (n={row['n_snr_2_5']}); NMAD S/N≥5 {row['nmad_snr_ge_5']:.2e}; "
        f"pull spread {row['pull_spread']:.2f}, within 1σ {row['within_1sigma']:.2f}"
        + (f" (by fitted z, edges {' / '.join(f'{e:g}' for e in row['z_edges'])}: "
           + " / ".join(f"{v:.2f}" for v in row["within_1sigma_by_z"]) + ")" if "within_1sigma_by_z" in row else "")
        + (f"; the ViT's σ: within 1σ {row['vit_within_1sigma']:.2f}" if "vit_within_1sigma" in row else "")
        for cls, row in ((c, result[c]) for c in CLASS_NAMES)]
    for name, row in result.get("cosmic_rays", {}).items():
        lines.append(f"  {'with' if name == 'hit' else 'without'} cosmic-ray hits: {row['n']} spectra, success "
                     f"{row['success']:.3f}, spikes left out in {row['flagged']:.3f}, failed unflagged "
                     f"{row['wrong_unflagged']}")
    stellar = result.get("stellar", {})
    if stellar.get("n"):
        lines.append(f"  stars classed STAR: {stellar['n']} (FLUX_OFFSET {result['flux_offset_flagged']:.3f}); "
                     "RMSE by S/N 0-10/10-20/20-50/≥50, R² at S/N≥20")
        for source in ("fit", "vit"):
            for label, report in stellar.get(source, {}).items():
                rmse = " / ".join(f"{row['rmse']:.3g}" for row in report["by_snr"])
                within = ""
                if "within_1sigma" in report:
                    within = (f"; within 1σ {report['within_1sigma']:.2f} ("
                              + " / ".join(f"{row['within_1sigma']:.2f}" for row in report["by_snr"]) + ")")
                lines.append(f"    {source:<3} {label:<4} {rmse}; R² {report['r2_snr_ge_20']:.3f}{within}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
