"""Resumable training: a run killed with SIGKILL continues from its last state and ends with the
same weights as an uninterrupted run; states are whole or absent; a changed recipe is refused."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from annotate.errors import ConfigError
from annotate.training import Recipe, train
from annotate.training.state import latest_state

from helpers import _labelled_store


def _recipe_file(tmp_path, store, **overrides):
    raw = {"name": "resume-test", "backbone": "vit-micro", "data": {"store": str(store)}, "epochs": 3,
           "batch_size": 6, "lr": 1e-3, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 4, "device": "cpu",
           "checkpoint_every": 2, "checkpoint_minutes": 60, **overrides}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train_in_child(recipe_path, out, kill_after: str | None = None) -> tuple[int, list[str], dict | None]:
    """Run training in a fresh single-threaded child (every run of these tests does, so that
    the kernels sum in the same order in all of them); it SIGKILLs itself once a log line starts
    with `kill_after`. Returns its exit code, its log lines and, when it finished, the summary."""
    script = textwrap.dedent(f"""
        import json, os, signal, torch
        torch.set_num_threads(1)
        from annotate.training import Recipe, train
        def log(line):
            print(line, flush=True)
            if {kill_after!r} is not None and line.startswith({kill_after!r}):
                os.kill(os.getpid(), signal.SIGKILL)
        summary = train(Recipe.from_yaml({str(recipe_path)!r}), {str(out)!r}, log=log)
        print("SUMMARY " + json.dumps(summary), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    summaries = [json.loads(line[len("SUMMARY "):]) for line in lines if line.startswith("SUMMARY ")]
    return done.returncode, lines, summaries[0] if summaries else None


def _train_until_killed(recipe_path, out, kill_after: str):
    code, lines, _ = _train_in_child(recipe_path, out, kill_after)
    assert code == -signal.SIGKILL, lines[-20:]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _labelled_store(tmp_path_factory.mktemp("store") / "train.h5", n=60)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, store):
    folder = tmp_path_factory.mktemp("clean")
    code, lines, summary = _train_in_child(_recipe_file(folder, store), folder / "ckpt")
    assert code == 0, lines[-20:]
    return folder / "ckpt", summary


