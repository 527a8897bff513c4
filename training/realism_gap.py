"""How simulated spectra differ from real ones: noise, residuals, masks, continuum shape.

Compares the old simulator (`SimulationSettings(realism=None)`), the realism simulator
(`Realism()`) and real spectra that installed packages ship (SDSS DR18 coadds and a LEGA-C VIMOS
spectrum from ppxf; two DESI coadds from fastspecfit 3.6.1, `pip install --no-deps fastspecfit==3.6.1`). The real
files are evaluation material only: nothing here feeds back into the simulator's parameters.
Prints the numbers of annotate/simulate/REALISM.md and writes its figures; deterministic.

    OMP_NUM_THREADS=1 python training/realism_gap.py
"""

import copy
import importlib.util
import io
import warnings
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import ppxf
from astropy.io import fits
from PIL import Image
from scipy.ndimage import median_filter

from annotate.grid import WavelengthGrid, air_to_vacuum
from annotate.simulate.realism import (SKY_LINES, Realism, calibration_error, halpha_equivalent_width, realism_rng,
                                       sky_model, star_forming_rng, starburst_rng, throughput)
from annotate.simulate.spectra import SimulationSettings, draw_sample, galaxy_rest, loguniform, observe
from annotate.simulate.templates import load_library
from real_spectra import fixture_redshifts  # training/, the script's folder

OUT = Path(__file__).resolve().parents[1] / "annotate" / "simulate" / "realism-plots"
# fastspecfit 3.6.1, installed with --no-deps as the README's setup does: located, never imported
DESI = Path(importlib.util.find_spec("fastspecfit").submodule_search_locations[0]) / "test" / "data"
PPXF = Path(ppxf.__file__).parent / "spectra"
GRID, LIB = WavelengthGrid(), load_library()
SIMS = {"old": None, "realism": Realism()}
ALL_SKY = air_to_vacuum(np.array([w for w, _ in SKY_LINES]))
TABLE_LINES = (5577.34, 5889.95, 6300.30, 6363.78, 7340.89, 7993.33, 8344.60, 8399.17, 8827.10, 8885.85)
DESI_PIXEL_TO_SDSS = np.sqrt(6000 * 1e-4 * np.log(10) / 0.8)  # S/N per 0.8 Å pixel -> per 1e-4 dex pixel at 6000 Å
warnings.filterwarnings("ignore", category=RuntimeWarning)  # medians of all-NaN columns (the old simulator has no sky)


def spectrum(name, wave, flux, ivar, bad, z=None, sky=None, model=None, snr=None):
    good = ~bad & (ivar > 0)
    sigma = np.where(good, 1 / np.sqrt(np.where(good, ivar, 1.0)), np.nan)
    return dict(name=name, wave=wave, flux=flux, sigma=sigma, good=good, z=z, sky=sky, model=model,
                snr=snr if snr is not None else np.median(flux[good] / sigma[good]))


