"""HDF5 catalogs: pandas/PyTables and astropy/h5py conventions read, annotated and written back
(single and sharded runs), read back by pandas and astropy as users do; the input untouched."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from annotate.catalogio import HDF5Catalog
from annotate.errors import CatalogError
from annotate.pipeline import RunSettings, run
from annotate.shards import run_sharded
from annotate.writeback import OUTPUT_COLUMNS

from test_pipeline import N, catalog, micro_model  # noqa: F401 - fixtures: 8 rows, 2 broken

PRED = [c.name for c in OUTPUT_COLUMNS]


def _as_hdf5(fits_catalog, path, convention, pandas_format="table"):
    table = Table.read(fits_catalog)
    if convention == "astropy":
        table["Z"].description = "pipeline redshift"
        table.meta["SURVEY"] = "dr18-test"
        table.write(path, path="catalog", serialize_meta=True)
    else:
        frame = table.to_pandas()
        for name in frame.columns:  # FITS text arrives as bytes; pandas users hold str
            if frame[name].dtype == object:
                frame[name] = frame[name].str.decode("ascii")
        frame.to_hdf(path, key="catalog", format=pandas_format)
    return path


def _read_back(path, convention):
    if convention == "astropy":
        return Table.read(path, path="catalog")
    return Table.from_pandas(pd.read_hdf(path, "catalog"))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


CASES = [("astropy", "table"), ("pandas", "table"), ("pandas", "fixed")]


@pytest.mark.parametrize("convention,pandas_format", CASES)
def test_hdf5_catalog_round_trip_matches_the_fits_run(catalog, micro_model, tmp_path, convention,  # noqa: F811
                                                      pandas_format):
    h5 = _as_hdf5(catalog, tmp_path / "cat.h5", convention, pandas_format)
    before = _sha(h5)
    settings = dict(spectra_root=tmp_path / "spectra", model=micro_model, scheduler="sync", progress=False)
    reference = run(RunSettings(catalog=catalog, out=tmp_path / "ref.fits", **settings))
    result = run(RunSettings(catalog=h5, **settings))
    assert result.output == tmp_path / "cat.annotated.h5" and _sha(h5) == before
    assert result.n_predicted == reference.n_predicted == N - 2
    out = _read_back(result.output, convention)
    with fits.open(reference.output) as hdul:
        expected = hdul[1].data
        assert list(out["SPECOBJID"]) == list(expected["SPECOBJID"])  # every row once, in input order
        assert list(out["CLASS"]) == [c.strip() for c in expected["CLASS"]]
        assert [str(c) for c in out["PRED_CLASS"]] == [c.strip() for c in expected["PRED_CLASS"]]
        for name in ("PRED_Z", "PRED_PROB_STAR", "PRED_TEFF", "PRED_Z_ERR"):
            np.testing.assert_array_equal(np.asarray(out[name], float), np.asarray(expected[name], float), err_msg=name)
        np.testing.assert_array_equal(np.asarray(out["PRED_FLAGS"]), expected["PRED_FLAGS"])
        np.testing.assert_array_equal(np.asarray(out["PRED_Z_CATASTROPHIC"], bool), expected["PRED_Z_CATASTROPHIC"])
    if convention == "astropy":
        assert out["PRED_TEFF"].unit == "K" and out["PRED_Z"].description == "predicted redshift"
        assert out["Z"].description == "pipeline redshift" and out.meta["SURVEY"] == "dr18-test"
        assert out.meta["ANNMODEL"] == "micro-random" and out.meta["ANNNFAIL"] == 2
    else:
        with pd.HDFStore(result.output, "r") as store:
            provenance = json.loads(store.get_storer("catalog").attrs.annotate_provenance)
        assert provenance["ANNMODEL"] == "micro-random" and provenance["ANNNFAIL"] == 2

    # the cross-check reads the annotated HDF5 catalog and its provenance
    from annotate.crosscheck import crosscheck

    check = crosscheck(result.output, out_dir=tmp_path / "check", store=result.store)
    assert check.metrics["survey"] == "sdss_dr18" and check.metrics["compared"] == result.summary["rows_compared"]

    # annotating the annotated catalog replaces the PRED_* columns instead of adding more
    again = run(RunSettings(catalog=result.output, out=tmp_path / "again.h5", **settings))
    names = _read_back(again.output, convention).colnames
    assert [n for n in names if n.startswith("PRED_")] == PRED and len(names) == len(out.colnames)


@pytest.mark.parametrize("convention", ["astropy", "pandas"])
def test_sharded_run_on_an_hdf5_catalog_equals_the_single_run(catalog, micro_model, tmp_path, convention):  # noqa: F811
    h5 = _as_hdf5(catalog, tmp_path / "cat.h5", convention)
    settings = dict(catalog=h5, spectra_root=tmp_path / "spectra", model=micro_model, scheduler="sync", progress=False)
    single = run(RunSettings(out=tmp_path / "single.h5", **settings))
    sharded = run_sharded(RunSettings(out=tmp_path / "sharded.h5", **settings), 3, log=lambda m: None)
    a, b = _read_back(single.output, convention), _read_back(sharded.output, convention)
    for name in PRED:
        assert list(a[name]) == list(b[name]) or np.allclose(np.asarray(a[name], float), np.asarray(b[name], float),
                                                             equal_nan=True), name
    assert sharded.summary["rows_compared"] == single.summary["rows_compared"]


def test_a_file_with_two_tables_is_refused_naming_them(tmp_path):
    frame = pd.DataFrame({"obsid": [1, 2], "z": [0.1, 0.2]})
    frame.to_hdf(tmp_path / "two.h5", key="general", format="table")
    frame.to_hdf(tmp_path / "two.h5", key="stellar", format="table")
    with pytest.raises(CatalogError, match=r"exactly one table; found /general \(pandas\), /stellar \(pandas\)"):
        HDF5Catalog(tmp_path / "two.h5")


def test_reading_a_slice_reads_those_rows(catalog, tmp_path):  # noqa: F811
    for convention in ("astropy", "pandas"):
        table = HDF5Catalog(_as_hdf5(catalog, tmp_path / f"{convention}.h5", convention))
        assert (table.convention, table.n_rows) == (convention, N)
        part = table.read(["SPECOBJID", "CLASS"], slice(2, 5))
        assert part["SPECOBJID"].tolist() == [1002, 1003, 1004] and part["CLASS"].tolist() == ["STAR", "GALAXY", "STAR"]


def test_a_pandas_file_whose_attributes_would_run_code_is_refused(tmp_path):
    """PyTables unpickles attributes when pandas opens a file: one holding a pickled callable is
    refused before pandas sees it (the pandas layout attributes themselves are plain values)."""
    import pickle

    import h5py

    frame = pd.DataFrame({"obsid": [1, 2], "z": [0.1, 0.2]})
    frame.to_hdf(tmp_path / "cat.h5", key="catalog", format="table")
    assert HDF5Catalog(tmp_path / "cat.h5").n_rows == 2  # the real pandas attributes pass
    with h5py.File(tmp_path / "cat.h5", "a") as h5:
        h5["catalog"].attrs["info"] = np.bytes_(pickle.dumps(print, protocol=0))
    with pytest.raises(CatalogError, match=r"/catalog:info holds a pickled object"):
        HDF5Catalog(tmp_path / "cat.h5")
