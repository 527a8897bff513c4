"""The `annotate` command. `main(argv) -> int` is callable from tests.

Errors the user can act on print one line (`annotate: error: ...`) and exit with the error's code
(2 for bad input, 3 when some rows got no prediction); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import interrupts
from .arguments import build_parser as _parser
from .arguments import check_arguments
from .errors import AnnotateError, IncompleteRun, OutputError

def _print_result(result) -> None:
    summary = result.summary
    for line in result.notes:
        print(line)
    print(f"rows: {result.n_rows}  predicted: {result.n_predicted}  without prediction: {result.n_failed}")
    if result.n_failed:
        print("rows without a prediction (first 5):")
        for line in result.errors[:5]:
            print(f"  {line}")
    if not summary.get("rows_compared"):
        from .crosscheck import no_comparison_line

        try:
            print(f"cross-check: {no_comparison_line(result.output)}")
        except AnnotateError:  # e.g. a survey definition given as a file the catalog's card cannot name
            print("cross-check: no row compared: none has a prediction, a pipeline class and z, ZWARNING = 0 and "
                  "the survey's selection passed")
    else:
        def number(value: float, spec: str) -> str:
            return format(value, spec) if value == value else "–"  # NaN: undefined (e.g. fewer than 2 rows)

        print(f"cross-check over {summary['rows_compared']} selected rows with a reference class and z:")
        print(f"  class accuracy        {number(summary['class_accuracy'], '.3f')}")
        print(f"  z R²                  {number(summary['z_r2'], '.3f')}   NMAD of Δz/(1+z) {number(summary['z_nmad'], '.2g')}"
              f"   outlier fraction η {number(summary['z_eta'], '.3f')}")
        print(f"  catastrophic z rate   {number(summary['z_catastrophic_rate'], '.3f')}  "
              "(Ross et al. 2020: >1000 km/s, QSO >3000 km/s)")
        for role, label in (("teff", "Teff"), ("logg", "logg"), ("feh", "[Fe/H]")):
            print(f"  {label:<7} R² (stars)    {number(summary[f'{role}_r2'], '.3f')}  (n={summary[f'{role}_n']})")
    print(f"annotated catalog: {result.output}")
    print(f"spectra store:     {result.store}")


def _cmd_demo(args) -> int:
    from .demo import run_demo

    from .crosscheck import crosscheck

    from .demo import CATALOGS

    result = run_demo(args.out, args.n_objects, args.seed, args.scheduler, not args.no_progress, fit=not args.no_fit,
                      survey=args.survey)
    print(f"demo catalog:      {Path(args.out) / CATALOGS[args.survey]}")
    _print_result(result)
    _print_crosscheck(crosscheck(result.output, store=result.store))
    return _finish(result)


def _cmd_run(args) -> int:
    from .pipeline import RunSettings, run

    settings = RunSettings(catalog=args.catalog, survey=args.survey, spectra_root=args.spectra_root,
                           store=args.store, model=args.model, out=args.out, scheduler=args.scheduler,
                           n_workers=args.workers, batch_size=args.batch_size, device=args.device,
                           progress=not args.no_progress, fit=not args.no_fit)
    if args.shard_size is not None or args.executor == "slurm" or args.dry_run or args.shard is not None:
        from .shards import run_sharded

        result = run_sharded(settings, 100_000 if args.shard_size is None else args.shard_size, args.executor,
                             args.profile, args.dry_run, only_shard=args.shard)
        if result is None:
            return 0
    else:
        result = run(settings)
    _print_result(result)
    return _finish(result)


def _finish(result) -> int:
    if result.n_failed:
        raise IncompleteRun(f"{result.n_failed} of {result.n_rows} rows got no prediction "
                            f"(NaN, PRED_FLAGS set); output written to {result.output}")
    return 0


def _cmd_train(args) -> int:
    from .training import Recipe

    recipe = Recipe.from_yaml(args.recipe)
    if args.evaluate:
        from .training import evaluate_checkpoint

        evaluate_checkpoint(recipe, args.evaluate, log=print)
        print(f"metrics stored in {args.evaluate}'s card (config.json)")
        return 0
    out = args.out or Path("runs") / recipe.name
    if args.executor == "slurm":
        from .slurm import profile_for_executor, sbatch_script
        from .training.job import TRAIN_SRUN_ARGS, submit_training, wait_for_training
        from .training.loop import finished_summary

        profile = profile_for_executor(args.profile)
        if args.dry_run:
            print(sbatch_script(profile, Path(out) / "slurm", job_name="annotate-train",
                                tasks_per_node=max(1, profile.gpus()), srun_args=TRAIN_SRUN_ARGS))
            return 0
        summary = finished_summary(recipe, Path(out), print)  # a finished run asks the cluster for nothing
        if summary is None:
            job = submit_training(args.recipe, out, profile, max_epochs=args.max_epochs, max_minutes=args.max_minutes)
            print(f"submitted training job {job.job_id}; logs: {Path(out) / 'slurm' / str(job.job_id)}")
            if args.no_wait:
                return 0
            summary = wait_for_training(job, out)
    else:
        summary = _train_here(recipe, out, args)
    if summary.get("stopped"):
        print(f"training stopped by the cap after {summary['epochs_done']} of {recipe.epochs} epochs "
              f"(step {summary['step']}); the state is in {out}: {summary.get('resume', 'rerun to continue')}")
        return 0
    if args.executor == "slurm":  # the job's log has the summary; say it here too
        from .training.log import summary_lines

        print("\n".join(summary_lines(summary)))
    print(f"checkpoint: {out} (every figure: {Path(out) / 'training.json'}, per epoch: metrics.csv)")
    return 0


def _train_here(recipe, out, args) -> dict:
    """Train in this process behind a progress bar (steps, loss, time left); the log lines, one per
    epoch and the summary at the end, print above it."""
    from tqdm.auto import tqdm

    from .training import train

    bar = None

    def on_step(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=step - 1, desc="train", unit="step", mininterval=1.0,
                       disable=args.no_progress, dynamic_ncols=True)
        bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
        bar.update(step - bar.n)

    def log(line: str) -> None:
        (bar.write if bar is not None else print)(line)

    try:
        return train(recipe, out, log=log, max_epochs=args.max_epochs, max_minutes=args.max_minutes, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()


def _cmd_bench(args) -> int:
    from .bench import format_table, run_bench

    result = run_bench(quick=args.quick, steps=tuple(args.steps), out=args.out, workdir=args.workdir)
    print(f"machine: {result.machine}")
    print(result.reference_line())
    print(format_table(result.rows))
    if args.out:
        print(f"results: {args.out}")
    return 0


def _cmd_status(args) -> int:
    from .status import run_status

    print("\n".join(run_status(args.folder)))
    return 0


def _cmd_crosscheck(args) -> int:
    from .crosscheck import crosscheck

    result = crosscheck(args.catalog, args.out, args.survey, args.store, args.n_sheet, all_rows=args.all_rows)
    _print_crosscheck(result)
    return 0


def _print_crosscheck(result) -> None:
    from .crosscheck import why_none_compared

    m = result.metrics
    if not m["compared"]:
        print(f"cross-check: {why_none_compared(m)}")
        print(f"cross-check report: {result.report}")
        return
    scope = " (--all-rows: ZWARNING and the survey's selection ignored)" if m.get("all_rows") else ""
    print(f"cross-check: {m['compared']} of {m['rows']} rows compared{scope}; class accuracy "
          f"{m['classification']['accuracy']:.3f}, macro F1 {m['classification']['macro_f1']:.3f}, "
          f"NMAD of Δz/(1+z) {m['redshift']['nmad']:.2g}")
    for line in m.get("look_first", []):
        print(f"  {line}")
    if m["disagreements"]:
        sheet = result.out_dir / "disagreements.png"
        print(f"{m['disagreements']} disagreements (rows whose class differs from the pipeline's or whose redshift "
              f"is catastrophic): {result.out_dir / 'disagreements.csv'}"
              + (f", spectra of the first in {sheet.name}" if sheet.is_file() else ""))
    else:
        print("no disagreements: every compared row has the pipeline's class and a redshift within the Ross et al. limit")
    print(f"cross-check report: {result.report}")


def _cmd_render(args) -> int:
    from .images import contact_sheet, render_store
    from .pipeline import refuse_non_regular, writable_folder
    from .render import RenderSettings

    out = Path(args.out)
    if out.resolve() == Path(args.store).resolve():
        raise OutputError(f"--out {out} is the spectra store it renders; choose another --out")
    refuse_non_regular(out, "--out")
    writable_folder(out.parent, "--out's folder")
    if args.preview:
        print(f"contact sheet: {contact_sheet(args.store, args.out, args.preview)}")
        return 0
    from tqdm.auto import tqdm

    from .store import open_store

    total = open_store(args.store).n_rows
    with tqdm(total=total, desc="render", unit="spec", disable=args.no_progress, mininterval=0.5) as bar:
        counts = render_store(args.store, args.out, RenderSettings(encoding=args.encoding), args.scheduler,
                              args.workers, progress=bar.update)
    if counts["set_aside"]:
        print(counts["set_aside"])
    if counts["stale"]:
        print(f"rows of {args.store} were written after its images were made: all {counts['stale']} done rows "
              "are rendered again")
    print(f"rendered {counts['rendered']} rows, {counts['skipped']} already done: {args.out}")
    return 0


COMMANDS = {"demo": _cmd_demo, "run": _cmd_run, "train": _cmd_train, "bench": _cmd_bench, "render": _cmd_render,
            "crosscheck": _cmd_crosscheck, "status": _cmd_status}


Terminated = interrupts.Terminated


def main(argv: list[str] | None = None) -> int:
    from .invocation import set_argv

    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    set_argv(argv)
    args = parser.parse_args(argv)
    with interrupts.recorded():
        return _main(args)


def _slurm_workers(args):
    """--scheduler slurm as the scheduler value the commands pass on: the profile read once, and
    where the worker jobs' logs go."""
    from .errors import ConfigError
    from .parallel import SlurmWorkers
    from .slurm import Profile

    if getattr(args, "profile", None) is None:
        raise ConfigError("--scheduler slurm needs --profile (a YAML file, see slurm/profiles/): the "
                          "Dask workers are started as SLURM jobs of that profile")
    return SlurmWorkers(Profile.from_yaml(args.profile), str(dask_log_folder(args)))


