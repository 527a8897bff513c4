"""Where a sharded run's shard tasks run: the `Executor` protocol and its backends.

    debug   each task in this process, one after another (what a debugger or profiler can follow)
    local   Dask on this machine, with the run's --scheduler and --workers
    slurm   a SLURM job array through submitit, followed until every shard is done or has failed

`executor_for(name, ...)` picks one from `EXECUTORS`; a backend runs `fn(task)` for each task and
raises JobsFailed, naming the shards, when some did not finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from .errors import ConfigError, JobsFailed
from .runfolder import RunFolder


class Executor(Protocol):
    name: str

    def run(self, fn: Callable, tasks: list, log=print) -> None:
        """fn(task) for every task; JobsFailed if any did not finish."""

    def script(self, n_tasks: int) -> str | None:
        """What a dry run shows of how the tasks would be submitted (None: nothing to show)."""


@dataclass(frozen=True)
class DebugExecutor:
    name: str = "debug"

    def run(self, fn: Callable, tasks: list, log=print) -> None:
        for task in tasks:
            fn(task)

    def script(self, n_tasks: int) -> str | None:
        return None


@dataclass(frozen=True)
class LocalExecutor:
    scheduler: str = "auto"
    n_workers: int | None = None
    name: str = "local"

    def run(self, fn: Callable, tasks: list, log=print) -> None:
        from .parallel import map_unordered, resolve_scheduler

        # a shard is a large task: 'auto' (which counts tasks of TASK_ROWS rows) means worker
        # processes; and it runs the model, which a process forked from one that has used torch
        # may not, so they are started afresh
        scheduler = resolve_scheduler("distributed" if self.scheduler == "auto" else self.scheduler, len(tasks),
                                      self.n_workers, forkable=False)
        for _ in map_unordered(fn, tasks, scheduler=scheduler, n_workers=self.n_workers):
            pass

    def script(self, n_tasks: int) -> str | None:
        return None


@dataclass(frozen=True)
class SlurmExecutor:
    """One array job of the profile's shape; each task's logs under `<run>/slurm/<job id>/`."""

    profile: object  # annotate.slurm.Profile, read when the executor is made (`executor_for`)
    folder: RunFolder
    name: str = "slurm"

    def run(self, fn: Callable, tasks: list, log=print) -> None:
        from .slurm import executor as slurm_executor
        from .slurm import submission_errors

        with submission_errors():
            jobs = slurm_executor(self.profile, self.folder.slurm, job_name="annotate-run").map_array(fn, tasks)
        self.folder.record_jobs({str(job.job_id): task.name for job, task in zip(jobs, tasks)})
        failed = wait_for_shards(jobs, tasks, self.folder, log=log)
        if failed:
            raise JobsFailed(failed_message(failed, len(tasks)))

    def script(self, n_tasks: int) -> str | None:
        from .slurm import sbatch_script

        return sbatch_script(self.profile, self.folder.slurm, job_name="annotate-run", array_size=n_tasks)


def _slurm_profile(profile):
    from .slurm import profile_for_executor

    return profile_for_executor(profile)


EXECUTORS = {
    "debug": lambda settings, profile, folder: DebugExecutor(),
    "local": lambda settings, profile, folder: LocalExecutor(settings.scheduler, settings.n_workers),
    # the profile is read here: none, or one that does not read, is refused before any plan is written
    "slurm": lambda settings, profile, folder: SlurmExecutor(_slurm_profile(profile), folder),
}


def executor_for(name: str, settings, profile, folder: RunFolder) -> Executor:
    """The backend called `name`, set up from the run's settings (and the SLURM profile)."""
    try:
        return EXECUTORS[name](settings, profile, folder)
    except KeyError:
        raise ConfigError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}") from None


LOST_AFTER_S = 45.0  # a job gone from the queue this long without its shard file has failed


