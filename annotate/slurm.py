"""SLURM: cluster profiles, submitit executors and job states. With the training job itself
(annotate/training/job.py), the only module that imports submitit.

A profile is a YAML file (see slurm/profiles/) naming what every job of a run asks for:

    partition: gpu           account: astro          qos: normal
    gpus_per_node: 1         cpus_per_task: 8        mem_gb: 32
    time_min: 120            constraint: a100        signal_delay_s: 90
    gres: gpu:a100:1         # instead of gpus_per_node, where the site asks for generic resources
    setup: ["module load cuda/12.4", "source ~/venvs/annotate/bin/activate"]
    additional: {reservation: survey}     # any other sbatch option, passed through

`executor(profile, folder)` turns it into a submitit executor writing its scripts and logs under
`folder`; `sbatch_script(...)` renders the script submitit would submit, for `--dry-run`.
`job_states` reads the scheduler's word on jobs (squeue, then sacct). The training job that uses
this backend lives in annotate/training/job.py.
"""

from __future__ import annotations

import getpass
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import submitit

from .errors import AnnotateError, ConfigError


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
    byte for byte: an array of `array_size` tasks when given and above 1 (submitit submits a
    single task as a plain job, not an array of one). Built by submitit's own script
    builder with the command submitit runs (this interpreter by absolute path, the absolute
    folder), without needing srun on this machine."""
    import shlex
    import sys

    from submitit.slurm.slurm import _make_sbatch_string  # private, but the one that writes the script

    jobs = (Path(folder) / "%j").expanduser().absolute()
    parameters = {**profile.submitit_parameters(), "ntasks_per_node": tasks_per_node}
    if srun_args:
        parameters["srun_args"] = list(srun_args)
    if array_size and array_size > 1:
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


def profile_for_executor(profile: str | Path | None) -> Profile:
    """The profile of `--executor slurm --profile P`; ConfigError naming the flag without one."""
    if profile is None:
        raise ConfigError("--executor slurm needs --profile (a YAML file, see slurm/profiles/)")
    return Profile.from_yaml(profile)
