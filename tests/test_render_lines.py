"""Simple and Overlap encodings: hand-checked pixels, gaps, thickness, channels."""

import numpy as np
import pytest

from annotate.errors import ConfigError
from annotate.render import RenderSettings, render

N = 4608
# a flat spectrum normalises to 1.0: scaled (1 - (-0.5)) / 3.5 = 3/7, row rint((1 - 3/7) * 223) = 127
FLAT_ROW = 127


def _flat(n_spectra=1, value=2.0):
    return np.full((n_spectra, N), value, np.float32), np.zeros((n_spectra, N), bool)


def test_flat_spectrum_is_one_row_across_the_width():
    flux, mask = _flat()
    image = render(flux, mask, RenderSettings(encoding="simple", line_width=1))[0]
    lit = np.argwhere(image[..., 0] == 255)
    assert set(lit[:, 0]) == {FLAT_ROW} and len(lit) == 224
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()  # white on black
    thick = render(flux, mask, RenderSettings(encoding="simple", line_width=2))[0, ..., 0]
    assert set(np.argwhere(thick == 255)[:, 0]) == {FLAT_ROW, FLAT_ROW + 1}


def test_a_spike_reaches_the_top_in_its_own_column():
    flux, mask = _flat()
    flux[0, 2304] = 100.0  # far above flux_max: clipped to the top row
    image = render(flux, mask, RenderSettings(encoding="simple", line_width=1))[0, ..., 0]
    column = 2304 * 224 // N  # 112
    assert image[0, column] == 255 and image[0:FLAT_ROW, column].all()
    assert not image[0:FLAT_ROW, column + 2].any() and not image[0:FLAT_ROW, column - 2].any()


def test_masked_and_nan_pixels_are_gaps_not_drawn_or_joined():
    flux, mask = _flat(2)
    mask[0, 1000:2000] = True
    flux[1, 1000:2000] = np.nan
    images = render(flux, mask, RenderSettings(encoding="simple", line_width=1))[..., 0]
    first_empty, last_empty = -(-1000 * 224 // N) + 1, 2000 * 224 // N - 1  # columns wholly inside the gap
    for image in images:
        assert not image[:, first_empty:last_empty + 1].any()
        assert image[FLAT_ROW, : first_empty - 1].all() and image[FLAT_ROW, last_empty + 2:].all()
    np.testing.assert_array_equal(images[0], images[1])  # NaN behaves exactly like a mask


def test_overlap_puts_each_third_in_its_own_channel():
    flux, mask = _flat()
    flux[0, N // 3: 2 * N // 3] = 4.0  # the middle third sits higher
    flux[0, 2 * N // 3:] = 0.0  # the last third at zero flux
    image = render(flux, mask, RenderSettings(encoding="overlap", line_width=1))[0]
    # median of the spectrum is 2.0: thirds normalise to 1.0, 2.0 and 0.0
    rows = [int(np.rint((1 - (v + 0.5) / 3.5) * 223)) for v in (1.0, 2.0, 0.0)]
    for channel, row in enumerate(rows):
        lit = np.argwhere(image[..., channel] == 255)
        # each third spans the full width; joins between thirds never cross channels
        assert set(lit[:, 0]) == {row}, channel
        assert len(lit) == 224
    assert rows == [127, 64, 191]


def test_line_encodings_refuse_grids_too_short_to_fill_the_width():
    flux, mask = np.ones((1, 500), np.float32), np.zeros((1, 500), bool)
    render(flux, mask, RenderSettings(encoding="simple"))  # 500 samples >= 224 columns
    with pytest.raises(ConfigError, match="overlap plot needs at least 224"):
        render(flux, mask, RenderSettings(encoding="overlap"))  # thirds of 166 samples


def test_all_masked_spectrum_is_black_in_every_encoding():
    flux, mask = _flat()
    mask[:] = True
    for encoding in ("2dmap", "simple", "overlap"):
        assert not render(flux, mask, RenderSettings(encoding=encoding)).any(), encoding
