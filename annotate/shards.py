"""`annotate run --shard-size N`: plan, run shards (locally or as a SLURM array), merge once.

The run folder (`<output>.run/`) holds:

    plan.json                  the catalog (path, size, mtime), rows, shard size, model, survey
    shards/shard-00003.npz     one finished shard: predictions for rows [start, stop) (no pickle)
    stores/shard-00003.h5      that shard's spectra store
    slurm/<job id>/            submitit scripts and logs (executor slurm)

A shard is written to a temporary name and renamed when complete, so a shard file that exists is
complete and is never recomputed; a re-run after any interruption computes only the missing
shards. The merge checks that the shards cover every row exactly once, in order, then writes the
annotated catalog with the streaming FITS writer. Tasks receive file paths and row ranges only.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, JobsFailed
from .invocation import argv

PLAN_VERSION = 2  # 2: shard files hold the template fit's keys


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(n_rows: int, shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise ConfigError("--shard-size must be at least 1")
    return [Shard(i, start, min(start + shard_size, n_rows)) for i, start in enumerate(range(0, n_rows, shard_size))]


def run_folder(out: Path) -> Path:
    return out.with_name(out.name + ".run")


def _catalog_identity(catalog: Path) -> dict:
    stat = catalog.stat()
    return {"path": str(catalog.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def make_plan(catalog: Path, n_rows: int, shard_size: int, model_dir: Path, survey: str, fit: bool) -> dict:
    """What a run folder belongs to: the catalog (path, size, mtime), rows, shard size, model
    and its weights, survey, and the template fit (its settings and template set, or None): a
    run folder holds one kind of shard."""
    from .checkpoint import weights_sha256
    from .pipeline import fit_provenance

    return {"version": PLAN_VERSION, "catalog": _catalog_identity(catalog), "rows": n_rows, "shard_size": shard_size,
            "model": str(Path(model_dir).resolve()), "weights_sha256": weights_sha256(model_dir), "survey": survey,
            "fit": fit_provenance(fit)}


def write_plan(folder: Path, plan: dict) -> None:
    """Create or check the run's plan: a run folder belongs to one catalog, model and shard size."""
    path = folder / "plan.json"
    if not path.exists():
        # array tasks starting together each write their own tmp file; the first hard link wins and
        # the others then find an identical plan
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".plan.json.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(plan, indent=1) + "\n")
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: identical plans, so the last rename is fine
            os.replace(tmp, path)
            return
        finally:
            tmp.unlink(missing_ok=True)
    old = json.loads(path.read_text())
    if old != plan:
        changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        raise ConfigError(f"{folder} holds a run with other {', '.join(changed)}; remove it or choose another --out")


def run_shard(task: dict) -> str:
    """Ingest and predict rows [start, stop) of the catalog; write shards/<name>.npz. Runs on a
    Dask worker or a SLURM array task; returns the shard file's path."""
    from .checkpoint import load_checkpoint
    from .catalogs import read_catalog
    from .pipeline import fit_predictions, resolve_paths
    from .predict import precision, predict_store
    from .store import ingest, prepare_store, read_status
    from .surveys import load_survey

    folder, start, stop = Path(task["folder"]), task["start"], task["stop"]
    target = folder / "shards" / f"{task['name']}.npz"
    if os.environ.get("SLURM_JOB_ID"):  # the job's log says which shard it ran
        print(f"{task['name']}: rows {start}-{stop} of {task['catalog']}", flush=True)
    if target.exists():
        return str(target)
    survey = load_survey(task["survey"])
    table = read_catalog(Path(task["catalog"]), survey, rows=slice(start, stop))
    reference = survey.reference(table)
    reasons: list[str] = []
    paths, refused = resolve_paths(survey.spectrum_paths(table, reasons), Path(task["spectra_root"]), reasons)
    model, card = load_checkpoint(task["model"], task["device"])
    store = folder / "stores" / f"{task['name']}.h5"
    store.parent.mkdir(exist_ok=True)
    _, notes = prepare_store(store, reference["object_id"], paths, card.grid, survey=survey.name,
                             reader=survey.reader, catalog=task["catalog"])
    for line in notes:
        print(f"{task['name']}: {line}", flush=True)
    ingest(store, paths, refused, reader=survey.reader, scheduler="sync", reasons=reasons,
           bad_bits=survey.bad_pixel_bits)
    pred = predict_store(model, card, store, batch_size=task["batch_size"], device=task["device"])
    pred.update(fit_predictions(store, pred, card.grid, task.get("fit", True)))
    _, errors = read_status(store)
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, start=start, stop=stop, errors=np.array(errors, dtype=str), precision=precision(task["device"]), **pred)
    tmp.replace(target)
    return str(target)


