"""Choose the default model's architecture by measured accuracy per CPU-second.

Trains each candidate backbone with the same recipe (the default model's, on a smaller simulated
set with the same realism effects and the same seed and split), on this machine, one after the
other, from scratch (the recipe's `init_from` is dropped), and writes their held-out figures and
training time to `training/<--out>.md` and `.json` (or --out-dir). Each run lives in its own folder under
--workdir and resumes there if interrupted (rerun the same command).

Two budgets: the same number of epochs for every backbone (--epochs), or the same wall-clock
minutes (--minutes): each backbone then gets the epochs that fit in them on this machine, chosen
as `timed_run.py` chooses them (its training step and the simulator's rate measured first), so
that each run's learning rate is annealed to its end and a faster backbone sees more images.

    python training/compare_architectures.py --workdir /tmp/arch [--objects 8000] [--epochs 3]
    python training/compare_architectures.py --workdir /tmp/arch10 --recipe training/default-tiny-ema.yaml \
        --objects 30000 --minutes 10 --out architectures-10min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CANDIDATES = ("vit-mini-p32", "vit-tiny-p32", "vit-wide-p32", "vit-tiny")


def candidate_recipe(base: dict, backbone: str, objects: int, epochs: int) -> dict:
    recipe = {**base, "name": f"compare-{backbone}", "backbone": backbone, "epochs": epochs,
              "checkpoint_every": 200, "save_half": False}
    recipe.pop("init_from", None)
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
    epochs = json.loads((folder / "recipe.json").read_text()).get("epochs") if (folder / "recipe.json").is_file() else None
    return {"backbone": backbone, "parameters": parameters(folder), "seconds": summary["seconds"], "epochs": epochs,
            "class_accuracy": test["class_accuracy"], "z_nmad": test["z_nmad"], "z_eta": test["z_eta"],
            "teff_r2_stars": stars.get("teff_r2"), "logg_r2_stars": stars.get("logg_r2"),
            "feh_r2_stars": stars.get("feh_r2"),
            "class_accuracy_matched": harder.get("matched", {}).get("class_accuracy"),
            "class_accuracy_harder": harder.get("harder", {}).get("class_accuracy")}


def score(r: dict) -> float:
    """Mean of class accuracy, 1 − min(NMAD / 0.01, 1) and the mean stellar R² of a row."""
    stellar = [r[k] for k in ("teff_r2_stars", "logg_r2_stars", "feh_r2_stars") if r[k] is not None]
    return (r["class_accuracy"] + (1 - min(r["z_nmad"] / 0.01, 1)) + sum(stellar) / max(len(stellar), 1)) / 3


def table(rows: list[dict], objects: int, epochs: int, machine: str, recipe: str = "training/default-tiny.yaml",
          minutes: float | None = None, out: str = "architectures") -> str:
    def f(value, digits=3):
        return "—" if value is None else f"{value:.{digits}f}"

    budget = (f"with a budget of {minutes:g} minutes each (the epochs that `timed_run.py`'s plan fits in it, per "
              "backbone; a conservative plan: 'training s' is what each run took)") if minutes else f"for {epochs} epochs"
    command = f"--minutes {minutes:g}" if minutes else f"--epochs {epochs}"
    lines = [
        "# Architecture comparison for the default model",
        "",
        f"Each backbone trained from scratch with `{recipe}` on {objects:,} simulated objects (realism on) "
        f"{budget}, same seed and split, on {machine}; held-out test split (all classes) and held-out "
        "MILES stars. Made by:",
        "",
        f"    python training/compare_architectures.py --workdir DIR --recipe {recipe} --objects {objects} {command} "
        f"--out {out}",
        "",
        "| backbone | parameters | epochs | training s | class acc. | z NMAD | η | Teff R² | log g R² | [Fe/H] R² "
        "| class acc. matched / harder realism | score | score per CPU-hour |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| `{r['backbone']}` | {r['parameters']:,} | {r.get('epochs') or '—'} | {r['seconds']:.0f} "
                     f"| {f(r['class_accuracy'])} | {f(r['z_nmad'], 4)} | {f(r['z_eta'])} | {f(r['teff_r2_stars'])} "
                     f"| {f(r['logg_r2_stars'])} | {f(r['feh_r2_stars'])} | {f(r['class_accuracy_matched'])} / "
                     f"{f(r['class_accuracy_harder'])} | {score(r):.3f} | {score(r) / (2 * r['seconds'] / 3600):.2f} |")
    lines += ["", "Score = mean of class accuracy, 1 − min(NMAD/0.01, 1) and the mean stellar R²; per CPU-hour "
              "counts both cores for the training time (which includes simulating the set, the per-epoch "
              "validation and the held-out evaluation with the stellar baseline)."]
    missing = [c for c in CANDIDATES if c not in {r["backbone"] for r in rows}]
    if missing:
        lines += ["", f"Not run: {', '.join(f'`{c}`' for c in missing)}."]
    return "\n".join(lines + [""])


def _timed_run():
    """The module of training/timed_run.py, beside this script."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import timed_run

    return timed_run


