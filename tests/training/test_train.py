import json

import numpy as np
import pytest
import torch

from annotate.checkpoint import load_checkpoint
from annotate.errors import ConfigError
from annotate.grid import WavelengthGrid
from annotate.training import Recipe, train
from annotate.training.data import encode_targets, fit_label_norm, split_by_object
from helpers import _labelled_store
from helpers import small_recipe as _recipe


def test_split_is_by_object_and_seeded():
    objects = np.repeat(np.arange(50), 2)
    a = split_by_object(objects, 0.2, 0.2, seed=3)
    assert (a == split_by_object(objects, 0.2, 0.2, seed=3)).all()
    assert (a[::2] == a[1::2]).all()  # both rows of an object share a split
    assert set(a) == {"train", "val", "test"}


def test_missing_labels_are_masked_not_zero_filled():
    data = {"class": np.array(["STAR", "STAR", "GALAXY"]), "z": np.array([0.0, 0.0, 0.5]),
            "teff": np.array([5000.0, np.nan, np.nan]), "logg": np.array([4.0, 4.5, np.nan]),
            "feh": np.array([np.nan, np.nan, np.nan])}
    norms = fit_label_norm(data, np.ones(3, bool))
    targets = encode_targets(data, norms)
    assert targets["stellar_mask"].tolist() == [[True, True, False], [False, True, False], [False, False, False]]
    assert norms["teff"].mean == 5000.0 and norms["feh"].std == 1.0


def test_training_writes_a_checkpoint_that_loads(tmp_path):
    store = _labelled_store(tmp_path / "train.h5")
    summary = train(_recipe(tmp_path, store), tmp_path / "ckpt", log=lambda line: None)
    history = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    model, card = load_checkpoint(tmp_path / "ckpt")
    assert card.name == "tiny-test"
    assert card.training["split_counts"]["train"] + card.training["split_counts"]["val"] \
        + card.training["split_counts"]["test"] == 48
    assert summary["test"]["n"] == card.training["split_counts"]["test"]
    assert 0.0 <= summary["test"]["class_accuracy"] <= 1.0
    assert card.label_norm["z"].transform == "log1p10"

    # re-evaluating the saved checkpoint on the same split reproduces the stored test metrics
    from annotate.checkpoint import read_card
    from annotate.training import evaluate_checkpoint

    weights = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    again = evaluate_checkpoint(_recipe(tmp_path, store), tmp_path / "ckpt", log=lambda line: None)
    assert again["test"]["n"] == summary["test"]["n"]
    assert again["test"]["class_accuracy"] == pytest.approx(summary["test"]["class_accuracy"])
    assert again["test"]["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-5)
    assert read_card(tmp_path / "ckpt").training["test"]["loss"] == pytest.approx(again["test"]["loss"])
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == weights

    # a recipe of another split (seed) or data is refused: its 'test' objects include training ones;
    # one that differs only in what does not change the split (epochs, lr) is taken
    card_before = (tmp_path / "ckpt" / "config.json").read_bytes()
    for changed in ({"seed": 5}, {"test_fraction": 0.3}):
        with pytest.raises(ConfigError, match=f"was trained with another {next(iter(changed))} than recipe tiny-test's"):
            evaluate_checkpoint(_recipe(tmp_path, store, **changed), tmp_path / "ckpt", log=lambda line: None)
    assert (tmp_path / "ckpt" / "config.json").read_bytes() == card_before
    evaluate_checkpoint(_recipe(tmp_path, store, epochs=5, lr=3e-4), tmp_path / "ckpt", log=lambda line: None)
    # a run that has not finished (its state/ there, no training.json) is refused
    (tmp_path / "ckpt" / "training.json").rename(tmp_path / "training.json")
    (tmp_path / "ckpt" / "state").mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match="a training run that has not finished"):
        evaluate_checkpoint(_recipe(tmp_path, store), tmp_path / "ckpt", log=lambda line: None)


def test_unknown_recipe_key_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {store: s.h5}\nepoch: 3\n")
    with pytest.raises(ConfigError, match="unknown recipe keys epoch"):
        Recipe.from_yaml(path)


