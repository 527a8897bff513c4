"""training/compare_architectures.py: each backbone from scratch with the same recipe, for the
same epochs or for the same minutes (the epochs that fit, planned once and kept on a rerun)."""

import json
from pathlib import Path

import yaml

from helpers import training_script


def _base(tmp_path) -> Path:
    simulate = {"n_objects": 100, "seed": 0, "workers": 1, "realism": {"strength": 1.0}, "n_held_out_spectra": 20,
                "n_robustness_spectra": 20}
    recipe = {"name": "base", "backbone": "vit-mini-p32", "init_from": str(tmp_path / "no-such-model"),
              "data": {"simulate": simulate}, "epochs": 50, "batch_size": 16, "lr": 1e-3, "val_fraction": 0.2,
              "test_fraction": 0.2, "seed": 1, "device": "cpu"}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_candidate_trains_from_scratch_on_the_smaller_set(tmp_path):
    script = training_script("compare_architectures")
    base = yaml.safe_load(_base(tmp_path).read_text())
    recipe = script.candidate_recipe(base, "vit-micro", 500, 4)
    assert "init_from" not in recipe and "init_from" in base
    assert (recipe["backbone"], recipe["epochs"], recipe["data"]["simulate"]["n_objects"]) == ("vit-micro", 4, 500)
    assert recipe["data"]["simulate"]["n_held_out_spectra"] == 20 and recipe["data"]["simulate"]["realism"] == {"strength": 1.0}


def test_equal_minutes_plan_each_backbones_epochs_once(tmp_path, monkeypatch):
    script = training_script("compare_architectures")
    planned = []

    def plan(recipe, minutes, started):
        planned.append((recipe.backbone, recipe.epochs, minutes))
        return {"epochs": 2, "step_s": 0.1}

    monkeypatch.setattr(script, "timed_plan", plan)
    argv = ["--workdir", str(tmp_path / "work"), "--recipe", str(_base(tmp_path)), "--objects", "60", "--minutes", "3",
            "--backbones", "vit-micro", "--out", "arch", "--out-dir", str(tmp_path)]
    assert script.main(argv) == 0
    folder = tmp_path / "work" / "vit-micro"
    assert planned == [("vit-micro", 100, 3.0)]              # planned under the default cap of 100 epochs
    assert json.loads((folder / "plan.json").read_text()) == {"minutes": 3.0, "epochs": 2, "step_s": 0.1}
    assert json.loads((folder / "recipe.json").read_text())["epochs"] == 2
    assert yaml.safe_load((folder / "recipe.yaml").read_text())["epochs"] == 2
    rows = json.loads((tmp_path / "arch.json").read_text())
    assert [(r["backbone"], r["epochs"]) for r in rows] == [("vit-micro", 2)]
    assert 0.0 <= rows[0]["class_accuracy"] <= 1.0 and rows[0]["seconds"] > 0
    text = (tmp_path / "arch.md").read_text()
    assert "a budget of 3 minutes each" in text and "| `vit-micro` |" in text and "--minutes 3 --out arch" in text
    # a rerun keeps the plan (a changed one would be refused as another recipe) and trains no more
    checkpoint = (folder / "model.safetensors").read_bytes()
    assert script.main(argv) == 0 and len(planned) == 1
    assert (folder / "model.safetensors").read_bytes() == checkpoint
    # ... and another budget for the same folder is refused, not planned anew
    assert script.main([a if a != "3" else "4" for a in argv]) == 2 and len(planned) == 1


def test_the_plan_counts_its_own_measurements_as_spent(monkeypatch):
    import time

    script = training_script("compare_architectures")
    timed_run = script._timed_run()
    seen = {}

    def slow_step(recipe):
        time.sleep(0.3)
        return 0.2

    def plan(recipe, minutes, elapsed, step_s, rate):
        seen.update(elapsed=elapsed, step_s=step_s, rate=rate)
        return {"epochs": 1}

    monkeypatch.setattr(timed_run, "step_seconds", slow_step)
    monkeypatch.setattr(timed_run, "simulation_rate", lambda recipe: 500.0)
    monkeypatch.setattr(timed_run, "plan", plan)
    assert script.timed_plan("a recipe", 10.0, time.perf_counter()) == {"epochs": 1}
    assert seen["elapsed"] >= 0.3 and (seen["step_s"], seen["rate"]) == (0.2, 500.0)
