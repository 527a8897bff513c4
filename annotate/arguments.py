"""The arguments of the `annotate` command: its parser (commands, options, examples, exit codes)
and the checks no single command makes (`check_arguments`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import __version__


EXAMPLES = {
    "demo": "annotate demo --out annotate-demo   (or --survey desi_dr1 --out annotate-demo-desi)",
    "run": "annotate run --catalog dr18.fits --survey sdss_dr18 --spectra-root /data/sdss/spectro/redux",
    "train": "annotate train --recipe training/demo.yaml --out runs/demo",
    "bench": "annotate bench --quick --out bench.json",
    "crosscheck": "annotate crosscheck --catalog annotate-demo/dr18.annotated.fits",
    "render": "annotate render --store annotate-demo/dr18.annotated.spectra.h5 --preview 8 --out sheet.png",
    "status": "annotate status dr18.annotated.fits.run",
}


EXIT_CODES = """exit codes:
  0    every row got a prediction (or the command did what it was asked)
  2    bad input: one line on stderr says what (annotate: error: ...)
  3    the output was written, but some rows have no prediction (NaN and a PRED_FLAGS bit)
  4    SLURM jobs of a sharded run or a training run failed, were cancelled or timed out (a sharded
       run merged nothing); rerun to redo them
  130  interrupted (Ctrl-C);  143  terminated (SIGTERM, e.g. scancel or a time limit)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="annotate", description=(
        "Annotate spectroscopic survey catalogs with Spectromer predictions (class, z, Teff, logg, [Fe/H])."),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"annotate {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str):
        return sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {EXAMPLES[name]}",
                              parents=[common])

    demo = command("demo", "write a small SDSS DR18- or DESI DR1-style sample and run the whole pipeline on it")
    demo.add_argument("--out", type=Path, default=Path("annotate-demo"), help="folder for the sample and outputs")
    demo.add_argument("--n-objects", type=int, default=300, help="objects in the sample")
    demo.add_argument("--seed", type=int, default=2026, help="random seed of the simulated sample")
    demo.add_argument("--no-fit", action="store_true", help="skip the template fit: class and z from the ViT alone")
    demo.add_argument("--survey", choices=("sdss_dr18", "desi_dr1"), default="sdss_dr18",
                      help="the sample's layout: SDSS DR18 spec files or DESI DR1 healpix coadds")
    demo.add_argument("--profile", type=Path, help="SLURM profile YAML for --scheduler slurm (see slurm/profiles/)")
    _add_execution(demo)

    run = command("run", "annotate a catalog: ingest spectra, predict, write PRED_* columns to a new file")
    run.add_argument("--catalog", type=Path, required=True, help="input catalog: FITS, or an HDF5 table written by pandas or astropy (never modified)")
    run.add_argument("--survey", default="sdss_dr18", help="survey definition name or YAML path")
    run.add_argument("--spectra-root", type=Path, help="folder the catalog's spectrum paths are relative to "
                     "(default: the catalog's folder)")
    run.add_argument("--store", type=Path, help="HDF5 spectra store to create or resume (default: "
                     "<out without its extension>.spectra.h5 beside the output)")
    run.add_argument("--model", type=Path, help="checkpoint folder, or a shipped model's name: spectromer-tiny (the default), "
                                                         "spectromer-medium (more accurate, about 3.5x slower on CPUs)")
    run.add_argument("--out", type=Path, help="output catalog, in the input's format (default: <catalog>.annotated.fits or .h5)")
    run.add_argument("--batch-size", type=int, default=64, help="spectra per ViT forward pass")
    run.add_argument("--no-fit", action="store_true", help="skip the template fit seeded by the ViT: PRED_CLASS and "
                     "PRED_Z are then the ViT's own")
    run.add_argument("--device", default="cpu", help="torch device for the ViT, e.g. cpu or cuda")
    run.add_argument("--shard-size", type=int, help="split the catalog into shards of N rows, run them (resumably: "
                     "finished shards are kept in <out>.run/) and merge")
    run.add_argument("--executor", default="local", choices=["debug", "local", "slurm"],
                     help="where shards run: this machine (Dask), a SLURM job array (needs --profile), or one "
                          "after another in this process (debug)")
    run.add_argument("--profile", type=Path, help="SLURM profile YAML (see slurm/profiles/)")
    run.add_argument("--dry-run", action="store_true", help="print the shard plan (and the sbatch script) only")
    run.add_argument("--shard", type=int, metavar="INDEX", help="run only shard INDEX of the plan, here, and do not "
                     "merge (each task of slurm/annotate-array.sbatch; the same command without --shard merges)")
    _add_execution(run)

    train = command("train", "fine-tune a model from a training recipe")
    train.add_argument("--recipe", type=Path, required=True, help="recipe YAML (see training/)")
    train.add_argument("--out", type=Path, help="checkpoint folder (default: runs/<recipe name>)")
    train.add_argument("--evaluate", type=Path, metavar="CHECKPOINT",
                       help="do not train: recompute the held-out metrics of CHECKPOINT (trained with this recipe)")
    train.add_argument("--executor", default="local", choices=["local", "slurm"],
                       help="train here, or as a SLURM job that requeues itself on timeout and resumes (needs --profile)")
    train.add_argument("--profile", type=Path, help="SLURM profile YAML (see slurm/profiles/); one task per GPU")
    train.add_argument("--dry-run", action="store_true", help="with --executor slurm: print the sbatch script only")
    train.add_argument("--no-wait", action="store_true", help="with --executor slurm: submit and return")
    train.add_argument("--max-epochs", type=int, metavar="N",
                       help="stop once N of the recipe's epochs are done (state saved; rerun without it, or with a larger N, to continue)")
    train.add_argument("--max-minutes", type=float, metavar="M",
                       help="stop M minutes after starting, with the state saved (rerun to continue)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    check = command("crosscheck", "compare an annotated catalog's predictions with the survey pipeline's values")
    check.add_argument("--catalog", type=Path, required=True, help="catalog written by annotate run")
    check.add_argument("--out", type=Path, help="report folder (default: <catalog>.crosscheck/ beside it)")
    check.add_argument("--survey", help="survey definition (default: the one named in the catalog's ANNSURV card)")
    check.add_argument("--store", type=Path, help="spectra store for the disagreement sheet "
                       "(default: the run's store beside the catalog)")
    check.add_argument("--n-sheet", type=int, default=8, help="disagreements drawn on the sheet")
    check.add_argument("--all-rows", action="store_true", help="compare every row with a prediction and a pipeline "
                       "class and z, ignoring ZWARNING and the survey's selection (the report says so)")

    status = command("status", "where a sharded run or a training run stands: shards done and missing, SLURM jobs")
    status.add_argument("folder", type=Path, metavar="RUN_DIR",
                        help="a sharded run's folder (<output>.run/) or a training folder (train --out)")

    render = command("render", "render a spectra store's spectra into an HDF5 image store, or preview them")
    render.add_argument("--store", type=Path, required=True, help="HDF5 spectra store (from annotate run)")
    render.add_argument("--out", type=Path, required=True, help="image store (.h5) to create or resume, or the "
                        "contact sheet (.png) with --preview")
    render.add_argument("--encoding", default="2dmap", choices=["2dmap", "simple", "overlap"],
                        help="image encoding (see the README's Encodings)")
    render.add_argument("--preview", type=int, metavar="N",
                        help="write a PNG contact sheet of N spectra in every encoding instead")
    render.add_argument("--profile", type=Path, help="SLURM profile YAML for --scheduler slurm (see slurm/profiles/)")
    _add_execution(render, "rendering")

    bench = command("bench", "measure each pipeline step beside its plain baseline, at three sizes")
    bench.add_argument("--quick", action="store_true", help="small sizes (a minute or two): checks that it works")
    bench.add_argument("--steps", nargs="+", default=["ingest", "render", "end_to_end", "writeback"],
                       choices=["ingest", "render", "end_to_end", "writeback", "merge", "fit", "ingest_desi"],
                       help="steps to measure (merge, of a sharded run up to 5e6 rows, fit, the template "
                            "fit beside redrock, and ingest_desi, DESI coadds of many targets, only when asked)")
    bench.add_argument("--out", type=Path, help="also write the results as JSON here")
    bench.add_argument("--workdir", type=Path, help="folder for temporary files (default: the system's)")
    _with_defaults(parser)
    return parser


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    """Append '(default: X)' to every option's help that has a default and does not say it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _with_defaults(subparser)
            continue
        default = action.default
        if action.help in (None, argparse.SUPPRESS) or default in (None, False, argparse.SUPPRESS):
            continue
        if "default" not in action.help:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            action.help = f"{action.help} (default: {shown})"


def _add_execution(parser: argparse.ArgumentParser, work: str = "reading spectra and fitting them") -> None:
    from .parallel import SCHEDULERS

    parser.add_argument("--scheduler", default="auto", choices=SCHEDULERS,
                        help=f"scheduler for {work} (default: auto, in this process for up to 256 "
                        "spectra, on worker processes forked from this one up to 10,240 and on a local "
                        "Dask distributed cluster above; slurm: --workers Dask workers started as SLURM "
                        "jobs of --profile)")
    parser.add_argument("--workers", type=int, help="worker processes (default: on this machine the cores this "
                        "process may use, at most 8 and as many as its memory holds beside the model: 1 GB, then "
                        "768 MB each; with --scheduler slurm, 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def check_arguments(args) -> None:
    """Refuse, in one line (ConfigError, exit 2), arguments no command can use: counts below
    their minimum, an unknown torch device or one this machine does not have, a `--preview`
    sheet that is not a .png, a cross-check report folder that is a file."""
    from .errors import ConfigError

    minimum = {"batch_size": ("--batch-size", 1), "n_objects": ("--n-objects", 1), "preview": ("--preview", 1),
               "n_sheet": ("--n-sheet", 0), "workers": ("--workers", 1), "shard_size": ("--shard-size", 1)}
    for name, (flag, least) in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    device = getattr(args, "device", None)
    if device and device != "cpu":
        import torch

        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError):
            raise ConfigError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is visible on this machine")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"--device {device}: MPS is not available on this machine")
    if args.command == "render" and getattr(args, "preview", None) and Path(args.out).suffix.lower() != ".png":
        raise ConfigError(f"--preview writes a PNG contact sheet: give --out a .png name, not {args.out}")
    if args.command == "crosscheck" and args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; the cross-check writes a report folder there")