def real_spectra():
    out = []
    for name in ("NGC3522", "NGC3073"):
        with fits.open(PPXF / f"{name}_SDSS_DR18.fits") as h:
            c, obj = h[1].data, h[2].data[0]
            w, f, iv, am, sky, model = (c[k].astype(float) for k in ("loglam", "flux", "ivar", "and_mask", "sky", "model"))
            out.append(spectrum(f"SDSS {name}", 10**w, f, iv, am != 0, float(obj["Z"]), sky, model, float(obj["SN_MEDIAN_ALL"]))
                       | {"label": f"pipeline {obj['CLASS']} {obj['SUBCLASS']}, flux {h[0].header.get('BUNIT')}"})
    for tag, label in (("4-80613-thru20210324", "DESI 80613"), ("special-dark-27247", "DESI 27247")):
        with fits.open(DESI / f"coadd-{tag}.fits") as h, fits.open(DESI / f"redrock-{tag}.fits") as r:
            # the arms overlap by 40-100 Å: each is cut at the middle of its overlap
            keep = {arm: (h[f"{arm}_WAVELENGTH"].data >= lo) & (h[f"{arm}_WAVELENGTH"].data < hi)
                    for arm, lo, hi in (("B", 0, 5780), ("R", 5780, 7570), ("Z", 7570, 1e5))}
            w, f, iv, m = (np.concatenate([h[f"{arm}_{k}"].data.reshape(-1)[sel] for arm, sel in keep.items()]).astype(float)
                           for k in ("WAVELENGTH", "FLUX", "IVAR", "MASK"))
            # redrock's z, except where fastspecfit's own tests fit the target at another (27247: a
            # Lyα emitter at 3.148 that redrock put at 0.0073): rest-frame measures need the object's
            rr = r["REDSHIFTS"].data[0]
            z = fixture_redshifts(DESI).get(int(rr["TARGETID"]), float(rr["Z"]))
            s = spectrum(label, w, f, iv, m != 0, z)
            out.append(s | {"snr": s["snr"] * DESI_PIXEL_TO_SDSS, "label": f"redrock {rr['SPECTYPE']} at z {rr['Z']:.4f}, "
                            f"flux {h['B_FLUX'].header['BUNIT']}, {np.diff(w)[0]:.1f} Å pixels"})
    with fits.open(PPXF / "legac_M19_56670_v3.0.fits") as h:  # VIMOS, air wavelengths
        w, f, err, q = (h[1].data[k][0].astype(float) for k in ("WAVE", "FLUX", "ERR", "QUAL"))
        out.append(spectrum("LEGA-C M19_56670", air_to_vacuum(w), f, np.where(err > 0, 1 / err**2, 0), q != 0)
                   | {"label": f"flux {h[1].header['TUNIT2']}"})
    return out


def simulate(realism, n, seed, z, snr):
    """Galaxies with what the realism code keeps inside: the noiseless (calibrated) spectrum and the sky."""
    settings = SimulationSettings(class_fractions=(1, 0, 0), z_galaxy=z, snr=snr, realism=realism)
    rng, extra = np.random.default_rng(seed), (realism_rng(seed) if realism else None)
    sf = star_forming_rng(seed) if realism else None
    burst = starburst_rng(seed) if realism else None
    quiet = replace(realism, sky_residual=0.0, sky_shift_pix=0.0) if realism else None
    out = []
    for i in range(n):
        loglam, rest, zi, _ = galaxy_rest(LIB, rng, settings, extra, sf, burst)
        snr_i, level = loguniform(rng, *settings.snr), loguniform(rng, *settings.flux_level)
        before = copy.deepcopy((rng, extra))
        flux, ivar, _ = observe(loglam, rest, zi, GRID, snr_i, level, rng, realism, extra)
        r2, e2 = copy.deepcopy(before)  # the same draws again, without noise or sky-subtraction residuals
        truth = observe(loglam, rest, zi, GRID, 1e9, level, r2, quiet, e2)[0].astype(float)
        sky = thru = None
        if realism:  # replay observe_with_sky's draws: calibration RMS, 4 Legendre terms, sky level, line scale, throughput
            e3 = copy.deepcopy(before[1])
            e3.uniform(), calibration_error(GRID, 1.0, e3)
            sky_level = level * np.exp(e3.uniform(*np.log(realism.sky_to_object))) * max(realism.strength, 1e-3)
            line_scale = np.exp(e3.uniform(*np.log(realism.sky_line_scale)))
            continuum, lines, _ = sky_model(GRID, settings.resolution_sigma_kms)
            sky, thru = sky_level * (continuum + line_scale * lines), throughput(GRID, realism, e3)
        out.append(spectrum(f"sim {i}", GRID.wavelength, flux.astype(float), ivar, ivar <= 0, zi, sky, truth, snr_i) | {"thru": thru})
    return out


def noise_fit(s):
    """Least squares sigma^2 = a flux + b sky + c: each term's share of the median variance, b/a, R^2."""
    g = s["good"]
    var = s["sigma"][g] ** 2
    cols = np.column_stack([s["flux"][g]] + ([s["sky"][g]] if s["sky"] is not None else []) + [np.ones(g.sum())])
    coef = np.linalg.lstsq(cols, var, rcond=None)[0]
    shares = coef * np.median(cols, axis=0) / np.median(var)
    r2 = 1 - np.sum((var - cols @ coef) ** 2) / np.sum((var - var.mean()) ** 2)
    return [shares[0], shares[1], shares[2], coef[1] / coef[0], r2] if len(coef) == 3 else [shares[0], np.nan, shares[1], np.nan, r2]


