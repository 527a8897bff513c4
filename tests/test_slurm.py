"""SLURM profiles and submitit executors; the live tests run on the cluster of
slurm/testcluster/up.sh (started by .ci/run) and are skipped, with the reason, where none runs."""

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from annotate.errors import ConfigError
from annotate.slurm import Profile, executor, sbatch_script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONF = Path(os.environ.get("ANNOTATE_SLURM_DIR", "/tmp/annotate-slurm")) / "etc" / "slurm.conf"


@pytest.fixture(scope="session")
def slurm_conf():
    conf = Path(os.environ.get("SLURM_CONF", DEFAULT_CONF))
    if not conf.is_file():
        pytest.skip(f"no live Slurm cluster ({conf} missing): start one with `sudo slurm/testcluster/up.sh`")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no live Slurm cluster (sinfo: {exc})")
    if not any(s in state for s in ("idle", "mix", "alloc")):
        pytest.skip(f"no live Slurm cluster (sinfo says {state.strip() or 'nothing'})")
    os.environ["SLURM_CONF"] = str(conf)
    return conf


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True).stdout
    return out.strip().splitlines()[0].split()[0] if out.strip() else ""


def _wait(predicate, timeout: float, step: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def test_profile_keys_are_checked(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("partition: gpu\ngpus: 4\n")
    with pytest.raises(ConfigError, match="unknown profile keys gpus; valid: partition"):
        Profile.from_yaml(path)


def test_dry_run_script_carries_the_gpu_request():
    profile = Profile.from_yaml(REPO / "slurm" / "profiles" / "example-gpu.yaml")
    script = sbatch_script(profile, "/runs/x/slurm", job_name="annotate-run", array_size=12)
    for line in ("#SBATCH --array=0-11%12", "#SBATCH --gpus-per-node=1", "#SBATCH --constraint=a100",
                 "#SBATCH --partition=gpu", "#SBATCH --account=astro", "#SBATCH --mem=32768M",
                 "#SBATCH --time=120", "#SBATCH --signal=USR2@90", "module load cuda/12.4"):
        assert line in script


def test_a_dry_run_of_one_missing_shard_shows_the_plain_job_submitit_submits():
    """submitit submits a single task as a plain job (its logs named by %j), not as an array of
    one: the dry run's script for one task is that one."""
    profile = Profile.from_yaml(REPO / "slurm" / "profiles" / "example-gpu.yaml")
    one = sbatch_script(profile, "/runs/x/slurm", job_name="annotate-run", array_size=1)
    assert one == sbatch_script(profile, "/runs/x/slurm", job_name="annotate-run")
    assert "--array" not in one and "%A_%a" not in one and "/runs/x/slurm/%j/%j_0_log.out" in one
    assert "#SBATCH --array=0-1%2" in sbatch_script(profile, "/runs/x/slurm", job_name="annotate-run", array_size=2)


def test_a_cancelled_training_job_is_reported_as_cancelled_and_a_failed_one_with_its_error(tmp_path, monkeypatch):
    """The job's own last line on cancellation is srun's notice of the signal; the scheduler's
    state says what happened. A failed job keeps the error that ended it."""
    import annotate.training.job as job_module
    from annotate.errors import JobsFailed

    class Ended:
        job_id, state = "25", "DONE"

        def done(self):
            return True

        def result(self):
            raise RuntimeError("Traceback ...\nsrun: launch/slurm: _step_signal: Terminating StepId=25.0")

    for state, expected in (("CANCELLED by 0", "training job 25 cancelled without finishing; its log is in "),
                            ("FAILED", "training job 25 failed: srun: launch/slurm: _step_signal: Terminating")):
        monkeypatch.setattr(job_module, "job_states", lambda ids, state=state: {"25": state})
        with pytest.raises(JobsFailed) as caught:
            job_module.wait_for_training(Ended(), tmp_path, log=lambda line: None, poll_s=0.0)
        assert str(caught.value).startswith(expected), str(caught.value)


def test_dask_worker_jobs_retire_before_their_time_limit_and_carry_the_gpu_request(tmp_path):
    from annotate.parallel import slurm_cluster, worker_lifetime_args

    # the latest worker (lifetime + stagger) leaves 10 % of the limit, at least 3 min, before it
    assert worker_lifetime_args(60) == ["--lifetime", "2946s", "--lifetime-stagger", "294s"]  # 3,240 s at the latest
    assert worker_lifetime_args(5) == ["--lifetime", "110s", "--lifetime-stagger", "10s"]  # 120 s at the latest
    path = tmp_path / "p.yaml"
    path.write_text("partition: gpu\ngres: gpu:a100:2\nconstraint: a100\ntime_min: 60\ncpus_per_task: 4\nmem_gb: 8\n")
    profile = Profile.from_yaml(path)
    assert profile.gpus() == 2  # a training job of this profile runs 2 DDP ranks
    cluster = slurm_cluster(profile, 2, start=False, log_directory=tmp_path / "out.h5.dask-logs")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    logs = tmp_path / "out.h5.dask-logs"
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:a100:2", "#SBATCH --constraint=a100", "#SBATCH -t 01:00:00",
                 "--lifetime 2946s --lifetime-stagger 294s", f"#SBATCH -o {logs}/annotate-dask-%J.out",
                 f"#SBATCH -e {logs}/annotate-dask-%J.err"):
        assert line in script, script


def test_array_tasks_cancelled_while_pending_are_known_under_either_accounting_form(monkeypatch):
    """sacct reports an array's tasks cancelled before they started as '11_[1-2]' or, on some
    Slurm versions, under the array's bare id '11': both read as cancelled, a running task keeps
    its own state."""
    import annotate.slurm as slurm

    monkeypatch.setattr(slurm, "squeue_rows", lambda fields: [])
    for accounting in ("11_0|CANCELLED by 0\n11|CANCELLED by 0\n", "11_0|CANCELLED by 0\n11_[1-2]|CANCELLED by 0\n"):
        asked = []

        def sacct(command, accounting=accounting, **kwargs):
            asked.append(command[-1])
            return subprocess.CompletedProcess(command, 0, stdout=accounting, stderr="")

        monkeypatch.setattr(slurm.subprocess, "run", sacct)
        assert slurm.job_states(["11_0", "11_1", "11_2"]) == {"11_0": "CANCELLED", "11_1": "CANCELLED",
                                                               "11_2": "CANCELLED"}
        assert asked == ["11,11_0,11_1,11_2"]  # the bare array id is asked for too
    monkeypatch.setattr(slurm.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, 0, stdout="12_0|RUNNING\n12|PENDING\n", stderr=""))
    assert slurm.job_states(["12_0", "12_1"]) == {"12_0": "RUNNING", "12_1": ""}  # not terminal: unknown


