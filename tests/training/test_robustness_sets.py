"""training/robustness_sets.py: it scores a checkpoint on the robustness sets its training drew
(so it reproduces training.json), pools sets, and holds effect groups back in the harder sets."""

import json

import numpy as np
import pytest

from annotate.training import train
from helpers import small_recipe, training_script


def test_pooled_figures_of_several_sets():
    script = training_script("robustness_sets")
    true = np.array([0, 0, 1, 1, 2, 2, 2, 2, 1, 0])
    # set 1 (10 objects): matched all right, harder rows 0 and 1 (galaxies) taken for quasars: 20 points
    first = (true, true.copy(), np.where(np.arange(10) < 2, 1, true))
    # set 2 (the first 5): matched row 4 (a star) taken for a galaxy, harder right: -20 points
    short = true[:5]
    second = (short, np.where(np.arange(5) == 4, 0, short), short.copy())
    s = script.drop_summary([first, second], limit=15)
    assert (s["n_sets"], s["n"]) == (2, 15)
    assert s["matched"] == pytest.approx(14 / 15) and s["harder"] == pytest.approx(13 / 15)
    assert s["drop"] == pytest.approx(100 / 15)             # pooled over the 15 objects ...
    assert s["mean_drop"] == pytest.approx(0.0)             # ... the sets' mean weighs each set alike
    assert s["sd"] == pytest.approx(np.std([20.0, -20.0], ddof=1)) and s["stderr"] == pytest.approx(20.0)
    assert (s["min"], s["max"], s["above"]) == (pytest.approx(-20.0), pytest.approx(20.0), 1)
    assert s["recall"]["GALAXY"] == (pytest.approx(1.0), pytest.approx(3 / 5))
    assert s["recall"]["STAR"] == (pytest.approx(4 / 5), pytest.approx(1.0))
    assert s["harder_errors"] == {"GALAXY→QSO": 2}
    assert script.errors(s) == "GALAXY→QSO 2"


def test_the_script_reproduces_the_training_runs_own_robustness_figures(tmp_path, capsys):
    simulate = {"n_objects": 120, "seed": 0, "workers": 1, "realism": {"strength": 1.0, "strength_max": 1.5},
                "n_robustness_spectra": 40}
    recipe = small_recipe(tmp_path, "unused", data={"simulate": simulate}, epochs=1, batch_size=16,
                          val_fraction=0.2, test_fraction=0.2)
    summary = train(recipe, tmp_path / "ckpt", log=lambda line: None)
    script = training_script("robustness_sets")
    recipe_path = str(tmp_path / "recipe.yaml")
    assert script.main([str(tmp_path / "ckpt"), "--recipe", recipe_path, "--seeds", "0", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    own = json.loads((tmp_path / "ckpt" / "training.json").read_text())["robustness"]
    assert own == summary["robustness"]
    expected = f"matched {own['matched']['class_accuracy']:.4f}, harder {own['harder']['class_accuracy']:.4f}"
    assert lines[0].startswith("sets of data seed 0 (objects at seed 2)") and expected in lines[0]
    assert lines[1].startswith("sets of data seed 5 (objects at seed 7)")
    assert lines[2].startswith(f"{tmp_path / 'ckpt'}, 2 sets (80 objects)")
    # holding every effect group in the harder sets leaves the matched sets as they were
    assert script.main([str(tmp_path / "ckpt"), "--recipe", recipe_path, "--seeds", "0",
                        "--hold", *sorted(script.HOLD_GROUPS)]) == 0
    held = capsys.readouterr().out.splitlines()[0]
    assert f"matched {own['matched']['class_accuracy']:.4f}" in held and "held at the matched sets' mean strength" in held