def throughput_fit(s):
    """R^2 of sigma^2 = a (|noiseless flux| + sky) / throughput + c: the realism noise model itself."""
    g, var = s["good"], s["sigma"][s["good"]] ** 2
    cols = np.column_stack([((np.abs(s["model"]) + s["sky"]) / s["thru"])[g], np.ones(g.sum())])
    return 1 - np.sum((var - cols @ np.linalg.lstsq(cols, var, rcond=None)[0]) ** 2) / np.sum((var - var.mean()) ** 2)


def line_contrast(wave, values, line_air):
    """max of `values` within ±2 Å of a sky line / their median 10-40 Å away (NaN out of range)."""
    offset = np.abs(wave - air_to_vacuum(np.float64(line_air)))
    near, side = values[offset <= 2], values[(offset > 10) & (offset < 40)]
    return np.nanmax(near) / np.nanmedian(side) if np.isfinite(near).any() and np.isfinite(side).sum() > 5 else np.nan


def noise_shape(s):
    """(fraction of good pixels red of 7000 Å with sigma > 1.5 x its 60 Å running median: the OH lines,
    median sigma 3800-4100 Å / median sigma of the whole spectrum, the sigma bumps where arms meet)."""
    red = (s["wave"] > 7000) & s["good"]
    w, sig = s["wave"][red], s["sigma"][red]
    spikes = np.mean(sig > 1.5 * median_filter(sig, int(60 / np.median(np.diff(w))) | 1, mode="nearest"))
    return (spikes, np.nanmedian(s["sigma"][(s["wave"] > 3800) & (s["wave"] < 4100)]) / np.nanmedian(s["sigma"]),
            *(arm_bump(s["wave"], s["sigma"], lo, hi) for lo, hi in ((5700, 6100), (7450, 7700))))


def arm_bump(wave, sigma, lo, hi):
    """highest median sigma of 20 Å bins in lo-hi / median sigma 250 Å either side (where arms meet)."""
    bins = [np.nanmedian(sigma[(wave >= a) & (wave < a + 20)]) for a in np.arange(lo, hi, 20)]
    flanks = np.nanmedian(sigma[((wave > lo - 250) & (wave < lo)) | ((wave > hi) & (wave < hi + 250))])
    return np.nanmax(bins) / flanks if np.isfinite(bins).any() else np.nan


def residuals(s):
    """(flux - model)/sigma over good pixels (model: pipeline fit or noiseless truth), all and near sky lines."""
    g = s["good"]
    r = (s["flux"][g] - s["model"][g]) / s["sigma"][g]
    return r, r[np.min(np.abs(s["wave"][g][:, None] - ALL_SKY[None, :]), axis=1) <= 3]


def spread(r):
    return f"{1.4826 * np.median(np.abs(r - np.median(r))):.2f} / {np.std(r):.2f} / {np.mean(np.abs(r) > 4):.4f}"


def blue_red(s):
    """median f_lambda rest 4000-4500 Å / 6500-7000 Å (good pixels)."""
    rest, g = s["wave"] / (1 + s["z"]), s["good"]
    blue, red = g & (rest > 4000) & (rest < 4500), g & (rest > 6500) & (rest < 7000)
    return np.median(s["flux"][blue]) / np.median(s["flux"][red]) if blue.sum() > 20 and red.sum() > 20 else np.nan


def ab_magnitude(wave, flux, centre, fwhm):
    """AB magnitude of f_λ through a Gaussian band (photon counting; pixels with data only)."""
    response, good, width = np.exp(-0.5 * ((wave - centre) / (fwhm / 2.355)) ** 2), np.isfinite(flux), np.gradient(wave)
    f_nu = np.sum((flux * wave * response * width)[good]) / np.sum((response * 2.998e18 / wave * width)[good])
    return -2.5 * np.log10(f_nu)


