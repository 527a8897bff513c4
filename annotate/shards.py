"""`annotate run --shard-size N`: plan, run shards (locally or as a SLURM array), merge once.

The run folder (`<output>.run/`, `runfolder.RunFolder`) holds the plan, the finished shard files
with their checksums, the shards' spectra stores and the SLURM logs. A shard task (`ShardTask`)
carries file paths, a row range and settings only; it runs the same ingest -> predict -> fit code
as a single run (`task.annotate_task`) and writes its shard file whole. A re-run after any
interruption computes only the missing shards; the merge checks that the shards cover every row
exactly once, in order, and that each file is the one written, then writes the annotated catalog
with the streaming writer. Where the tasks run is the executor's business (`executors.py`).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .invocation import argv
from .runfolder import RunFolder
from .task import ShardTask, annotate_task_here

PLAN_VERSION = 4  # 2: shard files hold the template fit's keys; 3: each shard file has its checksum; 4: the fit's stellar labels


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


def _catalog_identity(catalog: Path) -> dict:
    stat = catalog.stat()
    return {"path": str(catalog.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def make_plan(catalog: Path, n_rows: int, shard_size: int, model_dir: Path, survey: str, fit: bool,
              reader: str = "") -> dict:
    """What a run folder belongs to: the catalog (path, size, mtime), rows, shard size, model
    and its weights, survey, and the template fit (its settings and template set, or None): a
    run folder holds one kind of shard."""
    from .checkpoint import weights_sha256
    from .pipeline import fit_provenance

    return {"version": PLAN_VERSION, "catalog": _catalog_identity(catalog), "rows": n_rows, "shard_size": shard_size,
            "model": str(Path(model_dir).resolve()), "weights_sha256": weights_sha256(model_dir), "survey": survey,
            "fit": fit_provenance(fit, reader)}


def run_shard(task: ShardTask) -> str:
    """Ingest, predict and fit rows [start, stop) of the catalog (`task.annotate_task`, as a
    single run does, on the task's own scheduler: `shard_scheduler`); write the shard file.
    Returns its path."""
    from .predict import precision

    folder = RunFolder(Path(task.folder))
    target = folder.shard_file(task.name)
    if os.environ.get("SLURM_JOB_ID"):  # the job's log says which shard it ran
        print(f"{task.name}: rows {task.start}-{task.stop} of {task.catalog}", flush=True)
    if target.exists():
        return str(target)
    Path(task.store).parent.mkdir(exist_ok=True)
    done = annotate_task_here(task, task.scheduler, task.n_workers,
                              log=lambda line: print(f"{task.name}: {line}", flush=True))
    folder.write_shard(task.name, {"start": task.start, "stop": task.stop, "errors": np.array(done.errors, dtype=str),
                                   "precision": precision(task.device), **done.pred})
    return str(target)


def run_sharded(settings, shard_size: int, executor: str = "local", profile: str | Path | None = None,
                dry_run: bool = False, log=print, only_shard: int | None = None):
    """Plan, run the missing shards with `executor` (executors.EXECUTORS), merge. Returns the
    RunResult, or None for a dry run (which prints the plan and submits nothing) and for
    `only_shard`: run that one shard here and stop (what each task of
    slurm/annotate-array.sbatch does; a later run merges)."""
    from .catalogs import catalog_rows
    from .checkpoint import model_folder
    from .executors import executor_for
    from .pipeline import check_output_room, check_outputs, output_lock, remove_stale_temporaries
    from .surveys import load_survey, survey_reference

    catalog = Path(settings.catalog)
    survey = load_survey(settings.survey)
    n_rows = catalog_rows(catalog, survey)  # the shards and the merge read the rows they need
    out = settings.output()
    model_dir = model_folder(settings.model)
    check_outputs(out, catalog, None, model_dir)
    root = settings.spectra_folder()
    folder = RunFolder.for_output(out.resolve())  # tasks on other nodes get absolute paths
    shards = plan_shards(n_rows, shard_size)
    plan = make_plan(catalog, n_rows, shard_size, model_dir, survey.name, settings.fit, survey.reader)
    done = {s.name for s in folder.done(shards)}
    missing = [s for s in shards if s.name not in done]
    run = executor_for(executor, settings, profile, folder)
    # what can be refused is refused before the run folder holds a plan, which would tie it to
    # these settings: a corrected command must not find it taken
    folder.check_plan(plan)
    if only_shard is not None and not 0 <= only_shard < len(shards):
        raise ConfigError(f"--shard {only_shard}: the plan has shards 0-{len(shards) - 1}")
    if dry_run:
        _describe_plan(run, folder, catalog, shards, missing, shard_size, log)
        return None
    check_output_room(out, catalog, n_rows)
    folder.write_plan(plan)

    scheduler = shard_scheduler(settings.scheduler, executor, only_shard)

    def task(s: Shard) -> ShardTask:
        return ShardTask(s.name, s.start, s.stop, str(catalog.resolve()), survey_reference(settings.survey),
                         str(root.resolve()), str(model_dir.resolve()), str(folder.store_file(s.name)),
                         settings.device, settings.batch_size, settings.fit, str(folder.path),
                         scheduler, settings.n_workers)

    if only_shard is not None:
        shard = shards[only_shard]
        log(f"{shard.name} (rows {shard.start}-{shard.stop}): {run_shard(task(shard))}")
        return None
    notes: list[str] = []
    with output_lock(out, notes=notes):
        remove_stale_temporaries(out, notes)
        for line in notes:
            log(line)
        if missing:
            log(f"running {len(missing)} of {len(shards)} shards ({executor})")
            run.run(run_shard, [task(s) for s in missing], log)
        return merge_run(catalog, survey, model_dir, plan, folder, shards, out)


def shard_scheduler(scheduler, executor: str, only_shard: int | None) -> str:
    """Where each shard's ingest and fit run inside the shard's process. Where a shard has a
    process of its own — a SLURM job of executor 'slurm', or one array task's `--shard` — the
    run's `--scheduler` ('auto' by default: workers forked from the job's process for a shard of
    257 to 10,240 rows, a LocalCluster of the job's cores above), so that the fit, the slow part
    on a GPU node, uses every core the job was given. 'sync' where the shards are themselves tasks on worker processes ('local': they cannot
    start processes of their own) or run one after another to be followed ('debug'), and for
    `--scheduler slurm`, whose Dask worker jobs are a single run's."""
    from .parallel import SCHEDULERS

    own_process = only_shard is not None or executor == "slurm"
    if own_process and isinstance(scheduler, str) and scheduler in SCHEDULERS and scheduler != "slurm":
        return scheduler
    return "sync"


def _describe_plan(run, folder: RunFolder, catalog: Path, shards: list, missing: list, shard_size: int, log) -> None:
    """What a dry run prints: the plan, the missing shards, the executor's script, and the plain
    sbatch command that runs them as an array."""
    log(f"plan: {sum(s.stop - s.start for s in shards)} rows in {len(shards)} shards of up to {shard_size}; "
        f"{len(shards) - len(missing)} done, {len(missing)} to run with executor {run.name}; run folder {folder.path}")
    for shard in missing[:20]:
        log(f"  {shard.name}: rows {shard.start}-{shard.stop}")
    if len(missing) > 20:
        log(f"  ... and {len(missing) - 20} more")
    script = run.script(len(missing))
    if script:
        log(script)
    if missing:
        log("or, with plain sbatch (one array task per missing shard; then this command without --dry-run "
            "merges):")
        log("  " + sbatch_array_command(catalog, shard_size, [s.index for s in missing], argv()))


def merge_run(catalog: Path, survey, model_dir: Path, plan: dict, folder: RunFolder, shards: list, out: Path):
    """The annotated catalog from the finished shards (merge.py), with the run's provenance."""
    from .checkpoint import read_card
    from .merge import merge_shards
    from .pipeline import SINGLE_SHARD, RunResult
    from .writeback import provenance_cards

    card = read_card(model_dir)  # the name and encoding only: the merge never builds the model
    provenance = provenance_cards(card.name or model_dir.name, plan["weights_sha256"], card.render.encoding,
                                  survey.name, 0, "", plan.get("fit"), catalog=catalog,
                                  model_dir=model_dir)
    provenance["ANNSHRDS"] = (len(shards), SINGLE_SHARD["ANNSHRDS"][1])
    merged = merge_shards(catalog, survey, folder, shards, plan["rows"], out, provenance)
    return RunResult(output=out, store=folder.stores, n_rows=plan["rows"], n_predicted=merged["n_predicted"],
                     counts=merged["counts"], summary=merged["summary"], errors=merged["errors"])


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


# options of `annotate run` that name paths: always (the first), or where the value is an existing
# file or folder rather than a name (`--model spectromer-tiny`, `--survey sdss_dr18`)
_PATH_OPTIONS = ("--out", "--spectra-root", "--store")
_PATH_OR_NAME_OPTIONS = ("--model", "--survey")


def _absolute(name: str, value: str) -> str:
    """`value` of option `name` as an absolute path where it names one, else as given."""
    if name in _PATH_OPTIONS or (name in _PATH_OR_NAME_OPTIONS and Path(value).exists()):
        return str(Path(value).resolve())
    return value


def sbatch_array_command(catalog: Path, shard_size: int, indices: list[int], argv: list[str]) -> str:
    """The complete `sbatch --array=... slurm/annotate-array.sbatch CATALOG SHARD_SIZE [options]`
    for the shards `indices`, with the run options of `argv` (an `annotate run ...` command line),
    paths made absolute, so that the command means the same from any folder it is submitted from
    (an array task runs in the folder of its submission, the merge perhaps in another)."""
    options, i = [], 1 if argv[:1] == ["run"] else 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in _NOT_FOR_ARRAY:
            i += 1 + (_NOT_FOR_ARRAY[name] if "=" not in argv[i] else 0)
            continue
        if "=" in argv[i]:
            options.append(f"{name}={_absolute(name, argv[i].split('=', 1)[1])}")
        elif i + 1 < len(argv) and name in _PATH_OPTIONS + _PATH_OR_NAME_OPTIONS:
            options += [name, _absolute(name, argv[i + 1])]
            i += 1
        else:
            options.append(argv[i])
        i += 1
    script = Path(__file__).resolve().parent.parent / "slurm" / "annotate-array.sbatch"
    script_text = str(script) if script.is_file() else "slurm/annotate-array.sbatch"
    return shlex.join(["sbatch", f"--array={index_ranges(indices)}%64", script_text, str(Path(catalog).resolve()),
                       str(shard_size), *options])
