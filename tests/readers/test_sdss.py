import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits

from annotate.errors import SpectrumError
from annotate.readers import identify_loader, read_spectrum


def test_real_dr18_galaxy(ppxf_spectra):
    spectrum = read_spectrum(ppxf_spectra / "NGC3522_SDSS_DR18.fits")
    assert spectrum.labels["CLASS"] == "GALAXY"
    assert spectrum.labels["Z"] == pytest.approx(0.004018, abs=1e-6)
    assert spectrum.labels["ZWARNING"] == 0
    assert spectrum.flux.shape == (3815,)
    assert spectrum.wavelength[0] == pytest.approx(3826.5, abs=0.1)
    assert np.all(np.diff(spectrum.wavelength) > 0)


def test_real_dr18_star_labelled_a0(ppxf_spectra):
    spectrum = read_spectrum(ppxf_spectra / "NGC3073_SDSS_DR18.fits")
    # the SDSS pipeline calls the dwarf galaxy NGC 3073 an A0 star
    assert spectrum.labels["CLASS"] == "STAR"
    assert spectrum.labels["SUBCLASS"] == "A0"
    assert spectrum.labels["ELODIE_TEFF"] == pytest.approx(7235.0)
    # its first pixel carries SPPIXMASK bits that are not 'no data'
    assert spectrum.bad.sum() < 50


def test_identified_as_sdss(ppxf_spectra):
    with fits.open(ppxf_spectra / "NGC3522_SDSS_DR18.fits") as hdul:
        assert identify_loader(hdul).name == "sdss_spec"


def test_gzip_compressed_file_reads_the_same(ppxf_spectra, tmp_path):
    target = tmp_path / "spec.fits.gz"
    with open(ppxf_spectra / "NGC3522_SDSS_DR18.fits", "rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = read_spectrum(ppxf_spectra / "NGC3522_SDSS_DR18.fits")
    packed = read_spectrum(target)
    np.testing.assert_array_equal(plain.flux, packed.flux)


def test_truncated_file_is_one_line_error(ppxf_spectra, tmp_path):
    data = (ppxf_spectra / "NGC3522_SDSS_DR18.fits").read_bytes()
    target = tmp_path / "truncated.fits"
    target.write_bytes(data[: 2880 * 3 + 100])
    with pytest.raises(SpectrumError) as info:
        read_spectrum(target)
    assert "\n" not in str(info.value)
    assert str(target) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpectrumError, match="not found"):
        read_spectrum(tmp_path / "nope.fits")


def _coadd_file(path, loglam, flux=None):
    n = len(loglam)
    flux = np.ones(n, np.float32) if flux is None else flux
    cols = [fits.Column("flux", "E", array=flux), fits.Column("loglam", "E", array=loglam),
            fits.Column("ivar", "E", array=np.ones(n, np.float32)), fits.Column("and_mask", "J", array=np.zeros(n))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path)
    return path


def test_loglam_in_angstrom_is_refused(tmp_path):
    path = _coadd_file(tmp_path / "aa.fits", np.linspace(3600, 10000, 500).astype(np.float32))
    with pytest.raises(SpectrumError, match="Å"):
        read_spectrum(path)


def test_descending_wavelengths_are_sorted(tmp_path):
    loglam = np.linspace(4.0, 3.6, 500).astype(np.float32)
    flux = np.arange(500, dtype=np.float32)
    spectrum = read_spectrum(_coadd_file(tmp_path / "desc.fits", loglam, flux))
    assert np.all(np.diff(spectrum.wavelength) > 0)
    assert spectrum.flux[0] == 499


def test_file_without_coadd_is_not_recognised(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((3, 3))).writeto(path)
    with pytest.raises(SpectrumError, match="no reader"):
        read_spectrum(path)


@pytest.mark.parametrize("name", ["NGC3522_SDSS_DR18.fits", "NGC3073_SDSS_DR18.fits"])
def test_fast_path_reads_the_real_files_exactly_as_astropy(ppxf_spectra, name):
    from annotate.readers.sdss import read_path

    assert read_path(ppxf_spectra / name) is not None  # the fast path, not a fallback
    slow = read_spectrum(ppxf_spectra / name, "sdss_spec")
    fast = read_spectrum(ppxf_spectra / name, "sdss_spec", labels=False)
    for field in ("wavelength", "flux", "ivar", "bad"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field))
    assert fast.labels == {} and slow.labels["Z"] > 0


def test_fast_path_falls_back_to_astropy_for_gzip_and_scaled_columns(ppxf_spectra, tmp_path):
    from annotate.readers.sdss import read_path

    source = ppxf_spectra / "NGC3522_SDSS_DR18.fits"
    gz = tmp_path / "spec.fits.gz"
    with open(source, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert read_path(gz) is None
    np.testing.assert_array_equal(read_spectrum(gz, "sdss_spec", labels=False).flux,
                                  read_spectrum(source).flux)
    # an integer and_mask stored with TZERO (unsigned) needs astropy's scaling
    n = 100
    coadd = fits.BinTableHDU.from_columns([
        fits.Column("flux", "E", array=np.ones(n, np.float32)),
        fits.Column("loglam", "E", array=np.linspace(3.6, 3.9, n).astype(np.float32)),
        fits.Column("ivar", "E", array=np.ones(n, np.float32)),
        fits.Column("and_mask", "J", bzero=2**31, array=np.where(np.arange(n) < 10, 1 << 24, 0).astype(np.uint32)),
    ], name="COADD")
    path = tmp_path / "scaled.fits"
    fits.HDUList([fits.PrimaryHDU(), coadd]).writeto(path)
    assert read_path(path) is None
    assert read_spectrum(path, "sdss_spec", labels=False).bad.sum() == 10


def test_fast_path_reports_a_truncated_file(ppxf_spectra, tmp_path):
    data = (ppxf_spectra / "NGC3522_SDSS_DR18.fits").read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(data[: 2880 * 3])
    with pytest.raises(SpectrumError, match="cut.fits"):
        read_spectrum(cut, "sdss_spec", labels=False)


def test_the_survey_mask_bits_decide_which_pixels_are_unusable(tmp_path):
    """and_mask bits: NODATA (24) is one of the reader's own six, BRIGHTSKY (23) is not. A survey
    definition's mask_bits_bad replaces the six, on the fast path and through astropy alike."""
    n = 50
    and_mask = np.zeros(n, np.int32)
    and_mask[10], and_mask[20], and_mask[30] = 1 << 24, 1 << 23, (1 << 23) | (1 << 24)
    cols = [fits.Column("flux", "E", array=np.ones(n, np.float32)),
            fits.Column("loglam", "E", array=3.6 + 1e-4 * np.arange(n)),
            fits.Column("ivar", "E", array=np.ones(n, np.float32)), fits.Column("and_mask", "J", array=and_mask)]
    path = tmp_path / "spec.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path)
    for labels in (False, True):  # the fast path, then astropy
        def bad(bits):
            return np.flatnonzero(read_spectrum(path, "sdss_spec", labels=labels, bad_bits=bits).bad).tolist()

        assert bad(None) == [10, 30]
        assert bad(1 << 23) == [20, 30]
        assert bad((1 << 23) | (1 << 24)) == [10, 20, 30]
        assert bad(0) == []
