"""The report's figures as PNG bytes (matplotlib, Agg): confusion, redshifts, success by S/N,
stellar parameters, pulls, and the disagreeing spectra with their lines marked.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .. import CLASS_NAMES
from .read import STELLAR


# vacuum rest wavelengths (Å) marked on the disagreement sheet
LINES = {"Lyα": 1215.67, "CIV": 1549.06, "MgII": 2798.75, "[OII]": 3728.48, "Hβ": 4862.68,
         "[OIII]": 5008.24, "Hα": 6564.61, "CaK": 3934.78, "CaH": 3969.59}


STORE_FLUX_UNIT = "10⁻¹⁷ erg/s/cm²/Å"  # the spectra store's layout (annotate.store)


RELATIVE_FLUX_READERS = ("lamost_lrs",)  # relative-calibrated flux, in stores without a flux_unit attribute


def _figure(width=5.0, height=4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def plot_confusion(metrics: dict) -> bytes:
    plt, fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    matrix = np.array(metrics["classification"]["confusion_matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black" if count < matrix.max() / 2 else "white")
    labels = metrics["classification"]["labels"]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class (PRED_CLASS)")
    ax.set_ylabel("pipeline class (CLASS)")
    return _png(plt, fig)


def plot_redshift(z_ref: np.ndarray, z_pred: np.ndarray, ref_class: np.ndarray) -> bytes:
    plt, fig = _figure(9.0, 4.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, colour in zip(CLASS_NAMES, ("tab:blue", "tab:red", "tab:orange")):
        pick = ref_class == name
        left.scatter(z_ref[pick], z_pred[pick], s=6, alpha=0.6, color=colour, label=name)
    top = float(np.nanmax(np.concatenate([z_ref, z_pred, [0.1]])))
    left.plot([0, top], [0, top], color="grey", lw=0.8)
    left.set_xlabel("pipeline redshift z")
    left.set_ylabel("predicted redshift z")
    left.legend(fontsize=8)
    dz = (z_pred - z_ref) / (1 + z_ref)
    edges = np.quantile(z_ref, np.linspace(0, 1, 9)) if len(z_ref) > 8 else np.array([0, top])
    centres, medians, spreads = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (z_ref >= lo) & (z_ref <= hi)
        if inside.sum() > 1:
            centres.append(0.5 * (lo + hi))
            medians.append(np.median(dz[inside]))
            spreads.append(1.4826 * np.median(np.abs(dz[inside])))
    right.scatter(z_ref, dz, s=4, alpha=0.3, color="grey")
    right.errorbar(centres, medians, yerr=spreads, fmt="o", color="black", label="median ± NMAD per z bin")
    right.axhline(0, color="grey", lw=0.8)
    right.set_ylim(-0.2, 0.2)
    right.set_xlabel("pipeline redshift z")
    right.set_ylabel("Δz / (1 + z)  (predicted − pipeline)")
    right.legend(fontsize=8)
    return _png(plt, fig)


def plot_snr(metrics: dict) -> bytes:
    plt, fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    bins = metrics["redshift"]["success_by_snr"]
    labels = [f"{b['snr_min']:g}–{b['snr_max']:g}" if b["snr_max"] is not None else f"{b['snr_min']:g}+" for b in bins]
    ax.bar(labels, [0 if np.isnan(b["success_rate"]) else b["success_rate"] for b in bins], color="tab:green")
    for i, b in enumerate(bins):
        ax.text(i, 0.02, f"n={b['n']}", ha="center", rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_xlabel("pipeline S/N (median per pixel)")
    ax.set_ylabel("redshift success rate (1 − catastrophic)")
    ax.tick_params(axis="x", labelsize=7)
    return _png(plt, fig)


def plot_stellar(reference: dict, pred: dict, compared: np.ndarray) -> bytes:
    plt, fig = _figure(10.0, 3.4)
    stars = compared & (reference["class"].astype(str) == "STAR")
    for k, (role, column, label, unit) in enumerate(STELLAR, start=1):
        ax = fig.add_subplot(1, 3, k)
        true = np.asarray(reference[role], float)[stars]
        guess = np.asarray(pred.get(column, np.full(len(stars), np.nan)), float)[stars]
        ax.scatter(true, guess, s=6, alpha=0.6)
        finite = np.isfinite(true) & np.isfinite(guess)
        if finite.any():
            lo, hi = np.min([true[finite].min(), guess[finite].min()]), np.max([true[finite].max(), guess[finite].max()])
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set_xlabel(f"pipeline {label} ({unit})")
        ax.set_ylabel(f"predicted {label} ({unit})")
    return _png(plt, fig)


def plot_pulls(pulls_by_label: dict) -> bytes:
    """Overlaid histograms of the pulls (z_pred − z_ref) / z_err, label -> (m,) float, against the
    unit Gaussian of a calibrated z_err; |pull| > 6 lands in the edge bins."""
    plt, fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    edges = np.linspace(-6.0, 6.0, 49)
    for (label, pull), colour in zip(pulls_by_label.items(), ("tab:purple", "tab:green")):
        if len(pull):
            ax.hist(np.clip(pull, edges[0], edges[-1]), bins=edges, density=True, histtype="step", lw=1.4,
                    color=colour, label=f"{label} (n={len(pull)})")
    grid = np.linspace(edges[0], edges[-1], 241)
    ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="grey", ls="--", lw=1.0, label="unit Gaussian")
    ax.set_xlabel("pull = (predicted z − pipeline z) / predicted σ_z")
    ax.set_ylabel("probability density (per unit pull)")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def flux_unit(attrs, reader: str) -> str:
    """The unit of a spectra store's flux: its `flux_unit` attribute, the units its readers gave
    (10⁻¹⁷ erg/s/cm²/Å written so); for a store ingested before the attribute, the store layout's
    unit, or "survey units" for a relative-calibrated survey's reader."""
    from ..readers import FLUX_UNIT

    unit = attrs.get("flux_unit")
    unit = (unit.decode() if isinstance(unit, bytes) else str(unit or "")).strip()
    if unit:
        return "; ".join(STORE_FLUX_UNIT if part == FLUX_UNIT else part for part in unit.split("; "))
    return "survey units" if reader in RELATIVE_FLUX_READERS else STORE_FLUX_UNIT


