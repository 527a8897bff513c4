"""Faults: `annotate run --shard-size` killed with SIGKILL at random points, then rerun (each run in
a process of its own, as a user's are). Over ten seeded trials the final catalog's prediction
columns are identical to a clean run's, every input row is there exactly once, in order, and the
inputs are untouched."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
from astropy.io import fits

from annotate.columns import OUTPUT_COLUMNS

N = 8  # rows of conftest's catalog fixture

TRIALS = 10


def _argv(catalog, tmp_path, model, out):
    return ["run", "--catalog", str(catalog), "--spectra-root", str(tmp_path / "spectra"), "--model", str(model),
            "--out", str(out), "--shard-size", "2", "--scheduler", "sync", "--no-progress"]


def _start(catalog, tmp_path, model, out):
    """Start `annotate run` in its own process group; return it once its plan is written."""
    proc = subprocess.Popen([sys.executable, "-m", "annotate.cli", *_argv(catalog, tmp_path, model, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    plan = out.with_name(out.name + ".run") / "plan.json"
    deadline = time.time() + 120
    while not plan.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    return proc, time.time()


def _predictions(path):
    with fits.open(path) as hdul:
        data = hdul[1].data
        return list(data["SPECOBJID"]), {c.name: data[c.name].tobytes() for c in OUTPUT_COLUMNS}


def _inputs_hash(tmp_path, catalog):
    digest = hashlib.sha256(catalog.read_bytes())
    for path in sorted((tmp_path / "spectra").rglob("*.fits")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_runs_killed_at_random_points_resume_to_the_clean_result(catalog, micro_model, tmp_path):  # noqa: F811
    inputs = _inputs_hash(tmp_path, catalog)
    clean, _ = _start(catalog, tmp_path, micro_model, tmp_path / "clean.fits")
    assert clean.wait(timeout=300) == 3  # rows 3 and 5 have no spectrum
    ids, reference = _predictions(tmp_path / "clean.fits")
    assert ids == list(range(1000, 1000 + N))

    rng = np.random.default_rng(20261123)
    killed_before_output, shards_done_at_kill = 0, []
    for trial in range(TRIALS):
        out = tmp_path / f"trial-{trial}.fits"
        # a random point of the run: once k of its 4 shards are written (k = 0: while the first
        # runs; k = 4: while merging or after), plus up to 50 ms
        k, extra = int(rng.integers(0, 5)), rng.uniform(0.0, 0.05)
        proc, _ = _start(catalog, tmp_path, micro_model, out)
        shards = out.with_name(out.name + ".run") / "shards"
        deadline = time.time() + 120
        while len(list(shards.glob("*.npz"))) < k and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(extra)
        delay = f"{k} shards + {extra:.2f} s"
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            killed_before_output += not out.exists()
            shards_done_at_kill.append(len(list((tmp_path / f"{out.name}.run" / "shards").glob("*.npz"))))
            # a killed run never leaves a partial file under the final name
            assert not out.exists() or _predictions(out)[1] == reference, f"trial {trial}"
        # the rerun in a process like the killed one's: the same BLAS and torch threads, so the
        # same arithmetic to the bit (in the test's own process, thread counts set by other tests
        # could change the ViT's last bits, and the fit's near-ties with them)
        rerun = subprocess.run([sys.executable, "-m", "annotate.cli", *_argv(catalog, tmp_path, micro_model, out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
        assert rerun.returncode == 3, f"trial {trial}: {rerun.stderr[-2000:]}"
        assert _predictions(out) == (ids, reference), f"trial {trial} (killed after {delay})"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".trial-{trial}")], f"trial {trial}"
    assert killed_before_output >= 3, "some kills should land before the output exists"
    print("shards done when killed:", shards_done_at_kill)
    assert sum(0 < k < 4 for k in shards_done_at_kill) >= 2, shards_done_at_kill  # some kills land mid-run
    assert _inputs_hash(tmp_path, catalog) == inputs
