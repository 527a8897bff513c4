"""`annotate status RUN_DIR`: where a sharded run or a training run stands, from its own files
and the scheduler.

A sharded run's folder (`<output>.run/`, runfolder.py) gives the plan, the finished shard files and,
under `slurm/<job id>/`, one folder per SLURM job with its logs; a training folder (`--out` of
`annotate train`) gives its saved state, its metrics and its jobs the same way. Job states come
from `squeue` while a job is queued, from `sacct` once it has left (where accounting runs), and
otherwise say that the job has left the queue. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError
from .runfolder import RunFolder

SHOWN = 10  # missing shards and failed jobs listed by name


def _job_lines(slurm_folder: Path, missing: set | None = None) -> list[str]:
    """One summary line for the jobs under `slurm_folder`, and one per failed or unknown job
    (with `missing`, a sharded run's missing shard names: only the jobs of those shards)."""
    folders = [p for p in slurm_folder.iterdir() if p.is_dir()] if slurm_folder.is_dir() else []
    # an array's own folder (its sbatch script) sits beside those of its tasks ('<array>_<task>')
    arrays = {p.name.split("_")[0] for p in folders if "_" in p.name}
    jobs = sorted((p for p in folders if p.name not in arrays), key=lambda p: _job_key(p.name))
    if not jobs:
        return ["jobs: none submitted from this folder"]
    from .slurm import job_states

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
        shard_of = RunFolder(slurm_folder.parent).recorded_jobs()
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
    """'; last error: ...' from the job's stderr log, when it has one: its last line that names an
    error, or, where none does (a profile's setup line that failed with its own words), its last
    line that is not submitit's own logging."""
    for log in sorted(job_folder.glob("*_log.err")):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error:" in line] or \
            [line for line in lines if not line.startswith("submitit ")]
        if errors:
            return f"; last error: {errors[-1][:200]}"
    return ""


def run_status(folder: str | Path) -> list[str]:
    """The lines `annotate status` prints for a sharded run folder or a training folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        run = RunFolder.for_output(folder).path
        hint = f"; its sharded run folder is {run}" if run.is_dir() else ""
        raise ConfigError(f"{folder} is a file, not a run folder (give <output>.run/ or a training folder){hint}")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    if RunFolder(folder).is_run():
        return _shard_run_status(RunFolder(folder))
    if any((folder / name).exists() for name in ("state", "training.json", "metrics.json", "recipe.json", "slurm")):
        return _training_status(folder)
    raise ConfigError(f"{folder} is neither a sharded run folder (<output>.run/ with plan.json) "
                      "nor a training folder (with recipe.json, state/, metrics.json, training.json or slurm/)")


def _shard_run_status(run: RunFolder) -> list[str]:
    from .shards import plan_shards

    folder = run.path
    plan = run.read_plan()
    shards = plan_shards(plan["rows"], plan["shard_size"])
    done = run.done(shards)
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
    output = run.output
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

    finished = folder / "training.json"
    if finished.is_file():
        summary = json.loads(finished.read_text())
        test = {k: round(v, 4) for k, v in summary.get("test", {}).items() if isinstance(v, float)}
        lines = [f"training {folder}: finished, best epoch {summary.get('best_epoch')} of "
                 f"{summary.get('recipe', {}).get('epochs')}; test {json.dumps(test)}"]
    else:
        from .training.job import training_progress

        lines = [f"training {folder}: {training_progress(folder)}"]
        history = folder / "metrics.json"
        if history.is_file():
            last = json.loads(history.read_text())[-1]
            lines.append(f"last epoch {last['epoch']}: validation loss {last['val_loss']:.4f}, "
                         f"score {last.get('val_score', float('nan')):.4f}")
    return lines + _job_lines(folder / "slurm")
