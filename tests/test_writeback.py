import hashlib

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from annotate.catalogs.fits_writer import header_text, write_fits
from annotate.columns import OUTPUT_COLUMNS, column_description
from annotate.errors import OutputError
from annotate.flags import PredFlag
from annotate.writeback import default_output_path, prediction_columns, provenance_cards


def _catalog(path):
    primary = fits.PrimaryHDU()
    primary.header["SURVEY"] = ("toy", "a card that must survive")
    table = fits.BinTableHDU.from_columns([
        fits.Column("SPECOBJID", "K", array=np.array([10, 11, 12])),
        fits.Column("Z", "E", unit="", array=np.array([0.1, 2.0, 0.0])),
        fits.Column("FLUXES", "5E", unit="nanomaggies", array=np.arange(15, dtype=np.float32).reshape(3, 5)),
    ], name="SPALL")
    table.header["RUN2D"] = ("v6_0_4", "kept")
    extra = fits.ImageHDU(np.ones((2, 2)), name="EXTRA")
    fits.HDUList([primary, table, extra]).writeto(path)
    return path


def _columns(n=3):
    pred = {"prob": np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [np.nan] * 3]),
            "z": np.array([0.1005, 2.5, np.nan]), "z_err": np.array([0.001, 0.01, np.nan]),
            "teff": np.array([5000.0, 6000.0, np.nan]), "logg": np.array([4.0, 4.1, np.nan]),
            "feh": np.array([0.0, -1.0, np.nan])}
    reference = {"class": np.array(["GALAXY", "QSO", "STAR"], dtype=object), "z": np.array([0.1, 2.0, 0.0])}
    flags = np.array([0, 0, int(PredFlag.NO_SPECTRUM)])
    return prediction_columns(pred, reference, flags)


def test_columns_values_and_catastrophic_flag():
    columns = _columns()
    assert columns["PRED_CLASS"].tolist() == ["GALAXY", "QSO", ""]
    # 0.1005 vs 0.1: 136 km/s, fine; 2.5 vs 2.0 for a QSO: 50,000 km/s, catastrophic
    assert columns["PRED_Z_CATASTROPHIC"].tolist() == [False, True, False]
    assert np.isnan(columns["PRED_Z"][2]) and columns["PRED_FLAGS"][2] == 1


def test_stars_outside_the_teff_range_where_feh_has_skill_are_flagged():
    """FEH_NO_SKILL: a star the fit puts below 4,000 K or above 11,000 K (or without a Teff) has an
    [Fe/H] that showed no skill on the training stars; galaxies and quasars never get the bit."""
    from annotate.fit.stage import empty_fit

    n = 7
    fit = empty_fit(n)
    fit["fit_class"][:] = ["STAR", "STAR", "STAR", "STAR", "STAR", "GALAXY", "STAR"]
    fit["fit_z"][:] = 0.0
    fit["fit_teff"][:] = [3500.0, 4000.0, 10999.0, 11000.0, 25000.0, 3000.0, np.nan]
    fit["fit_feh"][:] = [-0.5, -0.5, -0.5, -0.5, -0.5, np.nan, np.nan]
    pred = {"prob": np.tile([0.1, 0.1, 0.8], (n, 1)), "z": np.zeros(n), "z_err": np.full(n, 1e-4),
            "teff": np.full(n, 5000.0), "logg": np.full(n, 4.0), "feh": np.zeros(n), **fit}
    reference = {"class": np.array(["STAR"] * n, dtype=object), "z": np.zeros(n)}
    columns = prediction_columns(pred, reference, np.zeros(n, np.int64))
    flagged = (columns["PRED_FLAGS"] & int(PredFlag.FEH_NO_SKILL)) != 0
    # the last row: no fitted Teff, so the ViT's 5,000 K and [Fe/H] stand, inside the range
    assert flagged.tolist() == [True, False, False, True, True, False, False]
    assert columns["PRED_FEH"][0] == np.float32(-0.5)   # the value is kept; the bit says how to read it
    assert not (_columns()["PRED_FLAGS"] & int(PredFlag.FEH_NO_SKILL)).any()


