"""The astropy-free table reader agrees with astropy, or steps aside (returns None)."""

import gzip

import numpy as np
import pytest
from astropy.io import fits

from annotate.readers.rawfits import read_table


def _write(path, columns, name="COADD", header=None):
    table = fits.BinTableHDU.from_columns(columns, name=name)
    for key, value in (header or {}).items():
        table.header[key] = value
    image = fits.ImageHDU(np.arange(12.0).reshape(3, 4), name="FIRST")
    fits.HDUList([fits.PrimaryHDU(np.zeros((5, 7), np.int16)), image, table]).writeto(path)
    return path


def test_numeric_and_string_columns_match_astropy(tmp_path):
    rng = np.random.default_rng(0)
    n = 37
    columns = [
        fits.Column("flux", "E", array=rng.normal(size=n).astype(np.float32)),
        fits.Column("loglam", "D", array=np.linspace(3.5, 4.0, n)),
        fits.Column("and_mask", "J", array=rng.integers(0, 2**30, n, dtype=np.int32)),
        fits.Column("id", "K", array=rng.integers(0, 2**62, n, dtype=np.int64)),
        fits.Column("small", "I", array=rng.integers(-300, 300, n, dtype=np.int16)),
        fits.Column("byte", "B", array=rng.integers(0, 255, n, dtype=np.uint8)),
        fits.Column("vec", "3E", array=rng.normal(size=(n, 3)).astype(np.float32)),
        fits.Column("name", "8A", array=np.array([f"obj{i}" for i in range(n)])),
    ]
    path = _write(tmp_path / "t.fits", columns, header={"OBSERVER": "O''Brien's", "LONGSTR": "x" * 60})
    got = read_table(path, "COADD")
    with fits.open(path) as hdul:
        for column in columns:
            np.testing.assert_array_equal(got[column.name.lower()], hdul["COADD"].data[column.name])
    assert read_table(path, index=2).keys() == got.keys()
    assert read_table(path, "NOPE") is None


@pytest.mark.parametrize("column", [
    fits.Column("flags", "J", bzero=2**31, array=np.arange(4, dtype=np.uint32)),
    fits.Column("good", "L", array=np.array([True, False, True, True])),
    fits.Column("bits", "12X", array=np.zeros((4, 12), bool)),
    fits.Column("cube", "6E", dim="(3,2)", array=np.zeros((4, 2, 3), np.float32)),
], ids=["tzero", "logical", "bits", "tdim"])
def test_columns_it_does_not_decode_are_left_to_astropy(tmp_path, column):
    path = _write(tmp_path / "t.fits", [fits.Column("flux", "E", array=np.ones(4, np.float32)), column])
    assert read_table(path, "COADD") is None


def test_compressed_or_truncated_files_are_left_to_astropy(tmp_path):
    path = _write(tmp_path / "t.fits", [fits.Column("flux", "E", array=np.ones(400, np.float32))])
    packed = tmp_path / "t.fits.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert read_table(packed, "COADD") is None
    cut = tmp_path / "cut.fits"
    cut.write_bytes(path.read_bytes()[: 2880 * 5 + 100])
    assert read_table(cut, "COADD") is None


def test_ingesting_sdss_spec_files_does_not_import_astropy(tmp_path):
    """A worker that ingests SDSS spec files reads them without astropy (rawfits), so it never
    imports it (0.2-0.3 s in each new worker process); a file the fast path cannot read still
    goes to astropy, which is then imported where it is needed."""
    import subprocess
    import sys

    from annotate.simulate.writer import write_sdss_spec

    loglam = 3.6 + 1e-4 * np.arange(300)
    flux = np.linspace(1.0, 2.0, 300).astype(np.float32)
    path = write_sdss_spec(tmp_path / "spec.fits", loglam, flux, np.ones(300, np.float32), np.zeros(300, bool),
                           {"SPECOBJID": 1, "CLASS": "GALAXY", "Z": 0.1}, {})
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    code = ("import sys\n"
            "from annotate.grid import WavelengthGrid\n"
            "from annotate.ingest import ingest_rows\n"
            f"rows = ingest_rows({{'start': 0, 'paths': [{str(path)!r}], 'refused': [False], "
            "'grid': WavelengthGrid().to_dict(), 'reader': 'sdss_spec'})\n"
            "print(int(rows['status'][0]), 'astropy' in sys.modules)\n"
            f"rows = ingest_rows({{'start': 0, 'paths': [{str(tmp_path / 'broken.fits')!r}], 'refused': [False], "
            "'grid': WavelengthGrid().to_dict(), 'reader': 'sdss_spec'})\n"
            "print(int(rows['status'][0]), 'astropy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    from annotate.store import STATUS

    assert out[0] == f"{STATUS['OK']} False"
    assert out[1].split()[1] == "True" and int(out[1].split()[0]) != STATUS["OK"]
