import numpy as np
import pytest

from annotate.errors import ConfigError
from annotate.render import RenderSettings, colormap_lut, model_input, render, render_2dmap, to_model_input


def test_capacity_of_default_settings_holds_the_store_grid():
    settings = RenderSettings()
    assert settings.blocks_per_side == 74
    assert settings.capacity == 5476
    settings.check_grid(4608)
    with pytest.raises(ConfigError, match="holds 5476"):
        settings.check_grid(6000)


def test_each_flux_value_fills_its_3x3_block_row_major():
    settings = RenderSettings(normalise="none", flux_min=0.0, flux_max=1.0, colormap="gray")
    flux = np.zeros((1, 100), np.float32)
    flux[0, 0] = 1.0     # block (0, 0): white
    flux[0, 75] = 0.5    # block (1, 1): mid grey (row 75 // 74 = 1, column 75 % 74 = 1)
    image = render_2dmap(flux, np.zeros_like(flux, bool), settings)
    assert image.shape == (1, 224, 224, 3) and image.dtype == np.uint8
    assert (image[0, 0:3, 0:3] == 255).all()
    assert (image[0, 3:6, 3:6] == 128).all()
    assert (image[0, 0:3, 3:6] == 0).all()          # flux 0 -> bottom of the colormap (black in gray)
    # blocks past the spectrum's end and the 2-px border are background (black)
    assert (image[0, 3:6, 3 * 27:] == 0).all()
    assert (image[0, 222:, :] == 0).all() and (image[0, :, 222:] == 0).all()


def test_masked_and_nan_pixels_are_background_not_the_colormap_floor():
    settings = RenderSettings(normalise="none", flux_min=-1.0, flux_max=1.0, colormap="viridis")
    flux = np.zeros((1, 10), np.float32)
    flux[0, 2] = np.nan
    mask = np.zeros((1, 10), bool)
    mask[0, 4] = True
    image = render_2dmap(flux, mask, settings)
    viridis_mid = colormap_lut("viridis")[128]
    assert (image[0, 0, 0] == viridis_mid).all()
    assert (image[0, 0, 6] == 0).all()    # NaN (block 2) -> black
    assert (image[0, 0, 12] == 0).all()   # masked (block 4) -> black
    assert not (colormap_lut("viridis")[:256] == 0).all(axis=1).any()  # viridis never is pure black


def test_median_normalisation_makes_scale_irrelevant():
    rng = np.random.default_rng(1)
    flux = rng.uniform(0.5, 2.0, (1, 4608)).astype(np.float32)
    mask = np.zeros_like(flux, bool)
    settings = RenderSettings()
    np.testing.assert_array_equal(render(flux, mask, settings), render(flux * 1000, mask, settings))


def test_values_are_clipped_to_thresholds():
    settings = RenderSettings(normalise="none", flux_min=0.0, flux_max=1.0, colormap="gray")
    flux = np.array([[-5.0, 5.0]], np.float32)
    image = render_2dmap(flux, np.zeros_like(flux, bool), settings)
    assert image[0, 0, 0, 0] == 0 and image[0, 0, 3, 0] == 255


def test_model_input_normalisation():
    images = np.zeros((2, 224, 224, 3), np.uint8)
    images[1] = 255
    tensor = to_model_input(images)
    assert tuple(tensor.shape) == (2, 3, 224, 224)
    assert float(tensor[0].min()) == -1.0 and float(tensor[1].max()) == 1.0


@pytest.mark.parametrize("settings", [RenderSettings(), RenderSettings(image_size=64, block_size=2, colormap="magma"),
                                      RenderSettings(image_size=100, block_size=3, normalise="none")])
def test_model_input_is_the_rendered_image_converted_to_the_bit(settings):
    """The 2D Map made straight in the model's layout equals render + to_model_input exactly
    (the same float32 operations on the same colours), masks, non-finite flux, the blocks past
    the spectrum and the unfilled border included; other encodings go through render."""
    rng = np.random.default_rng(5)
    n_pix = min(settings.capacity - 7, 4000)
    flux = rng.normal(1.0, 0.8, (5, n_pix)).astype(np.float32)
    flux[1, 10:40] = np.nan
    flux[2, 5] = np.inf
    mask = rng.random((5, n_pix)) < 0.05
    for mean, std in ((0.5, 0.5), (0.485, 0.229)):
        expected = to_model_input(render(flux, mask, settings), mean, std)
        got = model_input(flux, mask, settings, mean, std)
        assert got.dtype == expected.dtype and tuple(got.shape) == tuple(expected.shape)
        assert got.is_contiguous()
        assert bool((got == expected).all())
    line = RenderSettings(encoding="simple", image_size=64)
    flux_line = rng.normal(1.0, 0.2, (2, 256)).astype(np.float32)
    mask_line = np.zeros((2, 256), bool)
    assert bool((model_input(flux_line, mask_line, line) == to_model_input(render(flux_line, mask_line, line))).all())


def test_unknown_encoding_lists_valid_ones():
    with pytest.raises(ConfigError, match="2dmap"):
        RenderSettings(encoding="sketch")


def test_stored_colormaps_are_matplotlibs_and_others_still_come_from_matplotlib(tmp_path, monkeypatch):
    """The colours kept in data/colormaps.npz (so that a run renders without importing
    matplotlib) are matplotlib's own for every stored colormap; a colormap not stored, or a
    missing file, falls back to matplotlib with the same colours; an unknown name is refused."""
    import annotate.render as render

    for name in render.STORED_COLORMAPS:
        lut = render.colormap_lut(name)
        np.testing.assert_array_equal(lut[:256], render._matplotlib_rgb(name))
        assert lut.shape == (257, 3) and lut.dtype == np.uint8 and (lut[256] == 0).all()
    assert "twilight" not in render.STORED_COLORMAPS
    np.testing.assert_array_equal(render.colormap_lut("twilight")[:256], render._matplotlib_rgb("twilight"))
    render.colormap_lut.cache_clear()
    monkeypatch.setattr(render, "STORED_COLORMAPS_PATH", tmp_path / "absent.npz")
    try:
        np.testing.assert_array_equal(render.colormap_lut("viridis")[:256], render._matplotlib_rgb("viridis"))
        with pytest.raises(ConfigError, match="unknown colormap 'no-such-map'"):
            render.colormap_lut("no-such-map")
    finally:
        render.colormap_lut.cache_clear()


def test_a_run_renders_the_default_colormap_without_matplotlib():
    """Rendering with the default settings in a new process does not import matplotlib."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from annotate.render import RenderSettings, model_input\n"
            "flux = np.ones((2, 4608), np.float32)\n"
            "model_input(flux, np.zeros(flux.shape, bool), RenderSettings())\n"
            "print('matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
