"""The torch renderers give the numpy renderers' images, bit for bit, on the CPU."""

import numpy as np
import pytest
import torch

from annotate import render_torch
from annotate.grid import WavelengthGrid
from annotate.render import RenderSettings, render
from annotate.simulate.spectra import draw_sample
from annotate.simulate.templates import load_library


@pytest.fixture(scope="module")
def batch():
    sample = draw_sample(48, load_library(), WavelengthGrid(), seed=12)
    flux, mask = sample["flux"].copy(), sample["mask"].copy()
    flux[0] = np.nan  # nothing usable
    mask[1, :3000] = True  # most of it masked
    flux[2, 100:200] = np.inf
    flux[3, ::2] = -flux[3, ::2]  # median near zero
    flux[4] *= 1e4  # far above the thresholds
    return flux, mask


@pytest.mark.parametrize("encoding", ["2dmap", "simple", "overlap"])
@pytest.mark.parametrize("line_width", [1, 2, 3])
def test_torch_matches_numpy(batch, encoding, line_width):
    if encoding == "2dmap" and line_width > 1:
        pytest.skip("line width does not apply to the 2D Map")
    flux, mask = batch
    settings = RenderSettings(encoding=encoding, line_width=line_width)
    ours = render(flux, mask, settings)
    theirs = render_torch.render(torch.from_numpy(flux), torch.from_numpy(mask), settings).numpy()
    assert theirs.dtype == np.uint8 and theirs.shape == ours.shape
    np.testing.assert_array_equal(theirs, ours)


def test_torch_model_input_matches_numpy(batch):
    from annotate.render import to_model_input

    flux, mask = batch
    images = render(flux[:4], mask[:4], RenderSettings())
    expected = to_model_input(images)
    got = render_torch.to_model_input(torch.from_numpy(np.ascontiguousarray(images)))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_render_matches_cpu(batch):
    flux, mask = batch
    for encoding in ("2dmap", "simple", "overlap"):
        settings = RenderSettings(encoding=encoding)
        cpu = render(flux, mask, settings)
        gpu = render_torch.render(torch.from_numpy(flux).cuda(), torch.from_numpy(mask).cuda(), settings).cpu().numpy()
        assert (gpu != cpu).mean() < 1e-4, encoding


@pytest.mark.parametrize("encoding", ["simple", "overlap"])
def test_images_larger_than_255_px_use_the_wide_fill_and_still_match(batch, encoding):
    flux, mask = batch
    settings = RenderSettings(encoding=encoding, image_size=320, line_width=2)
    ours = render(flux[:8], mask[:8], settings)
    theirs = render_torch.render(torch.from_numpy(flux[:8]), torch.from_numpy(mask[:8]), settings).numpy()
    assert ours.shape == (8, 320, 320, 3)
    np.testing.assert_array_equal(theirs, ours)


def test_prediction_with_rendering_on_the_device_equals_numpy_rendering(batch):
    from annotate.checkpoint import DEFAULT_MODEL, load_checkpoint
    from annotate.predict import predict_batch

    flux, mask = batch
    model, card = load_checkpoint(DEFAULT_MODEL, "cpu")
    on_host = predict_batch(model, card, flux[5:21], mask[5:21], "cpu", render_on_device=False)
    on_device = predict_batch(model, card, flux[5:21], mask[5:21], "cpu", render_on_device=True)
    # the images are identical (tested above), but the two paths hand the model tensors made
    # differently, and its float32 arithmetic on them may differ in the last bits (kernels chosen by
    # layout, threading): the heads' outputs, of order 1, then differ by a few 1e-7, and a label is
    # such an output times its scale (log g, [Fe/H] in dex: a few 1e-6 was seen with the default
    # model's tenth stage). So: within 1e-5 in the labels' own units (z, dex), or 1e-5 of the value
    for key in on_host:
        np.testing.assert_allclose(on_device[key], on_host[key], rtol=1e-5, atol=1e-5)


def test_bf16_inference_stays_close_to_float32(batch):
    """The GPU path's bfloat16 autocast (backbone in bf16, heads in float32), run on the CPU."""
    from annotate.checkpoint import DEFAULT_MODEL, load_checkpoint
    from annotate.predict import predict_batch

    flux, mask = batch
    model, card = load_checkpoint(DEFAULT_MODEL, "cpu")
    full = predict_batch(model, card, flux[:32], mask[:32], "cpu", bf16=False)
    half = predict_batch(model, card, flux[:32], mask[:32], "cpu", bf16=True)
    assert not np.array_equal(half["z"], full["z"])  # autocast did change the arithmetic
    # (measured with the default model: every class the same, probabilities within 0.001, median |Δz|/(1+z) 5e-6)
    assert (half["prob"].argmax(1) == full["prob"].argmax(1)).mean() >= 0.97
    np.testing.assert_allclose(half["prob"], full["prob"], atol=0.02)
    assert np.median(np.abs(half["z"] - full["z"]) / (1 + full["z"])) < 2e-4  # the model's NMAD is 7e-4
    # 2 % or 100 K, far inside the model's Teff RMSE (~1,000 K); the head's Teff for a galaxy can be a few 100 K
    np.testing.assert_allclose(half["teff"], full["teff"], rtol=0.02, atol=100.0)


def test_spectra_with_a_non_positive_median_match_too():
    """Their scale is the mean |flux|; summed in float64 it does not depend on the order."""
    rng = np.random.default_rng(5)
    flux = rng.normal(-0.05, 1.0, (128, 4608)).astype(np.float32)
    mask = rng.random(flux.shape) < 0.05
    for encoding in ("2dmap", "simple", "overlap"):
        settings = RenderSettings(encoding=encoding)
        np.testing.assert_array_equal(
            render_torch.render(torch.from_numpy(flux), torch.from_numpy(mask), settings).numpy(),
            render(flux, mask, settings))


def test_huge_medians_do_not_overflow():
    flux = np.full((1, 4608), 2e38, np.float32)
    mask = np.zeros_like(flux, bool)
    mask[0, 0] = True  # an odd number of usable pixels
    assert render_torch.row_median(torch.from_numpy(flux), ~torch.from_numpy(mask)).item() == pytest.approx(2e38)