def test_down_sh_stops_only_the_daemons_up_sh_started(tmp_path):
    """down.sh kills the pids in the cluster's pid files, never a daemon of the same name that
    something else started."""
    root = tmp_path / "cluster"
    (root / "run").mkdir(parents=True)
    (root / "munge").mkdir()
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("slurmd", "munged"):
        (fake / name).symlink_to("/bin/sleep")
    ours = subprocess.Popen([str(fake / "slurmd"), "300"])
    theirs = subprocess.Popen([str(fake / "munged"), "300"])  # not in a pid file: someone else's
    try:
        (root / "run" / "slurmd.pid").write_text(f"{ours.pid}\n")
        (root / "run" / "slurmctld.pid").write_text("not-a-pid\n")
        subprocess.run(["bash", str(REPO / "slurm" / "testcluster" / "down.sh")], check=True, timeout=30,
                       env={**os.environ, "ANNOTATE_SLURM_DIR": str(root)})
        assert ours.wait(timeout=10) == -15
        assert theirs.poll() is None
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait()


def test_job_array_runs_and_accounting_reports_it(slurm_conf, tmp_path):
    profile = Profile.from_yaml(REPO / "slurm" / "profiles" / "testcluster.yaml")
    jobs = executor(profile, tmp_path / "slurm", job_name="annotate-test").map_array(math.factorial, [3, 4, 5, 6])
    assert [job.result() for job in jobs] == [6, 24, 120, 720]
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1  # one array
    # slurmdbd records states asynchronously: on a busy machine it can lag the jobs by a while
    states = _wait(lambda: [s for s in (_sacct_state(job.job_id) for job in jobs) if s == "COMPLETED"] if all(
        _sacct_state(job.job_id) == "COMPLETED" for job in jobs) else None, 120, step=2)
    assert states is not None and len(states) == 4, [_sacct_state(job.job_id) for job in jobs]
    assert (tmp_path / "slurm").is_dir() and any((tmp_path / "slurm").rglob("*_log.out"))


