"""`annotate run --shard-size`: plan, shards (resumable, never recomputed), exactly-once merge."""

import shlex
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from annotate.cli import main
from annotate.errors import ConfigError
from annotate.pipeline import RunSettings, run
from annotate.runfolder import RunFolder
from annotate.shards import plan_shards, run_sharded
from annotate.columns import OUTPUT_COLUMNS

N = 8  # rows of conftest's catalog fixture


def _settings(catalog, tmp_path, model, out_name="out.fits", scheduler="sync"):
    return RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=model, out=tmp_path / out_name,
                       scheduler=scheduler, progress=False)


def _pred_bytes(path):
    with fits.open(path) as hdul:
        return {c.name: hdul[1].data[c.name].tobytes() for c in OUTPUT_COLUMNS}


def test_plan_covers_every_row_once():
    shards = plan_shards(10, 3)
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [s.name for s in shards][-1] == "shard-00003"
    with pytest.raises(ConfigError):
        plan_shards(10, 0)


def test_sharded_run_equals_the_single_run(catalog, micro_model, tmp_path):  # noqa: F811
    single = run(_settings(catalog, tmp_path, micro_model, "single.fits"))
    sharded = run_sharded(_settings(catalog, tmp_path, micro_model, "sharded.fits", "distributed"), 3, log=lambda m: None)
    assert sharded.n_rows == N and sharded.n_predicted == single.n_predicted == N - 2
    a, b = _pred_bytes(single.output), _pred_bytes(sharded.output)
    for name in ("PRED_CLASS", "PRED_FLAGS", "PRED_Z_CATASTROPHIC"):
        assert a[name] == b[name], name
    with fits.open(single.output) as x, fits.open(sharded.output) as y:
        np.testing.assert_allclose(y[1].data["PRED_Z"], x[1].data["PRED_Z"], rtol=1e-5, equal_nan=True)
        assert list(y[1].data["SPECOBJID"]) == list(x[1].data["SPECOBJID"])  # input order kept
        assert y[1].header["ANNSHRDS"] == 3 and y[1].header["ANNPREC"] == x[1].header["ANNPREC"] == "fp32"
    assert len(list((RunFolder.for_output(tmp_path / "sharded.fits").path / "shards").glob("*.npz"))) == 3


def test_interrupted_run_resumes_to_the_same_bytes(catalog, micro_model, tmp_path):  # noqa: F811
    settings = _settings(catalog, tmp_path, micro_model, "clean.fits")
    clean = run_sharded(settings, 3, log=lambda m: None)
    reference = _pred_bytes(clean.output)
    folder = RunFolder.for_output(tmp_path / "clean.fits").path
    kept = folder / "shards" / "shard-00000.npz"
    kept_mtime = kept.stat().st_mtime_ns
    # shard 1 was killed half-way: its file was never renamed into place, a partial temp file is left
    (folder / "shards" / "shard-00001.npz").unlink()
    (folder / "shards" / ".shard-00001.npz.999.tmp.npz").write_bytes(b"partial")
    clean.output.unlink()
    messages = []
    resumed = run_sharded(settings, 3, log=messages.append)
    assert messages == ["running 1 of 3 shards (local)"]
    assert kept.stat().st_mtime_ns == kept_mtime  # a finished shard is never recomputed
    assert _pred_bytes(resumed.output) == reference


def test_status_of_a_run_folder(catalog, micro_model, tmp_path, capsys):  # noqa: F811
    settings = _settings(catalog, tmp_path, micro_model, "out.fits")
    for index in (0, 2):  # two array tasks ran, as with slurm/annotate-array.sbatch
        run_sharded(settings, 3, log=lambda m: None, only_shard=index)
    folder = RunFolder.for_output(tmp_path / "out.fits").path
    assert main(["status", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"run {folder}: catalog {catalog.resolve()} ({N} rows)")
    assert lines[1:] == ["shards: 2 of 3 done (5 rows), 1 missing", "  shard-00001: rows 3-6",
                         "jobs: none submitted from this folder",
                         "no job was submitted from this folder: if the shards run as a plain sbatch array "
                         "(slurm/annotate-array.sbatch), `squeue` shows them; resubmit the array for the missing "
                         "ones (--array=1) or rerun the same `annotate run` command to compute them here; the same "
                         "command merges once every shard is done"]
    run_sharded(settings, 3, log=lambda m: None)
    assert main(["status", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["shards: 3 of 3 done (8 rows), 0 missing",
                                                        "jobs: none submitted from this folder",
                                                        f"merged: {tmp_path / 'out.fits'}"]
    assert main(["status", str(tmp_path)]) == 2
    assert "is neither a sharded run folder" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "missing.run")]) == 2
    assert capsys.readouterr().err.strip() == f"annotate: error: {tmp_path / 'missing.run'}: no such folder"