def plot_disagreements(table: dict, store: Path | None, n: int, object_ids: np.ndarray, reader: str = "") -> bytes | None:
    """Spectra of the first n disagreements from the spectra store, main lines marked and named at
    the pipeline's z (dashed, names at the top) and the predicted z (dotted, names at the bottom).
    None without rows, or without a store that belongs to this catalog (same rows, same object ids);
    `reader` (the survey's) names the flux unit where the store does not."""
    if store is None or not Path(store).is_file() or len(table["ROW"]) == 0:
        return None
    import h5py
    from matplotlib.lines import Line2D

    from ..errors import StoreError
    from ..store import open_store, read_rows

    try:
        info = open_store(store)
    except StoreError:
        return None
    with h5py.File(info.path, "r") as h5:
        stored_ids = h5["object_id"][()]
        unit = flux_unit(h5.attrs, info.reader or reader)
    if info.n_rows != len(object_ids):
        return None
    rows = table["ROW"][:n]
    decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in stored_ids[rows]]
    if decoded != [str(object_ids[r]) for r in rows]:
        return None
    wave = info.grid.wavelength
    plt, fig = _figure(10.0, 1.9 * len(rows) + 0.6)
    for k, row in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, k + 1)
        data = read_rows(store, int(row), int(row) + 1)
        flux = np.where(data["mask"][0], np.nan, data["flux"][0])
        ax.plot(wave, flux, lw=0.5, color="black")
        finite = flux[np.isfinite(flux)]
        if finite.size:
            lo, hi = np.percentile(finite, [1, 99.5])
            pad = 0.1 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)
        for z, style, colour, height in ((table["Z"][k], "--", "tab:blue", 0.97), (table["PRED_Z"][k], ":", "tab:red", 0.03)):
            for name, rest in LINES.items():
                observed = rest * (1 + z)
                if np.isfinite(observed) and wave[0] < observed < wave[-1]:
                    ax.axvline(observed, ls=style, color=colour, lw=0.8)
                    ax.text(observed, height, name, transform=ax.get_xaxis_transform(), color=colour, fontsize=6,
                            rotation=90, ha="right", va="top" if height > 0.5 else "bottom")
        ax.set_title(f"row {row}  id {table['OBJECT_ID'][k]}: pipeline {table['CLASS'][k]} z={table['Z'][k]:.4f} "
                     f"(blue dashed) · model {table['PRED_CLASS'][k]} z={table['PRED_Z'][k]:.4f} (red dotted)",
                     fontsize=8)
        ax.set_ylabel(f"flux ({unit})", fontsize=7)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend([Line2D([], [], ls="--", color="tab:blue"), Line2D([], [], ls=":", color="tab:red")],
                      ["lines at the pipeline's z (names at the top)", "lines at the predicted z (names at the bottom)"],
                      fontsize=6, loc="upper right")
        if k == len(rows) - 1:
            ax.set_xlabel("observed wavelength (Å)", fontsize=8)
    return _png(plt, fig)
