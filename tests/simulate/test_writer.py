"""`annotate.simulate.writer`: survey files as the readers find them."""

import numpy as np
from astropy.io import fits

from annotate.readers import read_spectrum
from annotate.simulate.writer import write_sdss_spec, write_sdss_specs


def test_files_written_in_a_batch_hold_each_files_own_values(tmp_path):
    rng = np.random.default_rng(3)
    m, n = 4, 500
    loglam = 3.6 + 1e-4 * np.arange(n)
    flux = rng.normal(10.0, 1.0, (m, n)).astype(np.float32)
    ivar = rng.uniform(0.5, 2.0, (m, n)).astype(np.float32)
    mask = rng.random((m, n)) < 0.05
    rows = {"SPECOBJID": np.arange(7, 7 + m), "CLASS": np.array(["QSO", "GALAXY", "STAR", "QSO"]),
            "Z": np.array([1.5, 0.1, 0.0, 2.5])}
    headers = [{"FIELD": 100 + i, f"EXTRA{i}": i} for i in range(m)]  # a card of one file stays in that file
    batch = write_sdss_specs([tmp_path / f"b{i}.fits" for i in range(m)], loglam, flux, ivar, mask, rows, headers)
    for i, path in enumerate(batch):
        alone = write_sdss_spec(tmp_path / f"s{i}.fits", loglam, flux[i], ivar[i], mask[i],
                                {k: v[i] for k, v in rows.items()}, {"FIELD": 100 + i})
        with fits.open(path) as a, fits.open(alone) as b:
            for column in ("flux", "loglam", "ivar", "and_mask", "or_mask", "wdisp"):
                assert np.array_equal(a["COADD"].data[column], b["COADD"].data[column]), column
            assert a[0].header["FIELD"] == b[0].header["FIELD"] == 100 + i
            assert [k for k in a[0].header if k.startswith("EXTRA")] == [f"EXTRA{i}"]
            assert np.array_equal(a["COADD"].data["loglam"], loglam.astype(np.float32))
            assert np.all(a["COADD"].data["wdisp"] == 1.0) and np.all(a["COADD"].data["sky"] == 0.0)
            assert [a["SPALL"].data[k][0] for k in rows] == [b["SPALL"].data[k][0] for k in rows] == \
                [7 + i, rows["CLASS"][i], rows["Z"][i]]
        spectrum = read_spectrum(path)
        assert np.array_equal(spectrum.bad, mask[i]) and np.array_equal(spectrum.flux, flux[i])
        assert (spectrum.labels["CLASS"], spectrum.labels["Z"]) == (rows["CLASS"][i], rows["Z"][i])
