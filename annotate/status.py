"""`annotate status RUN_DIR`: where a sharded run or a training run stands, from its own files
and the scheduler.

A sharded run's folder (`<output>.run/`, shards.py) gives the plan, the finished shard files and,
under `slurm/<job id>/`, one folder per SLURM job with its logs; a training folder (`--out` of
`annotate train`) gives its saved state, its metrics and its jobs the same way. Job states come
from `squeue` while a job is queued, from `sacct` once it has left (where accounting runs), and
otherwise say that the job has left the queue. Nothing is unpickled.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .errors import ConfigError

SHOWN = 10  # missing shards and failed jobs listed by name


def job_states(job_ids: list[str]) -> dict[str, str] | None:
    """{job id: state} for ids like '123' or '123_4', from squeue (this user's jobs), then sacct;
    '' where neither knows; None when neither command answers (not a SLURM machine)."""
    from .slurm import squeue_rows

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


def _shard_jobs(slurm_folder: Path) -> dict[str, str]:
    """{job id: shard name} of the shard jobs submitted from a run folder (shards.SHARD_JOBS)."""
    from .shards import SHARD_JOBS

    try:
        return json.loads((slurm_folder / SHARD_JOBS).read_text())
    except (OSError, ValueError):
        return {}


def _job_lines(slurm_folder: Path, missing: set | None = None) -> list[str]:
    """One summary line for the jobs under `slurm_folder`, and one per failed or unknown job
    (with `missing`, a sharded run's missing shard names: only the jobs of those shards)."""
    folders = [p for p in slurm_folder.iterdir() if p.is_dir()] if slurm_folder.is_dir() else []
    # an array's own folder (its sbatch script) sits beside those of its tasks ('<array>_<task>')
    arrays = {p.name.split("_")[0] for p in folders if "_" in p.name}
    jobs = sorted((p for p in folders if p.name not in arrays), key=lambda p: _job_key(p.name))
    if not jobs:
        return ["jobs: none submitted from this folder"]
    states = job_states([p.name for p in jobs])
    if states is None:
        return [f"jobs: {len(jobs)}, states unknown (neither squeue nor sacct answers here); logs under {slurm_folder}"]
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state or "LEFT QUEUE"] = counts.get(state or "LEFT QUEUE", 0) + 1
    lines = [f"jobs: {len(jobs)} ({', '.join(f'{n} {s.lower()}' for s, n in sorted(counts.items()))}); "
             f"logs under {slurm_folder}"]
    bad = [p for p in jobs if states[p.name] not in ("RUNNING", "PENDING", "COMPLETED", "COMPLETING", "REQUEUED")]
    if missing is not None:  # a failed job whose shard a later job finished is history, not news
        shard_of = _shard_jobs(slurm_folder)
        bad = [p for p in bad if shard_of.get(p.name) in missing or p.name not in shard_of]
    for job in bad[:SHOWN]:
        lines.append(f"  job {job.name}: {states[job.name].lower() or 'left the queue (no accounting to say how)'}"
                     f"{_last_error(job)}")
    if len(bad) > SHOWN:
        lines.append(f"  ... and {len(bad) - SHOWN} more")
    return lines


def _job_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("_"))


def _last_error(job_folder: Path) -> str:
    """'; last error line: ...' from the job's stderr log, when it has one."""
    for log in sorted(job_folder.glob("*_log.err")):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error:" in line]
        if errors:
            return f"; last error: {errors[-1][:200]}"
    return ""


def run_status(folder: str | Path) -> list[str]:
    """The lines `annotate status` prints for a sharded run folder or a training folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        run = folder.with_name(folder.name + ".run")
        hint = f"; its sharded run folder is {run}" if run.is_dir() else ""
        raise ConfigError(f"{folder} is a file, not a run folder (give <output>.run/ or a training folder){hint}")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    if (folder / "plan.json").is_file():
        return _shard_run_status(folder)
    if any((folder / name).exists() for name in ("state", "training.json", "metrics.json", "recipe.json", "slurm")):
        return _training_status(folder)
    raise ConfigError(f"{folder} is neither a sharded run folder (<output>.run/ with plan.json) "
                      "nor a training folder (with recipe.json, state/, metrics.json, training.json or slurm/)")


def _shard_run_status(folder: Path) -> list[str]:
    from .merge import shard_file
    from .shards import plan_shards

    plan = json.loads((folder / "plan.json").read_text())
    shards = plan_shards(plan["rows"], plan["shard_size"])
    done = [s for s in shards if shard_file(folder, s).is_file()]
    missing = [s for s in shards if s not in done]
    lines = [f"run {folder}: catalog {plan['catalog']['path']} ({plan['rows']} rows), survey {plan['survey']}, "
             f"model {plan['model']}",
             f"shards: {len(done)} of {len(shards)} done ({sum(s.stop - s.start for s in done)} rows), "
             f"{len(missing)} missing"]
    for shard in missing[:SHOWN]:
        lines.append(f"  {shard.name}: rows {shard.start}-{shard.stop}")
    if len(missing) > SHOWN:
        lines.append(f"  ... and {len(missing) - SHOWN} more")
    jobs = _job_lines(folder / "slurm", {s.name for s in missing})
    lines += jobs
    output = folder.with_name(folder.name[:-len(".run")]) if folder.name.endswith(".run") else None
    if output is not None and output.is_file() and not missing:
        lines.append(f"merged: {output}")
    elif not missing:
        lines.append("every shard is done: rerun the same `annotate run` command to merge")
    elif jobs == ["jobs: none submitted from this folder"]:
        from .shards import index_ranges

        lines.append("no job was submitted from this folder: if the shards run as a plain sbatch array "
                     "(slurm/annotate-array.sbatch), `squeue` shows them; resubmit the array for the missing "
                     f"ones (--array={index_ranges([s.index for s in missing])}) or rerun the same `annotate run` "
                     "command to compute them here; the same command merges once every shard is done")
    else:
        lines.append("rerun the same `annotate run` command to compute the missing shards (and then merge)")
    return lines


def _training_status(folder: Path) -> list[str]:
    from .slurm import training_progress

    finished = folder / "training.json"
    if finished.is_file():
        summary = json.loads(finished.read_text())
        test = {k: round(v, 4) for k, v in summary.get("test", {}).items() if isinstance(v, float)}
        lines = [f"training {folder}: finished, best epoch {summary.get('best_epoch')} of "
                 f"{summary.get('recipe', {}).get('epochs')}; test {json.dumps(test)}"]
    else:
        lines = [f"training {folder}: {training_progress(folder)}"]
        history = folder / "metrics.json"
        if history.is_file():
            last = json.loads(history.read_text())[-1]
            lines.append(f"last epoch {last['epoch']}: validation loss {last['val_loss']:.4f}, "
                         f"score {last.get('val_score', float('nan')):.4f}")
    return lines + _job_lines(folder / "slurm")