def rest_colours(realism, n=2000, seed=13):
    """(g - r, blue/red, star-forming?, starburst?, EW(Hα)) of n noiseless local galaxies in the
    rest frame; g and r as Gaussians of the SDSS bands' centres and widths (4770 and 6231 Å, FWHM
    1370 Å), EW(Hα) by `halpha_equivalent_width`."""
    settings = SimulationSettings(class_fractions=(1, 0, 0), z_galaxy=(0.0, 0.05), realism=realism)
    rng, extra, sf, burst = np.random.default_rng(seed), realism_rng(seed), star_forming_rng(seed), starburst_rng(seed)
    out = []
    for _ in range(n):
        loglam, flux, _, labels = galaxy_rest(LIB, rng, settings, extra, sf, burst)
        wave = 10**loglam
        blue, red = (wave > 4000) & (wave < 4500), (wave > 6500) & (wave < 7000)
        out.append((ab_magnitude(wave, flux, 4770, 1370) - ab_magnitude(wave, flux, 6231, 1370),
                    np.nanmedian(flux[blue]) / np.nanmedian(flux[red]), labels["template"].endswith(":sf"),
                    labels["template"].startswith("starburst:"), halpha_equivalent_width(wave, flux)))
    return tuple(np.array(column) for column in zip(*out))


def sky_ratio(s):
    """sky at 7000 Å / median object flux (the simulator's `sky_to_object`)."""
    return np.median(s["sky"][np.abs(s["wave"] - 7000) < 50]) / np.median(s["flux"][s["good"]])


def interior_runs(bad):
    """{first pixel: length} of the masked stretches that touch neither end."""
    edges = np.flatnonzero(np.diff(np.r_[0, bad.astype(int), 0]))
    return {a: b - a for a, b in zip(edges[::2], edges[1::2]) if a > 0 and b < len(bad)}


