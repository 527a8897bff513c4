"""The binned z head (model.ZHead): its configuration, the two-bin targets, the answer read off
the distribution, its loss, and checkpoints that carry it."""

import json

import numpy as np
import pytest
import torch

from annotate.checkpoint import LabelNorm, ModelCard, backbone_dict, load_checkpoint, save_checkpoint
from annotate.errors import CheckpointError, ConfigError
from annotate.grid import WavelengthGrid
from annotate.model import ZHead, build_model, calibrate_sigma, read_bins, two_hot
from annotate.render import RenderSettings
from annotate.tasks import TASKS

NORMS = {"z": LabelNorm(0.16, 0.2, "log1p10"), "teff": LabelNorm(5500.0, 1000.0),
         "logg": LabelNorm(4.0, 1.0), "feh": LabelNorm(-0.3, 0.4)}
BINS = ZHead(kind="bins", n_bins=64, z_min=-0.01, z_max=4.0, hidden=16, window=2)


def test_a_z_head_mapping_is_checked_whole():
    assert ZHead.from_dict({}) == ZHead() and ZHead().to_dict() == {}
    assert ZHead.from_dict(BINS.to_dict()) == BINS
    for raw, words in (({"kind": "histogram"}, "kind must be one of gaussian, bins"),
                       ({"kind": "bins", "bins": 10}, "unknown key"),
                       ({"kind": "bins", "n_bins": 1}, "n_bins must be an integer from 2"),
                       ({"kind": "bins", "n_bins": True}, "n_bins must be an integer"),
                       ({"kind": "bins", "n_bins": 10, "window": 10}, "window from 0 to n_bins - 1"),
                       ({"kind": "bins", "z_min": 2.0, "z_max": 1.0}, "z_min < z_max"),
                       ({"kind": "bins", "z_max": float("nan")}, "z_min < z_max"),
                       ({"kind": "bins", "z_max": "far"}, "malformed"),
                       ({"kind": "bins", "sigma_scale": [0.5, 1.0]}, "sigma_scale must be 3 positive factors"),
                       ({"kind": "bins", "sigma_scale": [0.5, -1.0, 0.2]}, "sigma_scale must be 3 positive"),
                       ({"kind": "bins", "sigma_scale": "small"}, "sigma_scale must be 3 positive"),
                       ({"kind": "gaussian", "sigma_scale": [0.5, 1.0, 0.2]}, "of a binned head")):
        with pytest.raises(ConfigError, match=words):
            ZHead.from_dict(raw)


def test_two_hot_weights_sum_to_one_and_average_to_the_target():
    centres = torch.linspace(-1.0, 3.0, 41)
    target = torch.tensor([-1.0, -0.95, 0.0, 0.1234, 2.999, 3.0, 7.0, -5.0])
    weights = two_hot(target, centres)
    torch.testing.assert_close(weights.sum(1), torch.ones(len(target)))
    assert int((weights > 0).sum(1).max()) <= 2
    expected = target.clamp(-1.0, 3.0)  # beyond the range: the end bin
    torch.testing.assert_close((weights * centres).sum(1), expected, atol=1e-5, rtol=0)


def _binned_model():
    torch.manual_seed(0)
    return build_model("vit-micro", z_head=BINS, z_norm=NORMS["z"]).eval()


def test_z_is_read_at_the_main_peak_and_a_second_peak_widens_sigma():
    model = _binned_model()
    centres = model.z_centres
    assert centres[0] == pytest.approx(NORMS["z"].encode(-0.01), abs=1e-6)
    assert centres[-1] == pytest.approx(NORMS["z"].encode(4.0), abs=1e-6)
    # normalised; the range is -0.83 to 2.70: the last two lie a third of a bin inside each end,
    # where the window is cut short rather than counting the end bin again
    width = float(centres[1] - centres[0])
    target = torch.tensor([0.0, 1.2345, -0.5, float(centres[0]) + width / 3, float(centres[-1]) - width / 3])
    peaked = (two_hot(target, centres) + 1e-12).log()
    out = model._z_from_bins(peaked)
    torch.testing.assert_close(out["z_mean"], target, atol=1e-4, rtol=0)
    assert (out["z_log_sigma"].exp() < width).all()
    # a 30 % second peak 20 bins away leaves z where it was and widens σ to about its distance
    target = target[:3]
    second = two_hot(target + 20 * width, centres)
    mixed = (0.7 * two_hot(target, centres) + 0.3 * second + 1e-12).log()
    out2 = model._z_from_bins(mixed)
    torch.testing.assert_close(out2["z_mean"], target, atol=1e-4, rtol=0)
    sigma = out2["z_log_sigma"].exp()
    assert torch.allclose(sigma, torch.full_like(sigma, 0.3 ** 0.5 * 20 * width), rtol=0.02)


