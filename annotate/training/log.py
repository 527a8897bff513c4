"""Training logs: per-epoch metrics as JSON and CSV, a learning-curve PNG, and the lines a person
reads (one per epoch, and the summary at the end)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

CURVES = (("loss", ("train_loss", "val_loss"), "loss"),
          ("class", ("val_class_accuracy",), "accuracy"),
          ("z", ("val_z_r2",), "R²"),
          ("stellar", ("val_teff_r2", "val_logg_r2", "val_feh_r2"), "R²"))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_history(out_dir: str | Path, history: list[dict]) -> None:
    """metrics.json (list of per-epoch records) and metrics.csv (one row per epoch)."""
    out_dir = Path(out_dir)
    _atomic_write(out_dir / "metrics.json", json.dumps(history, indent=1) + "\n")
    keys = list(dict.fromkeys(k for record in history for k in record))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _atomic_write(out_dir / "metrics.csv", text.getvalue())


def plot_learning_curve(out_dir: str | Path, history: list[dict], title: str = "") -> Path:
    """learning-curve.png: loss (train and validation) and the validation scores per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in CURVES if any(k in r for r in history for k in c[1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (name, keys, ylabel) in zip(axes[0], panels):
        for key in keys:
            points = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=key.replace("val_", "val ").replace("train_", "train "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(out_dir) / "learning-curve.png"
    tmp = path.with_name("learning-curve.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _metric_words(metrics: dict, prefix: str = "") -> list[str]:
    """The scores of one evaluation in a scientist's words: 'class accuracy 0.971', ..."""
    get = metrics.get
    words = []
    if isinstance(get(f"{prefix}class_accuracy"), (int, float)):
        words.append(f"class accuracy {get(f'{prefix}class_accuracy'):.3f}")
    if isinstance(get(f"{prefix}z_nmad"), (int, float)):
        words.append(f"z NMAD {get(f'{prefix}z_nmad'):.4f} (catastrophic {100 * get(f'{prefix}z_eta', float('nan')):.1f} %)")
    stellar = [f"{name} R² {get(f'{prefix}{key}_r2'):.2f}" for key, name in (("teff", "Teff"), ("logg", "log g"),
                                                                           ("feh", "[Fe/H]"))
               if isinstance(get(f"{prefix}{key}_r2"), (int, float))]
    if stellar:
        words.append(", ".join(stellar))
    return words


def epoch_line(record: dict, epochs: int) -> str:
    """One readable line per epoch, e.g. 'epoch 3/28 (199 s): loss -1.67 train, -1.47 validation;
    class accuracy 0.971; z NMAD 0.0203 (catastrophic 13.8 %); Teff R² 0.85, log g R² 0.49, ...'.
    metrics.json / metrics.csv keep every value."""
    head = f"epoch {record['epoch']}/{epochs} ({record.get('seconds', 0):.0f} s): loss {record['train_loss']:.3f} train"
    if isinstance(record.get("val_loss"), (int, float)):
        head += f", {record['val_loss']:.3f} validation"
    return "; ".join([head, *_metric_words(record, "val_")])


def summary_lines(summary: dict) -> list[str]:
    """The end of training in words: where the best epoch was, the held-out scores, the
    stellar parameters by S/N beside the baseline. training.json keeps every value."""
    lines = []
    if "best_epoch" in summary:
        lines.append(f"best epoch {summary['best_epoch']} (the checkpoint), {summary.get('steps', '?')} steps, "
                     f"{summary.get('seconds', 0) / 60:.0f} min on {summary.get('device', '?')}")
    simulated = "simulate" in ((summary.get("recipe") or {}).get("data") or {"simulate": True})
    sets = (("test", "test split (" + ("simulated " if simulated else "") + "objects never trained on)"),
            ("held_out_stars", "held-out MILES stars (templates never trained on)"))
    for key, name in sets:
        if summary.get(key):
            lines.append(f"{name}, {summary[key].get('n', '?')} spectra: " + "; ".join(_metric_words(summary[key])))
    for key, part in (summary.get("robustness") or {}).items():
        words = "stronger realism effects than in training" if key == "harder" else "the training's realism effects"
        lines.append(f"new objects with {words}, {part.get('n', '?')} spectra: " + "; ".join(_metric_words(part)))
    stellar = (summary.get("held_out_stars") or {}).get("stellar")
    if stellar:
        lines.append("stellar parameters of the held-out stars, RMSE by S/N (this model | "
                     f"baseline: {stellar.get('baseline_method', 'k nearest templates')}):")
        units = {"teff": ("Teff", "K", "{:.0f}"), "logg": ("log g", "dex", "{:.2f}"), "feh": ("[Fe/H]", "dex", "{:.2f}")}
        for key, (name, unit, fmt) in units.items():
            if key not in stellar["vit"]:
                continue
            cells = []
            for ours, theirs in zip(stellar["vit"][key]["by_snr"], stellar["baseline"][key]["by_snr"]):
                if ours["n"]:
                    low, high = ours["snr"]
                    band = f"{low:g}–{high:g}" if high is not None else f"≥ {low:g}"
                    cells.append(f"S/N {band}: {fmt.format(ours['rmse'])} | {fmt.format(theirs['rmse'])}")
            r2 = [k for k in stellar["vit"][key] if k.startswith("r2_snr_ge_")]
            tail = "".join(f"; R² at S/N ≥ {k[len('r2_snr_ge_'):]}: {stellar['vit'][key][k]:.2f} | "
                           f"{stellar['baseline'][key][k]:.2f}" for k in r2)
            lines.append(f"  {name} ({unit}): " + ", ".join(cells) + tail)
    return lines