def test_a_cancelled_job_is_reported_not_waited_for(slurm_conf, tmp_path):
    import submitit

    profile = Profile.from_yaml(REPO / "slurm" / "profiles" / "testcluster.yaml")
    job = executor(profile, tmp_path / "slurm", job_name="annotate-cancel").submit(time.sleep, 120)
    assert _wait(lambda: _sacct_state(job.job_id) == "RUNNING", 60)
    subprocess.run(["scancel", job.job_id], check=True)
    assert _wait(lambda: _sacct_state(job.job_id).startswith("CANCELLED"), 120, step=2)
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()


def test_a_job_sbatch_refuses_is_one_clear_error(slurm_conf, tmp_path):
    from annotate.errors import AnnotateError
    from annotate.training.job import submit_training

    profile_path = tmp_path / "p.yaml"
    profile_path.write_text((REPO / "slurm" / "profiles" / "testcluster.yaml").read_text().replace("partition: debug", "partition: nosuchpart"))
    with pytest.raises(AnnotateError, match=r"^sbatch refused the job: .*(?i:invalid partition)"):
        submit_training(REPO / "training" / "demo.yaml", tmp_path / "out", Profile.from_yaml(profile_path))


def _sbatch_wait(script: str, *args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["sbatch", "--wait", "--parsable", "--partition=debug", str(REPO / "slurm" / script), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_train_sbatch_script_runs_for_real(slurm_conf, tmp_path):
    done = _sbatch_wait("train.sbatch", str(REPO / "training" / "demo.yaml"), str(tmp_path / "model"), cwd=tmp_path)
    job_id = done.stdout.strip().split(";")[0]
    log = next(tmp_path.glob("annotate-train-*.out")).read_text()
    assert done.returncode == 0, log[-2000:]
    assert _wait(lambda: _sacct_state(job_id) == "COMPLETED", 120, step=2)
    assert (tmp_path / "model" / "model.safetensors").is_file() and "checkpoint:" in log


def _simulated_store(store: Path, n: int, seed: int) -> Path:
    """A spectra store of `n` simulated spectra, every row OK."""
    import numpy as np

    from annotate.grid import WavelengthGrid
    from annotate.simulate.spectra import draw_sample
    from annotate.simulate.templates import load_library
    from annotate.store import STATUS, create_store, write_rows

    sample = draw_sample(n, load_library(), WavelengthGrid(), seed=seed)
    create_store(store, np.arange(n), [""] * n, WavelengthGrid())
    write_rows(store, 0, {"flux": sample["flux"], "ivar": sample["ivar"], "mask": sample["mask"].astype(np.uint8),
                          "status": np.full(n, STATUS["OK"], np.int8)})
    return store


def test_render_dask_sbatch_script_runs_for_real(slurm_conf, tmp_path):
    from annotate.images import read_images

    store = _simulated_store(tmp_path / "spectra.h5", 24, seed=8)
    done = _sbatch_wait("render-dask.sbatch", str(store), str(tmp_path / "images.h5"), "simple", cwd=tmp_path)
    log = next(tmp_path.glob("annotate-render-*.out")).read_text()
    assert done.returncode == 0, log[-2000:]
    assert "rendered 24 rows" in log
    assert read_images(tmp_path / "images.h5", 0, 24).any(axis=(1, 2, 3)).all()




def test_sharded_run_as_a_job_array_and_a_cancelled_shard_rerun(slurm_conf, catalog, micro_model, tmp_path,  # noqa: F811
                                                                monkeypatch):
    import annotate.executors
    from annotate.errors import JobsFailed

    # the scheduler's own word must report the cancel: the no-accounting fallback would take 10 min
    monkeypatch.setattr(annotate.executors, "LOST_AFTER_S", 600.0)
    from annotate.pipeline import RunSettings
    from annotate.runfolder import RunFolder
    from annotate.shards import run_sharded

    settings = RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model,
                           out=tmp_path / "out.fits", progress=False)
    profile = REPO / "slurm" / "profiles" / "testcluster.yaml"
    result = run_sharded(settings, 3, executor="slurm", profile=profile, log=lambda m: None)
    assert result.n_rows == 8 and result.n_predicted == 6
    folder = RunFolder.for_output(tmp_path / "out.fits").path
    assert len(list((folder / "shards").glob("*.npz"))) == 3 and any((folder / "slurm").rglob("*_log.out"))

    # a new run whose shard tasks are cancelled: reported, and a rerun redoes only what is missing.
    # The array is held (sbatch --begin an hour ahead) and cancelled once the queue shows it, so
    # every task is cancelled while pending, however fast the machine would have run them.
    settings2 = RunSettings(catalog=catalog, spectra_root=tmp_path / "spectra", model=micro_model,
                            out=tmp_path / "again.fits", progress=False)
    held = tmp_path / "held.yaml"
    held.write_text(profile.read_text() + "additional: {begin: now+3600}\n")
    import threading

    cancelled_at = []

    def cancel_once_queued():
        # the first run's last task may still be leaving the queue: wait for the held array itself
        queued = _wait(lambda: [line for line in subprocess.run(
            ["squeue", "--noheader", "--name=annotate-run", "--format=%i %T"], capture_output=True,
            text=True).stdout.splitlines() if line.endswith(" PENDING")], 60, step=0.5)
        # without a held array in sight, cancel every task of the name all the same: never hang
        subprocess.run(["scancel", "--name=annotate-run", *(["--state=PENDING"] if queued else [])], check=False)
        cancelled_at.append((time.time(), queued))

    threading.Thread(target=cancel_once_queued, daemon=True).start()
    with pytest.raises(JobsFailed, match=r"3 of 3 shards did not finish \(3 cancelled\): nothing was merged; "
                                         r"rerun the same command to redo only them\. shard-00000 \(job \d+_0\): "
                                         r"cancelled") as raised:
        run_sharded(settings2, 3, executor="slurm", profile=held, log=lambda m: None)
    # reported from the scheduler's state (the no-accounting fallback would have waited 600 s and
    # said "left the queue"); slurmdbd on a loaded 2-core machine may take some seconds to know
    assert cancelled_at[0][1], cancelled_at  # cancelled while held, before any task ran
    assert time.time() - cancelled_at[0][0] < 120
    assert raised.value.exit_code == 4
    from annotate.status import run_status

    # accounting may lag the cancellation by a few seconds
    def jobs_line(lines):
        return next(line for line in lines if line.startswith("jobs: "))

    status = _wait(lambda: (lines := run_status(RunFolder.for_output(tmp_path / "again.fits").path)) and "cancelled" in jobs_line(lines)
                   and lines, 60, step=2) or run_status(RunFolder.for_output(tmp_path / "again.fits").path)
    assert status[1].endswith("missing") and not status[1].startswith("shards: 3 of 3"), status
    assert jobs_line(status).startswith("jobs: 3 (") and "cancelled" in jobs_line(status), status
    assert any(line.startswith("  job ") and "cancelled" in line for line in status), status
    messages = []
    again = run_sharded(settings2, 3, executor="slurm", profile=profile, log=messages.append)
    assert again.n_predicted == 6 and messages and messages[0].startswith("running ")
    status = run_status(RunFolder.for_output(tmp_path / "again.fits").path)
    assert status[1] == "shards: 3 of 3 done (8 rows), 0 missing" and status[-1] == f"merged: {tmp_path / 'again.fits'}"
    assert not any(line.startswith("  job ") for line in status), status  # the cancels are history now


def test_training_job_hits_its_time_limit_requeues_and_finishes_from_its_state(slurm_conf, tmp_path, capsys):
    """A 1-minute job limit and more training than fits in it on one core: Slurm signals the job
    before its limit, submitit requeues it (TrainJob is Checkpointable), and the requeued job resumes
    from the saved state instead of starting over. Slurm checks limits every ~30 s, so the signal
    comes 40-70 s into the job: the epochs are sized from this machine's own speed on one thread to
    take about 80 s, longer than that on any machine and done after one or two requeues."""
    import torch
    import yaml

    from annotate.cli import main
    from annotate.training import Recipe, train
    from helpers import _labelled_store

    store = _labelled_store(tmp_path / "train.h5", n=150)
    spec = {"name": "requeue-test", "backbone": "vit-micro", "data": {"store": str(store)}, "batch_size": 8,
            "lr": 1e-3, "val_fraction": 0.1, "test_fraction": 0.1, "device": "cpu", "checkpoint_every": 20}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = {}
        for n in (1, 2, 8):  # the first pays for imports and caches; the difference of the others leaves out the set-up
            start = time.perf_counter()
            train(Recipe(**spec, epochs=n), tmp_path / f"speed-{n}", log=lambda line: None)
            seconds[n] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    epochs = min(2000, max(60, math.ceil(80.0 / max((seconds[8] - seconds[2]) / 6, 0.04))))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**spec, "epochs": epochs}))
    profile = tmp_path / "profile.yaml"
    profile.write_text("partition: debug\ncpus_per_task: 1\nmem_gb: 1\ntime_min: 1\nsignal_delay_s: 20\n")
    out = tmp_path / "model"

    assert main(["train", "--recipe", str(recipe), "--out", str(out), "--executor", "slurm", "--profile",
                 str(profile), "--dry-run"]) == 0
    dry_run = capsys.readouterr().out
    assert main(["train", "--recipe", str(recipe), "--out", str(out), "--executor", "slurm",
                 "--profile", str(profile)]) == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == epochs * -(-summary["split_counts"]["train"] // 8)
    logs = "".join(p.read_text() for p in (out / "slurm").rglob("*_log.out"))
    assert "resumed from" in logs, logs[-3000:]
    assert "the scheduler's timeout signal" in logs, logs[-3000:]  # a state saved when the signal came
    job_id = next(p.name for p in (out / "slurm").iterdir() if p.name.isdigit())
    # --dry-run printed exactly the script that was submitted
    assert (out / "slurm" / job_id / f"{job_id}_submission.sh").read_text().strip() == dry_run.strip()

    def attempts():  # every run of the job, requeued ones included (slurmdbd may lag behind)
        out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id], capture_output=True,
                             text=True).stdout.split()
        return out if "COMPLETED" in out and "REQUEUED" in out else None

    assert _wait(attempts, 180, step=2), subprocess.run(["sacct", "-X", "-D", "-j", job_id], capture_output=True,
                                                        text=True).stdout
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))