def test_split_is_independent_of_the_simulated_classes():
    """split_by_object draws its own random stream: with default_rng(seed) it repeated the
    simulator's class draws for the same seed and put almost no stars in val/test."""
    from annotate.simulate.dataset import simulate_training_set

    data = simulate_training_set(900, WavelengthGrid(), seed=0, workers=1)
    split = split_by_object(data["object"], 0.15, 0.15, seed=0)
    overall = np.mean(data["class"] == "STAR")
    for part in ("val", "test"):
        assert np.mean(data["class"][split == part] == "STAR") == pytest.approx(overall, abs=0.1)


@pytest.mark.parametrize("encoding", ["simple", "overlap"])
def test_every_encoding_trains_and_predicts_as_it_was_trained(tmp_path, encoding):
    from annotate.predict import predict_store

    store = _labelled_store(tmp_path / "train.h5")
    train(_recipe(tmp_path, store, render={"encoding": encoding, "line_width": 1}, epochs=1),
          tmp_path / "ckpt", log=lambda line: None)
    model, card = load_checkpoint(tmp_path / "ckpt")
    assert card.render.encoding == encoding and card.render.line_width == 1
    pred = predict_store(model, card, store)
    assert np.isfinite(pred["z"]).all() and np.allclose(pred["prob"].sum(axis=1), 1.0, atol=1e-5)


