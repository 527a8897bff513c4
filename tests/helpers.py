"""Helpers shared by several test modules (fixtures are in conftest.py): bad-input cases of
`annotate run`, file hashes, an interrupted run, a labelled spectra store for training, and the
training scripts' modules."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from annotate.grid import WavelengthGrid
from annotate.simulate.writer import write_catalog, write_sdss_spec
from annotate.store import STATUS, create_store, write_rows
from annotate.surveys import load_survey

INPUT_BITS = 0xFF  # PRED_FLAGS bits 0-7: what the input was like
N_PIX = 4640
LOGLAM = 3.5530 + 1e-4 * np.arange(N_PIX)


def _columns(n=4):
    return {"SPECOBJID": np.arange(1000, 1000 + n, dtype=np.int64), "RUN2D": np.array(["v6_0_4"] * n),
            "FIELD": np.full(n, 15143), "MJD": np.full(n, 59205), "CATALOGID": np.arange(n, dtype=np.int64) + 4_000_000,
            "CLASS": np.array(["GALAXY", "QSO", "STAR", "GALAXY"][:n]), "Z": np.array([0.1, 2.0, 0.0, 0.3][:n]),
            "ZWARNING": np.zeros(n, np.int64)}


class Case:
    """Inputs under root/'in' (catalog + spectra), outputs under root/'out'."""

    def __init__(self, root: Path, model: Path):
        self.root, self.model = root, model
        self.inputs, self.out_dir = root / "in", root / "out"
        self.inputs.mkdir()
        self.out_dir.mkdir()
        self.spectra = self.inputs / "spectra"
        self.catalog = self.inputs / "cat.fits"
        self.out = self.out_dir / "cat.annotated.fits"

    def write(self, columns=None, spectra=True):
        columns = _columns() if columns is None else columns
        relative = load_survey("sdss_dr18").spectrum_paths(columns)
        rng = np.random.default_rng(0)
        self.paths = [self.spectra / r for r in relative]
        if spectra:
            for path in self.paths:
                if not path.exists():
                    write_sdss_spec(path, LOGLAM, rng.normal(10, 1, N_PIX).astype(np.float32),
                                    np.ones(N_PIX, np.float32), np.zeros(N_PIX, bool), {"CLASS": "GALAXY"})
        write_catalog(self.catalog, columns)
        return self

    def argv(self, *extra):
        return ["run", "--catalog", str(self.catalog), "--spectra-root", str(self.spectra), "--model",
                str(self.model), "--out", str(self.out), "--scheduler", "sync", "--no-progress", *extra]


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _interrupt_a_run(case, sig: int = signal.SIGINT, group: bool = False, extra: tuple = (),
                     min_workers: int = 0) -> tuple[int, str]:
    """Start `annotate run` on `case` (with `extra` arguments), send `sig` once its store exists;
    (exit code, stderr). group: send it to the run's whole process group, as a terminal's Ctrl-C
    does (the run is started in a group of its own), once `min_workers` worker processes are in
    it; and check that no process of that group outlives the run."""
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a shell starts background jobs (CI's among them) with SIGINT ignored, and a child inherits
    # that: Python then never raises KeyboardInterrupt. The child gets the default back, as a
    # command typed at a terminal has.
    proc = subprocess.Popen([sys.executable, "-m", "annotate.cli", *case.argv("--batch-size", "2", *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=group)
    store = case.out_dir / "cat.annotated.spectra.h5"
    for _ in range(600):  # the store exists once ingest has begun
        if store.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    if group:
        for _ in range(600):  # a run on forked workers: until they are there
            members = _group_members(proc.pid)
            if len(members) >= 1 + min_workers or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is not None or len(members) >= 1 + min_workers, f"no {min_workers} workers: {members}"
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the run had finished
            pass
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if group:
        for _ in range(100):
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("a process of the interrupted run's group outlived it")
    return proc.returncode, err


def _labelled_store(path, n=48):
    """A store whose classes differ visibly: GALAXY flat, QSO a blue slope, STAR a red slope."""
    grid = WavelengthGrid()
    rng = np.random.default_rng(0)
    classes = np.array(["GALAXY", "QSO", "STAR"] * (n // 3))
    x = np.linspace(-1, 1, grid.n_pix)
    slope = {"GALAXY": 0.0, "QSO": -0.8, "STAR": 0.8}
    flux = np.stack([1.5 + slope[c] * x + rng.normal(0, 0.05, grid.n_pix) for c in classes]).astype(np.float32)
    z = np.where(classes == "QSO", 2.0, np.where(classes == "GALAXY", 0.3, 0.0))
    teff = np.where(classes == "STAR", rng.uniform(4000, 7000, n), np.nan)
    labels = {"class": classes, "z": z, "teff": teff, "logg": np.where(classes == "STAR", 4.0, np.nan),
              "feh": np.full(n, np.nan), "object": np.arange(n)}
    create_store(path, np.arange(n), [""] * n, grid, labels=labels)
    write_rows(path, 0, {"flux": flux, "ivar": np.ones_like(flux), "mask": np.zeros(flux.shape, np.uint8),
                         "status": np.full(n, STATUS["OK"], np.int8)})
    return path


_DIES_ONCE_WRITTEN = r"""
import os
import h5py

_setitem = h5py.Dataset.__setitem__

def _dies_once_written(self, key, value):
    _setitem(self, key, value)
    if self.name == {dataset!r}:
        self.flush()      # this dataset's new values reach the file ...
        os._exit(9)       # ... and the process dies there (SIGKILL, a preempted job)

h5py.Dataset.__setitem__ = _dies_once_written
"""


def run_dying_once_written(dataset: str, code: str, *args) -> None:
    """Run `code` (a script; `args` are its sys.argv[1:]) in a fresh Python process that dies, as a
    killed job would, right after the HDF5 dataset named `dataset` (e.g. '/status') is first
    written and flushed to its file, before anything else is flushed."""
    done = subprocess.run([sys.executable, "-c", _DIES_ONCE_WRITTEN.format(dataset=dataset) + code,
                           *[str(a) for a in args]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr


def small_recipe(tmp_path, store, **overrides):
    """A recipe (read from YAML, as `annotate train` reads one) that trains the micro ViT on the
    CPU from `store` for 2 epochs in batches of 8; `overrides` replace any of its keys."""
    import yaml

    from annotate.training import Recipe

    raw = {"name": "tiny-test", "backbone": "vit-micro", "data": {"store": str(store)}, "epochs": 2, "batch_size": 8,
           "lr": 1e-3, "val_fraction": 0.25, "test_fraction": 0.25, "seed": 1, "device": "cpu", **overrides}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Recipe.from_yaml(path)


def training_script(name: str):
    """The module of `training/<name>.py` (the training scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "training" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
