"""The weights' moving average of a recipe's `ema`: its arithmetic, and that validation, the best
checkpoint and the held-out figures use it while training goes on with the weights themselves."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from annotate.errors import ConfigError
from annotate.training import train
from annotate.training.average import WeightAverage, decay_at
from annotate.training.state import latest_state
from helpers import _labelled_store
from helpers import small_recipe as _recipe


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def test_the_average_follows_its_formula_with_the_warm_up():
    model = _Tiny()
    average = WeightAverage(model, 0.9)
    expected = np.zeros(3)
    rng = np.random.default_rng(0)
    for step in range(1, 121):          # the cap (0.9) takes over from step 80
        values = rng.normal(size=3)
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(values))
            model.count.fill_(step)
        average.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * values
    np.testing.assert_allclose(average.tensors["weight"].numpy(), expected, rtol=1e-5, atol=1e-6)  # float32 sums
    assert int(average.tensors["count"]) == 120                # integer buffers are copied, not averaged
    assert decay_at(0.9, 1) == pytest.approx(2 / 11) and decay_at(0.9, 1000) == 0.9
    assert decay_at(0.999, 100) == pytest.approx(101 / 110)


def test_applied_lends_the_average_and_gives_the_weights_back():
    model = _Tiny()
    average = WeightAverage(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
    average.update(model, 100)                                  # d = 0.5: the average is 2
    with average.applied(model):
        assert model.weight.tolist() == [2.0, 2.0, 2.0]
    assert model.weight.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(RuntimeError), average.applied(model):  # given back after an error too
        raise RuntimeError("in the block")
    assert model.weight.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="does not fit this model"):
        average.load({"weight": torch.zeros(3)})


def test_the_checkpoint_is_the_average_and_training_goes_on_with_the_weights(tmp_path, monkeypatch):
    from annotate.checkpoint import load_checkpoint
    from annotate.training import evaluate_checkpoint, loop

    scored = []
    original = loop.evaluate

    def evaluate(model, *args, **kwargs):  # what validation sees
        scored.append({k: v.detach().clone().numpy() for k, v in model.state_dict().items()})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    store = _labelled_store(tmp_path / "train.h5")
    out = tmp_path / "ckpt"
    stopped = train(_recipe(tmp_path, store, ema=0.5), out, log=lambda line: None, max_epochs=1)
    assert stopped["stopped"] and stopped["step"] == 3
    state = latest_state(out)
    weights = load_file(str(state / "model.safetensors"))     # what training goes on with
    saved_average = load_file(str(state / "ema.safetensors"))
    checkpoint = load_file(str(out / "model.safetensors"))     # epoch 1, the best so far
    assert checkpoint.keys() == saved_average.keys() == weights.keys() == scored[0].keys()
    moved = [name for name in weights if weights[name].dtype.kind == "f"
             and not np.array_equal(weights[name], saved_average[name])]
    assert len(moved) > 10                                      # the average lags the weights
    for name in checkpoint:
        np.testing.assert_array_equal(checkpoint[name], saved_average[name], err_msg=name)
        np.testing.assert_array_equal(scored[0][name], saved_average[name], err_msg=name)
    # the rest of the run, resumed; the held-out figures are the checkpoint's (the average's)
    summary = train(_recipe(tmp_path, store, ema=0.5), out, log=lambda line: None)
    assert summary["steps"] == 6 and len(scored) == 2
    model, card = load_checkpoint(out)
    assert card.training["recipe"]["ema"] == 0.5
    best = load_file(str(out / "model.safetensors"))
    name = next(n for n in moved if n in best)
    np.testing.assert_array_equal(best[name], scored[summary["best_epoch"] - 1][name])
    again = evaluate_checkpoint(_recipe(tmp_path, store, ema=0.5), out, log=lambda line: None)
    assert again["test"]["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-5)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, True, "often"])
def test_an_ema_outside_0_to_1_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="ema must be a (decay between 0 and 1|number)"):
        _recipe(tmp_path, "s.h5", ema=value)
