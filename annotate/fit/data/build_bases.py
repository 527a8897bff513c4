"""Build `bases.npz`, the template bases of the redshift fit, from the project's own template
library (`annotate/simulate/data/templates.npz`) and quasar model (`annotate/simulate/spectra.py`).
No other data source. Run from the repository root:

    python annotate/fit/data/build_bases.py annotate/fit/data/bases.npz

What it makes (steps and sources in SOURCES.md beside this file):
- GALAXY: a PCA (with gaps: missing blue ends are filled iteratively by the PCA itself) of the
  stellar populations outside the held-out part, each at two velocity dispersions, plus four
  emission-line templates ([OII] doublet; Balmer series; [OIII] doublet; [NII] + [SII]).
- STAR:<group>: a PCA per spectral group (O/B, A, F, G, K, M by MILES spectral type, by Teff
  where the type is missing) of the MILES stars outside the held-out stars (the 15 % that the
  default model never trained on), broadened to SDSS resolution.
- QSO: a PCA of quasar-model spectra (power law, broad and narrow lines, mean Lyα-forest
  transmission) drawn with their own seed (QSO_SEED), which no simulated test object uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from annotate import SPEED_OF_LIGHT_KMS  # noqa: E402
from annotate.fit.bases import file_sha256  # noqa: E402
from annotate.simulate.dataset import held_out_star_indices  # noqa: E402
from annotate.simulate.spectra import (GALAXY_LINES, SimulationSettings, broaden,  # noqa: E402
                                       quasar_rest)
from annotate.simulate.templates import LIBRARY_PATH, load_library  # noqa: E402

STEP = 1e-4
RESOLUTION_KMS = 69.0           # SDSS/BOSS instrumental σ
HELD_OUT_STAR_FRACTION = 0.15   # the default model's held-out MILES stars (recipe seed 0)
HELD_OUT_STAR_SEED = 0
HELD_OUT_POPULATION_FRACTION = 0.2
POPULATION_SEED = 20261201
QSO_SEED = 917_000_001
N_QSO_DRAWS = 600
FOREST_EDGE_AA = 0.0  # nothing left out: the basis holds the forest's mean transmission

N_GALAXY_PCA = 6
N_STAR_PCA = 5
N_QSO_PCA = 8
GALAXY_DISPERSIONS_KMS = (100.0, 220.0)
GAS_SIGMA_KMS = 100.0
# emission-line groups: (name, [(rest vacuum Å, relative flux)]) from the SDSS line list
LINE_GROUPS = (
    ("[OII]", ("[OII]3726", "[OII]3729")),
    ("Balmer", ("Hdelta", "Hgamma", "Hbeta", "Halpha")),
    ("[OIII]", ("[OIII]4959", "[OIII]5007")),
    ("[NII]+[SII]", ("[NII]6548", "[NII]6584", "[SII]6717", "[SII]6731")),
)
STAR_GROUPS = ("OB", "A", "F", "G", "K", "M")
TEFF_EDGES = ((10000.0, np.inf, "OB"), (7300.0, 10000.0, "A"), (6000.0, 7300.0, "F"), (5300.0, 6000.0, "G"),
              (3900.0, 5300.0, "K"), (0.0, 3900.0, "M"))
Z_RANGES = {"GALAXY": (-0.005, 1.6), "QSO": (0.05, 5.0), "STAR": (-0.005, 0.005)}


def gap_pca(flux: np.ndarray, n_components: int, iterations: int = 25) -> np.ndarray:
    """(n_components, m) PCA basis (no mean subtracted: the first vector is the mean shape) of
    `flux` (n, m) with NaN gaps, the gaps filled by the basis itself, iteratively."""
    missing = ~np.isfinite(flux)
    column_mean = np.nanmean(np.where(missing, np.nan, flux), axis=0)
    filled = np.where(missing, column_mean, flux)
    for _ in range(iterations):
        _, _, vt = np.linalg.svd(filled, full_matrices=False)
        basis = vt[:n_components]
        coefficients = filled @ basis.T
        filled = np.where(missing, coefficients @ basis, flux)
    _, s, vt = np.linalg.svd(filled, full_matrices=False)
    basis = vt[:n_components]
    return basis * np.sign(basis.sum(axis=1, keepdims=True) + 1e-30)


def explained(flux: np.ndarray, basis: np.ndarray) -> float:
    """Fraction of the (gap-free part of the) spectra's power the basis reproduces."""
    known = np.isfinite(flux)
    filled = np.nan_to_num(flux)
    residual = np.where(known, filled - (filled @ basis.T) @ basis, 0.0)
    return float(1.0 - (residual**2).sum() / (filled**2).sum())


