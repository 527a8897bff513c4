"""LAMOST DR10 LRS files built per the published layouts (no real LAMOST file ships in a package)."""

import numpy as np
import pytest

from annotate.readers import read_spectrum
from annotate.simulate.writer import write_lamost_image, write_lamost_table


def _spectrum(n=3909):
    wavelength = 10 ** (3.5682 + 1e-4 * np.arange(n))  # LAMOST LRS: 3700-9000 Å, log-linear
    flux = np.linspace(100, 200, n).astype(np.float32)
    ivar = np.full(n, 0.01, np.float32)
    mask = np.zeros(n, bool)
    mask[:5] = True
    return wavelength, flux, ivar, mask


@pytest.mark.parametrize("writer,loader", [(write_lamost_table, "lamost_lrs"), (write_lamost_image, "lamost_lrs_image")])
def test_both_layouts_read_alike(tmp_path, writer, loader):
    wavelength, flux, ivar, mask = _spectrum()
    path = writer(tmp_path / "spec-55859-F5902_sp01-001.fits", wavelength, flux, ivar, mask,
                  header={"OBSID": 101001, "CLASS": "STAR", "Z": 0.0001})
    spectrum = read_spectrum(path)
    np.testing.assert_allclose(spectrum.wavelength, wavelength, rtol=1e-6)
    np.testing.assert_allclose(spectrum.flux, flux)
    assert spectrum.bad.sum() == 5
    assert spectrum.labels["CLASS"] == "STAR"
    assert read_spectrum(path, loader).flux.shape == flux.shape
