"""Outputs never destroy what they must not: an output naming an input, the store or the model is
refused, so is one that is not a regular file; two runs on one store are refused in one line;
SIGTERM (scancel, the time limit) ends a run like Ctrl-C; a rerun takes over the lock and removes
the temporary files a killed run left, and says so. Inputs are hashed before and after."""

import fcntl
import os
import signal

import numpy as np

from annotate.cli import main

from helpers import Case, _columns, _hashes, _interrupt_a_run


def _refused(case, capsys, *extra, match: str):
    before = _hashes(case.root)
    assert main(case.argv(*extra)) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _hashes(case.root) == before


def test_out_naming_the_spectra_store_is_refused_and_the_store_kept(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    store = case.out_dir / "store.h5"
    assert main(case.argv("--store", str(store), "--out", str(case.out_dir / "first.fits"))) == 0
    _refused(case, capsys, "--store", str(store), "--out", str(store), match="is the spectra store")


def test_out_or_store_inside_the_model_is_refused(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    _refused(case, capsys, "--out", str(micro_model / "config.json"), match="would overwrite the model")
    _refused(case, capsys, "--store", str(micro_model / "model.safetensors"), match="would overwrite the model")


def test_store_naming_the_catalog_is_refused(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    _refused(case, capsys, "--store", str(case.catalog), match="would overwrite the input catalog")


def test_out_that_is_not_a_regular_file_is_refused(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    fifo = case.out_dir / "pipe.fits"
    os.mkfifo(fifo)
    _refused(case, capsys, "--out", str(fifo), match="not a regular file")
    assert fifo.is_fifo()
    if os.path.exists("/dev/null"):
        _refused(case, capsys, "--out", "/dev/null", match="not a regular file")
        assert not os.path.isfile("/dev/null")
    (case.out_dir / "folder.fits").mkdir()
    _refused(case, capsys, "--out", str(case.out_dir / "folder.fits"), match="is a folder")


def test_store_folder_that_does_not_exist_is_one_line(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    _refused(case, capsys, "--store", str(tmp_path / "nowhere" / "s.h5"), match="folder does not exist")


def test_render_onto_its_own_store_is_refused(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    store = case.out_dir / "store.h5"
    assert main(case.argv("--store", str(store))) == 0
    before = _hashes(case.root)
    assert main(["render", "--store", str(store), "--out", str(store), "--scheduler", "sync", "--no-progress"]) == 2
    assert "is the spectra store it renders" in capsys.readouterr().err
    assert _hashes(case.root) == before


def test_second_run_on_the_same_store_is_refused_in_one_line(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    store = case.out_dir / "shared.h5"
    lock = store.with_name(f".{store.name}.lock")
    with open(lock, "a+") as held:  # another run, with another --out, uses the store
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 1 on elsewhere\n")
        held.flush()
        assert main(case.argv("--store", str(store))) == 2
        err = capsys.readouterr().err
        assert "is using the spectra store" in err and "pid 1 on elsewhere" in err
        fcntl.flock(held, fcntl.LOCK_UN)
    assert main(case.argv("--store", str(store))) == 0


def test_rerun_takes_over_a_dead_runs_lock_and_removes_its_temporary_file(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    lock = case.out.with_name(f".{case.out.name}.lock")
    lock.write_text("pid 99999999 on a-node\n")  # written by a run that was killed: not held
    stale = case.out.with_name(f".{case.out.name}.12345.tmp")
    stale.write_bytes(b"half a catalog")
    assert main(case.argv()) == 0
    out = capsys.readouterr().out
    assert "took over the lock" in out and "pid 99999999 on a-node" in out
    assert f"removed {stale}" in out
    assert not stale.exists() and not lock.exists() and case.out.is_file()


def test_sigterm_to_a_running_process_exits_143_and_leaves_nothing(tmp_path, micro_model):
    """A real SIGTERM while the run reads spectra: exit 143, one line, no output, no lock. Where
    the signal lands is a race (the run may have finished), so a second try is allowed."""
    n = 300
    case = Case(tmp_path, micro_model).write(columns={k: np.resize(v, n) for k, v in _columns().items()} | {
        "SPECOBJID": np.arange(2000, 2000 + n), "CATALOGID": np.arange(n) + 5_000_000})
    before = _hashes(case.inputs)
    outcomes = []
    for _ in range(2):
        code, err = _interrupt_a_run(case, signal.SIGTERM)
        outcomes.append((code, err.strip().splitlines()[-1:]))
        if code == 143:
            break
        for path in case.out_dir.iterdir():
            path.unlink()
    assert outcomes[-1] == (143, ["annotate: terminated (SIGTERM); outputs were not replaced (rerun to resume)"]), \
        outcomes
    assert not case.out.exists()
    assert not [p for p in case.out_dir.iterdir() if p.name.endswith((".lock", ".tmp"))]
    assert _hashes(case.inputs) == before


def test_sharded_run_refuses_an_output_inside_the_model_or_not_a_regular_file(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    _refused(case, capsys, "--shard-size", "2", "--out", str(micro_model / "config.json"),
             match="would overwrite the model")
    (case.out_dir / "folder.fits").mkdir()
    _refused(case, capsys, "--shard-size", "2", "--out", str(case.out_dir / "folder.fits"), match="is a folder")


def test_an_interrupt_a_finaliser_swallows_still_stops_the_output(tmp_path, micro_model, capsys, monkeypatch):
    """Ctrl-C landing inside a finaliser (a file closing) is printed as 'Exception ignored' by
    Python and the run goes on; the recorded signal still stops the output from replacing anything."""
    import annotate.task

    case = Case(tmp_path, micro_model).write()
    before = _hashes(case.inputs)
    predict = annotate.task.fit_predictions

    class Closing:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # the KeyboardInterrupt raised here is swallowed

    def interrupted_inside_a_finaliser(*args, **kwargs):
        closing = Closing()
        del closing
        return predict(*args, **kwargs)

    monkeypatch.setattr(annotate.task, "fit_predictions", interrupted_inside_a_finaliser)
    # without the recorded signal the run would go on and exit 0 (pytest reports the swallowed
    # exception as a PytestUnraisableExceptionWarning instead of Python's "Exception ignored")
    assert main(case.argv()) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "annotate: interrupted; outputs were not replaced (rerun to resume)"
    assert not case.out.exists() and _hashes(case.inputs) == before
    monkeypatch.setattr(annotate.task, "fit_predictions", predict)
    assert main(case.argv()) == 0 and case.out.is_file()  # the next run is not haunted by it