def test_write_keeps_everything_and_adds_units_comments_provenance(tmp_path):
    catalog = _catalog(tmp_path / "cat.fits")
    before = hashlib.sha256(catalog.read_bytes()).hexdigest()
    out = write_fits(catalog, default_output_path(catalog), _columns(),
                     provenance_cards("toy-model", "ab" * 32, "2dmap", "sdss_dr18", 1))
    assert out.name == "cat.annotated.fits"
    assert hashlib.sha256(catalog.read_bytes()).hexdigest() == before
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SPALL", "EXTRA"]
        assert hdul[0].header["SURVEY"] == "toy"
        header = hdul[1].header
        assert header["RUN2D"] == "v6_0_4"
        assert header["ANNWSHA"] == "ab" * 32 and header["ANNENC"] == "2dmap"
        assert header["ANNPREC"] == "fp32"
        names = hdul[1].columns.names
        assert names[:3] == ["SPECOBJID", "Z", "FLUXES"]
        assert names[3:] == [c.name for c in OUTPUT_COLUMNS]
        index = names.index("PRED_TEFF") + 1
        assert header[f"TUNIT{index}"] == "K"
        assert "effective temperature" in header.comments[f"TTYPE{index}"]
        np.testing.assert_array_equal(hdul[1].data["FLUXES"][2], np.arange(10, 15))
    table = Table.read(out, hdu=1)
    assert str(table["PRED_LOGG"].unit) == "dex"


def test_rerun_replaces_pred_columns(tmp_path):
    catalog = _catalog(tmp_path / "cat.fits")
    first = write_fits(catalog, tmp_path / "a.fits", _columns(), provenance_cards("m", "0" * 64, "2dmap", "s", 0))
    second = write_fits(first, tmp_path / "b.fits", _columns(), provenance_cards("m", "1" * 64, "2dmap", "s", 0))
    with fits.open(second) as hdul:
        names = hdul[1].columns.names
        assert names.count("PRED_Z") == 1 and len(names) == 3 + len(OUTPUT_COLUMNS)
        assert hdul[1].header["ANNWSHA"] == "1" * 64


def test_refuses_to_overwrite_input(tmp_path):
    catalog = _catalog(tmp_path / "cat.fits")
    with pytest.raises(OutputError, match="overwrite the input"):
        write_fits(catalog, catalog, _columns(), {})


def test_unwritable_directory(tmp_path):
    catalog = _catalog(tmp_path / "cat.fits")
    with pytest.raises(OutputError, match="does not exist"):
        write_fits(catalog, tmp_path / "nope" / "x.fits", _columns(), {})


def _wide_catalog(path, n=1000, compress=False):
    """Columns of every kind a catalog has: unsigned (TZERO), strings, arrays, bools, and an old
    PRED_Z in the middle that a rerun must drop."""
    rng = np.random.default_rng(0)
    table = fits.BinTableHDU.from_columns([
        fits.Column("CATALOGID", "K", array=np.arange(n, dtype=np.int64) + 27021600000000000),
        fits.Column("FLAGS", "J", bzero=2**31, array=rng.integers(0, 2**32 - 1, n, dtype=np.uint32)),
        fits.Column("PRED_Z", "D", array=np.full(n, -1.0)),
        fits.Column("CLASS", "6A", array=np.array(["GALAXY", "QSO", "STAR"])[rng.integers(0, 3, n)]),
        fits.Column("MAGS", "5E", array=rng.normal(size=(n, 5)).astype(np.float32)),
        fits.Column("GOOD", "L", array=rng.random(n) < 0.5),
    ], name="SPALL")
    fits.HDUList([fits.PrimaryHDU(), table, fits.ImageHDU(np.arange(6.0).reshape(2, 3), name="EXTRA")]).writeto(path)
    if compress:
        import gzip
        gz = path.with_name(path.name + ".gz")
        gz.write_bytes(gzip.compress(path.read_bytes()))
        return gz
    return path


def _random_columns(n, seed=1):
    rng = np.random.default_rng(seed)
    prob = rng.dirichlet(np.ones(3), n)
    prob[::7] = np.nan
    flags = np.where(np.isnan(prob[:, 0]), int(PredFlag.NO_SPECTRUM), 0)
    pred = {"prob": prob, "z": rng.uniform(0, 3, n), "z_err": rng.uniform(0, 0.1, n),
            "teff": rng.uniform(3000, 9000, n), "logg": rng.uniform(0, 5, n), "feh": rng.uniform(-2, 0.5, n)}
    reference = {"class": np.array(["GALAXY", "QSO", "STAR"], dtype=object)[rng.integers(0, 3, n)],
                 "z": rng.uniform(0, 3, n)}
    return prediction_columns(pred, reference, flags)


