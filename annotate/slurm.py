"""SLURM: cluster profiles and submitit executors. The only module that imports submitit.

A profile is a YAML file (see slurm/profiles/) naming what every job of a run asks for:

    partition: gpu           account: astro          qos: normal
    gpus_per_node: 1         cpus_per_task: 8        mem_gb: 32
    time_min: 120            constraint: a100        signal_delay_s: 90
    gres: gpu:a100:1         # instead of gpus_per_node, where the site asks for generic resources
    setup: ["module load cuda/12.4", "source ~/venvs/annotate/bin/activate"]
    additional: {reservation: survey}     # any other sbatch option, passed through

`executor(profile, folder)` turns it into a submitit executor writing its scripts and logs under
`folder`; `sbatch_script(...)` renders the script submitit would submit, for `--dry-run`.
`submit_training` sends `annotate train` as one job (one task per GPU: DistributedDataParallel)
that requeues itself on timeout or preemption and resumes from its saved state.
"""

from __future__ import annotations

import getpass
import json
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import submitit

from .errors import AnnotateError, ConfigError, JobsFailed


@dataclass(frozen=True)
class Profile:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    constraint: str | None = None
    gres: str | None = None  # e.g. "gpu:a100:4", for sites that ask for GPUs by generic resource
    signal_delay_s: int = 90
    setup: list = field(default_factory=list)
    additional: dict = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Profile":
        from .yamlconfig import read_fields

        profile = cls(**read_fields(path, cls, "SLURM profile", empty_ok=True))
        if profile.time_min < 1 or profile.cpus_per_task < 1 or profile.gpus_per_node < 0:
            raise ConfigError(f"{path}: time_min and cpus_per_task must be >= 1, gpus_per_node >= 0")
        return profile

    def submitit_parameters(self) -> dict:
        """Keyword arguments for submitit's SlurmExecutor.update_parameters."""
        parameters = {"time": self.time_min, "cpus_per_task": self.cpus_per_task,
                      "signal_delay_s": self.signal_delay_s, "setup": list(self.setup)}
        for name in ("partition", "account", "qos", "constraint", "gres"):
            if getattr(self, name):
                parameters[name] = getattr(self, name)
        if self.mem_gb:
            parameters["mem"] = f"{int(self.mem_gb * 1024)}M"
        if self.gpus_per_node:
            parameters["gpus_per_node"] = self.gpus_per_node
        if self.additional:
            parameters["additional_parameters"] = dict(self.additional)
        return parameters

    def gpus(self) -> int:
        """GPUs per node the profile asks for: gpus_per_node, or the count in `gres` (gpu[:type]:N)."""
        if self.gpus_per_node:
            return self.gpus_per_node
        for item in (self.gres or "").split(","):
            parts = item.strip().split(":")
            if parts[0] == "gpu":
                return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        return 0

    def to_dict(self) -> dict:
        return asdict(self)


def executor(profile: Profile, folder: str | Path, job_name: str = "annotate", array_parallelism: int = 256,
             max_num_timeout: int = 3, tasks_per_node: int = 1):
    """A submitit SlurmExecutor for `profile`, with scripts, logs and results under `folder/%j`;
    a job that times out is requeued up to `max_num_timeout` times when it is Checkpointable."""
    slurm = submitit.SlurmExecutor(folder=Path(folder) / "%j", max_num_timeout=max_num_timeout)
    slurm.update_parameters(job_name=job_name, array_parallelism=array_parallelism, ntasks_per_node=tasks_per_node,
                            **profile.submitit_parameters())
    return slurm


def sbatch_script(profile: Profile, folder: str | Path, job_name: str = "annotate", array_size: int | None = None,
                  tasks_per_node: int = 1, srun_args: list | None = None) -> str:
    """The sbatch script `executor(profile, folder, ...)` submits (for --dry-run and the docs),
    byte for byte: an array of `array_size` tasks when given. Built by submitit's own script
    builder with the command submitit runs (this interpreter by absolute path, the absolute
    folder), without needing srun on this machine."""
    import shlex
    import sys

    from submitit.slurm.slurm import _make_sbatch_string  # private, but the one that writes the script

    jobs = (Path(folder) / "%j").expanduser().absolute()
    parameters = {**profile.submitit_parameters(), "ntasks_per_node": tasks_per_node}
    if srun_args:
        parameters["srun_args"] = list(srun_args)
    if array_size:
        parameters["map_count"] = array_size
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(jobs))])
    return _make_sbatch_string(command=command, folder=jobs, job_name=job_name, **parameters)