def timed_plan(recipe, minutes: float, started: float) -> dict:
    """timed_run's plan for `recipe` in `minutes` from `started`: its training step and the
    simulator's rate measured first, their time counted as spent."""
    timed_run = _timed_run()
    step_s, rate = timed_run.step_seconds(recipe), timed_run.simulation_rate(recipe)
    return timed_run.plan(recipe, minutes, time.perf_counter() - started, step_s, rate)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--recipe", default="training/default-tiny.yaml", help="the recipe every backbone trains with")
    parser.add_argument("--objects", type=int, default=8000)
    parser.add_argument("--epochs", type=int, help="epochs of each (default 3; with --minutes: at most this many, default 100)")
    parser.add_argument("--minutes", type=float, help="the same wall-clock budget for each backbone instead")
    parser.add_argument("--backbones", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--machine", default=f"{os.cpu_count()} CPU cores")
    parser.add_argument("--out", default="architectures", help="the results' name: <out-dir>/<out>.md and .json")
    parser.add_argument("--out-dir", default=str(HERE), help="their folder (default: training/)")
    args = parser.parse_args(argv)

    from annotate.training import Recipe, train

    base = yaml.safe_load(Path(args.recipe).read_text())
    rows = []
    cap = args.epochs or (100 if args.minutes else 3)
    for backbone in args.backbones:
        started = time.perf_counter()
        folder = Path(args.workdir) / backbone
        folder.mkdir(parents=True, exist_ok=True)
        recipe_file = folder / "recipe.yaml"
        recipe_file.write_text(yaml.safe_dump(candidate_recipe(base, backbone, args.objects, cap)))
        recipe = Recipe.from_yaml(recipe_file)
        max_minutes = None
        if args.minutes:  # the plan made at the first start stays that of a resumed run
            planned = folder / "plan.json"
            if not planned.is_file():
                planned.write_text(json.dumps({"minutes": args.minutes, **timed_plan(recipe, args.minutes, started)}))
            chosen = json.loads(planned.read_text())
            if chosen["minutes"] != args.minutes:
                print(f"{folder} was planned for --minutes {chosen['minutes']:g}; rerun with that, or another --workdir",
                      file=sys.stderr)
                return 2
            recipe = replace(recipe, epochs=int(chosen["epochs"]))
            recipe_file.write_text(yaml.safe_dump(recipe.to_json(), sort_keys=False))
            max_minutes = max(args.minutes - (time.perf_counter() - started) / 60 - _timed_run().FINISH_S / 60, 0.5)
        summary = train(recipe, folder, log=lambda line: None, max_minutes=max_minutes)
        if summary.get("stopped"):
            print(f"{backbone}: stopped at the budget before its {recipe.epochs} epochs ended (its state is saved: "
                  "the same command continues it); left out of the table", flush=True)
            continue
        print(f"{backbone}: {recipe.epochs} epochs, {time.perf_counter() - started:.0f} s", flush=True)
        rows.append(row(backbone, folder))
    text = table(rows, args.objects, cap, args.machine, args.recipe, args.minutes, args.out)
    (Path(args.out_dir) / f"{args.out}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (Path(args.out_dir) / f"{args.out}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