def test_annotate_array_sbatch_script_runs_shards_and_a_plain_run_merges(slurm_conf, catalog, micro_model,  # noqa: F811
                                                                        tmp_path, capsys):
    import shlex

    from astropy.io import fits

    from annotate.cli import main
    from annotate.runfolder import RunFolder

    options = ["--spectra-root", str(tmp_path / "spectra"), "--model", str(micro_model),
               "--out", str(tmp_path / "out.fits")]
    # the plan prints the complete sbatch command; it runs as given (plus --wait to follow it here)
    assert main(["run", "--catalog", str(catalog), "--shard-size", "3", "--dry-run", *options]) == 0
    printed = next(line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("sbatch "))
    command = shlex.split(printed)
    assert command[1] == "--array=0-2%64"
    done = subprocess.run([command[0], "--wait", "--parsable", "--partition=debug", *command[1:]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("annotate-run-*.out")))
    assert done.returncode == 0, logs[-3000:] + done.stderr
    shards = sorted(p.name for p in (RunFolder.for_output(tmp_path / "out.fits").path / "shards").glob("*.npz"))
    assert shards == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert "shard-00002 (rows 6-8)" in logs
    # the merge: the same command without --shard; rows 3 and 5 have no spectrum (exit code 3)
    assert main(["run", "--catalog", str(catalog), "--shard-size", "3", "--no-progress", *options]) == 3
    with fits.open(tmp_path / "out.fits") as hdul:
        assert hdul[1].header["ANNSHRDS"] == 3 and len(hdul[1].data) == 8
        assert (hdul[1].data["PRED_FLAGS"][[3, 5]] & 3).all()