def test_the_binned_loss_is_the_cross_entropy_of_the_two_bin_target_and_zero_without_labels():
    model = _binned_model()
    out = model(torch.zeros(3, 3, 224, 224))
    assert out["z_logits"].shape == (3, BINS.n_bins)
    z = torch.tensor([0.3, -0.2, 1.5])
    batch = {"z": z, "z_mask": torch.tensor([True, False, True])}
    loss = TASKS["z"].loss(out, batch)
    target = two_hot(z[[0, 2]], out["z_centres"])
    expected = -(target * out["z_logits"][[0, 2]].log_softmax(1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert model.z_head[0].weight.grad.abs().sum() > 0
    nothing = TASKS["z"].loss(model(torch.zeros(2, 3, 224, 224)), {"z": torch.zeros(2), "z_mask": torch.zeros(2, dtype=torch.bool)})
    assert float(nothing) == 0.0 and nothing.requires_grad


def _save(model, folder, z_head):
    card = ModelCard(backbone=backbone_dict(model.backbone.config), render=RenderSettings(), grid=WavelengthGrid(),
                     label_norm=NORMS, name="micro-bins", z_head=z_head)
    return save_checkpoint(model, card, folder)


def test_a_checkpoint_carries_its_binned_head_and_predicts_as_saved(tmp_path):
    from annotate.predict import predict_batch

    model = _binned_model()
    _save(model, tmp_path / "bins", BINS.to_dict())
    assert json.loads((tmp_path / "bins" / "config.json").read_text())["z_head"]["n_bins"] == 64
    loaded, card = load_checkpoint(tmp_path / "bins")
    assert card.z_head == BINS.to_dict() and loaded.z_kind == "bins"
    flux = np.random.default_rng(1).normal(1.0, 0.1, (4, card.grid.n_pix)).astype(np.float32)
    mask = np.zeros_like(flux, bool)
    a, b = predict_batch(model, card, flux, mask), predict_batch(loaded, card, flux, mask)
    np.testing.assert_allclose(a["z"], b["z"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["z_err"], b["z_err"], rtol=1e-4, atol=1e-7)
    assert np.all((a["z"] >= -0.0101) & (a["z"] <= 4.0001)) and np.all(a["z_err"] > 0)
    # a card without z_head is the Gaussian head, and stays without one when written again
    gaussian = build_model("vit-micro")
    _save(gaussian, tmp_path / "gauss", {})
    assert "z_head" not in json.loads((tmp_path / "gauss" / "config.json").read_text())
    assert load_checkpoint(tmp_path / "gauss")[0].z_kind == "gaussian"


def test_a_card_with_a_broken_z_head_is_a_one_line_error(tmp_path):
    _save(_binned_model(), tmp_path / "bins", BINS.to_dict())
    config = tmp_path / "bins" / "config.json"
    raw = json.loads(config.read_text())
    for z_head, words in (({"kind": "bins", "n_bins": -3}, "n_bins must be"), ("bins", "z_head is a str"),
                          ({**BINS.to_dict(), "sigma_scale": [1.0]}, "sigma_scale must be 3 positive factors"),
                          ({"kind": "bins", "n_bins": 32, "z_min": -0.01, "z_max": 4.0, "hidden": 16, "window": 2},
                           "tensor z_head.2.(weight|bias) has shape")):
        config.write_text(json.dumps({**raw, "z_head": z_head}))
        with pytest.raises(CheckpointError, match=words) as info:
            load_checkpoint(tmp_path / "bins")
        assert "\n" not in str(info.value)


def test_the_peak_width_is_the_rms_of_the_window_alone():
    centres = torch.linspace(-1.0, 1.0, 201)  # width 0.01
    prob = torch.zeros(2, 201)
    prob[:, 100], prob[:, 101], prob[:, 99] = 0.5, 0.15, 0.05  # mean 0.001 (window 2)
    prob[0, 180] = 0.3                                          # a second peak 80 bins away
    prob[1, 102] = 0.3                                          # or inside the window
    out = read_bins((prob + 1e-20).log(), centres, window=2)
    inside = np.array([[0.05, 0.5, 0.15, 0.0], [0.05, 0.5, 0.15, 0.3]])
    where = np.array([-0.01, 0.0, 0.01, 0.02])
    for row in range(2):
        mean = (inside[row] * where).sum() / inside[row].sum()
        peak = np.sqrt((inside[row] * (where - mean) ** 2).sum() / inside[row].sum())
        assert float(out["z_mean"][row]) == pytest.approx(mean, abs=1e-6)
        assert float(out["z_log_peak"][row].exp()) == pytest.approx(peak, rel=1e-4)
    # the far peak widens the whole RMS (about √0.3 × 0.8) but not the peak's width
    assert float(out["z_log_sigma"][0].exp()) == pytest.approx(np.sqrt(0.3 * 0.799**2 + 0.7 * 0.006**2), rel=0.02)
    assert float(out["z_log_peak"][0].exp()) < 0.01


def test_calibrate_sigma_is_the_one_sigma_quantile_per_predicted_class():
    rng = np.random.default_rng(4)
    n = 40_000
    peak = rng.uniform(0.5, 2.0, n)
    classes = rng.choice([0, 1, 2], n, p=[0.5, 0.4999, 0.0001])
    factor = np.array([2.0, 0.25, 1.0])[classes]
    error = np.abs(rng.normal(0.0, 1.0, n)) * peak * factor  # |Gaussian|: 68.27 % within 1 × its σ
    scale = calibrate_sigma(error, peak, classes)
    assert scale[0] == pytest.approx(2.0, rel=0.03) and scale[1] == pytest.approx(0.25, rel=0.03)
    pooled = np.quantile(error / peak, 0.6827)  # too few predicted STAR: the pooled factor
    assert scale[2] == pytest.approx(pooled, rel=1e-3)


def test_a_calibrated_head_gives_the_peak_width_times_its_class_factor(tmp_path):
    model = _binned_model()
    _save(model, tmp_path / "bins", {**BINS.to_dict(), "sigma_scale": [0.5, 2.0, 0.1]})
    calibrated, card = load_checkpoint(tmp_path / "bins")
    assert card.z_head["sigma_scale"] == [0.5, 2.0, 0.1]
    pixels = torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        raw, cal = model(pixels), calibrated(pixels)
    torch.testing.assert_close(cal["z_mean"], raw["z_mean"], rtol=1e-5, atol=1e-6)
    factor = torch.tensor([0.5, 2.0, 0.1])[cal["class_logits"].argmax(1)]
    torch.testing.assert_close(cal["z_log_sigma"], raw["z_log_peak"] + factor.log(), rtol=0, atol=1e-5)
    whole = read_bins(raw["z_logits"], raw["z_centres"], BINS.window)["z_log_sigma"]
    torch.testing.assert_close(raw["z_log_sigma"], whole, rtol=0, atol=1e-6)  # uncalibrated: the whole RMS
    # a small factor goes below the Gaussian head's floor of log σ = -7 (a calibrated star's σ does)
    _save(model, tmp_path / "sharp", {**BINS.to_dict(), "sigma_scale": [1e-3, 1e-3, 1e-3]})
    sharp, _ = load_checkpoint(tmp_path / "sharp")
    with torch.inference_mode():
        narrow = sharp(pixels)
    expected = raw["z_log_peak"] + np.log(1e-3)
    assert (expected < -7.0).any()
    torch.testing.assert_close(narrow["z_log_sigma"], expected, rtol=0, atol=1e-5)


def test_calibrate_z_sigma_writes_factors_that_the_checkpoint_then_applies(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _save(_binned_model(), tmp_path / "bins", BINS.to_dict())
    script = Path(__file__).resolve().parents[1] / "training" / "calibrate_z_sigma.py"
    done = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "bins"), "--n", "150",
                           "--n-check", "60", "--seed", "5"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "sigma_scale" not in json.loads((tmp_path / "bins" / "config.json").read_text())["z_head"]  # no --write
    done = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "bins"), "--n", "150",
                           "--n-check", "60", "--seed", "5", "--write"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    scale = json.loads((tmp_path / "bins" / "config.json").read_text())["z_head"]["sigma_scale"]
    assert len(scale) == 3 and all(0 < f < 1e3 for f in scale)
    assert f"sigma_scale (GALAXY, QSO, STAR): {scale}" in done.stdout
    model, card = load_checkpoint(tmp_path / "bins")
    assert model.z_sigma_scale.tolist() == pytest.approx(scale)
    gaussian = build_model("vit-micro")
    _save(gaussian, tmp_path / "gauss", {})
    refused = subprocess.run([sys.executable, str(script), "--model", str(tmp_path / "gauss")], capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "only a binned head is calibrated" in refused.stderr