def test_a_shard_with_a_process_of_its_own_reads_and_fits_on_the_runs_scheduler(catalog, micro_model, tmp_path,  # noqa: F811
                                                                                 monkeypatch, capsys):
    from dataclasses import replace

    import annotate.parallel
    from annotate.parallel import SlurmWorkers
    from annotate.shards import shard_scheduler

    assert shard_scheduler("auto", "slurm", None) == "auto"                # a SLURM job per shard
    assert shard_scheduler("distributed", "local", 1) == "distributed"     # one array task's --shard
    assert shard_scheduler("auto", "local", None) == "sync"    # shards are tasks on worker processes
    assert shard_scheduler("distributed", "debug", None) == "sync"
    assert shard_scheduler(SlurmWorkers(profile=None), "slurm", None) == "sync"
    seen = []
    real = annotate.parallel.shared_cluster

    def recording(scheduler, n_workers=None):
        seen.append((scheduler, n_workers))
        return real(scheduler, n_workers)

    monkeypatch.setattr(annotate.parallel, "shared_cluster", recording)
    own = replace(_settings(catalog, tmp_path, micro_model, "own.fits", "distributed"), n_workers=2)
    for index in range(3):  # as the array tasks of slurm/annotate-array.sbatch
        run_sharded(own, 3, log=lambda m: None, only_shard=index)
    merged = run_sharded(own, 3, log=lambda m: None)  # every shard done: merges only
    assert seen == [("distributed", 2)] * 3
    said = capsys.readouterr().out
    assert all(f"shard-0000{i}: reading and fitting on 2 Dask worker processes" in said for i in range(3)), said
    here = run_sharded(_settings(catalog, tmp_path, micro_model, "here.fits", "distributed"), 3, executor="debug",
                       log=lambda m: None)
    assert seen[3:] == [("sync", None)] * 3
    assert "worker processes" not in capsys.readouterr().out
    assert _pred_bytes(merged.output) == _pred_bytes(here.output)


def test_a_run_folder_belongs_to_one_plan(catalog, micro_model, tmp_path):  # noqa: F811
    settings = _settings(catalog, tmp_path, micro_model)
    run_sharded(settings, 3, log=lambda m: None)
    with pytest.raises(ConfigError, match="other shard_size"):
        run_sharded(settings, 4, log=lambda m: None)