def normalise(flux: np.ndarray) -> np.ndarray:
    return flux / np.nanmedian(np.where(flux > 0, flux, np.nan), axis=1, keepdims=True)


def line_template(loglam: np.ndarray, names: tuple, sigma_kms: float) -> np.ndarray:
    wave = 10.0**loglam
    out = np.zeros_like(wave)
    lines = {name: (centre, ratio) for name, centre, ratio in GALAXY_LINES}
    for name in names:
        centre, ratio = lines[name]
        sigma = centre * sigma_kms / SPEED_OF_LIGHT_KMS
        out += ratio / (np.sqrt(2 * np.pi) * sigma) * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)
    return out / np.abs(out).max()


def galaxy_basis(lib) -> dict:
    rng = np.random.default_rng(POPULATION_SEED)
    held = np.sort(rng.choice(lib.n_gal, size=int(round(HELD_OUT_POPULATION_FRACTION * lib.n_gal)), replace=False))
    train = np.setdiff1d(np.arange(lib.n_gal), held)
    spectra = []
    for index in train:
        for dispersion in GALAXY_DISPERSIONS_KMS:
            extra = np.sqrt(max(dispersion**2 + RESOLUTION_KMS**2 - lib.gal_sigma_kms[index] ** 2, 0.0))
            spectra.append(broaden(lib.gal_flux[index].astype(np.float64), extra, STEP))
    spectra = normalise(np.array(spectra))
    count = np.isfinite(spectra).sum(axis=0)
    coverage = count >= 3
    spectra[:, ~coverage] = np.nan
    pca = gap_pca(spectra[:, coverage], N_GALAXY_PCA)
    continuum = np.zeros((N_GALAXY_PCA, len(lib.gal_loglam)))
    continuum[:, coverage] = pca
    sigma = np.hypot(GAS_SIGMA_KMS, RESOLUTION_KMS)
    lines = np.array([line_template(lib.gal_loglam, names, sigma) for _, names in LINE_GROUPS])
    print(f"GALAXY: {len(train)} populations ({len(held)} held out) x {len(GALAXY_DISPERSIONS_KMS)} dispersions; "
          f"PCA {N_GALAXY_PCA} explains {explained(spectra[:, coverage], pca):.5f}; "
          f"coverage {10**lib.gal_loglam[coverage][0]:.0f}-{10**lib.gal_loglam[coverage][-1]:.0f} A", file=sys.stderr)
    names = tuple(f"pca{i}" for i in range(N_GALAXY_PCA)) + tuple(name for name, _ in LINE_GROUPS)
    return {"GALAXY": dict(spectype="GALAXY", subtype="", loglam_start=float(lib.gal_loglam[0]),
                           flux=np.vstack([continuum, lines]), coverage=coverage, z_range=Z_RANGES["GALAXY"],
                           names=names)}, held


def star_group(sptype: str, teff: float) -> str | None:
    letter = sptype.strip()[:1].upper()
    if letter in "OB" and letter:
        return "OB"
    if letter in ("A", "F", "G", "K", "M"):
        return letter
    if np.isfinite(teff):
        return next(group for lo, hi, group in TEFF_EDGES if lo <= teff < hi)
    return None