def cell(metric, source):
    """the number for one real spectrum; median [10-90 %] over simulated ones."""
    v = np.array([metric(s) for s in source])
    return f"{v[0]:.2f}" if len(v) == 1 else f"{np.nanmedian(v):.2f} [{np.nanpercentile(v, 10):.2f}-{np.nanpercentile(v, 90):.2f}]"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    real = real_spectra()
    sdss, desi_snr = real[:2], real[2]["snr"]
    local = {k: simulate(r, 200, 11, (0.0, 0.05), (40.0, 60.0)) for k, r in SIMS.items()}
    low_sky = [s for s in local["realism"] if sky_ratio(s) < 0.045]  # the default draws at the SDSS files' sky level
    distant = {k: simulate(r, 150, 12, (0.30, 0.45), (0.7 * desi_snr, 1.4 * desi_snr)) for k, r in SIMS.items()}
    # the star-forming galaxies' continua (Realism.star_forming_continuum), for the continuum section only
    star_forming = replace(SIMS["realism"], star_forming_continuum=True)
    local["realism+sf"] = simulate(star_forming, 200, 11, (0.0, 0.05), (40.0, 60.0))
    distant["realism+sf"] = simulate(star_forming, 150, 12, (0.30, 0.45), (0.7 * desi_snr, 1.4 * desi_snr))
    # ... and with starbursts (Realism.starburst_share) among them, as the default model's tenth stage trains
    starbursts = replace(star_forming, starburst_share=0.15)
    local["realism+sf+starbursts"] = simulate(starbursts, 200, 11, (0.0, 0.05), (40.0, 60.0))
    distant["realism+sf+starbursts"] = simulate(starbursts, 150, 12, (0.30, 0.45), (0.7 * desi_snr, 1.4 * desi_snr))
    sims = {"old z<0.05": local["old"], "realism z<0.05": local["realism"],
            "realism sky<0.045 z<0.05": low_sky, "realism z 0.30-0.45": distant["realism"]}
    sources = [(s["name"], [s]) for s in real] + list(sims.items())  # name, spectra
    matched = sources[:2] + sources[5:8]  # the SDSS files and the simulations at their z and S/N
    print("# Real spectra (S/N: median per 1e-4 dex pixel; DESI converted from 0.8 Å pixels)")
    for s in real:
        w = s["wave"][s["good"]]
        print(f"{s['name']} | z {s['z'] or np.nan:.4f} | S/N {s['snr']:.1f} | {w.min():.0f}-{w.max():.0f} Å | {s['label']}")
    print(f"simulated galaxies: z 0-0.05 at S/N 40-60 (200 each; {len(low_sky)} realism ones with sky < 0.045 x object); "
          f"z 0.30-0.45 at S/N {0.7 * desi_snr:.1f}-{1.4 * desi_snr:.1f} (150 each)")
    print("\n# 1. Noise. sigma^2 = a flux + b sky + c: share of each term at the median pixel (sims: medians)")
    print("source | object | sky | constant | b/a | R^2 | sky at 7000 Å / median flux")
    for name, src in matched:
        fit = " | ".join(f"{x:.2f}" for x in np.nanmedian([noise_fit(s) for s in src], axis=0))
        print(f"{name} | {fit} | " + (cell(sky_ratio, src) if src[0]["sky"] is not None else "no sky"))
    print("check, realism z<0.05: sigma^2 = a (|model| + sky) / throughput + c, with the replayed throughput: R^2 "
          f"{np.min([throughput_fit(s) for s in local['realism']]):.4f} (lowest of 200)")
    continuum, lines, _ = sky_model(GRID, 69.0)
    models = [{"wave": GRID.wavelength, "sigma": continuum + k * lines} for k in (8.0, np.sqrt(640.0), 80.0)]
    print("\nsigma at a sky line / local median sigma (sims: median [10-90 %]); last 3 columns: the same for the sky "
          "spectrum itself in the SDSS files' sky column and in the simulator's sky model at line scale 8 / 25 / 80")
    print("line (air Å) | " + " | ".join(name for name, _ in sources) + " | NGC3522 sky | NGC3073 sky | model sky")
    for line in TABLE_LINES:
        contrast = lambda s: line_contrast(s["wave"], s["sigma"], line)  # noqa: E731
        print(f"{line:.0f} | " + " | ".join(cell(contrast, src) for _, src in sources) + " | "
              + " | ".join(f"{line_contrast(s['wave'], s['sky'], line):.1f}" for s in sdss)
              + " | " + " / ".join(f"{contrast(m):.1f}" for m in models))
    print("\nsource | pixels red of 7000 Å with sigma > 1.5 x running median | sigma 3800-4100 Å / median sigma | "
          "peak of sigma (20 Å medians) 5700-6100 Å / its flanks | the same 7450-7700 Å")
    for name, src in sources:
        print(f"{name} | " + " | ".join(cell(lambda s: noise_shape(s)[k], src) for k in range(4)))

    print("\n# 2. Residuals (flux - model)/sigma: robust sigma / rms / fraction |r| > 4")
    print("source | all good pixels | within 3 Å of a sky line")
    res = {name: [np.concatenate(r) for r in zip(*[residuals(s) for s in src])] for name, src in matched}
    for name, (r_all, r_sky) in res.items():
        print(f"{name} | {spread(r_all)} | {spread(r_sky)}")

    print("\n# 3. Masks on the 3600-10400 Å store grid (real: outside the file's range counts as masked)")
    print("source | masked fraction of the grid | interior masked runs (own pixels) | blue end, red end masked")
    lo_grid, hi_grid = GRID.loglam[[0, -1]]
    for s in real:
        (lo, hi), bad = np.log10(s["wave"][[0, -1]]), ~s["good"]
        cover, runs = (min(hi, hi_grid) - max(lo, lo_grid)) / (hi_grid - lo_grid), interior_runs(bad)
        print(f"{s['name']} | {1 - cover * (1 - bad.mean()):.3f} ({bad.mean():.4f} of its own pixels) | {len(runs)} ({sum(runs.values())} px"
              + "".join(f", {s['wave'][a]:.0f} Å" for a in runs) + f") | {lo > lo_grid + 1e-4 or bad[0]}, {hi < hi_grid - 1e-4 or bad[-1]}")
    mixed = {k: draw_sample(2000, LIB, GRID, seed=5, settings=SimulationSettings(realism=r)) for k, r in SIMS.items()}
    for k, d in mixed.items():
        runs = [interior_runs(m) for m in d["mask"]]
        print(f"{k} sim, 2000 of all classes | {d['mask'].mean():.3f} | {np.mean([len(r) for r in runs]):.2f} per spectrum, "
              f"in {np.mean([len(r) > 0 for r in runs]):.2f} of them ({np.mean([sum(r.values()) for r in runs]):.1f} px per spectrum, "
              f"run length median {np.median([n for r in runs for n in r.values()] or [np.nan]):.0f} px) | "
              f"{d['mask'][:, 0].mean():.2f}, {d['mask'][:, -1].mean():.2f} of spectra")

    print("\n# 4. Continuum: median f_lambda rest 4000-4500 Å / 6500-7000 Å")
    ratios = {(z, k): np.array([blue_red(s) for s in group[k]]) for z, group in (("z<0.05", local), ("z 0.30-0.45", distant))
              for k in group}
    for (z, k), v in ratios.items():
        print(f"{k} sim {z}: median {np.nanmedian(v):.2f}, 5-95 % {np.nanpercentile(v, 5):.2f}-{np.nanpercentile(v, 95):.2f}")
    for s in real[:4]:
        if not np.isfinite(blue_red(s)):
            print(f"{s['name']} z {s['z']:.4f}: rest 4000-4500 or 6500-7000 Å not in view")
            continue
        z = "z 0.30-0.45" if s["z"] > 0.1 else "z<0.05"
        ranks = ", ".join(f"{k} {100 * np.nanmean(ratios[(z, k)] < blue_red(s)):.0f} %" for k in local)
        print(f"{s['name']} z {s['z']:.4f}: {blue_red(s):.2f}; percentile among the {z} sims: {ranks}")
    g_r, ratio, sf, burst, ew_burst = rest_colours(starbursts)
    print(f"2000 local galaxies with star-forming continua and starbursts, noiseless rest frame: {sf.mean():.2f} "
          f"star-forming, {burst.mean():.3f} starbursts")
    for name, group in (("star-forming, not starbursts", sf & ~burst), ("starbursts", burst), ("the others", ~sf)):
        print(f"  {name}: g - r median {np.median(g_r[group]):.2f} (25-75 % {np.percentile(g_r[group], 25):.2f}-"
              f"{np.percentile(g_r[group], 75):.2f}), blue/red median {np.median(ratio[group]):.2f} "
              f"(5-95 % {np.percentile(ratio[group], 5):.2f}-{np.percentile(ratio[group], 95):.2f})")
    print("\n# 4b. Emission lines: rest-frame EW(Hα) (Å; ±10 Å, continuum 6460-6530 and 6600-6680 Å)")
    for s in real[:3]:
        print(f"{s['name']} z {s['z']:.4f}: {halpha_equivalent_width(s['wave'] / (1 + s['z']), np.where(s['good'], s['flux'], np.nan)):.0f}")
    for share, ew in ((0.0, rest_colours(star_forming)[-1]), (0.15, ew_burst)):
        print(f"2000 local galaxies, starburst_share {share:g}: {np.mean(ew > 3):.2f} with EW > 3 Å; of those, EW "
              f"median {np.median(ew[ew > 3]):.0f}, 90 / 99 % {np.percentile(ew[ew > 3], 90):.0f} / "
              f"{np.percentile(ew[ew > 3], 99):.0f}, above 200 Å {np.mean(ew[ew > 3] > 200):.3f}")
    types = [t[:1] for t in LIB.star_sptype]
    print(f"\n# Templates: {LIB.n_star} MILES stars, Teff {np.nanmin(LIB.star_teff):.0f}-{np.nanmax(LIB.star_teff):.0f} K; "
          f"types O B A F G K M: {[types.count(c) for c in 'OBAFGKM']}; C D L T: {[types.count(c) for c in 'CDLT']}")
    plots(real, local, distant, res, ratios)