def squeue_rows(fields: str) -> list[list[str]] | None:
    """This user's queued jobs, one per array element, each the split `fields` (an squeue -o
    format such as '%i %T'); None if squeue cannot be asked."""
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", fields], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [line.split() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else None


def queued_job_ids() -> set[str] | None:
    """Ids in the SLURM queue, one per array element ('123_4'); None if squeue cannot be asked."""
    rows = squeue_rows("%i")
    return None if rows is None else {row[0] for row in rows}


def job_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: state} for ids like '123' or '123_4', from squeue (this user's jobs), then sacct;
    '' where neither knows; None when neither command answers (not a SLURM machine)."""
    if not job_ids:
        return {}
    wanted = set(job_ids)
    # an array's tasks cancelled while pending may be accounted under the array's bare id ('123')
    arrays = {job.split("_")[0] for job in job_ids if "_" in job}
    queued = squeue_rows("%i %T")
    states = {row[0]: row[1] for row in queued or [] if len(row) >= 2 and row[0] in wanted}
    try:
        done = subprocess.run(["sacct", "-n", "-X", "-P", "--format", "JobID,State", "-j",
                               ",".join(sorted(wanted | arrays))], capture_output=True, text=True, timeout=30)
        accounted = done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        accounted = False
    if queued is None and not accounted:
        return None
    masters = {}
    for line in done.stdout.splitlines() if accounted else []:
        parts = line.replace("|", " ").split()
        if len(parts) < 2:
            continue
        for job in _expand_array_id(parts[0]):  # array tasks cancelled while pending: '123_[4-5,7]'
            if job in wanted:
                states.setdefault(job, parts[1].rstrip("+"))
        if parts[0] in arrays:
            masters[parts[0]] = parts[1].rstrip("+")
    for job in job_ids:  # or, as some Slurm versions do, the cancelled remainder under '123'
        master = masters.get(job.split("_")[0], "") if "_" in job else ""
        if job not in states and master in TERMINAL_BAD:
            states[job] = master
    return {job: states.get(job, "") for job in job_ids}


TERMINAL_BAD = ("CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def _expand_array_id(job_id: str) -> list[str]:
    """'123_[4-5,7%2]' -> ['123_4', '123_5', '123_7']; any other id as it is."""
    if "_[" not in job_id or not job_id.endswith("]"):
        return [job_id]
    array, spec = job_id[:-1].split("_[", 1)
    out = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out += [f"{array}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


# ------------------------------------------------------------------------------------------------
# training

class TrainJob(submitit.helpers.Checkpointable):
    """`annotate train` in a SLURM job. On timeout or preemption submitit calls `checkpoint`, which
    (by default) resubmits this same object: the requeued job trains into the same folder and so
    resumes from the newest saved state. It holds two paths, never a model or arrays."""

    def __init__(self, recipe: str, out_dir: str, max_epochs: int | None = None, max_minutes: float | None = None):
        self.recipe, self.out_dir = recipe, out_dir
        self.max_epochs, self.max_minutes = max_epochs, max_minutes

    def __call__(self) -> dict:
        from .train import Recipe, train

        environment = submitit.JobEnvironment()
        if environment.num_tasks > 1:  # one task per GPU: DistributedDataParallel
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        # The timeout signal may come in the middle of a step. Its submitit handler (requeue this
        # job, exit) is deferred to the end of the step, where the loop first saves its state: a
        # requeued job loses only the work since the signal, even before the first periodic save.
        timeout_signal = environment._usr_sig()
        requeue = signal.getsignal(timeout_signal)
        caught = []
        signal.signal(timeout_signal, lambda signum, frame: caught.append((signum, frame)))
        summary = train(Recipe.from_yaml(self.recipe), self.out_dir, log=lambda line: print(line, flush=True),
                        max_epochs=getattr(self, "max_epochs", None), max_minutes=getattr(self, "max_minutes", None),
                        stop_requested=lambda: bool(caught))
        if summary.get("stopped") and caught and callable(requeue):
            requeue(*caught[0])  # rank 0: requeues and exits
            raise SystemExit(0)  # the other ranks: rank 0's exit ends the job step
        # finished: the timeout signal may still come while submitit writes the result and Python exits.
        # Requeueing then would train nothing, and the signal's default action would end a completed
        # job as FAILED in the accounting, so a finished job ignores it (the hard limit still holds).
        signal.signal(timeout_signal, signal.SIG_IGN)
        return summary


# one rank failing ends the others at once, instead of leaving them at a collective until it times out
TRAIN_SRUN_ARGS = ["--kill-on-bad-exit=1"]
TRAIN_REQUEUES = 50  # timeouts a training job may requeue itself after


def training_executor(profile: Profile, out_dir: str | Path):
    tasks = max(1, profile.gpus())
    slurm = executor(profile, Path(out_dir) / "slurm", job_name="annotate-train", max_num_timeout=TRAIN_REQUEUES,
                     tasks_per_node=tasks)
    slurm.update_parameters(srun_args=TRAIN_SRUN_ARGS)
    return slurm


def submit_training(recipe: str | Path, out_dir: str | Path, profile: Profile, max_epochs: int | None = None,
                    max_minutes: float | None = None):
    """Submit `annotate train` as one job (capped like `train`'s max_epochs / max_minutes; a
    requeued job counts its minutes afresh); returns the submitit Job."""
    with submission_errors():
        return training_executor(profile, out_dir).submit(TrainJob(str(Path(recipe).resolve()),
                                                                   str(Path(out_dir).resolve()), max_epochs, max_minutes))


@contextmanager
def submission_errors():
    """sbatch refusing a job (unknown partition, account, limits) or missing: one clear line."""
    from submitit.core.utils import FailedJobError

    try:
        yield
    except FileNotFoundError as exc:
        raise AnnotateError(f"cannot submit to SLURM: {exc.filename or 'sbatch'} not found (is this a SLURM login node?)") from None
    except (FailedJobError, subprocess.CalledProcessError) as exc:
        text = str(getattr(exc, "stderr", None) or exc).strip()
        lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines() or ["(no message)"]
        raise AnnotateError(f"sbatch refused the job: {lines[-1].strip()}") from None


def training_progress(out_dir: str | Path) -> str:
    """'epoch 3, step 1200' from the run's state and logs, or 'starting'."""
    from .trainstate import latest_state

    out_dir = Path(out_dir)
    try:  # the job may be replacing these files as they are read
        history_file = out_dir / "metrics.json"
        epochs = len(json.loads(history_file.read_text())) if history_file.is_file() else 0
        state = latest_state(out_dir)
        step = json.loads((state / "state.json").read_text())["step"] if state is not None else 0
    except (OSError, ValueError):
        return "saving"
    return f"{epochs} epochs done, step {step} saved" if (epochs or step) else "starting"


def wait_for_training(job, out_dir: str | Path, log=print, poll_s: float = 5.0, lost_after_s: float = 45.0) -> dict:
    """Follow a training job to its end, logging its state (squeue, then sacct) and progress when
    they change; returns the training summary. A job the scheduler reports cancelled, failed or
    timed out without requeueing raises JobsFailed at once; one that leaves the queue with no
    accounting to say how, after `lost_after_s`."""

    out_dir = Path(out_dir)
    last, left_queue_at = "", None
    job_id = str(job.job_id)
    while True:
        finished = out_dir / "training.json"
        if finished.is_file():
            return json.loads(finished.read_text())
        if job.done():
            try:
                return job.result()
            except Exception as exc:  # noqa: BLE001 - reported as one line
                raise JobsFailed(f"training job {job_id} failed: {str(exc).strip().splitlines()[-1][:300]}; "
                                 f"its log is in {out_dir / 'slurm'}; rerun to resume") from None
        states = job_states([job_id])
        state = (states or {}).get(job_id, "").split(" ")[0]
        if state in TERMINAL_BAD and not job.done():
            time.sleep(poll_s)  # a timeout requeues itself: the next poll shows it queued again
            again = (job_states([job_id]) or {}).get(job_id, "").split(" ")[0]
            if again in TERMINAL_BAD and not finished.is_file() and not job.done():
                raise JobsFailed(f"training job {job_id} {again.lower().replace('_', ' ')} without finishing; "
                                 f"its log is in {out_dir / 'slurm'}; rerun the same command to resume from its "
                                 f"last state ({training_progress(out_dir)})")
            continue
        if states is not None and state == "":
            left_queue_at = left_queue_at or time.time()
            if time.time() - left_queue_at > lost_after_s:
                raise JobsFailed(f"training job {job_id} left the queue without finishing (no accounting to say "
                                 f"how); rerun the same command to resume from its last state")
        else:
            left_queue_at = None
        line = f"job {job_id} {state or job.state}: {training_progress(out_dir)}"
        if line != last:
            log(line)
            last = line
        time.sleep(poll_s)