"""HDF5 catalogs: pandas/PyTables and astropy/h5py conventions read, annotated and written back
(single and sharded runs), read back by pandas and astropy as users do; the input untouched."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from annotate.catalogs.hdf5 import open_hdf5
from annotate.errors import CatalogError
from annotate.pipeline import RunSettings, run
from annotate.shards import run_sharded
from annotate.columns import OUTPUT_COLUMNS

N = 8  # rows of conftest's catalog fixture

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
        assert out["PRED_TEFF"].unit == "K" and out["PRED_Z"].description == "final redshift (template fit)"
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
        open_hdf5(tmp_path / "two.h5")


def test_reading_a_slice_reads_those_rows(catalog, tmp_path):  # noqa: F811
    for convention in ("astropy", "pandas"):
        table = open_hdf5(_as_hdf5(catalog, tmp_path / f"{convention}.h5", convention))
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
    assert open_hdf5(tmp_path / "cat.h5").n_rows == 2  # the real pandas attributes pass
    with h5py.File(tmp_path / "cat.h5", "a") as h5:
        h5["catalog"].attrs["info"] = np.bytes_(pickle.dumps(print, protocol=0))
    with pytest.raises(CatalogError, match=r"/catalog:info holds a pickled object"):
        open_hdf5(tmp_path / "cat.h5")


def _predictions(n):
    """PRED_* columns of n rows, in their output types."""
    columns = {}
    for spec in OUTPUT_COLUMNS:
        if spec.fits_format.endswith("A"):
            columns[spec.name] = np.array(["GALAXY", "STAR", "QSO"] * n)[:n]
        elif spec.fits_format == "L":
            columns[spec.name] = np.arange(n) % 2 == 0
        elif spec.fits_format == "J":
            columns[spec.name] = np.arange(n, dtype=np.int32)
        else:
            columns[spec.name] = np.linspace(0.0, 1.0, n).astype(np.float32 if spec.fits_format == "E" else np.float64)
    return columns


PROVENANCE = {"ANNMODEL": ("unit-test", "model")}


def test_an_astropy_table_in_a_nested_group_is_written_back_in_place(tmp_path):
    import h5py

    table = Table({"OBJID": np.arange(5), "Z": np.linspace(0, 1, 5)})
    table.meta["SURVEY"] = "nested"
    table.write(tmp_path / "cat.h5", path="data/cat", serialize_meta=True)
    with h5py.File(tmp_path / "cat.h5", "a") as h5:
        h5["data/weights"] = np.arange(3.0)  # a sibling of the table inside the same group
        h5["data"].attrs["release"] = "dr18"
    source = open_hdf5(tmp_path / "cat.h5")
    assert (source.convention, source.key) == ("astropy", "data/cat")
    source.write_annotated(tmp_path / "out.h5", _predictions(5), PROVENANCE)
    out = Table.read(tmp_path / "out.h5", path="data/cat")
    assert out["OBJID"].tolist() == list(range(5)) and out["PRED_FLAGS"].tolist() == list(range(5))
    assert out.meta["SURVEY"] == "nested" and out.meta["ANNMODEL"] == "unit-test"
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        assert h5["data/weights"][()].tolist() == [0.0, 1.0, 2.0] and h5["data"].attrs["release"] == "dr18"


def test_pandas_write_back_keeps_attributes_other_objects_and_compression(tmp_path, monkeypatch):
    """User attributes of the table's storer, the file's other (non-table) objects and the table's
    compression survive; a text index whose longest value sits in a later chunk fits."""
    import h5py

    import annotate.catalogs.hdf5 as hdf5

    monkeypatch.setattr(hdf5, "CHUNK_ROWS", 4)
    index = ["a", "b", "c", "d", "a-much-longer-object-name", "e", "f"]
    frame = pd.DataFrame({"Z": np.linspace(0, 1, 7), "SURVEY": ["sdss"] * 7}, index=index)
    with pd.HDFStore(tmp_path / "cat.h5", "w", complib="zlib", complevel=5) as store:
        store.put("catalog", frame, format="table", data_columns=["SURVEY"], track_times=False)
        store.get_storer("catalog").attrs.release = "DR18"
    with h5py.File(tmp_path / "cat.h5", "a") as h5:
        h5.create_dataset("raw/wavelength", data=np.arange(10.0), compression="gzip")
        h5.attrs["creator"] = "pipeline v5"
    before = _sha(tmp_path / "cat.h5")
    catalog = open_hdf5(tmp_path / "cat.h5")
    assert catalog.key == "/catalog"
    catalog.write_annotated(tmp_path / "out.h5", _predictions(7), PROVENANCE)
    assert _sha(tmp_path / "cat.h5") == before

    out = pd.read_hdf(tmp_path / "out.h5", "catalog")
    assert list(out.index) == index and out["PRED_FLAGS"].tolist() == list(range(7))
    assert out[out.SURVEY == "sdss"].shape[0] == 7
    with pd.HDFStore(tmp_path / "out.h5", "r") as store:
        attrs = store.get_storer("catalog").attrs
        assert attrs.release == "DR18" and json.loads(attrs.annotate_provenance)["ANNMODEL"] == "unit-test"
        leaf = next(iter(store.get_storer("catalog").group._f_walknodes("Leaf")))
        assert (leaf.filters.complib, leaf.filters.complevel) == ("zlib", 5)
    with h5py.File(tmp_path / "out.h5", "r") as h5:
        assert h5["raw/wavelength"][()].tolist() == list(np.arange(10.0))
        assert h5["raw/wavelength"].compression == "gzip" and h5.attrs["creator"] == "pipeline v5"


@pytest.mark.parametrize("convention", ["astropy", "pandas"])
def test_a_full_disk_while_writing_back_is_one_clear_error(tmp_path, convention):
    """The output may grow to 64 kB only (RLIMIT_FSIZE, as a full disk would stop it): an
    OutputError naming the output, no file under the final name, no temporary left."""
    import subprocess
    import sys
    import textwrap

    n = 20_000
    table = Table({"OBJID": np.arange(n), "Z": np.linspace(0, 1, n)})
    if convention == "astropy":
        table.write(tmp_path / "cat.h5", path="catalog", serialize_meta=True)
    else:
        table.to_pandas().to_hdf(tmp_path / "cat.h5", key="catalog", format="table")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_catalogs import _predictions, PROVENANCE
        from annotate.catalogs.hdf5 import open_hdf5
        from annotate.errors import OutputError
        catalog = open_hdf5({str(tmp_path / "cat.h5")!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
        try:
            catalog.write_annotated({str(tmp_path / "out.h5")!r}, _predictions({n}), PROVENANCE)
        except OutputError as exc:
            print(exc, flush=True)
            import annotate.catalogs.hdf5, os
            assert annotate.catalogs.hdf5.HDF5_WRITE_FAILED
            os._exit(2)  # as the annotate command ends after a failed HDF5 write (cli.entry)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout.startswith(f"cannot write {tmp_path / 'out.h5'}: ") and len(done.stdout.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.h5"]


def test_no_room_for_the_output_is_refused_before_writing(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    import annotate.catalogs.registry as registry
    from annotate.errors import OutputError

    Table({"OBJID": np.arange(1000)}).write(tmp_path / "cat.h5", path="catalog")
    monkeypatch.setattr(registry.os, "statvfs", lambda path: SimpleNamespace(f_bavail=10, f_frsize=4096))
    with pytest.raises(OutputError, match=rf"not enough free space in {tmp_path} .* 0 MB free"):
        open_hdf5(tmp_path / "cat.h5").write_annotated(tmp_path / "out.h5", _predictions(1000), PROVENANCE)
    assert os.listdir(tmp_path) == ["cat.h5"]


def test_one_column_is_read_in_slices_in_every_format(tmp_path, monkeypatch):
    """read_column (the merge's id column) in slices of 3 rows: HDF5 both conventions, FITS plain
    (one mapped slice at a time) and gzip-compressed (read once)."""
    import gzip

    import annotate.catalogs.hdf5 as hdf5
    from annotate.catalogs import read_column

    monkeypatch.setattr(hdf5, "CHUNK_ROWS", 3)
    table = Table({"OBJID": np.arange(10, 20), "NAME": np.array([f"n{i}" for i in range(10)])})
    table.write(tmp_path / "astropy.h5", path="cat")
    table.to_pandas().to_hdf(tmp_path / "table.h5", key="cat", format="table")
    table.to_pandas().to_hdf(tmp_path / "fixed.h5", key="cat", format="fixed")
    table.write(tmp_path / "cat.fits")
    (tmp_path / "cat.fits.gz").write_bytes(gzip.compress((tmp_path / "cat.fits").read_bytes()))
    for name in ("astropy.h5", "table.h5", "fixed.h5", "cat.fits", "cat.fits.gz"):
        assert read_column(tmp_path / name, "OBJID", chunk_rows=3).tolist() == list(range(10, 20)), name
    assert open_hdf5(tmp_path / "table.h5").read_column("NAME").tolist() == [f"n{i}" for i in range(10)]