def save(fig, name):
    """dpi 80, reduced to a 64-colour palette to keep the file small."""
    buffer = io.BytesIO()
    fig.tight_layout(), fig.savefig(buffer, dpi=80), plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(64).save(OUT / name, optimize=True)


def plots(real, local, distant, res, ratios):
    sims, sky = local["realism"], [sky_ratio(s) for s in local["realism"]]
    middle = int(np.argsort(sky)[len(sky) // 2])
    shown = [(s, s["name"]) for s in real[::2]] + [(sims[middle], f"realism sim galaxy, sky {sky[middle]:.2f} x object"),
                                                   (local["old"][0], "old sim galaxy")]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 7), sharex=True)
    for ax, (s, name) in zip(axes, shown):
        ax.plot(s["wave"][::2], (s["sigma"] / np.nanmedian(s["sigma"]))[::2], lw=0.5, color="k")
        ax.set_yscale("log"), ax.set_ylim(0.3, 30), ax.text(0.01, 0.8, name, transform=ax.transAxes)
    axes[-1].set_xlabel("observed wavelength (Å)"), axes[2].set_ylabel("sigma / median sigma")
    save(fig, "noise.png")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    bins, x = np.linspace(-8, 8, 81), np.linspace(-8, 8, 200)
    for ax, part, title in zip(axes, (0, 1), ("all good pixels", "within 3 Å of a sky line")):
        for name, r in res.items():
            ax.hist(np.clip(r[part], -8, 8), bins, density=True, histtype="step", label=name)
        ax.plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), "k:", label="N(0, 1)"), ax.set_yscale("log")
        ax.set_ylim(1e-4, 1), ax.set_title(title, fontsize=9), ax.set_xlabel("(flux - model) / sigma")
    axes[0].legend(fontsize=6, loc="upper left")
    save(fig, "residuals.png")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, z in zip(axes, ("z<0.05", "z 0.30-0.45")):
        for k in (*SIMS, "realism+sf"):
            ax.hist(ratios[(z, k)], np.linspace(0, 3.5, 36), histtype="step", label=f"{k} sim")
        for i, s in enumerate([s for s in real[:4] if (s["z"] > 0.1) == (z != "z<0.05") and np.isfinite(blue_red(s))]):
            ax.axvline(blue_red(s), color="k", ls="--"), ax.text(blue_red(s) + 0.02, 20 + 25 * i, s["name"], fontsize=7)
        ax.set_title(f"galaxies {z}", fontsize=9), ax.set_xlabel("f(4000-4500 Å) / f(6500-7000 Å), rest frame")
    axes[0].legend(fontsize=7)
    save(fig, "continuum.png")
    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5))
    for ax, s, group in zip(axes, (real[0], real[2]), (local["realism"], distant["realism"])):
        sim = group[int(np.nanargmin([abs(blue_red(t) - blue_red(s)) + abs(t["z"] - s["z"]) for t in group]))]
        boost = 10 if s["snr"] > 20 else 1
        for t, colour, label in ((s, "k", s["name"]), (sim, "C1", f"realism sim z {sim['z']:.3f} S/N {sim['snr']:.0f}")):
            scale, step = np.median(t["flux"][t["good"]]), 4 if "DESI" in t["name"] else 2
            ax.plot(t["wave"][::step], np.where(t["good"], t["flux"], np.nan)[::step] / scale, lw=0.5, color=colour, label=label)
            ax.plot(t["wave"][::step], boost * t["sigma"][::step] / scale, lw=0.5, color=colour, alpha=0.6)
        ax.set_ylim(-0.1, 2.5), ax.legend(fontsize=7, loc="upper right"), ax.set_ylabel("/ median flux")
        ax.set_title(f"{s['name']} z {s['z']:.3f} S/N {s['snr']:.0f}; lower curves: sigma x {boost}", fontsize=9)
    axes[-1].set_xlabel("observed wavelength (Å)")
    save(fig, "overlay.png")


if __name__ == "__main__":
    main()
