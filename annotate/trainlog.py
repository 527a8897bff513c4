"""Training logs: per-epoch metrics as JSON and CSV, and a learning-curve PNG."""

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