@pytest.mark.parametrize("compress", [False, True], ids=["streamed", "gzip-via-astropy"])
def test_every_column_kind_survives_in_chunks(tmp_path, monkeypatch, compress):
    import annotate.catalogs.fits_writer as fits_writer

    monkeypatch.setattr(fits_writer, "CHUNK_BYTES", 4096)  # many chunks, with a short last one
    n = 1000
    catalog = _wide_catalog(tmp_path / "wide.fits", n, compress)
    columns = _random_columns(n)
    out = write_fits(catalog, tmp_path / "out.fits", columns, provenance_cards("m", "0" * 64, "2dmap", "s", 0))
    with fits.open(catalog) as a, fits.open(out, checksum=False) as b:
        assert b[1].columns.names == ["CATALOGID", "FLAGS", "CLASS", "MAGS", "GOOD"] + [c.name for c in OUTPUT_COLUMNS]
        for name in ("CATALOGID", "FLAGS", "CLASS", "MAGS", "GOOD"):
            np.testing.assert_array_equal(b[1].data[name], a[1].data[name])
        assert b[1].data["FLAGS"].dtype.kind == "u"
        for name, values in columns.items():
            got = b[1].data[name]
            if values.dtype.kind in "fc":
                np.testing.assert_allclose(got, values, rtol=1e-7, equal_nan=True)
            else:
                np.testing.assert_array_equal(np.asarray(got).astype(values.dtype), values)
        np.testing.assert_array_equal(b["EXTRA"].data, a["EXTRA"].data)
        assert b[1].header["NAXIS2"] == n
    # the file is valid FITS to astropy's verifier
    with fits.open(out) as hdul:
        hdul.verify("exception")


def _annotate(catalog, out, n, **kwargs):
    return write_fits(catalog, out, _random_columns(n), provenance_cards("m", "0" * 64, "2dmap", "s", 0), **kwargs)


def test_gzip_content_under_a_plain_name_is_not_streamed(tmp_path):
    import gzip

    plain = _wide_catalog(tmp_path / "wide.fits", 200)
    disguised = tmp_path / "download.fits"  # gzip bytes, as a content-encoded download leaves them
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    out = _annotate(disguised, tmp_path / "out.fits", 200)
    with fits.open(out) as b, fits.open(plain) as a:
        np.testing.assert_array_equal(b[1].data["MAGS"], a[1].data["MAGS"])
        assert len(b[1].data) == 200


def test_variable_length_arrays_and_heap_survive(tmp_path):
    rows = [np.arange(k, dtype=np.int32) for k in range(5)]
    table = fits.BinTableHDU.from_columns([fits.Column("ID", "J", array=np.arange(5)),
                                           fits.Column("HITS", "PJ()", array=np.array(rows, dtype=object))])
    catalog = tmp_path / "vla.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(catalog)
    out = _annotate(catalog, tmp_path / "out.fits", 5)
    with fits.open(out) as hdul:
        hdul.verify("exception")
        for k in range(5):
            np.testing.assert_array_equal(hdul[1].data["HITS"][k], np.arange(k))
        assert np.isfinite(hdul[1].data["PRED_LOGG"]).sum() > 0


def test_column_metadata_follows_its_column_when_an_old_pred_column_goes(tmp_path):
    table = fits.BinTableHDU.from_columns([
        fits.Column("A", "J", array=np.arange(4)),
        fits.Column("PRED_Z", "D", array=np.zeros(4)),
        fits.Column("B", "E", array=np.arange(4.0)),
    ], name="SPALL")
    table.header.comments["TTYPE3"] = "description of B"
    table.header["TCOMM3"] = "long description of B"
    table.header["TDMAX3"] = 10.0
    table.header["ANNULUS"] = (3.0, "a user card that only looks like ours")
    table.header["ANNVERS"] = "0.0.1"
    catalog = tmp_path / "meta.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(catalog)
    out = _annotate(catalog, tmp_path / "out.fits", 4, hdu_index="SPALL")
    header = fits.getheader(out, 1)
    assert header["TTYPE2"] == "B" and header.comments["TTYPE2"] == "description of B"
    assert header["TCOMM2"] == "long description of B" and header["TDMAX2"] == 10.0
    assert "TDMAX3" not in header  # B's keywords moved with it; column 3 is now the first PRED_* one
    assert header["TTYPE3"] == OUTPUT_COLUMNS[0].name and header["TCOMM3"] == column_description(OUTPUT_COLUMNS[0])
    assert header["ANNULUS"] == 3.0
    assert header["ANNVERS"] != "0.0.1" and list(header.keys()).count("ANNVERS") == 1


def test_non_ascii_paths_in_the_provenance_are_escaped_not_refused(tmp_path):
    """FITS card values are printable ASCII: a catalog path with 'ä' and a newline is written as
    its escapes; the long value continues on CONTINUE cards."""

    catalog = _catalog(tmp_path / "cat.fits")
    odd = tmp_path / ("spéctra ä 'q'\n" + "x" * 80) / "cat.fits"
    out = write_fits(catalog, tmp_path / "out.fits", _columns(),
                     provenance_cards("m", "0" * 64, "2dmap", "s", 0, catalog=odd, model_dir=tmp_path))
    header = fits.getheader(out, 1)
    assert header["ANNCAT"] == header_text(str(odd.resolve()))
    assert "sp\\xe9ctra \\xe4 'q'\\n" in header["ANNCAT"] and header["ANNMDIR"] == str(tmp_path.resolve())
    assert header_text(7) == 7