def test_dask_workers_as_slurm_jobs_render_a_store(slurm_conf, tmp_path, monkeypatch):
    """`--scheduler slurm`: dask-jobqueue starts the Dask workers as SLURM jobs of the profile; their
    logs go beside the output, not into the directory the command was started from."""
    from annotate.cli import main
    from annotate.images import read_images

    store = _simulated_store(tmp_path / "spectra.h5", 40, seed=9)
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    monkeypatch.chdir(started_in)
    submitted_before = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID", "--name=annotate-dask"],
                                      capture_output=True, text=True).stdout.split()
    assert main(["render", "--store", str(store), "--out", str(tmp_path / "images.h5"), "--encoding", "simple",
                 "--scheduler", "slurm", "--profile", str(REPO / "slurm" / "profiles" / "testcluster.yaml"),
                 "--workers", "2", "--no-progress"]) == 0
    assert read_images(tmp_path / "images.h5", 0, 40).any(axis=(1, 2, 3)).all()
    jobs = _wait(lambda: [j for j in subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID", "--name=annotate-dask"],
                                                    capture_output=True, text=True).stdout.split()
                          if j not in submitted_before] or None, 60, step=2)
    assert jobs and 1 <= len(jobs) <= 2, jobs
    assert _wait(lambda: not subprocess.run(["squeue", "-h", "--name=annotate-dask"], capture_output=True,
                                            text=True).stdout.strip(), 60, step=1)  # workers gone with the run
    logs = sorted(p.name for p in (tmp_path / "images.h5.dask-logs").iterdir())
    assert f"annotate-dask-{jobs[0]}.out" in logs, logs
    assert list(started_in.iterdir()) == []