def test_training_from_an_image_store_sees_the_same_pixels(tmp_path):
    from annotate.images import render_store
    from annotate.render import RenderSettings

    store = _labelled_store(tmp_path / "train.h5")
    images = tmp_path / "images.h5"
    render_store(store, images, RenderSettings(encoding="overlap"), scheduler="sync")
    from_images = train(_recipe(tmp_path, store, data={"store": str(store), "images": str(images)}, epochs=1),
                        tmp_path / "a", log=lambda line: None)
    on_the_fly = train(_recipe(tmp_path, store, render={"encoding": "overlap"}, epochs=1),
                       tmp_path / "b", log=lambda line: None)
    _, card = load_checkpoint(tmp_path / "a")
    assert card.render.encoding == "overlap"  # taken from the image store
    history_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    history_b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert history_a[0]["train_loss"] == pytest.approx(history_b[0]["train_loss"], rel=1e-6)
    assert from_images["test"]["loss"] == pytest.approx(on_the_fly["test"]["loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="differ from those of the image store"):
        train(_recipe(tmp_path, store, data={"store": str(store), "images": str(images)},
                      render={"encoding": "simple"}), tmp_path / "c", log=lambda line: None)


def test_batches_rendered_on_the_device_are_the_dataloaders_batches(tmp_path):
    """render_on: device (the default on a GPU) renders with render_torch where the spectra
    already are; on the CPU here it must give the very batches, and the same training, as the
    DataLoader path."""
    import torch

    from annotate.render import RenderSettings
    from annotate.training.data import DeviceBatches, RenderedBatches, store_training_data

    store = _labelled_store(tmp_path / "train.h5")
    data = store_training_data(store, WavelengthGrid())
    targets = encode_targets(data, fit_label_norm(data, np.ones(len(data["flux"]), bool)))
    for encoding in ("2dmap", "overlap"):
        settings = RenderSettings(encoding=encoding)
        rows = np.array([7, 3, 11, 0])
        on_cpu = RenderedBatches(data, targets, settings, 0.5, 0.5)[rows]
        on_device = DeviceBatches(data, targets, settings, 0.5, 0.5, "cpu")[rows]
        assert set(on_cpu) == set(on_device)
        for key in on_cpu:
            assert torch.equal(on_cpu[key], on_device[key]), (encoding, key)
    device = train(_recipe(tmp_path, store, render_on="device", epochs=1), tmp_path / "a", log=lambda line: None)
    workers = train(_recipe(tmp_path, store, render_on="cpu", epochs=1), tmp_path / "b", log=lambda line: None)
    history_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    history_b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert history_a[0]["train_loss"] == pytest.approx(history_b[0]["train_loss"], rel=1e-6)
    assert device["test"]["loss"] == pytest.approx(workers["test"]["loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="render_on must be one of auto, cpu, device"):
        _recipe(tmp_path, store, render_on="gpu")


def test_a_run_can_start_from_a_checkpoint_and_keeps_its_label_scale(tmp_path):
    """init_from: the weights and label normalisation of an earlier checkpoint; with a zero
    learning rate the warm-started run's held-out loss is the earlier model's."""
    store = _labelled_store(tmp_path / "train.h5")
    first = train(_recipe(tmp_path, store, epochs=1), tmp_path / "a", log=lambda line: None)
    again = train(_recipe(tmp_path, store, epochs=1, lr=0.0, init_from=str(tmp_path / "a")), tmp_path / "b",
                  log=lambda line: None)
    assert again["test"]["loss"] == pytest.approx(first["test"]["loss"], rel=1e-5)
    _, card_a = load_checkpoint(tmp_path / "a")
    _, card_b = load_checkpoint(tmp_path / "b")
    assert card_b.label_norm == card_a.label_norm
    with pytest.raises(ConfigError, match="its backbone differ from the recipe's"):
        train(_recipe(tmp_path, store, backbone="vit-tiny-p32", init_from=str(tmp_path / "a")), tmp_path / "c",
              log=lambda line: None)
    with pytest.raises(ConfigError, match="its image_mean/image_std differ"):
        train(_recipe(tmp_path, store, image_std=0.25, init_from=str(tmp_path / "a")), tmp_path / "c",
              log=lambda line: None)
    # an interrupted warm start resumes only from the weights it started from
    warm = _recipe(tmp_path, store, epochs=2, init_from=str(tmp_path / "a"))
    assert train(warm, tmp_path / "d", log=lambda line: None, max_epochs=1)["stopped"]
    from annotate.checkpoint import save_checkpoint

    model, card = load_checkpoint(tmp_path / "a")
    with torch.no_grad():
        model.class_head.bias += 1.0
    save_checkpoint(model, card, tmp_path / "a")
    with pytest.raises(ConfigError, match="init_from_sha256 changed"):
        train(warm, tmp_path / "d", log=lambda line: None)


# ------------------------------------------------------------------------------------------------
# labels from a survey catalog (the real workflow)



def test_catalog_labels_come_from_the_survey_columns(tmp_path, catalog):
    from annotate.training.data import load_training_data

    spec = {"catalog": str(catalog), "survey": "sdss_dr18", "spectra_root": str(tmp_path / "spectra"),
            "store": str(tmp_path / "train.h5")}
    data = load_training_data(spec, WavelengthGrid())
    # rows 3 (no file) and 5 (all-NaN flux) have no spectrum; the others keep their catalog order
    assert data["object"].tolist() == ["1000", "1001", "1002", "1004", "1006", "1007"]
    # rows outside the survey's selection (ZWARNING=4, CLASS=SKY) carry no label at all
    assert data["class"].tolist() == ["GALAXY", "QSO", "STAR", "STAR", "", ""]
    np.testing.assert_array_equal(data["z"], [0.1, 2.0, 0.0, 0.0001, np.nan, np.nan])
    np.testing.assert_array_equal(data["teff"], [np.nan, np.nan, 5800, 4500, np.nan, np.nan])
    assert np.isnan(data["logg"]).all()  # the catalog has no XCSAO_LOGG: masked, never 0
    targets = encode_targets(data, fit_label_norm(data, np.ones(6, bool)))
    assert targets["class"].tolist() == [0, 1, 2, 2, -100, -100]
    assert targets["z_mask"].tolist() == [True, True, True, True, False, False]
    assert targets["stellar_mask"][:, 0].tolist() == [False, False, True, True, False, False]

    # a second read reuses the ingested store; an object column groups rows for the split
    again = load_training_data({**spec, "object_column": "CATALOGID"}, WavelengthGrid())
    assert again["object"].tolist() == [str(4_000_000 + i) for i in (0, 1, 2, 4, 6, 7)]
    np.testing.assert_array_equal(again["flux"], data["flux"])


def test_training_on_a_catalog_writes_a_checkpoint(tmp_path, catalog):
    data = {"catalog": str(catalog), "spectra_root": str(tmp_path / "spectra"), "store": str(tmp_path / "train.h5")}
    summary = train(_recipe(tmp_path, None, data=data, epochs=1, val_fraction=0.3, test_fraction=0.3),
                    tmp_path / "ckpt", log=lambda line: None)
    assert sum(summary["split_counts"].values()) == 6
    _, card = load_checkpoint(tmp_path / "ckpt")
    assert card.training["recipe"]["data"]["catalog"] == str(catalog)


def test_stellar_parameters_join_on_the_object_id(tmp_path):
    from annotate.errors import CatalogError
    from annotate.simulate.writer import write_catalog
    from annotate.surveys import load_survey
    from annotate.training.data import join_stellar

    survey = load_survey("sdss_dr18")
    table = write_catalog(tmp_path / "stellar.fits", {
        "SPECOBJID": np.array([1004, 1002, 9999], np.int64), "XCSAO_TEFF": np.array([4000.0, 5000.0, 3000.0]),
        "XCSAO_LOGG": np.array([4.5, 2.5, 1.0]), "XCSAO_FEH": np.array([-0.5, 0.1, 0.0])})
    joined = join_stellar(table, survey, np.arange(1000, 1006))
    np.testing.assert_array_equal(joined["teff"], [np.nan, np.nan, 5000, np.nan, 4000, np.nan])
    np.testing.assert_array_equal(joined["feh"], [np.nan, np.nan, 0.1, np.nan, -0.5, np.nan])
    twice = write_catalog(tmp_path / "twice.fits", {"SPECOBJID": np.array([1, 1], np.int64),
                                                    "XCSAO_TEFF": np.array([4000.0, 4100.0])})
    with pytest.raises(CatalogError, match="object ids repeat"):
        join_stellar(twice, survey, np.arange(3))


def test_a_single_task_model_predicts_only_its_task(tmp_path):
    from annotate.predict import predict_store

    store = _labelled_store(tmp_path / "train.h5")
    summary = train(_recipe(tmp_path, store, tasks=["z"], epochs=1), tmp_path / "ckpt", log=lambda line: None)
    assert {"z_r2", "z_crps", "z_nmad"} <= set(summary["test"]) and "class_accuracy" not in summary["test"]
    model, card = load_checkpoint(tmp_path / "ckpt")
    assert card.training["tasks"] == ["z"]
    pred = predict_store(model, card, store)
    assert np.isfinite(pred["z"]).all() and np.isfinite(pred["z_err"]).all()
    assert np.isnan(pred["prob"]).all() and np.isnan(pred["teff"]).all()


def test_recipe_validation_names_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="tasks must be a non-empty list of class, z, stellar"):
        _recipe(tmp_path, "s.h5", tasks=["redshift"])
    with pytest.raises(ConfigError, match="exactly one of: simulate, store, catalog"):
        _recipe(tmp_path, "s.h5", data={"store": "s.h5", "simulate": {"n_objects": 10}})
    with pytest.raises(ConfigError, match="select_by"):
        _recipe(tmp_path, "s.h5", select_by="accuracy")


def test_every_shipped_recipe_is_valid_and_the_paper_recipes_follow_the_paper():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "training"
    recipes = {p.stem: Recipe.from_yaml(p) for p in folder.glob("*.yaml")}
    assert {"demo", "default-tiny", "spectromer-dino-vitb16", "spectromer-dino-vitb16-class",
            "spectromer-dino-vitb16-z", "spectromer-dino-vitb16-stellar"} <= set(recipes)
    for suffix, tasks in (("", ("class", "z", "stellar")), ("-class", ("class",)), ("-z", ("z",)),
                          ("-stellar", ("stellar",))):
        paper = recipes[f"spectromer-dino-vitb16{suffix}"]
        assert paper.name == f"spectromer-dino-vitb16{suffix}" and tuple(paper.tasks) == tasks
        assert (paper.backbone, paper.pretrained, paper.lr, paper.weight_decay) == ("facebook/dino-vitb16", True, 1e-5, 0.01)
        assert (paper.image_mean, paper.image_std, paper.select_by) == (0.5, 0.5, "score") and paper.epochs >= 30
        assert "catalog" in paper.data and paper.render.get("encoding") == "2dmap"


def test_a_realistic_simulated_run_reports_robustness_and_the_stellar_baseline(tmp_path):
    simulate = {"n_objects": 150, "seed": 0, "n_held_out_spectra": 60, "workers": 1, "realism": {"strength": 1.0},
                "n_robustness_spectra": 40}
    recipe = _recipe(tmp_path, "unused", data={"simulate": simulate}, epochs=1, batch_size=16, val_fraction=0.2,
                     test_fraction=0.2)
    summary = train(recipe, tmp_path / "ckpt", log=lambda line: None)
    assert summary["robustness"]["matched"]["n"] == summary["robustness"]["harder"]["n"] == 40
    assert 0.0 <= summary["robustness"]["harder"]["class_accuracy"] <= 1.0
    stellar = summary["held_out_stars"]["stellar"]
    for method in ("vit", "baseline"):
        bins = stellar[method]["teff"]["by_snr"]
        assert sum(b["n"] for b in bins) == 60  # every held-out MILES star has a Teff
        assert all(np.isfinite(b["rmse"]) for b in bins if b["n"])
    # the baseline is a real one: χ² neighbours place held-out stars' Teff far better than a constant
    assert stellar["baseline"]["teff"]["r2_snr_ge_20"] > 0.5
    assert json.loads((tmp_path / "ckpt" / "training.json").read_text())["robustness"]["harder"]["n"] == 40


def test_caps_stop_a_run_with_its_state_saved_and_a_rerun_continues(tmp_path, capsys):
    from annotate.cli import main
    from annotate.training.state import latest_state

    store = _labelled_store(tmp_path / "train.h5")
    recipe = _recipe(tmp_path, store, epochs=3)
    stopped = train(recipe, tmp_path / "ckpt", log=lambda line: None, max_epochs=1)
    assert stopped == {"stopped": True, "epochs_done": 1, "step": 3,  # 24 training rows in batches of 8
                       "resume": "rerun without --max-epochs (or with a larger one) to continue"}
    assert [h["epoch"] for h in json.loads((tmp_path / "ckpt" / "metrics.json").read_text())] == [1]
    assert latest_state(tmp_path / "ckpt") is not None and not (tmp_path / "ckpt" / "training.json").exists()
    # a zero-minute cap stops after one step of the next epoch, mid-epoch, with that step saved
    recipe_file = tmp_path / "recipe.yaml"
    assert main(["train", "--recipe", str(recipe_file), "--out", str(tmp_path / "ckpt"), "--max-minutes", "0"]) == 0
    assert ("training stopped by the cap after 1 of 3 epochs (step 4); the state is in "
            f"{tmp_path / 'ckpt'}: rerun the same command to continue") in capsys.readouterr().out
    # the same --max-epochs again stops at once, and says how to go on
    assert main(["train", "--recipe", str(recipe_file), "--out", str(tmp_path / "ckpt"), "--max-epochs", "1"]) == 0
    assert "rerun without --max-epochs (or with a larger one) to continue" in capsys.readouterr().out
    assert main(["train", "--recipe", str(recipe_file), "--out", str(tmp_path / "ckpt")]) == 0
    history = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((tmp_path / "ckpt" / "training.json").read_text())["steps"] == history[-1]["step"]


def test_annotate_train_shows_a_progress_bar_a_line_per_epoch_and_a_readable_summary(tmp_path, capsys):
    from annotate.cli import main

    store = _labelled_store(tmp_path / "train.h5")
    _recipe(tmp_path, store, epochs=2)
    assert main(["train", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "ckpt")]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    history = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert f"class accuracy {history[1]['val_class_accuracy']:.3f}" in epochs[1]
    assert f"z NMAD {history[1]['val_z_nmad']:.4f}" in epochs[1]
    assert not any(line.lstrip().startswith("{") for line in lines)  # no raw JSON
    test = json.loads((tmp_path / "ckpt" / "training.json").read_text())["test"]
    summary = next(line for line in lines if line.startswith("test split"))
    assert f"{test['n']} spectra: class accuracy {test['class_accuracy']:.3f}" in summary
    assert lines[-1].startswith(f"checkpoint: {tmp_path / 'ckpt'}")
    # the bar: steps done of all, and the running loss (24 training rows, batches of 8, 2 epochs)
    assert "6/6" in captured.err and "loss" in captured.err


def test_a_stop_request_saves_the_state_of_that_step_before_any_periodic_save(tmp_path):
    """The timeout signal of a SLURM job asks the loop to stop: the state is saved at the step the
    request was seen, though no periodic save has happened yet, and the rerun loses nothing."""
    from annotate.training.state import latest_state, read_state_json

    store = _labelled_store(tmp_path / "train.h5")
    recipe = _recipe(tmp_path, store, epochs=2, checkpoint_every=0, checkpoint_minutes=600)
    asked = []
    stopped = train(recipe, tmp_path / "ckpt", log=lambda line: None,
                    stop_requested=lambda: asked.append(1) or len(asked) >= 2)
    assert stopped == {"stopped": True, "epochs_done": 0, "step": 2, "resume": "rerun the same command to continue"}
    saved = latest_state(tmp_path / "ckpt")
    assert (read_state_json(saved)["step"], read_state_json(saved)["batch"]) == (2, 2)
    summary = train(recipe, tmp_path / "ckpt", log=lambda line: None)
    assert summary["steps"] == 6  # 3 steps an epoch: none repeated, none lost
    uninterrupted = train(recipe, tmp_path / "straight", log=lambda line: None)
    assert summary["steps"] == uninterrupted["steps"]


def test_status_knows_a_training_folder_before_its_first_saved_state(tmp_path, capsys):
    from annotate.cli import main

    store = _labelled_store(tmp_path / "train.h5")
    train(_recipe(tmp_path, store, epochs=1), tmp_path / "ckpt", log=lambda line: None, max_epochs=0)
    assert (tmp_path / "ckpt" / "recipe.json").is_file()  # written when training starts
    assert main(["status", str(tmp_path / "ckpt")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"training {tmp_path / 'ckpt'}: starting"
    submitted = tmp_path / "submitted"
    (submitted / "slurm").mkdir(parents=True)  # a SLURM training job not started yet
    assert main(["status", str(submitted)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"training {submitted}: starting"


def test_every_task_has_a_head_prediction_keys_and_a_zero_loss_without_labels(micro_model):
    """The task registry (annotate.tasks) is what training and prediction loop over."""
    import torch

    from annotate.predict import predict_batch
    from annotate.tasks import TASKS

    model, card = load_checkpoint(micro_model)
    n_pix = card.grid.n_pix
    flux = np.random.default_rng(0).normal(1.0, 0.1, (4, n_pix)).astype(np.float32)
    with torch.no_grad():
        predicted = predict_batch(model, card, flux, np.zeros_like(flux, bool))
    out = model(torch.zeros(4, 3, card.render.image_size, card.render.image_size))
    nothing = {"class": torch.full((4,), -100), "z": torch.zeros(4), "z_mask": torch.zeros(4, dtype=torch.bool),
               "stellar": torch.zeros(4, 3), "stellar_mask": torch.zeros(4, 3, dtype=torch.bool)}
    assert set(TASKS) == {"class", "z", "stellar"}
    for name, task in TASKS.items():
        assert isinstance(getattr(model, task.head), torch.nn.Linear), name
        assert set(task.outputs) <= set(predicted) and all(np.isfinite(predicted[k]).all() for k in task.outputs)
        loss = task.loss(out, nothing)
        assert float(loss) == 0.0 and loss.requires_grad, name


def test_a_warm_start_may_replace_the_z_head_and_train_it_at_its_own_rate(tmp_path):
    """init_from a Gaussian-head checkpoint with a binned z_head: every other weight comes from
    the checkpoint, the z head starts anew (said in the log), the heads train at head_lr, and
    the new checkpoint carries its head."""
    from annotate.training.loop import parameter_groups

    store = _labelled_store(tmp_path / "train.h5")
    train(_recipe(tmp_path, store, epochs=1), tmp_path / "a", log=lambda line: None)
    z_head = {"kind": "bins", "n_bins": 64, "z_min": -0.01, "z_max": 1.0, "hidden": 0, "window": 2}
    recipe = _recipe(tmp_path, store, epochs=1, lr=0.0, head_lr="1e-2", z_head=z_head, init_from=str(tmp_path / "a"))
    assert recipe.head_lr == 0.01  # YAML reads 1e-2 as a string
    lines = []
    train(recipe, tmp_path / "b", log=lines.append)
    assert any("its z head is not the recipe's (bins); that head starts anew" in line for line in lines)
    first, _ = load_checkpoint(tmp_path / "a")
    warm, card = load_checkpoint(tmp_path / "b")
    assert card.z_head == z_head and warm.z_kind == "bins"
    a, b = first.state_dict(), warm.state_dict()
    for name in a:
        if name.startswith("backbone."):  # lr 0: the backbone is the checkpoint's
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-3)  # saved as float16 or not
    assert not torch.allclose(a["class_head.weight"], b["class_head.weight"])  # the heads moved at head_lr
    groups = parameter_groups(warm, recipe)
    assert len(groups) == 2 and groups[1]["lr"] == 0.01 and "lr" not in groups[0]
    assert sum(len(g["params"]) for g in groups) == len(list(warm.parameters()))
    assert len(parameter_groups(warm, _recipe(tmp_path, store))) == 1
    # a calibrated checkpoint (sigma_scale) has the same head: a warm start keeps it, and the new
    # checkpoint is uncalibrated (the factors belong to the weights they were measured on)
    from dataclasses import replace

    from annotate.checkpoint import write_card
    write_card(tmp_path / "b", replace(card, z_head={**z_head, "sigma_scale": [0.5, 1.0, 0.2]}))
    lines = []
    train(_recipe(tmp_path, store, epochs=1, lr=0.0, z_head=z_head, init_from=str(tmp_path / "b")), tmp_path / "c",
          log=lines.append)
    assert not any("starts anew" in line for line in lines)
    again, card_c = load_checkpoint(tmp_path / "c")
    assert card_c.z_head == z_head and again.z_sigma_scale is None
    torch.testing.assert_close(again.state_dict()["z_head.weight"], b["z_head.weight"], rtol=0, atol=1e-3)
    with pytest.raises(ConfigError, match="sigma_scale is a trained checkpoint's calibration"):
        _recipe(tmp_path, store, z_head={**z_head, "sigma_scale": [0.5, 1.0, 0.2]})
    with pytest.raises(ConfigError, match="head_lr must be a learning rate"):
        _recipe(tmp_path, store, head_lr=5)
    with pytest.raises(ConfigError, match="z_head kind must be one of"):
        _recipe(tmp_path, store, z_head={"kind": "mixture"})
    with pytest.raises(ConfigError, match="lr must be a number"):
        _recipe(tmp_path, store, lr="fast")


def test_a_finished_run_submits_no_slurm_job(tmp_path, monkeypatch, capsys):
    """Rerun after training finished, `--executor slurm` says there is nothing to do and asks the
    cluster for nothing (it queued a job, a GPU on a real cluster, that found nothing to do)."""
    import annotate.training.job as job_module
    from annotate.cli import main

    store = _labelled_store(tmp_path / "train.h5")
    _recipe(tmp_path, store, epochs=1)
    assert main(["train", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    profile = tmp_path / "p.yaml"
    profile.write_text("partition: debug\ntime_min: 5\n")

    def submitted(*args, **kwargs):
        raise AssertionError("a job was submitted")

    monkeypatch.setattr(job_module, "submit_training", submitted)
    assert main(["train", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "ckpt"),
                 "--executor", "slurm", "--profile", str(profile)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'ckpt'}: training already finished (best epoch 1); nothing to do" in out
    assert "submitted" not in out and f"checkpoint: {tmp_path / 'ckpt'}" in out