def dask_log_folder(args) -> Path:
    """Where the Dask worker jobs of `--scheduler slurm` write their logs: `<output>.dask-logs/`
    beside the command's output (the demo's: inside its folder), never the current directory."""
    if args.command == "demo":
        return Path(args.out) / "dask-logs"
    if args.command == "run":
        from .pipeline import RunSettings

        out = RunSettings(catalog=args.catalog, out=args.out).output()
        return out.with_name(out.name + ".dask-logs")
    return Path(args.out).with_name(Path(args.out).name + ".dask-logs")


def _main(args) -> int:
    import warnings

    from astropy.utils.exceptions import AstropyWarning

    try:
        check_arguments(args)
        with warnings.catch_warnings():
            if not args.debug:  # astropy's notes on damaged inputs: our error line says what went wrong
                warnings.simplefilter("ignore", AstropyWarning)
            if getattr(args, "scheduler", None) == "slurm":
                args.scheduler = _slurm_workers(args)
            return COMMANDS[args.command](args)
    except AnnotateError as exc:
        if args.debug:
            raise
        print(f"annotate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a path the system refuses (a folder that cannot be made, a file that cannot be written)
        if args.debug:
            raise
        print(f"annotate: error: {os_error_line(exc)}", file=sys.stderr)
        return OutputError.exit_code
    except KeyboardInterrupt as exc:
        interrupts.handled()
        if args.debug:
            raise
        if isinstance(exc, Terminated):
            print("annotate: terminated (SIGTERM); outputs were not replaced (rerun to resume)", file=sys.stderr)
            return 143
        print("annotate: interrupted; outputs were not replaced (rerun to resume)", file=sys.stderr)
        return 130


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the system's reason and the path(s), e.g. 'cannot use imm/x:
    Operation not permitted'; its message's first line where it names no path."""
    if exc.filename is not None and exc.strerror:
        paths = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"cannot use {paths}: {exc.strerror}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def entry() -> None:
    """The `annotate` command: main(), then exit with its code."""
    code = main()
    from .catalogs import hdf5

    if hdf5.HDF5_WRITE_FAILED:
        # the HDF5 library may still hold the file it failed to write; its own clean-up at exit
        # would crash on it, so the process ends here, its output flushed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