def run_sharded(settings, shard_size: int, executor: str = "local", profile: str | Path | None = None,
                dry_run: bool = False, log=print, only_shard: int | None = None):
    """Plan, run the missing shards with `executor`, merge. Returns the RunResult, or None for a
    dry run (which prints the plan and submits nothing) and for `only_shard`: run that one shard
    here and stop (what each task of slurm/annotate-array.sbatch does; a later run merges)."""
    from .checkpoint import model_folder
    from .catalogs import catalog_rows
    from .surveys import load_survey
    from .writeback import default_output_path

    catalog = Path(settings.catalog)
    survey = load_survey(settings.survey)
    n_rows = catalog_rows(catalog, survey)  # the shards and the merge read the rows they need
    out = Path(settings.out) if settings.out else default_output_path(catalog)
    model_dir = model_folder(settings.model)
    from .pipeline import check_outputs

    check_outputs(out, catalog, None, model_dir)
    folder = run_folder(out.resolve())  # tasks on other nodes get absolute paths
    shards = plan_shards(n_rows, shard_size)
    plan = make_plan(catalog, n_rows, shard_size, model_dir, survey.name, settings.fit)
    done = [s for s in shards if (folder / "shards" / f"{s.name}.npz").exists()]
    missing = [s for s in shards if s not in done]
    if dry_run:
        log(f"plan: {n_rows} rows in {len(shards)} shards of up to {shard_size}; {len(done)} done, "
            f"{len(missing)} to run with executor {executor}; run folder {folder}")
        for shard in missing[:20]:
            log(f"  {shard.name}: rows {shard.start}-{shard.stop}")
        if len(missing) > 20:
            log(f"  ... and {len(missing) - 20} more")
        if executor == "slurm":
            from .slurm import sbatch_script

            log(sbatch_script(_profile(profile), folder / "slurm", job_name="annotate-run", array_size=len(missing)))
        if missing:
            log("or, with plain sbatch (one array task per missing shard; then this command without --dry-run "
                "merges):")
            log("  " + sbatch_array_command(catalog, shard_size, [s.index for s in missing], argv()))
        return None
    from .pipeline import check_output_room

    check_output_room(out, catalog, n_rows)
    write_plan(folder, plan)
    root = Path(settings.spectra_root) if settings.spectra_root else catalog.parent

    def task(s: Shard) -> dict:
        return {"folder": str(folder), "name": s.name, "start": s.start, "stop": s.stop, "catalog": str(catalog.resolve()),
                "survey": survey.name, "spectra_root": str(root.resolve()), "model": str(model_dir.resolve()),
                "device": settings.device, "batch_size": settings.batch_size, "fit": settings.fit}

    if only_shard is not None:
        if not 0 <= only_shard < len(shards):
            raise ConfigError(f"--shard {only_shard}: the plan has shards 0-{len(shards) - 1}")
        log(f"{shards[only_shard].name} (rows {shards[only_shard].start}-{shards[only_shard].stop}): "
            f"{run_shard(task(shards[only_shard]))}")
        return None
    from .pipeline import output_lock, remove_stale_temporaries

    notes: list[str] = []
    with output_lock(out, notes=notes):
        remove_stale_temporaries(out, notes)
        for line in notes:
            log(line)
        run_missing([task(s) for s in missing], len(shards), settings, executor, profile, folder, log)
        return merge_run(catalog, survey, model_dir, plan, folder, shards, out)


def run_missing(tasks: list, n_shards: int, settings, executor: str, profile, folder: Path, log=print) -> None:
    """Run the shard tasks not done yet, here (Dask) or as a SLURM array; JobsFailed if any fails."""
    if not tasks:
        return
    log(f"running {len(tasks)} of {n_shards} shards ({executor})")
    if executor == "local":
        from .parallel import map_unordered

        for _ in map_unordered(run_shard, tasks, scheduler=settings.scheduler, n_workers=settings.n_workers):
            pass
    elif executor == "slurm":
        from .slurm import executor as slurm_executor
        from .slurm import submission_errors

        with submission_errors():
            jobs = slurm_executor(_profile(profile), folder / "slurm", job_name="annotate-run").map_array(run_shard, tasks)
        record_shard_jobs(folder / "slurm", {str(job.job_id): task["name"] for job, task in zip(jobs, tasks)})
        failed = wait_for_shards(jobs, tasks, folder, log=log)
        if failed:
            raise JobsFailed(failed_message(failed, len(tasks)))
    else:
        raise ConfigError(f"unknown executor {executor!r}; valid: local, slurm")