def test_array_tasks_writing_the_plan_at_once_agree(tmp_path):
    """Array tasks start together and each writes the plan: all succeed, one whole plan remains."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    plan = {"catalog": {"path": "/data/dr18.fits", "size": 1}, "rows": 10, "shard_size": 2}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: RunFolder(tmp_path / "run").write_plan(plan), range(64)))
    assert json.loads((tmp_path / "run" / "plan.json").read_text()) == plan
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["plan.json"]
    with pytest.raises(ConfigError, match="holds a run with other rows"):
        RunFolder(tmp_path / "run").write_plan({**plan, "rows": 11})


def test_dry_run_prints_the_plan_and_the_sbatch_script(catalog, micro_model, tmp_path, capsys):  # noqa: F811
    profile = tmp_path / "gpu.yaml"
    profile.write_text("partition: gpu\ngpus_per_node: 1\ntime_min: 30\n")
    code = main(["run", "--catalog", str(catalog), "--spectra-root", str(tmp_path / "spectra"), "--model",
                 str(micro_model), "--shard-size", "3", "--executor", "slurm", "--profile", str(profile), "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "8 rows in 3 shards of up to 3; 0 done, 3 to run with executor slurm" in printed
    assert "#SBATCH --array=0-2%3" in printed and "#SBATCH --gpus-per-node=1" in printed
    assert not RunFolder.for_output(tmp_path / "cat.annotated.fits").path.exists()  # nothing written, nothing submitted
    sbatch = next(line.strip() for line in printed.splitlines() if line.strip().startswith("sbatch "))
    assert sbatch.startswith("sbatch --array=0-2%64 ") and "slurm/annotate-array.sbatch" in sbatch
    assert f" {catalog.resolve()} 3 " in sbatch and f"--model {micro_model}" in sbatch
    assert "--dry-run" not in sbatch and "--executor" not in sbatch and "--profile" not in sbatch


def test_refused_commands_leave_the_run_folder_free_and_a_dry_run_checks_the_plan(catalog, micro_model, tmp_path,  # noqa: F811
                                                                                   capsys):
    """A command refused for its arguments (a --shard outside the plan, --executor slurm without
    --profile) writes no plan, so the corrected command is not refused for the run folder; a
    dry run against a folder of another shard size is refused as the run itself is, not shown a
    plan that counts the other run's shard files as its own."""
    base = ["run", "--catalog", str(catalog), "--spectra-root", str(tmp_path / "spectra"), "--model", str(micro_model),
            "--out", str(tmp_path / "x.fits"), "--scheduler", "sync"]
    folder = RunFolder.for_output(tmp_path / "x.fits").path
    assert main([*base, "--shard-size", "3", "--shard", "5"]) == 2
    assert main([*base, "--shard-size", "3", "--executor", "slurm"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["annotate: error: --shard 5: the plan has shards 0-2",
                   "annotate: error: --executor slurm needs --profile (a YAML file, see slurm/profiles/)"]
    assert not (folder / "plan.json").exists()
    assert main([*base, "--shard-size", "4", "--executor", "debug"]) == 3   # the corrected command runs (2 rows lack spectra)
    assert len(list((folder / "shards").glob("*.npz"))) == 2
    capsys.readouterr()
    assert main([*base, "--shard-size", "2", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (f"annotate: error: {folder} holds a run with other shard_size; "
                                               "remove it or choose another --out")
    assert main([*base, "--shard-size", "4", "--dry-run"]) == 0
    assert "8 rows in 2 shards of up to 4; 2 done, 0 to run" in capsys.readouterr().out


def test_sbatch_command_makes_paths_absolute_and_keeps_names(tmp_path, monkeypatch):
    """Relative paths in the printed sbatch command would be read from whatever folder it is
    submitted from: they are made absolute; a shipped model's or a survey's name is kept."""
    from annotate.shards import sbatch_array_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    argv = ["run", "--catalog", "cat.fits", "--shard-size", "10", "--out", "out/x.fits", "--model", "spectromer-tiny",
            "--survey=mine.yaml", "--spectra-root", "spectra", "--device", "cuda", "--dry-run"]
    words = shlex.split(sbatch_array_command(Path("cat.fits"), 10, [0, 1], argv))
    assert words[3:5] == [str(tmp_path / "cat.fits"), "10"]
    assert words[5:] == ["--out", str(tmp_path / "out" / "x.fits"), "--model", "spectromer-tiny",
                         f"--survey={tmp_path / 'mine.yaml'}", "--spectra-root", str(tmp_path / "spectra"),
                         "--device", "cuda"]
    words = shlex.split(sbatch_array_command(Path("cat.fits"), 10, [0], ["run", "--survey", "sdss_dr18"]))
    assert words[-2:] == ["--survey", "sdss_dr18"]


def test_index_ranges_are_sbatch_array_syntax():
    from annotate.shards import index_ranges

    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert index_ranges([4]) == "4" and index_ranges([3, 1, 2]) == "1-3"


def test_merge_in_chunks_that_straddle_shards_matches_the_whole_merge(catalog, micro_model, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    """The merge streams row chunks that do not line up with the shards (3-row shards, a chunk of
    a few rows): the columns, the summary and the counts are those of a merge in one chunk."""
    import annotate.catalogs.fits_writer as fits_writer

    whole = run_sharded(_settings(catalog, tmp_path, micro_model, "whole.fits"), 3, log=lambda m: None)
    with fits.open(catalog) as hdul:
        row_bytes = hdul[1].header["NAXIS1"]
    monkeypatch.setattr(fits_writer, "CHUNK_BYTES", 2 * row_bytes + 250)  # 2-row chunks
    chunked = run_sharded(_settings(catalog, tmp_path, micro_model, "chunked.fits"), 3, log=lambda m: None)
    assert _pred_bytes(chunked.output) == _pred_bytes(whole.output)
    assert chunked.counts == whole.counts and chunked.counts["OK"] == N - 2
    assert chunked.n_predicted == whole.n_predicted == N - 2
    for key, value in whole.summary.items():
        assert chunked.summary[key] == pytest.approx(value, nan_ok=True), key
    assert whole.summary["rows_compared"] == 4  # OK rows with a reference class and z, selected
    single = run(_settings(catalog, tmp_path, micro_model, "single.fits"))
    assert single.summary["rows_compared"] == whole.summary["rows_compared"]
    assert whole.summary["class_accuracy"] == pytest.approx(single.summary["class_accuracy"])


def test_the_merge_summary_kept_as_sums_equals_the_whole_summary():
    """SummaryRows adds chunk by chunk what metrics.summary computes over all rows at once."""
    from annotate.merge import SummaryRows
    from annotate.metrics import summary

    rng = np.random.default_rng(3)
    n = 5000
    classes = np.array(["GALAXY", "QSO", "STAR"])
    reference = {"class": rng.choice(classes, n), "z": rng.uniform(0, 3, n), "teff": rng.uniform(3000, 9000, n),
                 "logg": rng.uniform(0, 5, n), "feh": rng.uniform(-2, 0.5, n)}
    reference["teff"][::7] = np.nan  # stars without a reference Teff
    columns = {"PRED_CLASS": np.where(rng.uniform(size=n) < 0.9, reference["class"], rng.choice(classes, n)),
               "PRED_Z": (reference["z"] + rng.normal(0, 0.05, n)).astype(np.float32),
               **{f"PRED_{r.upper()}": (reference[r] * rng.normal(1, 0.05, n)).astype(np.float32)
                  for r in ("teff", "logg", "feh")}}
    columns["PRED_Z"][::11] = np.nan
    usable = rng.uniform(size=n) < 0.8
    kept = SummaryRows()
    for start in range(0, n, 777):
        part = slice(start, start + 777)
        kept.add({k: v[part] for k, v in reference.items()}, {k: v[part] for k, v in columns.items()}, usable[part])
    streamed, whole = kept.summary(), summary(reference, columns, usable)
    assert streamed.keys() == whole.keys()
    for key, value in whole.items():
        assert streamed[key] == pytest.approx(value, rel=1e-9), key
    assert 0.85 < whole["class_accuracy"] < 0.95 and whole["teff_n"] < whole["logg_n"]


def test_single_and_sharded_runs_record_the_whole_command_and_paths(catalog, micro_model, tmp_path):  # noqa: F811
    """ANNCMD, ANNCAT and ANNMDIR hold the full command line and paths (long strings continue in
    CONTINUE cards), for a single run and a sharded one alike; the PRED_* columns carry TCOMMn
    descriptions that astropy reads back."""
    import shlex

    from astropy.table import Table

    from annotate.columns import column_description

    deep = tmp_path / ("a-folder-with-a-long-name-" * 3) / "outputs"
    deep.mkdir(parents=True)
    for name, extra in (("single.fits", []), ("sharded.fits", ["--shard-size", "3", "--scheduler", "sync"])):
        args = ["run", "--catalog", str(catalog), "--spectra-root", str(tmp_path / "spectra"), "--model",
                str(micro_model), "--out", str(deep / name), "--no-fit", "--no-progress", *extra]
        assert main(args) == 3  # two broken rows
        with fits.open(deep / name) as hdul:
            header = hdul[1].header
            assert header["ANNCMD"] == shlex.join(["annotate", *args])
            assert len(header["ANNCMD"]) > 68 and "CONTINUE" in header.tostring()
            assert header["ANNCAT"] == str(catalog.resolve()) and header["ANNMDIR"] == str(micro_model.resolve())
            assert header["LONGSTRN"] == "OGIP 1.0"
            names = hdul[1].columns.names
            for spec in OUTPUT_COLUMNS:
                assert header[f"TCOMM{names.index(spec.name) + 1}"] == column_description(spec)
        table = Table.read(deep / name, hdu=1)
        index = table.colnames.index("PRED_TEFF") + 1
        assert table.meta[f"TCOMM{index}"] == "effective temperature (fit's if STAR, else ViT) [K]"


def test_a_shard_file_changed_after_it_was_written_is_named_and_not_merged(catalog, micro_model, tmp_path):  # noqa: F811
    from annotate.errors import OutputError

    settings = _settings(catalog, tmp_path, micro_model, "sums.fits")
    first = run_sharded(settings, 3, log=lambda m: None)
    reference = _pred_bytes(first.output)
    folder = RunFolder.for_output(tmp_path / "sums.fits").path
    assert sorted(p.name for p in (folder / "shards").glob("*.sha256")) == [f"shard-0000{i}.sha256" for i in range(3)]
    damaged = folder / "shards" / "shard-00001.npz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    first.output.unlink()
    with pytest.raises(OutputError, match="shard-00001.npz changed since it was written"):
        run_sharded(settings, 3, log=lambda m: None)
    assert not (tmp_path / "sums.fits").exists()
    cut = folder / "shards" / "shard-00000.npz"  # a file cut short is no zip any more: still one message
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(OutputError, match="shard-00000.npz changed since it was written"):
        run_sharded(settings, 3, log=lambda m: None)
    cut.write_bytes(whole)
    damaged.unlink()  # as the message says: delete it and rerun
    messages = []
    again = run_sharded(settings, 3, log=messages.append)
    assert messages == ["running 1 of 3 shards (local)"] and _pred_bytes(again.output) == reference


def test_a_shard_file_of_an_earlier_annotate_lacking_keys_is_named_and_not_merged(catalog, micro_model, tmp_path):  # noqa: F811
    from annotate.errors import OutputError

    settings = _settings(catalog, tmp_path, micro_model, "old.fits")
    first = run_sharded(settings, 3, log=lambda m: None)
    reference = _pred_bytes(first.output)
    first.output.unlink()
    folder = RunFolder.for_output(tmp_path / "old.fits")
    with np.load(folder.shard_file("shard-00002"), allow_pickle=False) as data:
        older = {key: data[key] for key in data.files if not key.endswith("_err") or not key.startswith("fit_")
                 or key == "fit_z_err"}  # as written before the stellar labels had a σ
    assert "fit_teff_err" not in older and "fit_z_err" in older
    folder.write_shard("shard-00002", older)  # a whole file with its checksum
    with pytest.raises(OutputError, match="shard-00002.npz lacks fit_teff_err, fit_logg_err, fit_feh_err "
                                          r"\(written by an earlier annotate\); delete the shard file"):
        run_sharded(settings, 3, log=lambda m: None)
    assert not (tmp_path / "old.fits").exists()
    folder.shard_file("shard-00002").unlink()
    messages = []
    again = run_sharded(settings, 3, log=messages.append)
    assert messages == ["running 1 of 3 shards (local)"] and _pred_bytes(again.output) == reference


def test_the_debug_executor_runs_the_shards_here_with_the_same_result(catalog, micro_model, tmp_path):  # noqa: F811
    local = run_sharded(_settings(catalog, tmp_path, micro_model, "local.fits"), 3, log=lambda m: None)
    messages = []
    here = run_sharded(_settings(catalog, tmp_path, micro_model, "here.fits"), 3, executor="debug", log=messages.append)
    assert messages == ["running 3 of 3 shards (debug)"]
    assert _pred_bytes(here.output) == _pred_bytes(local.output)
    with pytest.raises(ConfigError, match="unknown executor 'cloud'; valid: debug, local, slurm"):
        run_sharded(_settings(catalog, tmp_path, micro_model, "x.fits"), 3, executor="cloud", log=lambda m: None)


def test_single_and_sharded_runs_write_the_same_provenance(catalog, micro_model, tmp_path):  # noqa: F811
    single = run(_settings(catalog, tmp_path, micro_model, "one.fits"))
    sharded = run_sharded(_settings(catalog, tmp_path, micro_model, "many.fits"), 3, log=lambda m: None)
    with fits.open(single.output) as x, fits.open(sharded.output) as y:
        a, b = x[1].header, y[1].header
        cards = {k for k in a if k.startswith("ANN")}
        assert cards == {k for k in b if k.startswith("ANN")} and {"ANNSHRDS", "ANNNFAIL", "ANNFIT"} <= cards
        assert (a["ANNSHRDS"], b["ANNSHRDS"]) == (1, 3)
        assert {k: a[k] for k in cards - {"ANNDATE", "ANNSHRDS"}} == {k: b[k] for k in cards - {"ANNDATE", "ANNSHRDS"}}


def test_status_quotes_a_jobs_last_error_or_else_its_last_own_line(tmp_path):
    """A failed job's log: its last line naming an error; where none does (a profile's setup line
    that failed in its own words), its last line that is not submitit's logging."""
    from annotate.status import _last_error

    job = tmp_path / "11_0"
    job.mkdir()
    log = job / "11_0_0_log.err"
    log.write_text("submitit INFO (2026-12-07 06:00:00) - Starting with JobEnvironment\n"
                   "failing on purpose\n\nsubmitit INFO (2026-12-07 06:00:01) - Job completed\n")
    assert _last_error(job) == "; last error: failing on purpose"
    log.write_text("ValueError: one\nsrun: error: localhost: task 0: Exited with exit code 1\nlast words\n")
    assert _last_error(job) == "; last error: srun: error: localhost: task 0: Exited with exit code 1"
    log.write_text("submitit INFO (2026-12-07 06:00:00) - only submitit\n")
    assert _last_error(job) == ""
