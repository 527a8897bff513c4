"""Catalogs and folders that are not what a command expects get one line that says what the thing
is and what was expected (each was a hang, a traceback or a misleading message before)."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
from astropy.io import fits

from annotate.cli import main
from annotate.flags import PredFlag

from helpers import Case, _columns, _hashes


def _one_error_line(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_catalog_that_is_a_fifo_is_refused_at_once_not_waited_on(tmp_path, micro_model):
    case = Case(tmp_path, micro_model).write()
    fifo = tmp_path / "cat.fits"
    os.mkfifo(fifo)
    argv = case.argv()
    argv[argv.index("--catalog") + 1] = str(fifo)
    done = subprocess.run([sys.executable, "-m", "annotate.cli", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is a pipe or FIFO" in done.stderr, done.stderr


def test_catalog_that_is_a_folder_says_so(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    argv = case.argv()
    argv[argv.index("--catalog") + 1] = str(case.spectra)
    _one_error_line(capsys, main(argv), "is a folder, not a catalog file")


def test_two_columns_named_alike_are_one_line(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    frame = pd.DataFrame(_columns())
    frame["z"] = frame["Z"]
    catalog = case.inputs / "cat.h5"
    frame.to_hdf(catalog, key="catalog", format="table")
    argv = case.argv("--out", str(case.out_dir / "cat.annotated.h5"))
    argv[argv.index("--catalog") + 1] = str(catalog)
    _one_error_line(capsys, main(argv), "two columns named 'Z' and 'z'")


def test_half_written_pandas_table_is_one_line(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    catalog = case.inputs / "cat.h5"
    pd.DataFrame(_columns()).to_hdf(catalog, key="catalog", format="table")
    with h5py.File(catalog, "r+") as h5:  # what an interrupted to_hdf leaves: the group without its table
        del h5["catalog/table"]
    before = _hashes(case.inputs)
    argv = case.argv("--out", str(case.out_dir / "cat.annotated.h5"))
    argv[argv.index("--catalog") + 1] = str(catalog)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(catalog) in err, err
    assert _hashes(case.inputs) == before


def test_catalog_whose_table_is_in_another_hdu_names_the_hdu_it_read(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    with fits.open(case.catalog) as hdul:
        table = hdul[1].copy()
    other = fits.BinTableHDU.from_columns([fits.Column("OTHER", "E", array=np.ones(3, np.float32))])
    fits.HDUList([fits.PrimaryHDU(), other, table]).writeto(case.catalog, overwrite=True)
    _one_error_line(capsys, main(case.argv()), "lacks columns", "HDU 1")


def test_status_on_a_file_says_it_is_a_file(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    assert main(case.argv("--shard-size", "2")) == 0
    _one_error_line(capsys, main(["status", str(case.out)]), "is a file, not a run folder", f"{case.out.name}.run")


def test_refused_spectrum_path_is_named_in_its_reason(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    columns = _columns()
    columns["RUN2D"] = np.array(["../../../../../../outside"] + list(columns["RUN2D"][1:]))
    from annotate.simulate.writer import write_catalog

    write_catalog(case.catalog, columns)
    assert main(case.argv()) == 3
    out = capsys.readouterr().out
    assert "leads outside the spectra root" in out and "outside" in out and "None" not in out
    from astropy.table import Table

    assert Table.read(case.out)["PRED_FLAGS"][0] & PredFlag.PATH_REFUSED


def test_truncated_gzip_catalog_says_it_is_truncated(tmp_path, micro_model, capsys):
    import gzip

    case = Case(tmp_path, micro_model).write()
    packed = gzip.compress(case.catalog.read_bytes())
    catalog = case.inputs / "cat.fits.gz"
    catalog.write_bytes(packed[: len(packed) // 2])
    argv = case.argv()
    argv[argv.index("--catalog") + 1] = str(catalog)
    _one_error_line(capsys, main(argv), "truncated or damaged gzip file")
