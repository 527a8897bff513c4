"""`annotate run` end to end on a small catalog with a random-init model (no template library)."""

import hashlib

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from annotate.cli import main
from annotate.errors import CatalogError
from annotate.flags import PredFlag
from annotate.pipeline import RunSettings, run
from annotate.simulate.writer import write_catalog

N = 8


def test_run_flags_bad_rows_and_keeps_input(catalog, micro_model, tmp_path):
    before = hashlib.sha256(catalog.read_bytes()).hexdigest()
    result = run(RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model,
                             scheduler="sync", progress=False))
    assert hashlib.sha256(catalog.read_bytes()).hexdigest() == before
    assert result.n_rows == N and result.n_predicted == N - 2
    table = Table.read(result.output, hdu=1, mask_invalid=False)
    assert len(table) == N
    assert list(table["SPECOBJID"]) == list(range(1000, 1000 + N))
    flags = np.asarray(table["PRED_FLAGS"])
    assert flags[3] & PredFlag.NO_SPECTRUM and np.isnan(table["PRED_Z"][3])
    assert flags[5] & PredFlag.NO_USABLE_PIXELS and table["PRED_CLASS"][5] == ""
    assert flags[6] & PredFlag.NO_REFERENCE_Z and flags[6] & PredFlag.NOT_SELECTED
    assert flags[7] & PredFlag.UNKNOWN_REFERENCE_CLASS
    assert flags[0] & 0xFF == 0  # no input bit (bits 8-11 are the fit's doubts about the science)
    ok = [0, 1, 2, 4, 6, 7]
    probs = np.stack([table[f"PRED_PROB_{c}"][ok] for c in ("GALAXY", "QSO", "STAR")], axis=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(table["PRED_Z"][ok]) > -1)
    assert np.all(np.asarray(table["PRED_Z_ERR"][ok]) > 0)
    assert not table["PRED_Z_CATASTROPHIC"][6]  # no usable reference z: never catastrophic
    assert str(table["PRED_TEFF"].unit) == "K"
    with fits.open(result.output) as hdul:
        assert hdul[1].header["ANNNFAIL"] == 2
        assert hdul[1].header["ANNMODEL"] == "micro-random"
        assert "spikes=0.5/25" in hdul[1].header["ANNFITS"]   # SDSS spectra: the spike rule on
    assert result.summary["rows_compared"] == 4  # rows 0, 1, 2, 4


def test_auto_scheduler_decides_once_per_run_by_its_rows(catalog, micro_model, tmp_path, monkeypatch):
    import annotate.parallel

    chosen = []
    real = annotate.parallel.shared_cluster

    def recording(scheduler, n_workers=None):
        chosen.append(scheduler)
        return real(scheduler, n_workers)

    def no_cluster(n_workers):
        raise AssertionError("a small run started worker processes")

    monkeypatch.setattr(annotate.parallel, "shared_cluster", recording)
    monkeypatch.setattr(annotate.parallel, "_local_cluster", no_cluster)
    settings = RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model, progress=False)
    assert settings.scheduler == "auto"
    assert run(settings).n_predicted == N - 2  # 8 rows: one task, in this process
    monkeypatch.setattr(annotate.parallel, "TASK_ROWS", 4)  # as if the catalog were two tasks long
    run(RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model, progress=False,
                    out=tmp_path / "few.fits", store=tmp_path / "few.h5", n_workers=2))
    monkeypatch.setattr(annotate.parallel, "AUTO_FORKED_TASKS", 1)  # as if it were large
    run(RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model, progress=False,
                    out=tmp_path / "large.fits", store=tmp_path / "large.h5", n_workers=2))
    assert chosen == ["sync", "processes", "distributed"]


def test_rerun_resumes_from_the_store(catalog, micro_model, tmp_path):
    settings = RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model,
                           scheduler="sync", progress=False)
    first = Table.read(run(settings).output, hdu=1, mask_invalid=False)
    second = Table.read(run(settings).output, hdu=1, mask_invalid=False)
    np.testing.assert_array_equal(first["PRED_Z"], second["PRED_Z"])


