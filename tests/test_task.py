"""`annotate.task`: the one ingest -> predict -> fit code of single and sharded runs."""

import numpy as np

from annotate.pipeline import RunSettings
from annotate.store import STATUS
from annotate.task import WHOLE, ShardTask, annotate_task

N = 8  # rows of conftest's catalog fixture; row 3's file is missing, row 5's flux all NaN


def _task(catalog, micro_model, tmp_path, start, stop, name):
    return ShardTask(name, start, stop, str(catalog), "sdss_dr18", str(tmp_path / "spectra"), str(micro_model),
                     str(tmp_path / f"{name}.h5"))


def test_a_task_of_some_rows_gives_those_rows_of_the_whole_task(catalog, micro_model, tmp_path):
    settings = RunSettings(catalog=catalog, progress=False)
    whole = ShardTask.whole(N, catalog, tmp_path / "spectra", micro_model, tmp_path / "all.h5", settings)
    assert (whole.name, whole.start, whole.stop, whole.folder) == (WHOLE, 0, N, "")
    everything = annotate_task(whole)
    part = annotate_task(_task(catalog, micro_model, tmp_path, 2, 6, "part"))
    assert list(part.reference["object_id"]) == list(everything.reference["object_id"][2:6]) == ["1002", "1003", "1004", "1005"]
    assert list(everything.pred["status"]) == [STATUS["OK"]] * 3 + [STATUS["NO_SPECTRUM"], STATUS["OK"],
                                                                     STATUS["NO_USABLE_PIXELS"], STATUS["OK"], STATUS["OK"]]
    assert len(everything.errors) == N and everything.errors[3] and not everything.errors[0]
    assert part.errors == everything.errors[2:6] and everything.card.name == "micro-random"
    assert list(part.pred["status"]) == list(everything.pred["status"][2:6])
    assert list(part.pred["fit_class"]) == list(everything.pred["fit_class"][2:6])
    for key in ("prob", "z", "z_err", "teff", "fit_z", "fit_rchi2"):  # the same images and spectra: float32 round-off only
        np.testing.assert_allclose(part.pred[key], everything.pred[key][2:6], rtol=1e-5, atol=1e-7, equal_nan=True,
                                   err_msg=key)
    assert (everything.counts["OK"], everything.counts["NO_SPECTRUM"], everything.counts["NO_USABLE_PIXELS"]) == (6, 1, 1)
    assert (part.counts["OK"], part.counts["NO_SPECTRUM"], part.counts["NO_USABLE_PIXELS"]) == (2, 1, 1)


def test_a_task_resumes_its_store_and_logs_what_it_did(catalog, micro_model, tmp_path):
    task = _task(catalog, micro_model, tmp_path, 0, 4, "resume")
    first = annotate_task(task)
    lines = []
    again = annotate_task(task, log=lines.append)
    assert again.counts == first.counts and first.counts["OK"] == 3 and first.counts["PENDING"] == 0
    assert first.notes == [] and lines == again.notes == [
        f"{task.store}: 1 rows that could not be read before are tried again"]  # row 3's missing file
    np.testing.assert_allclose(again.pred["z"], first.pred["z"], rtol=1e-5, equal_nan=True)


def test_single_and_sharded_runs_take_a_survey_by_its_yaml_path(catalog, micro_model, tmp_path, monkeypatch):
    """A survey file the tool does not ship, named by a relative path: the tasks (here and in the
    shards) read that file, not a shipped survey by its name."""
    from astropy.io import fits

    from annotate.shards import run_sharded
    from annotate.surveys import survey_dirs, survey_reference

    shipped = (survey_dirs()[-1] / "sdss_dr18.yaml").read_text()
    (tmp_path / "mine.yaml").write_text(shipped.replace("name: sdss_dr18", "name: my_sdss", 1))
    monkeypatch.chdir(tmp_path)
    assert survey_reference("mine.yaml") == str(tmp_path / "mine.yaml") and survey_reference("desi_dr1") == "desi_dr1"
    common = dict(catalog=catalog, survey="mine.yaml", spectra_root=tmp_path / "spectra", model=micro_model,
                  scheduler="sync", progress=False)
    from annotate.pipeline import run

    single = run(RunSettings(out=tmp_path / "single.fits", **common))
    sharded = run_sharded(RunSettings(out=tmp_path / "sharded.fits", **common), 3, executor="debug", log=lambda m: None)
    assert single.n_predicted == sharded.n_predicted == 6
    with fits.open(single.output) as x, fits.open(sharded.output) as y:
        assert x[1].header["ANNSURV"] == y[1].header["ANNSURV"] == "my_sdss"
        assert list(x[1].data["PRED_FLAGS"]) == list(y[1].data["PRED_FLAGS"])


def test_a_task_pickled_before_it_had_a_scheduler_runs_its_shard_in_process():
    """A SLURM job queued by an older annotate holds a pickled ShardTask without `scheduler` and
    `n_workers`; unpickled now it must run as it would have then (in the shard's own process)."""
    import pickle

    task = ShardTask("shard-00001", 10, 20, "cat.fits", "sdss_dr18", "/data", "spectromer-tiny", "s.h5",
                     scheduler="auto", n_workers=3)
    old = {key: value for key, value in task.__dict__.items() if key not in ("scheduler", "n_workers")}
    object.__setattr__(task, "__dict__", old)
    restored = pickle.loads(pickle.dumps(task))
    assert (restored.scheduler, restored.n_workers) == ("sync", None)
    assert (restored.name, restored.start, restored.stop) == ("shard-00001", 10, 20)