def shard_precision(folder: Path, shards: list) -> str:
    """'fp32' or 'bf16' when every shard was predicted so, else 'mixed'."""
    from .merge import shard_file

    found = set()
    for shard in shards:
        with np.load(shard_file(folder, shard), allow_pickle=False) as data:
            found.add(str(data["precision"]) if "precision" in data.files else "fp32")
    return found.pop() if len(found) == 1 else "mixed"


def merge_run(catalog: Path, survey, model_dir: Path, plan: dict, folder: Path, shards: list, out: Path):
    """The annotated catalog from the finished shards (merge.py), with the run's provenance."""
    from .checkpoint import read_card
    from .merge import merge_shards
    from .pipeline import RunResult
    from .writeback import provenance_cards

    card = read_card(model_dir)  # the name and encoding only: the merge never builds the model
    provenance = provenance_cards(card.name or model_dir.name, plan["weights_sha256"], card.render.encoding,
                                  survey.name, 0, shard_precision(folder, shards), plan.get("fit"), catalog=catalog,
                                  model_dir=model_dir)
    provenance["ANNSHRDS"] = (len(shards), "shards the run was split into")
    merged = merge_shards(catalog, survey, folder, shards, plan["rows"], out, provenance)
    return RunResult(output=out, store=folder / "stores", n_rows=plan["rows"], n_predicted=merged["n_predicted"],
                     counts=merged["counts"], summary=merged["summary"], errors=merged["errors"])


LOST_AFTER_S = 45.0  # a job gone from the queue this long without its shard file has failed


def wait_for_shards(jobs, tasks: list, folder: Path, poll_s: float = 2.0, lost_after_s: float | None = None,
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
            name = tasks[i]["name"]
            shard_file = folder / "shards" / f"{name}.npz"
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


SHARD_JOBS = "shard-jobs.json"  # in <run>/slurm/: which shard each submitted job ran


def record_shard_jobs(slurm_folder: Path, jobs: dict[str, str]) -> None:
    """Add {job id: shard name} to the run's record of submitted shard jobs (for annotate status)."""
    path = slurm_folder / SHARD_JOBS
    known = json.loads(path.read_text()) if path.is_file() else {}
    tmp = path.with_name(path.name + ".tmp")
    slurm_folder.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({**known, **jobs}, indent=1) + "\n")
    tmp.replace(path)


def index_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    parts, start = [], None
    ordered = sorted(indices)
    for i, value in enumerate(ordered):
        if start is None:
            start = value
        if i + 1 == len(ordered) or ordered[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


# options of `annotate run` that the array script sets itself or that do not belong in it
_NOT_FOR_ARRAY = {"--catalog": 1, "--shard-size": 1, "--executor": 1, "--profile": 1, "--dry-run": 0, "--shard": 1,
                  "--scheduler": 1, "--no-progress": 0}


def sbatch_array_command(catalog: Path, shard_size: int, indices: list[int], argv: list[str]) -> str:
    """The complete `sbatch --array=... slurm/annotate-array.sbatch CATALOG SHARD_SIZE [options]`
    for the shards `indices`, with the run options of `argv` (an `annotate run ...` command line)."""
    options, i = [], 1 if argv[:1] == ["run"] else 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in _NOT_FOR_ARRAY:
            i += 1 + (_NOT_FOR_ARRAY[name] if "=" not in argv[i] else 0)
            continue
        options.append(argv[i])
        i += 1
    script = Path(__file__).resolve().parent.parent / "slurm" / "annotate-array.sbatch"
    script_text = str(script) if script.is_file() else "slurm/annotate-array.sbatch"
    return shlex.join(["sbatch", f"--array={index_ranges(indices)}%64", script_text, str(Path(catalog).resolve()),
                       str(shard_size), *options])


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


def _profile(profile):
    from .slurm import Profile

    if profile is None:
        raise ConfigError("--executor slurm needs --profile (a YAML file, see slurm/profiles/)")
    return Profile.from_yaml(profile)