def test_a_large_shard_fits_on_the_jobs_cores_where_its_memory_allows(slurm_conf, micro_model, tmp_path):  # noqa: F811
    """A shard of 1,100 rows (5 tasks) in a SLURM job: with 4 GB for 2 CPUs it reads and fits on two
    worker processes forked from the job's; with 1 GB (a LocalCluster's Dask would give each worker
    512 MB and stop it while it fits) it stays in the job's own process. Both finish, with the same
    predictions to the bit."""
    import numpy as np
    from astropy.io import fits

    from annotate.cli import main
    from annotate.demo import make_sample

    catalog = make_sample(tmp_path / "sample", 1100, seed=5)
    outputs = {}
    for mem_gb, cpus in ((1, 1), (4, 2)):
        profile = tmp_path / f"profile-{mem_gb}.yaml"
        profile.write_text(f"partition: debug\ncpus_per_task: {cpus}\nmem_gb: {mem_gb}\ntime_min: 5\n")
        out = tmp_path / f"out-{mem_gb}.fits"
        assert main(["run", "--catalog", str(catalog), "--shard-size", "1100", "--executor", "slurm", "--profile",
                     str(profile), "--model", str(micro_model), "--out", str(out), "--no-progress"]) == 0
        logs = "".join(p.read_text() for p in (tmp_path / f"out-{mem_gb}.fits.run" / "slurm").rglob("*_log.out"))
        # 2 workers here (2 cores); as many as the node's cores allow, up to 4 in 4 GB, elsewhere
        on_workers = re.search(r"shard-00000: reading and fitting on [2-4] worker processes forked from this one", logs)
        assert bool(on_workers) == (mem_gb == 4), logs[-3000:]
        outputs[mem_gb] = fits.getdata(out, 1)
    for name in outputs[1].columns.names:
        if name.startswith("PRED_"):
            a, b = outputs[1][name], outputs[4][name]
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
