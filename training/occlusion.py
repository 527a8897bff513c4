"""What the shipped models read: how their class probabilities move when a stretch of the spectrum
is hidden (occlusion), for the two real SDSS DR18 spectra in ppxf and for simulated objects like
them. Evaluation only: the real files feed nothing back. Prints the numbers of
annotate/simulate/REALISM.md ("What the model reads") and writes its figure; deterministic.

Each spectrum is shown to the model once whole and once per window of WINDOW store pixels
(1e-4 dex each; windows every STEP pixels) with that window masked, which the renderer draws as
background, as it does the masked stretches the model was trained with. A window's effect is
P(GALAXY | window hidden) − P(GALAXY | whole): positive where the window holds what argues
against GALAXY. For the simulated sets it also counts the objects whose class the window's
hiding turns (a star to GALAXY, a galaxy away from it).

    python training/occlusion.py [--models spectromer-tiny spectromer-medium] [--n 150]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import ppxf  # noqa: E402
import torch  # noqa: E402

from annotate import CLASS_NAMES  # noqa: E402
from annotate.checkpoint import load_checkpoint  # noqa: E402
from annotate.grid import WavelengthGrid  # noqa: E402
from annotate.predict import predict_batch  # noqa: E402
from annotate.simulate.dataset import HELD_OUT_STAR_FRACTION, held_out_star_indices  # noqa: E402
from annotate.simulate.realism import Realism  # noqa: E402
from annotate.simulate.spectra import SimulationSettings, draw_sample  # noqa: E402
from annotate.simulate.templates import load_library  # noqa: E402
from annotate.ingest import ingest_rows  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "annotate" / "simulate" / "realism-plots"
PPXF = Path(ppxf.__file__).parent / "spectra"
WINDOW, STEP = 48, 24  # store pixels: 48 × 1e-4 dex is 1.1 % in wavelength (~60 Å at 5500 Å), a long bad column
GALAXY = CLASS_NAMES.index("GALAXY")
SEED = 4242  # no recipe trains on this seed's objects; its stars are the held-out MILES stars
LIKE_REAL = SimulationSettings(realism=Realism(strength=1.0), snr=(40.0, 60.0))  # the training's realism, S/N of the two


def real_rows(grid: WavelengthGrid) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = ["NGC3522", "NGC3073"]
    rows = ingest_rows({"start": 0, "paths": [str(PPXF / f"{n}_SDSS_DR18.fits") for n in names],
                        "refused": [False] * len(names), "grid": grid.to_dict(), "reader": None})
    return names, rows["flux"], rows["mask"]


def look_alikes(n: int, grid: WavelengthGrid) -> list[tuple[str, dict, bool]]:
    """[(label, sample, whether its objects are stars)]: simulated objects like the two real ones
    (LIKE_REAL): galaxies at z < 0.02, and held-out MILES stars of 3,800-5,800 K (the G and K stars
    whose spectra an old stellar population resembles)."""
    lib = load_library()
    held = held_out_star_indices(lib.n_star, HELD_OUT_STAR_FRACTION, seed=0)
    galaxies = draw_sample(n, lib, grid, seed=SEED, star_indices=held,
                           settings=replace(LIKE_REAL, class_fractions=(1, 0, 0), z_galaxy=(0.0, 0.02)))
    cool = held[(lib.star_teff[held] > 3800) & (lib.star_teff[held] < 5800)]
    stars = draw_sample(n, lib, grid, seed=SEED + 1, star_indices=cool,
                        settings=replace(LIKE_REAL, class_fractions=(0, 0, 1)))
    return [("simulated galaxies, z < 0.02", galaxies, False), ("held-out G/K stars", stars, True)]


LOW_Z_BINS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05)


def low_z_recall(model, card, n: int, grid: WavelengthGrid) -> list[tuple[float, float, float]]:
    """[(z low, z high, fraction classed GALAXY)]: simulated galaxies like the look-alikes
    (LIKE_REAL) in narrow redshift bins, the whole spectrum shown."""
    lib = load_library()
    out = []
    for k, (lo, hi) in enumerate(zip(LOW_Z_BINS[:-1], LOW_Z_BINS[1:])):
        settings = replace(LIKE_REAL, class_fractions=(1, 0, 0), z_galaxy=(lo, hi))
        sample = draw_sample(n, lib, grid, seed=SEED + 10 + k, settings=settings)
        prob = probabilities(model, card, sample["flux"], sample["mask"])
        out.append((lo, hi, float(np.mean(np.argmax(prob, axis=1) == GALAXY))))
    return out


def windows(n_pix: int) -> list[tuple[int, int]]:
    return [(a, min(a + WINDOW, n_pix)) for a in range(0, n_pix - WINDOW // 2, STEP)]


def span_text(grid: WavelengthGrid, span: tuple[int, int]) -> str:
    return f"{grid.wavelength[span[0]]:.0f}-{grid.wavelength[span[1] - 1]:.0f} Å"


def probabilities(model, card, flux: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
    """P(class) (n, 3) of spectra (n, n_pix), `batch` at a time."""
    with torch.inference_mode():
        return np.concatenate([predict_batch(model, card, flux[a:a + batch], mask[a:a + batch])["prob"]
                               for a in range(0, len(flux), batch)])


def occlusion(model, card, flux: np.ndarray, mask: np.ndarray, spans) -> tuple[np.ndarray, np.ndarray]:
    """(P(class) whole (n, 3), P(GALAXY) with each window hidden minus whole (n, n_windows))."""
    whole = probabilities(model, card, flux, mask)
    effect = np.empty((len(flux), len(spans)))
    for j, (lo, hi) in enumerate(spans):
        hidden = mask.copy()
        hidden[:, lo:hi] = True
        effect[:, j] = probabilities(model, card, flux, hidden)[:, GALAXY] - whole[:, GALAXY]
    return whole, effect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["spectromer-tiny", "spectromer-medium"])
    parser.add_argument("--n", type=int, default=150, help="simulated objects per comparison set")
    args = parser.parse_args(argv)
    grid = WavelengthGrid()
    spans = windows(grid.n_pix)
    centre = np.array([grid.wavelength[(lo + hi - 1) // 2] for lo, hi in spans])
    names, real_flux, real_mask = real_rows(grid)
    sims = look_alikes(args.n, grid)
    fig, axes = plt.subplots(len(args.models), 1, figsize=(9, 3.2 * len(args.models)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], args.models):
        model, card = load_checkpoint(name, "cpu")
        recall = low_z_recall(model, card, args.n, grid)
        print(f"{name}, simulated galaxies classed GALAXY by z: "
              + ", ".join(f"{lo:g}-{hi:g} {frac:.2f}" for lo, hi, frac in recall))
        whole, effect = occlusion(model, card, real_flux, real_mask, spans)
        for i, obj in enumerate(names):
            p = " ".join(f"{c} {v:.2f}" for c, v in zip(CLASS_NAMES, whole[i]))
            top = np.argsort(effect[i])[::-1][:3]
            raises = ", ".join(f"{span_text(grid, spans[j])} {effect[i, j]:+.2f}" for j in top)
            print(f"{name}, {obj}: whole {p}; hiding raises P(GALAXY) most at {raises}; "
                  f"largest fall {effect[i].min():+.2f}")
            ax.plot(centre, effect[i], lw=1.6, label=f"SDSS {obj} (P(GALAXY) {whole[i, GALAXY]:.2f})")
        for label, sample, stars in sims:
            p_whole, sim_effect = occlusion(model, card, sample["flux"], sample["mask"], spans)
            galaxy = np.argmax(p_whole, axis=1) == GALAXY
            hidden = p_whole[:, [GALAXY]] + sim_effect
            turned = (~galaxy[:, None] & (hidden > 0.5)) if stars else (galaxy[:, None] & (hidden < 0.5))
            j = int(np.argmax(turned.mean(0)))
            print(f"{name}, {label} (n {len(galaxy)}): classed GALAXY {galaxy.mean():.3f}; hiding "
                  f"{span_text(grid, spans[j])} turns the most, "
                  f"{turned[:, j].mean():.3f} (median ΔP(GALAXY) {np.median(sim_effect[:, j]):+.3f}); "
                  f"any window turns {turned.any(1).mean():.3f}")
            ax.plot(centre, turned.mean(0) * (1 if stars else -1), lw=1, ls="--",
                    label=f"{label}: fraction turned{'' if stars else ' (negative)'}")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_ylabel("ΔP(GALAXY); fraction turned")
        ax.set_title(Path(name).name, fontsize=10)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel(f"centre of the hidden window (Å, observed; {WINDOW} pixels of 1e-4 dex)")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "occlusion.png", dpi=110)
    print(f"figure: {OUT / 'occlusion.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