@pytest.mark.parametrize("kill_after", ["state saved at step 4 ", "epoch 2/3 "])
def test_killed_run_resumes_to_the_same_weights(tmp_path, store, uninterrupted, kill_after):
    """Killed right after a mid-epoch state save, or at the end of epoch 2 after its evaluation
    but before its state save (so the resumed run redoes that epoch's last batches)."""
    clean, clean_summary = uninterrupted
    recipe_path = _recipe_file(tmp_path, store)
    out = tmp_path / "ckpt"
    stdout = _train_until_killed(recipe_path, out, kill_after)
    state = latest_state(out)
    assert state is not None and not (out / "training.json").exists()
    steps_done = json.loads((state / "state.json").read_text())["step"]
    assert f"state saved at step {steps_done} " in stdout

    code, lines, summary = _train_in_child(recipe_path, out)
    assert code == 0 and lines[1].startswith(f"resumed from {state}: step {steps_done}"), lines[:3]
    assert summary["steps"] == clean_summary["steps"] and summary["best_epoch"] == clean_summary["best_epoch"]
    resumed, reference = load_file(str(out / "model.safetensors")), load_file(str(clean / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name in reference:  # bit for bit: every run here is a fresh single-threaded process
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    history = json.loads((out / "metrics.json").read_text())
    clean_history = json.loads((clean / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for mine, theirs in zip(history, clean_history):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-12)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-12)
    assert summary["test"]["loss"] == pytest.approx(clean_summary["test"]["loss"], rel=1e-12)
    assert not (out / "state").exists()  # removed once the run finished


def test_a_finished_run_is_not_trained_again(tmp_path, store, uninterrupted):
    clean, summary = uninterrupted
    lines = []
    again = train(Recipe.from_yaml(_recipe_file(tmp_path, store)), clean, log=lines.append)
    assert json.dumps(again["test"]) == json.dumps(summary["test"])
    assert "already finished" in lines[0]


def test_resuming_with_a_different_recipe_is_refused(tmp_path, store):
    out = tmp_path / "ckpt"
    _train_until_killed(_recipe_file(tmp_path, store), out, "state saved at step 2 ")
    with pytest.raises(ConfigError, match=r"different recipe \(lr changed\)"):
        train(Recipe.from_yaml(_recipe_file(tmp_path, store, lr=5e-4)), out, log=lambda line: None)
    with pytest.raises(ConfigError, match=r"different recipe \(ema changed\)"):  # no average was kept so far
        train(Recipe.from_yaml(_recipe_file(tmp_path, store, ema=0.99)), out, log=lambda line: None)
    # device and checkpoint cadence may change between the crash and the resumption
    summary = train(Recipe.from_yaml(_recipe_file(tmp_path, store, checkpoint_every=5)), out, log=lambda line: None)
    assert summary["steps"] == 3 * -(-summary["split_counts"]["train"] // 6)  # 3 epochs of batches of 6


def test_a_half_written_state_is_ignored(tmp_path, store):
    out = tmp_path / "ckpt"
    _train_until_killed(_recipe_file(tmp_path, store), out, "state saved at step 4 ")
    whole = latest_state(out)
    (out / "state" / "step-00000006.tmp").mkdir()  # a save interrupted before its rename
    (out / "state" / "step-00000006.tmp" / "state.json").write_text("{")
    assert latest_state(out) == whole


def test_a_state_saved_twice_at_one_step_is_never_lost(tmp_path, monkeypatch):
    """A second save at the same step (the last batch of an epoch, then the epoch's end) sets the
    first aside before renaming the new one in; killed in between, the first is still found."""
    import pathlib

    import torch

    from annotate.training.state import TrainState, save_state

    model = torch.nn.Linear(3, 2)
    optimiser = torch.optim.AdamW(model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    save_state(tmp_path, TrainState(step=4, epoch=0, batch=4, history=[]), model, optimiser, schedule, {})
    rename = pathlib.Path.rename

    def dies_on_the_new_state(self, target):
        if self.name.endswith(".tmp"):
            raise OSError("killed between the two renames")
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", dies_on_the_new_state)
    with pytest.raises(OSError, match="killed between"):
        save_state(tmp_path, TrainState(step=4, epoch=1, batch=0, history=[]), model, optimiser, schedule, {})
    found = latest_state(tmp_path)
    assert found.name == "step-00000004.old" and json.loads((found / "state.json").read_text())["epoch"] == 0
    monkeypatch.setattr(pathlib.Path, "rename", rename)
    save_state(tmp_path, TrainState(step=4, epoch=1, batch=0, history=[]), model, optimiser, schedule, {})
    assert json.loads((latest_state(tmp_path) / "state.json").read_text())["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["step-00000004"]


def test_resuming_with_another_number_of_processes_is_refused(tmp_path, store):
    out = tmp_path / "ckpt"
    _train_until_killed(_recipe_file(tmp_path, store), out, "state saved at step 2 ")
    state_json = latest_state(out) / "state.json"
    assert json.loads(state_json.read_text())["world_size"] == 1
    state_json.write_text(state_json.read_text().replace('"world_size": 1', '"world_size": 2'))
    with pytest.raises(ConfigError, match="interrupted with 2 processes; resume it with as many"):
        train(Recipe.from_yaml(_recipe_file(tmp_path, store)), out, log=lambda line: None)


def test_an_empty_validation_split_is_refused_up_front(tmp_path, store):
    with pytest.raises(ConfigError, match="the val split is empty"):
        train(Recipe.from_yaml(_recipe_file(tmp_path, store, val_fraction=0.0)), tmp_path / "ckpt", log=lambda line: None)


def test_logs_and_learning_curve(uninterrupted):
    from PIL import Image

    clean, summary = uninterrupted
    csv_lines = (clean / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,train_loss,seconds,val_loss")
    assert len(csv_lines) == 4 and csv_lines[3].startswith(f"3,{summary['steps']},")
    image = Image.open(clean / "learning-curve.png")
    assert image.size[0] > 3 * image.size[1] // 2  # one panel per task beside the loss panel
    assert json.loads((clean / "training.json").read_text())["recipe"]["name"] == "resume-test"


def _free_port() -> int:
    """A TCP port nothing listens on now (the system's choice), for the ranks' rendezvous: a fixed
    or pid-derived one can be taken by another test's Dask or SLURM processes."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _two_ranks(recipe_path, out) -> tuple[list[int], list[tuple[str, str]]]:
    """Train with two torchrun-style CPU ranks (gloo); their exit codes and (stdout, stderr)."""
    script = textwrap.dedent(f"""
        import os, sys
        from annotate.training import Recipe, train
        train(Recipe.from_yaml({str(recipe_path)!r}), {str(out)!r}, log=lambda line: print(os.environ["RANK"], line))
    """)
    procs = []
    port = _free_port()
    for rank in range(2):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    return [p.returncode for p in procs], outputs


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process group on loopback")
def test_a_data_error_on_rank_0_ends_every_rank(tmp_path, store):
    """Rank 0 loads the data first; when it cannot, the other ranks are told and stop too."""
    recipe_path = _recipe_file(tmp_path, tmp_path / "no-such-store.h5", epochs=1)
    codes, outputs = _two_ranks(recipe_path, tmp_path / "ddp")
    assert codes[0] != 0 and codes[1] != 0
    assert "no-such-store.h5" in outputs[0][1]
    assert "rank 0 could not load the training data" in outputs[1][1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process group on loopback")
@pytest.mark.parametrize("ema", [None, 0.9])
def test_distributed_data_parallel_on_two_cpu_ranks(tmp_path, store, ema):
    """torchrun-style environment, gloo backend: both ranks take the same number of steps, only
    rank 0 writes, and the checkpoint loads. Two of the three tasks: DDP must not wait for the
    gradients of the head left out. With `ema` every rank keeps the average and rank 0 scores
    and saves it."""
    from annotate.checkpoint import load_checkpoint

    recipe_path = _recipe_file(tmp_path, store, epochs=1, tasks=["class", "z"], **({"ema": ema} if ema else {}))
    out = tmp_path / "ddp"
    codes, outputs = _two_ranks(recipe_path, out)
    assert codes == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    _, card = load_checkpoint(out)
    batches = -(-card.training["split_counts"]["train"] // 6)
    assert card.training["steps"] == batches // 2  # each step takes one batch per rank
    assert card.training["tasks"] == ["class", "z"] and card.training["recipe"]["ema"] == ema
    assert "held_out_stars" in card.training and not any(line.startswith("1 epoch ")
                                                         for line in outputs[1][0].splitlines())


def test_a_killed_run_with_a_weight_average_resumes_to_the_same_average(tmp_path, store):
    """With `ema` the state holds the moving average too: a run killed after a mid-epoch save
    ends with the checkpoint (the average) of the uninterrupted run, bit for bit."""
    clean = tmp_path / "clean"
    clean.mkdir()
    code, lines, clean_summary = _train_in_child(_recipe_file(clean, store, ema=0.9), clean / "ckpt")
    assert code == 0, lines[-20:]
    recipe_path = _recipe_file(tmp_path, store, ema=0.9)
    out = tmp_path / "ckpt"
    _train_until_killed(recipe_path, out, "state saved at step 4 ")
    state = latest_state(out)
    assert (state / "ema.safetensors").is_file()
    code, lines, summary = _train_in_child(recipe_path, out)
    assert code == 0 and lines[1].startswith(f"resumed from {state}: step 4"), lines[:3]
    assert summary["best_epoch"] == clean_summary["best_epoch"]
    resumed, reference = load_file(str(out / "model.safetensors")), load_file(str(clean / "ckpt" / "model.safetensors"))
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    assert summary["test"]["loss"] == pytest.approx(clean_summary["test"]["loss"], rel=1e-12)
