"""Build `data/bases.npz`, the template bases of the redshift fit, from the project's own template
library (`annotate/simulate/data/templates.npz`) and quasar model (`annotate/simulate/spectra.py`).
No other data source:

    python -m annotate.fit.build            # writes annotate/fit/data/bases.npz

What it makes:
- GALAXY: a PCA (with gaps: missing blue ends are filled iteratively by the PCA itself) of the
  stellar populations outside the held-out part, each at two velocity dispersions, plus four
  emission-line templates ([OII] doublet; Balmer series; [OIII] doublet; [NII] + [SII]).
- STAR:<group>: a PCA per spectral group (O/B, A, F, G, K, M by MILES spectral type, by Teff
  where the type is missing) of the MILES stars outside the held-out stars (the 15 % that the
  default model never trained on), broadened to SDSS resolution.
- QSO: a PCA of quasar-model spectra (power law, broad and narrow lines, mean Lyα-forest
  transmission) drawn with their own seed (QSO_SEED), which no simulated test object uses, with
  the simulator's quasar diversity (QSO_REALISM: slopes, a width per broad line, C IV and other
  high-ionisation lines blueshifted, reddening), so that the basis spans what real quasars do.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .. import SPEED_OF_LIGHT_KMS
from ..simulate.dataset import held_out_star_indices
from ..simulate.realism import Realism, realism_rng
from ..simulate.spectra import GALAXY_LINES, SimulationSettings, broaden, quasar_rest
from ..simulate.templates import LIBRARY_PATH, load_library
from ..digest import file_sha256
from .bases import BASES_PATH, BasisSet, basis_set_from_arrays

STEP = 1e-4
RESOLUTION_KMS = 69.0           # SDSS/BOSS instrumental σ
HELD_OUT_STAR_FRACTION = 0.15   # the default model's held-out MILES stars (recipe seed 0)
HELD_OUT_STAR_SEED = 0
HELD_OUT_POPULATION_FRACTION = 0.2
POPULATION_SEED = 20261201
QSO_SEED = 917_000_001
N_QSO_DRAWS = 600
QSO_REALISM = 1.0  # the quasar diversity of the simulator (and of the default model's training data)

N_GALAXY_PCA = 6
N_STAR_PCA = 10
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


def held_out_populations(n_gal: int) -> np.ndarray:
    """Indices of the populations no galaxy basis is built from (seeded)."""
    rng = np.random.default_rng(POPULATION_SEED)
    return np.sort(rng.choice(n_gal, size=int(round(HELD_OUT_POPULATION_FRACTION * n_gal)), replace=False))


def held_out_stars(n_star: int) -> np.ndarray:
    """Indices of the MILES stars no star basis is built from: the default model's held-out stars."""
    return held_out_star_indices(n_star, HELD_OUT_STAR_FRACTION, HELD_OUT_STAR_SEED)


def galaxy_basis(lib, train: np.ndarray, log=print) -> dict:
    """The GALAXY basis from populations `train` of the library."""
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
    log(f"GALAXY: {len(train)} populations x {len(GALAXY_DISPERSIONS_KMS)} dispersions; "
        f"PCA {N_GALAXY_PCA} explains {explained(spectra[:, coverage], pca):.5f}; "
        f"coverage {10**lib.gal_loglam[coverage][0]:.0f}-{10**lib.gal_loglam[coverage][-1]:.0f} A")
    names = tuple(f"pca{i}" for i in range(N_GALAXY_PCA)) + tuple(name for name, _ in LINE_GROUPS)
    return {"GALAXY": dict(spectype="GALAXY", subtype="", loglam_start=float(lib.gal_loglam[0]),
                           flux=np.vstack([continuum, lines]), coverage=coverage, z_range=Z_RANGES["GALAXY"],
                           names=names)}


def star_group(sptype: str, teff: float) -> str | None:
    letter = sptype.strip()[:1].upper()
    if letter in "OB" and letter:
        return "OB"
    if letter in ("A", "F", "G", "K", "M"):
        return letter
    if np.isfinite(teff):
        return next(group for lo, hi, group in TEFF_EDGES if lo <= teff < hi)
    return None


def star_bases(lib, train: np.ndarray, log=print, n_pca: int = N_STAR_PCA) -> tuple[dict, np.ndarray]:
    """The STAR:<group> bases (`n_pca` vectors each) from MILES stars `train`, and the group of
    each of those stars."""
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
        n = min(n_pca, len(spectra) - 1)
        pca = gap_pca(spectra[:, coverage], n)
        flux = np.zeros((n, len(lib.star_loglam)))
        flux[:, coverage] = pca
        log(f"STAR:{group}: {len(spectra)} stars, PCA {n} explains {explained(spectra[:, coverage], pca):.5f}")
        out[f"STAR:{group}"] = dict(spectype="STAR", subtype=group, loglam_start=float(lib.star_loglam[0]), flux=flux,
                                    coverage=coverage, z_range=Z_RANGES["STAR"],
                                    names=tuple(f"pca{i}" for i in range(n)))
    return out, np.array(membership, dtype=str)


