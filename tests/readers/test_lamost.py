"""LAMOST DR10 LRS files built per the published layouts (no real LAMOST file ships in a package)."""

import numpy as np
import pytest
from astropy.io import fits

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


@pytest.mark.parametrize("writer", [write_lamost_table, write_lamost_image])
def test_andmask_bits_of_the_survey_and_relative_flux(tmp_path, writer):
    """Without mask_bits_bad (LAMOST's names are unconfirmed) any ANDMASK bit makes a pixel
    unusable; with it, only those bits. The flux is labelled relative, not SDSS's absolute unit."""
    from annotate.readers import RELATIVE_FLUX_UNIT

    wavelength, flux, ivar, mask = _spectrum()
    path = writer(tmp_path / "spec.fits", wavelength, flux, ivar, mask)
    with fits.open(path, mode="update") as hdul:  # ANDMASK bit 1 on pixels 0-4, bit 3 on pixel 100
        if writer is write_lamost_table:
            hdul[1].data["ANDMASK"][0][:5] = 2
            hdul[1].data["ANDMASK"][0][100] = 8
        else:
            hdul[0].data[3][:5] = 2
            hdul[0].data[3][100] = 8
    spectrum = read_spectrum(path)
    assert np.flatnonzero(spectrum.bad).tolist() == [0, 1, 2, 3, 4, 100]
    assert np.flatnonzero(read_spectrum(path, bad_bits=1 << 3).bad).tolist() == [100]
    assert spectrum.flux_unit == RELATIVE_FLUX_UNIT


def test_the_surveys_reader_reads_both_layouts_and_refuses_other_formats(tmp_path):
    """lamost_dr10's reader, lamost_lrs, reads the older 5-row image layout too (a catalog mixes
    them), through the same ingest as a run; a file of another survey's format is still refused
    with what it is."""
    from annotate.grid import WavelengthGrid
    from annotate.ingest import ingest_rows
    from annotate.store import STATUS
    from annotate.surveys import load_survey
    from annotate.simulate.writer import write_sdss_spec

    survey = load_survey("lamost_dr10")
    wavelength, flux, ivar, mask = _spectrum()
    paths = [str(writer(tmp_path / f"spec-{i}.fits", wavelength, flux, ivar, mask))
             for i, writer in enumerate((write_lamost_table, write_lamost_image))]
    sdss = write_sdss_spec(tmp_path / "spec-sdss.fits", np.log10(wavelength), flux, ivar, mask.astype(np.int32),
                           {"SPECOBJID": 1, "CLASS": "STAR", "Z": 0.0})
    rows = ingest_rows({"start": 0, "paths": [*paths, str(sdss)], "refused": [False] * 3,
                        "grid": WavelengthGrid().to_dict(), "reader": survey.reader, "bad_bits": survey.bad_pixel_bits})
    assert survey.reader == "lamost_lrs"
    assert rows["status"].tolist() == [STATUS["OK"], STATUS["OK"], STATUS["NO_SPECTRUM"]]
    np.testing.assert_array_equal(rows["flux"][0], rows["flux"][1])
    assert "a sdss_spec file, not lamost_lrs (the survey's reader)" in rows["error"][2]
