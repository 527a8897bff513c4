"""`annotate train` as a SLURM job (annotate.slurm's backend): one job, one task per GPU
(DistributedDataParallel), that saves its state when the scheduler's timeout signal comes and
requeues itself, resuming from that state; and what a training folder says while it runs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import submitit

from ..errors import JobsFailed
from ..slurm import Profile, executor, job_states, submission_errors, TERMINAL_BAD


class TrainJob(submitit.helpers.Checkpointable):
    """`annotate train` in a SLURM job. On timeout or preemption submitit calls `checkpoint`, which
    (by default) resubmits this same object: the requeued job trains into the same folder and so
    resumes from the newest saved state. It holds two paths, never a model or arrays."""

    def __init__(self, recipe: str, out_dir: str, max_epochs: int | None = None, max_minutes: float | None = None):
        self.recipe, self.out_dir = recipe, out_dir
        self.max_epochs, self.max_minutes = max_epochs, max_minutes

    def __call__(self) -> dict:
        from .loop import train
        from .recipe import Recipe

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


def training_progress(out_dir: str | Path) -> str:
    """'epoch 3, step 1200' from the run's state and logs, or 'starting'."""
    from .state import latest_state

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
                # what the scheduler says happened: a cancelled or timed-out job's own last line is
                # only srun's notice of the signal; a failed one's is the error that ended it
                state = ((job_states([job_id]) or {}).get(job_id, "") or "").split(" ")[0]
                if state in TERMINAL_BAD and state != "FAILED":
                    raise JobsFailed(f"training job {job_id} {state.lower().replace('_', ' ')} without finishing; its "
                                     f"log is in {out_dir / 'slurm'}; rerun the same command to resume from its last "
                                     f"state ({training_progress(out_dir)})") from None
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
