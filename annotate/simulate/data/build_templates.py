"""Build `templates.npz`, the compact template library the simulator draws from.

Run once, from the unpacked `sdss-mangadap==4.5.0` wheel (it cannot be installed beside
ppxf 9.5, it pins ppxf 8.1, so download and unzip it):

    pip download --no-deps sdss-mangadap==4.5.0 -d /tmp/mangadap
    python3 -m zipfile -e /tmp/mangadap/sdss_mangadap-4.5.0-py3-none-any.whl /tmp/mangadap/unz
    python3 annotate/simulate/data/build_templates.py \
        /tmp/mangadap/unz/mangadap/data/spectral_templates annotate/simulate/data/templates.npz

What it writes (see SOURCES.md for provenance and licences):
- Stars: every MILES v9.1 star (air wavelengths converted to vacuum), with Teff, log g and [Fe/H]
  from `paramsMILES_v9.1.txt` (NaN where MILES gives none). MILES stops at 7410 Å; redward of
  RED_JOIN_AA each star continues with the MaStar clustered template (`mastarhc_v2`) whose shape
  best matches it over SPLICE_FIT_AA, scaled to join smoothly. Past the MaStar end (10323 Å) the
  flux is NaN, and the simulator masks those pixels.
- Galaxies: the single stellar populations of `mastar_ssp_v1.0`, `m11_marcs` and `bc03_mpajhu`,
  NaN outside each set's coverage (rest-frame blue end below 3000-3622 Å), never extrapolated.
All fluxes are rest-frame, vacuum, log-linear (1e-4 dex), divided by their median, float16.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

from annotate.grid import WavelengthGrid, air_to_vacuum, resample

STAR_RANGE_AA = (3540.0, 10400.0)
GALAXY_RANGE_AA = (3000.0, 10500.0)
LOGLAM_STEP = 1e-4
MILES_FWHM_AA = 2.5  # Falcón-Barroso et al. 2011
RED_JOIN_AA = 7350.0
SPLICE_FIT_AA = (6000.0, 7350.0)
JOIN_WINDOW_AA = (7200.0, 7350.0)
SPEED_OF_LIGHT_KMS = 299792.458
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
# (folder, file glob, wavelengths in vacuum?, FWHM Å or None when an SRES HDU gives R)
SSP_SETS = (
    ("mastar_ssp_v1.0", "*.fits.gz", True, None),
    ("m11_marcs", "*_s.fits", False, 2.73),
    ("bc03_mpajhu", "*.fits", False, 2.30),
)


def header_wavelength(header: fits.Header, n_pix: int) -> np.ndarray:
    """Pixel-centre wavelengths (Å) from CRVAL1/CDELT1/CRPIX1; log10 when CTYPE1 says WAVE-LOG."""
    pixel = np.arange(n_pix) + 1.0 - header.get("CRPIX1", 1.0)
    axis = header["CRVAL1"] + header["CDELT1"] * pixel
    return 10.0**axis if str(header.get("CTYPE1", "")).upper().endswith("LOG") else axis


def on_grid(wave_vac: np.ndarray, flux: np.ndarray, grid: WavelengthGrid) -> np.ndarray:
    """Flux-conserving resampling; NaN where the source has no data."""
    bad = ~np.isfinite(flux) | (flux <= 0)
    out, _, mask = resample(wave_vac, np.where(bad, 0.0, flux), np.ones_like(flux), bad, grid)
    return np.where(mask, np.nan, out)


def median_normalised(flux: np.ndarray) -> np.ndarray:
    return flux / np.nanmedian(flux)


def read_miles_params(path: Path) -> dict[str, dict]:
    """MILES number (e.g. 'm0272') → name, spectral type, Teff, logg, [Fe/H] (NaN where '--')."""
    params = {}
    for line in path.read_text(encoding="latin-1").splitlines()[3:]:
        number = line[22:27].strip()
        if not number.isdigit():
            continue
        values = [float(v) if re.fullmatch(r"[-+]?\d+(\.\d+)?", v) else np.nan for v in line[50:74].split()]
        teff, logg, feh = (values + [np.nan] * 3)[:3]
        params[f"m{number}"] = {"name": line[:22].strip(), "sptype": line[36:50].strip(),
                                "teff": teff, "logg": logg, "feh": feh}
    return params


def load_mastar_clusters(folder: Path, grid: WavelengthGrid) -> tuple[list[str], np.ndarray]:
    names, spectra = [], []
    for path in sorted(folder.glob("MaStarHC_*.fits.gz")):
        with fits.open(path) as hdul:
            flux = hdul[0].data.astype(np.float64)
            wave = header_wavelength(hdul[0].header, flux.size)
        spectra.append(on_grid(wave, flux, grid))
        names.append(path.name.split(".")[0])
    return names, np.array(spectra)


def splice_red_end(star: np.ndarray, clusters: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace the star redward of RED_JOIN_AA with the best-matching cluster template, scaled to
    the star's level in JOIN_WINDOW_AA. Returns the spliced flux and the cluster index used."""
    fit = (wave >= SPLICE_FIT_AA[0]) & (wave <= SPLICE_FIT_AA[1]) & np.isfinite(star)
    best, best_chi2 = -1, np.inf
    for k, template in enumerate(clusters):
        ok = fit & np.isfinite(template)
        if ok.sum() < 100:
            continue
        scale = np.dot(star[ok], template[ok]) / np.dot(template[ok], template[ok])
        chi2 = np.mean((star[ok] / (scale * template[ok]) - 1.0) ** 2)
        if chi2 < best_chi2:
            best, best_chi2 = k, chi2
    join = (wave >= JOIN_WINDOW_AA[0]) & (wave <= JOIN_WINDOW_AA[1])
    template = clusters[best]
    scale = np.nanmedian(star[join]) / np.nanmedian(template[join])
    out = star.copy()
    red = wave > RED_JOIN_AA
    out[red] = scale * template[red]
    return out, best


