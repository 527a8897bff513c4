"""The DESI coadd reader on the two real coadds that fastspecfit 3.6.1 ships (format fixtures)."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from annotate.errors import SpectrumError
from annotate.readers import read_spectra, read_spectrum

FILES = ("coadd-special-dark-27247.fits", "coadd-4-80613-thru20210324.fits")


@pytest.mark.parametrize("name", FILES)
def test_arms_are_joined_by_inverse_variance_where_they_overlap(desi_data, name):
    spectrum = read_spectrum(desi_data / name)
    with fits.open(desi_data / name) as hdul:
        arms = {a: (hdul[f"{a}_WAVELENGTH"].data, hdul[f"{a}_FLUX"].data[0], hdul[f"{a}_IVAR"].data[0]) for a in "BRZ"}
        target = int(hdul["FIBERMAP"].data["TARGETID"][0])
    assert spectrum.labels == {"TARGETID": target}
    assert spectrum.wavelength[0] == pytest.approx(3600.0) and spectrum.wavelength[-1] == pytest.approx(9824.0)
    np.testing.assert_allclose(np.diff(spectrum.wavelength), 0.8, atol=1e-6)
    assert spectrum.flux_unit == "1e-17 erg / (s cm2 Angstrom)"
    at = {round(w, 1): i for i, w in enumerate(spectrum.wavelength)}
    # blue of the B/R overlap: B's own pixels; in it, the ivar-weighted mean of B and R
    wave_b, flux_b, ivar_b = arms["B"]
    wave_r, flux_r, ivar_r = arms["R"]
    i = at[round(wave_b[100], 1)]
    assert spectrum.flux[i] == pytest.approx(flux_b[100]) and spectrum.ivar[i] == pytest.approx(ivar_b[100])
    j_b = int(np.argmin(np.abs(wave_b - 5780.0)))
    j_r = int(np.argmin(np.abs(wave_r - 5780.0)))
    expected = (ivar_b[j_b] * flux_b[j_b] + ivar_r[j_r] * flux_r[j_r]) / (ivar_b[j_b] + ivar_r[j_r])
    k = at[5780.0]
    assert spectrum.flux[k] == pytest.approx(expected, rel=1e-5)
    assert spectrum.ivar[k] == pytest.approx(ivar_b[j_b] + ivar_r[j_r], rel=1e-5)
    assert not spectrum.bad.any()  # these two coadds have no masked pixel and no zero ivar


def _three_targets(desi_data, path):
    """The real tile coadd made into one of three targets: the real one and two copies, scaled
    (×2, ×3) under new TARGETIDs, one with a masked stretch."""
    with fits.open(desi_data / FILES[1]) as hdul:
        hdus = [fits.PrimaryHDU(header=hdul[0].header)]
        fibermap = Table(hdul["FIBERMAP"].data)
        fibermap = Table(np.concatenate([fibermap.as_array()] * 3))
        fibermap["TARGETID"] = [int(fibermap["TARGETID"][0]), 11, 12]
        hdus.append(fits.BinTableHDU(fibermap, name="FIBERMAP"))
        for arm in "BRZ":
            hdus.append(fits.ImageHDU(hdul[f"{arm}_WAVELENGTH"].data, name=f"{arm}_WAVELENGTH"))
            flux = hdul[f"{arm}_FLUX"].data
            hdus.append(fits.ImageHDU(np.concatenate([flux, 2 * flux, 3 * flux]), name=f"{arm}_FLUX",
                                      header=hdul[f"{arm}_FLUX"].header))
            hdus.append(fits.ImageHDU(np.concatenate([hdul[f"{arm}_IVAR"].data] * 3), name=f"{arm}_IVAR"))
            mask = np.concatenate([hdul[f"{arm}_MASK"].data] * 3)
            if arm == "R":
                mask[2, 500:520] = 1 << 2  # COSMIC
            hdus.append(fits.ImageHDU(mask, name=f"{arm}_MASK"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_a_file_of_several_targets_gives_each_row_its_own(desi_data, tmp_path):
    path = _three_targets(desi_data, tmp_path / "coadd-many.fits")
    real = read_spectrum(desi_data / FILES[1])
    with fits.open(path) as hdul:
        first = int(hdul["FIBERMAP"].data["TARGETID"][0])
    twelve, missing, eleven, real_again = read_spectra(path, [12, 99, 11, first])
    np.testing.assert_allclose(eleven.flux, 2 * real.flux, rtol=1e-6)
    np.testing.assert_allclose(twelve.flux[~twelve.bad], 3 * real.flux[~twelve.bad], rtol=1e-6)
    assert twelve.bad.sum() == 20 and not eleven.bad.any()
    np.testing.assert_array_equal(real_again.flux, real.flux)
    assert isinstance(missing, SpectrumError) and "TARGETID 99 is not in this coadd's FIBERMAP (3 targets)" in str(missing)
    with pytest.raises(SpectrumError, match="holds 3 targets; a catalog row must name one by TARGETID"):
        read_spectrum(path)
    assert read_spectrum(path, target=11).flux[0] == pytest.approx(2 * real.flux[0])


def test_ingest_reads_a_many_target_file_once_for_all_its_rows(desi_data, tmp_path, monkeypatch):
    from annotate.grid import WavelengthGrid
    from annotate.ingest import ingest_rows
    from annotate.store import STATUS

    path = str(_three_targets(desi_data, tmp_path / "coadd-many.fits"))
    opened = []
    from astropy.io import fits

    real_open = fits.open
    monkeypatch.setattr(fits, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    rows = ingest_rows({"start": 0, "paths": [path, path, path, None], "refused": [False] * 4,
                        "grid": WavelengthGrid().to_dict(), "reader": "desi_coadd", "targets": ["12", "11", "77", "5"]})
    assert len(opened) == 1
    assert list(rows["status"]) == [STATUS["OK"], STATUS["OK"], STATUS["NO_SPECTRUM"], STATUS["NO_SPECTRUM"]]
    masked = np.convolve(rows["mask"][0].astype(float), np.ones(5), mode="same") > 0  # and the pixels beside it
    good = ~masked & ~rows["mask"][1].astype(bool)
    assert masked.sum() > rows["mask"][1].sum()  # the COSMIC stretch is masked on the grid too
    np.testing.assert_allclose(rows["flux"][0][good], 1.5 * rows["flux"][1][good], rtol=1e-5)
    assert "TARGETID 77 is not in this coadd" in rows["error"][2]


def test_a_file_of_another_format_says_what_it_is(desi_data, ppxf_spectra, tmp_path):
    with pytest.raises(SpectrumError, match="a desi_coadd file, not sdss_spec .the survey's reader."):
        read_spectrum(desi_data / FILES[0], "sdss_spec")
    with pytest.raises(SpectrumError, match="a sdss_spec file, not desi_coadd"):
        read_spectrum(ppxf_spectra / "NGC3522_SDSS_DR18.fits", "desi_coadd")
    other = tmp_path / "table.fits"
    fits.BinTableHDU(Table({"A": [1.0, 2.0]})).writeto(other)
    with pytest.raises(SpectrumError, match=r"no reader recognises this file \(known formats: desi_coadd, lamost_lrs, lamost_lrs_image, sdss_spec\)"):
        read_spectrum(other, "sdss_spec")