def qso_basis(log=print, realism: float = QSO_REALISM) -> dict:
    """The QSO basis from N_QSO_DRAWS draws of the quasar model with its own seed, with the
    simulator's quasar diversity at `realism` strength (slopes, a width per broad line,
    blueshifted high-ionisation lines, reddening; 0: the plain model)."""
    rng = np.random.default_rng(QSO_SEED)
    settings = SimulationSettings(realism=Realism(strength=realism) if realism > 0 else None)
    extra = realism_rng(QSO_SEED) if realism > 0 else None
    spectra = []
    for _ in range(N_QSO_DRAWS):
        loglam, flux, _, _ = quasar_rest(rng, settings, forest_fluctuations=False, extra_rng=extra)
        spectra.append(flux)
    # rest grid on multiples of the step, from 600 Å (a quasar at z = 5 observed at 3600 Å)
    start = np.ceil(np.log10(600.0) / STEP) * STEP
    grid = np.round(start + STEP * np.arange(int((loglam[-1] - start) / STEP)), 6)
    spectra = np.array([np.interp(grid, loglam, f, left=np.nan) for f in spectra])
    spectra = normalise(spectra)
    coverage = np.isfinite(spectra).all(axis=0)
    spectra = spectra[:, coverage]
    pca = gap_pca(spectra, N_QSO_PCA, iterations=1)
    flux = np.zeros((N_QSO_PCA, len(grid)))
    flux[:, coverage] = pca
    log(f"QSO: {N_QSO_DRAWS} model draws (seed {QSO_SEED}), PCA {N_QSO_PCA} explains {explained(spectra, pca):.5f}")
    return {"QSO": dict(spectype="QSO", subtype="", loglam_start=float(grid[0]), flux=flux, coverage=coverage,
                        z_range=Z_RANGES["QSO"], names=tuple(f"pca{i}" for i in range(N_QSO_PCA)))}


def basis_arrays(lib, population_train: np.ndarray, star_train: np.ndarray, qso: dict | None = None,
                 log=print, n_star_pca: int = N_STAR_PCA) -> dict:
    """The arrays of a bases file for bases built from populations `population_train` and MILES
    stars `star_train` (what is not in them counts as held out); `qso`: a QSO basis already built."""
    galaxy = galaxy_basis(lib, population_train, log)
    stars, star_groups = star_bases(lib, star_train, log, n_star_pca)
    bases = {**galaxy, **(qso if qso is not None else qso_basis(log)), **stars}
    arrays = {"basis_names": np.array(list(bases), dtype=str), "step": np.float64(STEP),
              "held_out_stars": np.setdiff1d(np.arange(lib.n_star), star_train),
              "held_out_populations": np.setdiff1d(np.arange(lib.n_gal), population_train),
              "star_group": star_groups, "qso_seed": np.int64(QSO_SEED),
              "library_sha256": np.array(file_sha256(LIBRARY_PATH)),
              "built_with": np.array("python -m annotate.fit.build, from annotate/simulate/data/templates.npz")}
    for name, basis in bases.items():
        key = name.replace(":", "_")
        for field, value in basis.items():
            if field == "flux":
                value = value.astype(np.float32)
            elif field == "names":
                value = np.array(value, dtype=str)
            arrays[f"{key}__{field}"] = np.asarray(value)
    return arrays


def build_in_memory(population_train: np.ndarray, star_train: np.ndarray, qso: dict | None = None,
                    n_star_pca: int = N_STAR_PCA) -> BasisSet:
    """A BasisSet built as `build` does, from other training templates, without writing a file
    (for the calibration's leave-templates-out folds)."""
    arrays = basis_arrays(load_library(), population_train, star_train, qso, log=lambda _: None, n_star_pca=n_star_pca)
    return basis_set_from_arrays(arrays, Path("<in memory>"), "")


def build(out: Path) -> None:
    lib = load_library()
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    arrays = basis_arrays(lib, np.setdiff1d(np.arange(lib.n_gal), held_out_populations(lib.n_gal)),
                          np.setdiff1d(np.arange(lib.n_star), held_out_stars(lib.n_star)), log=log)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(out)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=BASES_PATH)
    build(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