def wait_for_shards(jobs, tasks: list, folder: RunFolder, poll_s: float = 2.0, lost_after_s: float | None = None,
                    log=print) -> list[tuple[str, str, str]]:
    """Wait for every shard job; returns (shard, job id, what happened) per failed shard. A shard
    is done when its file exists; failed when the scheduler says its job was cancelled, failed or
    timed out (squeue, then sacct: within a poll of the scheduler knowing), when submitit reports
    an error, or when its job has left the queue without writing the file for `lost_after_s`
    (no accounting to ask: cancelled before it started, killed, lost with a node)."""
    import time

    from .slurm import TERMINAL_BAD, job_states

    lost_after_s = LOST_AFTER_S if lost_after_s is None else lost_after_s
    pending = {i: job for i, job in enumerate(jobs)}
    left_queue_at: dict[int, float] = {}
    failed, last_line = [], ""
    in_queue = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED", "RESIZING")
    while pending:
        states = job_states([str(job.job_id) for job in pending.values()])
        for i, job in list(pending.items()):
            name = tasks[i].name
            shard_file = folder.shard_file(name)
            if shard_file.exists():
                del pending[i]
                continue
            state = (states or {}).get(str(job.job_id), "").split(" ")[0]
            if state in TERMINAL_BAD:
                failed.append((name, str(job.job_id), state.lower().replace("_", " ")))
                del pending[i]
                continue
            if job.done():
                try:
                    job.result()
                except Exception as exc:  # noqa: BLE001 - reported per shard, the others kept
                    word = _scheduler_word(job)  # a cancel or timeout reads as such, not as submitit's error
                    failed.append((name, str(job.job_id), word or f"failed: {str(exc).splitlines()[0][:200]}"))
                else:
                    if not shard_file.exists():
                        failed.append((name, str(job.job_id), "finished without its shard file"))
                del pending[i]
                continue
            if states is not None and state not in in_queue:
                since = left_queue_at.setdefault(i, time.time())
                if time.time() - since > lost_after_s:
                    failed.append((name, str(job.job_id), "left the queue without finishing (no accounting to say how)"))
                    del pending[i]
            else:
                left_queue_at.pop(i, None)
        running = sum(1 for job in pending.values()
                      if (states or {}).get(str(job.job_id), "").startswith("RUNNING"))
        line = (f"shards: {len(tasks) - len(pending) - len(failed)} done, {running} running, "
                f"{len(pending) - running} waiting, {len(failed)} failed")
        if line != last_line:
            log(line)
            last_line = line
        if pending:
            time.sleep(poll_s)
    return failed


def _scheduler_word(job) -> str:
    """'cancelled', 'timeout', ... when the scheduler (squeue/sacct, or submitit's own view of
    sacct) says the job ended so; '' otherwise."""
    from .slurm import TERMINAL_BAD, job_states

    for _ in range(3):  # accounting may lag the end of the job by a second or two
        state = (job_states([str(job.job_id)]) or {}).get(str(job.job_id), "").split(" ")[0]
        if state not in TERMINAL_BAD:
            state = str(getattr(job, "state", "") or "").split(" ")[0]
        if state in TERMINAL_BAD:
            return state.lower().replace("_", " ")
        if state not in ("", "UNKNOWN", "RUNNING", "COMPLETING"):
            return ""
        import time

        time.sleep(1.0)
    return ""


def failed_message(failed: list[tuple[str, str, str]], n_tasks: int) -> str:
    """One line: how many shards did not finish and how, the first few by name, what to do."""
    failed = sorted(failed)
    counts: dict[str, int] = {}
    for _, _, how in failed:
        key = how.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    how = ", ".join(f"{n} {what}" for what, n in counts.items())
    shown = "; ".join(f"{name} (job {job}): {what}" for name, job, what in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return (f"{len(failed)} of {n_tasks} shards did not finish ({how}): nothing was merged; rerun the same "
            f"command to redo only them. {shown}{more}")