def star_bases(lib) -> tuple[dict, np.ndarray]:
    held = held_out_star_indices(lib.n_star, HELD_OUT_STAR_FRACTION, HELD_OUT_STAR_SEED)
    train = np.setdiff1d(np.arange(lib.n_star), held)
    template_sigma = lib.star_fwhm_aa / (2 * np.sqrt(2 * np.log(2))) / 5000.0 * SPEED_OF_LIGHT_KMS
    extra = np.sqrt(max(RESOLUTION_KMS**2 - template_sigma**2, 0.0))
    groups = {}
    membership = []
    for index in train:
        group = star_group(str(lib.star_sptype[index]), lib.star_teff[index])
        membership.append(group or "")
        if group is not None:
            groups.setdefault(group, []).append(broaden(lib.star_flux[index].astype(np.float64), extra, STEP))
    out = {}
    for group in STAR_GROUPS:
        spectra = normalise(np.array(groups[group]))
        coverage = np.isfinite(spectra).mean(axis=0) > 0.5
        spectra[:, ~coverage] = np.nan
        n = min(N_STAR_PCA, len(spectra) - 1)
        pca = gap_pca(spectra[:, coverage], n)
        flux = np.zeros((n, len(lib.star_loglam)))
        flux[:, coverage] = pca
        print(f"STAR:{group}: {len(spectra)} stars, PCA {n} explains {explained(spectra[:, coverage], pca):.5f}",
              file=sys.stderr)
        out[f"STAR:{group}"] = dict(spectype="STAR", subtype=group, loglam_start=float(lib.star_loglam[0]), flux=flux,
                                    coverage=coverage, z_range=Z_RANGES["STAR"],
                                    names=tuple(f"pca{i}" for i in range(n)))
    return out, held, np.array(membership, dtype=str)


def qso_basis() -> dict:
    rng = np.random.default_rng(QSO_SEED)
    settings = SimulationSettings()
    spectra = []
    for _ in range(N_QSO_DRAWS):
        loglam, flux, _, _ = quasar_rest(rng, settings, forest_fluctuations=False)
        spectra.append(flux)
    # rest grid on multiples of the step, from 600 Å (a quasar at z = 5 observed at 3600 Å)
    start = np.ceil(np.log10(600.0) / STEP) * STEP
    grid = np.round(start + STEP * np.arange(int((loglam[-1] - start) / STEP)), 6)
    spectra = np.array([np.interp(grid, loglam, f, left=np.nan) for f in spectra])
    spectra = normalise(spectra)
    coverage = np.isfinite(spectra).all(axis=0)
    pca_coverage = coverage.copy()
    # the Lyα forest's absorption varies from sightline to sightline far beyond the noise: the fit
    # leaves rest wavelengths below FOREST_EDGE_AA out, as pixels the basis does not model
    coverage &= 10.0**grid >= FOREST_EDGE_AA
    spectra = spectra[:, pca_coverage]
    pca = gap_pca(spectra, N_QSO_PCA, iterations=1)
    flux = np.zeros((N_QSO_PCA, len(grid)))
    flux[:, pca_coverage] = pca
    flux[:, ~coverage] = 0.0
    print(f"QSO: {N_QSO_DRAWS} model draws (seed {QSO_SEED}), PCA {N_QSO_PCA} explains "
          f"{explained(spectra, pca):.5f}", file=sys.stderr)
    return {"QSO": dict(spectype="QSO", subtype="", loglam_start=float(grid[0]), flux=flux, coverage=coverage,
                        z_range=Z_RANGES["QSO"], names=tuple(f"pca{i}" for i in range(N_QSO_PCA)))}


def build(out: Path) -> None:
    lib = load_library()
    galaxy, held_populations = galaxy_basis(lib)
    stars, held_stars, star_groups = star_bases(lib)
    bases = {**galaxy, **qso_basis(), **stars}
    arrays = {"basis_names": np.array(list(bases), dtype=str), "step": np.float64(STEP),
              "held_out_stars": held_stars, "held_out_populations": held_populations,
              "star_group": star_groups,
              "qso_seed": np.int64(QSO_SEED), "library_sha256": np.array(file_sha256(LIBRARY_PATH)),
              "built_with": np.array("annotate/fit/data/build_bases.py from annotate/simulate/data/templates.npz")}
    for name, basis in bases.items():
        key = name.replace(":", "_")
        for field, value in basis.items():
            if field == "flux":
                value = value.astype(np.float32)
            elif field == "names":
                value = np.array(value, dtype=str)
            arrays[f"{key}__{field}"] = np.asarray(value)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(out)})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).resolve().parent / "bases.npz")
    build(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