def test_cli_exit_code_says_rows_were_missed(catalog, micro_model, tmp_path, capsys):
    code = main(["run", "--catalog", str(catalog), "--spectra-root", str(tmp_path / "spectra"), "--model",
                 str(micro_model), "--scheduler", "sync", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 3
    assert "2 of 8 rows got no prediction" in captured.err
    assert "cat.annotated.fits" in captured.out


def test_path_outside_root_is_refused(tmp_path, micro_model):
    columns = {"SPECOBJID": np.array([1]), "CLASS": np.array(["STAR"]), "Z": np.array([0.0]),
               "RUN2D": np.array(["../../../../etc"]), "PLATE": np.array([1]), "MJD": np.array([1]),
               "FIBERID": np.array([1])}
    catalog = write_catalog(tmp_path / "evil.fits", columns)
    (tmp_path / "spectra").mkdir()
    result = run(RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model,
                             scheduler="sync", progress=False))
    table = Table.read(result.output, hdu=1, mask_invalid=False)
    assert table["PRED_FLAGS"][0] & PredFlag.PATH_REFUSED


def test_catalog_missing_columns_is_one_line(tmp_path, micro_model, capsys):
    catalog = write_catalog(tmp_path / "bad.fits", {"CLASS": np.array(["STAR"]), "PLATE": np.array([1])})
    code = main(["run", "--catalog", str(catalog), "--model", str(micro_model), "--scheduler", "sync"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("annotate: error: catalog lacks columns") and "SPECOBJID" in err and "Z" in err
    assert len(err.splitlines()) == 1


def test_empty_catalog(tmp_path, micro_model):
    catalog = write_catalog(tmp_path / "empty.fits", {
        "SPECOBJID": np.array([], np.int64), "CLASS": np.array([], "U6"), "Z": np.array([]),
        "RUN2D": np.array([], "U6"), "PLATE": np.array([], int), "MJD": np.array([], int), "FIBERID": np.array([], int)})
    with pytest.raises(CatalogError, match="no rows"):
        run(RunSettings(catalog=catalog, model=micro_model, scheduler="sync", progress=False))


def test_the_fit_provenance_names_the_bases_by_the_digest_the_fit_loads_them_with():
    """ANNTSHA, the template set's sha256 in the output header, is taken from the bases file
    without loading it in the run's own process (the fit runs in the workers); it is the digest
    the loaded basis set carries. With the fit off there is none."""
    from annotate.fit.bases import load_bases
    from annotate.fit.fitter import FitSettings
    from annotate.pipeline import fit_provenance

    provenance = fit_provenance(True)
    assert provenance == {"settings": FitSettings().describe(), "sha256": load_bases().sha256}
    assert len(provenance["sha256"]) == 64 and fit_provenance(False) is None


def test_a_run_on_forked_workers_writes_what_a_run_in_one_process_writes(tmp_path, micro_model):
    """300 rows (two tasks of ingest and fit) with `--scheduler processes` and `--scheduler sync`:
    the same annotated columns, to the bit (both fit with BLAS on one thread, in the same batches)."""
    from helpers import Case, _columns

    from annotate.parallel import can_fork

    if not can_fork():
        pytest.skip("workers are forked on Linux only")
    n = 300
    case = Case(tmp_path, micro_model).write(columns={k: np.resize(v, n) for k, v in _columns().items()} | {
        "SPECOBJID": np.arange(2000, 2000 + n), "CATALOGID": np.arange(n) + 5_000_000})
    outputs = {}
    for scheduler in ("processes", "sync"):
        out = case.out_dir / f"{scheduler}.fits"
        assert main(case.argv("--scheduler", scheduler, "--workers", "2", "--out", str(out),
                              "--store", str(case.out_dir / f"{scheduler}.h5"))) == 0
        outputs[scheduler] = fits.getdata(out, 1)
    assert (outputs["sync"]["PRED_CLASS"] != "").all()
    for name in outputs["sync"].columns.names:
        if name.startswith("PRED_"):
            a, b = outputs["processes"][name], outputs["sync"][name]
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