def build_stars(root: Path) -> dict[str, np.ndarray]:
    grid = WavelengthGrid.from_range(*STAR_RANGE_AA, loglam_step=LOGLAM_STEP)
    wave = grid.wavelength
    params = read_miles_params(root / "miles" / "paramsMILES_v9.1.txt")
    cluster_names, clusters = load_mastar_clusters(root / "mastarhc_v2", grid)
    rows = {key: [] for key in ("flux", "teff", "logg", "feh", "name", "sptype", "red_source")}
    for path in sorted((root / "miles").glob("MILES_res2.50_star_m*V.fits")):
        number = re.search(r"_(m\d{4})V", path.name).group(1)
        with fits.open(path) as hdul:
            flux = hdul[0].data.astype(np.float64)
            wave_air = header_wavelength(hdul[0].header, flux.size)
        star = on_grid(air_to_vacuum(wave_air), flux, grid)
        star, cluster = splice_red_end(star, clusters, wave)
        label = params.get(number, {"name": "", "sptype": "", "teff": np.nan, "logg": np.nan, "feh": np.nan})
        rows["flux"].append(median_normalised(star))
        for key in ("teff", "logg", "feh", "sptype"):
            rows[key].append(label[key])
        rows["name"].append(f"{number} {label['name']}".strip())
        rows["red_source"].append(cluster_names[cluster])
    return {
        "star_loglam": grid.loglam, "star_flux": np.array(rows["flux"]).astype(np.float16),
        "star_teff": np.array(rows["teff"], np.float32), "star_logg": np.array(rows["logg"], np.float32),
        "star_feh": np.array(rows["feh"], np.float32), "star_name": np.array(rows["name"]),
        "star_sptype": np.array(rows["sptype"]), "star_red_source": np.array(rows["red_source"]),
        "star_red_join_aa": np.float64(RED_JOIN_AA), "star_fwhm_aa": np.float64(MILES_FWHM_AA),
    }


def ssp_labels(folder: str, filename: str) -> tuple[float, float]:
    """(age Gyr, log10 Z/Z☉) from the file name of each SSP set."""
    if folder.startswith("mastar_ssp"):
        match = re.search(r"A(\d+\.\d+)-Z([+-]\d+\.\d+)", filename)
        return float(match.group(1)), float(match.group(2))
    if folder == "m11_marcs":
        match = re.search(r"age_(\d+\.\d+)_z_(-?\d+\.\d+)", filename)
        return float(match.group(1)), float(match.group(2))
    match = re.search(r"z(\d\.\d+)_a(\d+\.\d+)", filename)  # BC03: metal mass fraction, Z☉ = 0.02
    return float(match.group(2)), float(np.log10(float(match.group(1)) / 0.02))


def build_galaxies(root: Path) -> dict[str, np.ndarray]:
    grid = WavelengthGrid.from_range(*GALAXY_RANGE_AA, loglam_step=LOGLAM_STEP)
    rows = {key: [] for key in ("flux", "age", "logzsol", "set", "file", "sigma")}
    for folder, pattern, in_vacuum, fwhm_aa in SSP_SETS:
        for path in sorted((root / folder).glob(pattern)):
            with fits.open(path) as hdul:
                flux = hdul[0].data.astype(np.float64)
                wave = header_wavelength(hdul[0].header, flux.size)
                if fwhm_aa is None:
                    resolution = float(np.median(hdul["SRES"].data))
                    sigma_kms = SPEED_OF_LIGHT_KMS * FWHM_TO_SIGMA / resolution
                else:
                    sigma_kms = fwhm_aa * FWHM_TO_SIGMA / 5000.0 * SPEED_OF_LIGHT_KMS
            wave = wave if in_vacuum else air_to_vacuum(wave)
            age, logzsol = ssp_labels(folder, path.name)
            rows["flux"].append(median_normalised(on_grid(wave, flux, grid)))
            rows["age"].append(age)
            rows["logzsol"].append(logzsol)
            rows["set"].append(folder)
            rows["file"].append(path.name)
            rows["sigma"].append(sigma_kms)
    return {
        "gal_loglam": grid.loglam, "gal_flux": np.array(rows["flux"]).astype(np.float16),
        "gal_age_gyr": np.array(rows["age"], np.float32), "gal_logzsol": np.array(rows["logzsol"], np.float32),
        "gal_set": np.array(rows["set"]), "gal_file": np.array(rows["file"]),
        "gal_sigma_kms": np.array(rows["sigma"], np.float32),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spectral_templates", type=Path, help="mangadap/data/spectral_templates of the unpacked wheel")
    parser.add_argument("out", type=Path, help="output .npz")
    args = parser.parse_args(argv)
    library = {**build_stars(args.spectral_templates), **build_galaxies(args.spectral_templates),
               "built_with": np.array("sdss-mangadap==4.5.0 spectral_templates; annotate/simulate/data/build_templates.py")}
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **library)
    tmp.replace(args.out)
    print(f"{args.out}: {library['star_flux'].shape[0]} stars, {library['gal_flux'].shape[0]} populations, "
          f"{args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
