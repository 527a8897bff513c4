"""LAMOST LRS files: built per the published layouts (DR10's table and the older image), and two
real DR6/DR7 files of the image layout that laspec 2021.525.0 ships (evaluation only)."""

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


REAL_LAMOST = {  # file under laspec's data folder -> (LAMOST's subclass, a Teff range about it, pixels of ivar 0)
    "lamost/spec-58397-EG014118N254444M01_sp03-031.fits": ("G3", (5200.0, 6300.0), True),
    "KIC8098300/DR6_low/spec-57287-KP193637N444141V03_sp10-161.fits.gz": ("F5", (6000.0, 7000.0), False),
}


@pytest.mark.parametrize("name", sorted(REAL_LAMOST))
def test_real_lamost_files_are_read_as_the_header_says(lamost_data, name):
    """The survey's reader (lamost_lrs, through the image layout) reads the file's five rows as
    the header describes them: the log-linear COEFF0/COEFF1 grid, which row 3 stores to float32
    rounding; flux and inverse variance rows 1-2; bad pixels where an ANDMASK bit (row 4)
    is set; the relative flux unit; the header's CLASS and Z as labels. These files mark their
    unusable stretches, where they have any (the DR7 one), by ivar 0 (their ANDMASK is all 0), and
    a run leaves those pixels out."""
    from annotate.grid import WavelengthGrid
    from annotate.ingest import ingest_rows
    from annotate.readers import RELATIVE_FLUX_UNIT

    path = lamost_data / name
    with fits.open(path) as hdul:
        header, rows = hdul[0].header, hdul[0].data.astype(float)
    spectrum = read_spectrum(path, "lamost_lrs")
    expected = 10 ** (header["COEFF0"] + header["COEFF1"] * np.arange(header["NAXIS1"]))
    np.testing.assert_allclose(spectrum.wavelength, expected, rtol=1e-12)
    np.testing.assert_allclose(spectrum.wavelength, rows[2], rtol=1e-6)
    np.testing.assert_array_equal(spectrum.flux, rows[0])
    np.testing.assert_array_equal(spectrum.ivar, rows[1])
    np.testing.assert_array_equal(spectrum.bad, rows[3] != 0)
    assert spectrum.flux_unit == RELATIVE_FLUX_UNIT
    assert spectrum.labels["CLASS"] == "STAR" and spectrum.labels["Z"] == pytest.approx(header["Z"])
    zero = np.flatnonzero(rows[1] <= 0)
    assert (len(zero) > 0) == REAL_LAMOST[name][2]
    if not REAL_LAMOST[name][2]:
        return
    grid = WavelengthGrid()
    stored = ingest_rows({"start": 0, "paths": [str(path)], "refused": [False], "grid": grid.to_dict(),
                          "reader": "lamost_lrs"})
    inside = zero[(zero > 0) & (zero < len(rows[2]) - 1) & np.isin(zero - 1, zero) & np.isin(zero + 1, zero)]
    pixels = np.round((np.log10(rows[2][inside]) - grid.loglam_start) / grid.loglam_step).astype(int)
    pixels = pixels[(pixels >= 0) & (pixels < grid.n_pix)]
    assert len(pixels) > 0 and stored["mask"][0][pixels].all()


def test_real_lamost_stars_are_fitted_as_stars_at_the_pipelines_velocity(lamost_data):
    """Evaluation only: the default ViT and the template fit (LAMOST's settings) class both stars
    STAR, the fit within 25 km/s of LAMOST's own z, and its Teff inside a range about the Teff of
    LAMOST's subclass (F5 V about 6,500 K, G3 V about 5,700 K: Pecaut & Mamajek 2013)."""
    from dataclasses import astuple

    import torch

    from annotate import CLASS_NAMES, SPEED_OF_LIGHT_KMS
    from annotate.checkpoint import load_checkpoint
    from annotate.fit.settings import fit_settings
    from annotate.fit.stage import fit_batch
    from annotate.ingest import ingest_rows
    from annotate.predict import predict_batch

    names = sorted(REAL_LAMOST)
    model, card = load_checkpoint(None, "cpu")
    rows = ingest_rows({"start": 0, "paths": [str(lamost_data / n) for n in names], "refused": [False] * len(names),
                        "grid": card.grid.to_dict(), "reader": "lamost_lrs"})
    with torch.inference_mode():
        vit = predict_batch(model, card, rows["flux"], rows["mask"])
    fit = fit_batch(astuple(card.grid), astuple(fit_settings("lamost_lrs")), rows["flux"], rows["ivar"], rows["mask"],
                    {key: vit[key] for key in ("prob", "z", "z_err")})
    assert list(vit["prob"].argmax(axis=1)) == [CLASS_NAMES.index("STAR")] * 2
    assert list(fit["fit_class"]) == ["STAR", "STAR"]
    for i, name in enumerate(names):
        z_lamost = fits.getheader(lamost_data / name)["Z"]
        assert abs(fit["fit_z"][i] - z_lamost) * SPEED_OF_LIGHT_KMS < 25.0, (name, fit["fit_z"][i], z_lamost)
        low, high = REAL_LAMOST[name][1]
        assert low < fit["fit_teff"][i] < high, (name, fit["fit_teff"][i])
        assert np.isfinite(fit["fit_teff_err"][i]) and fit["fit_teff_err"][i] > 0
