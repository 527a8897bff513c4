"""Choose the default model's architecture by measured accuracy per CPU-second.

Trains each candidate backbone with the same recipe (the default model's, on a smaller simulated
set with the same realism effects and the same seed and split) for the same number of epochs, on
this machine, one after the other, and writes their held-out figures and training time to
`training/architectures.md` and `.json`. Each run lives in its own folder under --workdir and
resumes there if interrupted (rerun the same command).

    python training/compare_architectures.py --workdir /tmp/arch [--objects 8000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CANDIDATES = ("vit-mini-p32", "vit-tiny-p32", "vit-wide-p32", "vit-tiny")


def candidate_recipe(base: dict, backbone: str, objects: int, epochs: int) -> dict:
    recipe = {**base, "name": f"compare-{backbone}", "backbone": backbone, "epochs": epochs,
              "checkpoint_every": 200, "save_half": False}
    simulate = {**base["data"]["simulate"], "n_objects": objects,
                "n_held_out_spectra": min(base["data"]["simulate"].get("n_held_out_spectra", 0), 1000),
                "n_robustness_spectra": min(base["data"]["simulate"].get("n_robustness_spectra", 0), 1000)}
    recipe["data"] = {"simulate": simulate}
    return recipe


def parameters(folder: Path) -> int:
    from annotate.checkpoint import load_checkpoint

    model, _ = load_checkpoint(folder, "cpu")
    return sum(p.numel() for p in model.parameters())


def row(backbone: str, folder: Path) -> dict:
    summary = json.loads((folder / "training.json").read_text())
    test, stars = summary["test"], summary["held_out_stars"]
    harder = summary.get("robustness", {})
    return {"backbone": backbone, "parameters": parameters(folder), "seconds": summary["seconds"],
            "class_accuracy": test["class_accuracy"], "z_nmad": test["z_nmad"], "z_eta": test["z_eta"],
            "teff_r2_stars": stars.get("teff_r2"), "logg_r2_stars": stars.get("logg_r2"),
            "feh_r2_stars": stars.get("feh_r2"),
            "class_accuracy_matched": harder.get("matched", {}).get("class_accuracy"),
            "class_accuracy_harder": harder.get("harder", {}).get("class_accuracy")}


def table(rows: list[dict], objects: int, epochs: int, machine: str) -> str:
    def f(value, digits=3):
        return "—" if value is None else f"{value:.{digits}f}"

    lines = [
        "# Architecture comparison for the default model",
        "",
        f"Each backbone trained with `training/default-tiny.yaml` on {objects:,} simulated objects (realism on) "
        f"for {epochs} epochs, same seed and split, on {machine}; held-out test split (all classes) and held-out "
        "MILES stars. Made by:",
        "",
        f"    python training/compare_architectures.py --objects {objects} --epochs {epochs}",
        "",
        "| backbone | parameters | training s | class acc. | z NMAD | η | Teff R² | log g R² | [Fe/H] R² "
        "| class acc. matched / 2× realism | score per CPU-hour |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stellar = [r[k] for k in ("teff_r2_stars", "logg_r2_stars", "feh_r2_stars") if r[k] is not None]
        score = (r["class_accuracy"] + (1 - min(r["z_nmad"] / 0.01, 1)) + sum(stellar) / max(len(stellar), 1)) / 3
        lines.append(f"| `{r['backbone']}` | {r['parameters']:,} | {r['seconds']:.0f} | {f(r['class_accuracy'])} "
                     f"| {f(r['z_nmad'], 4)} | {f(r['z_eta'])} | {f(r['teff_r2_stars'])} | {f(r['logg_r2_stars'])} "
                     f"| {f(r['feh_r2_stars'])} | {f(r['class_accuracy_matched'])} / {f(r['class_accuracy_harder'])} "
                     f"| {score / (2 * r['seconds'] / 3600):.2f} |")
    lines += ["", "Score = mean of class accuracy, 1 − min(NMAD/0.01, 1) and the mean stellar R²; per CPU-hour "
              "counts both cores for the training time (which includes simulating the set, the per-epoch "
              "validation and the held-out evaluation with the stellar baseline)."]
    missing = [c for c in CANDIDATES if c not in {r["backbone"] for r in rows}]
    if missing:
        lines += ["", f"Not run: {', '.join(f'`{c}`' for c in missing)}."]
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--objects", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--machine", default=f"{os.cpu_count()} CPU cores")
    args = parser.parse_args(argv)

    from annotate.training import Recipe, train

    base = yaml.safe_load((HERE / "default-tiny.yaml").read_text())
    rows = []
    for backbone in args.backbones:
        folder = Path(args.workdir) / backbone
        folder.mkdir(parents=True, exist_ok=True)
        recipe_file = folder / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(candidate_recipe(base, backbone, args.objects, args.epochs)))
        recipe = Recipe.from_yaml(recipe_file)
        start = time.time()
        train(recipe, folder, log=lambda line: None)
        print(f"{backbone}: {time.time() - start:.0f} s", flush=True)
        rows.append(row(backbone, folder))
    (HERE / "architectures.json").write_text(json.dumps(rows, indent=1) + "\n")
    (HERE / "architectures.md").write_text(table(rows, args.objects, args.epochs, args.machine))
    print(table(rows, args.objects, args.epochs, args.machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
