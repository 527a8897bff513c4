"""End to end: `annotate run` against the same model fed one PNG per spectrum (the paper's way)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .common import BASELINE_LIMIT, Row, timed
from .render import matplotlib_2dmap_png


def _png_pipeline(catalog: Path, n: int) -> int:
    """The paper's way: read each spectrum, render a PNG, decode it, run the model one batch."""
    import torch
    from PIL import Image

    from ..checkpoint import load_checkpoint
    from ..grid import resample
    from ..catalogs import read_catalog
    from ..readers import read_spectrum
    from ..surveys import load_survey

    model, card = load_checkpoint(None, "cpu")
    survey = load_survey("sdss_dr18")
    paths = survey.spectrum_paths(read_catalog(catalog, survey))[:n]
    images = []
    for rel in paths:
        spectrum = read_spectrum(catalog.parent / rel)
        flux, _, mask = resample(spectrum.wavelength, spectrum.flux, spectrum.ivar, spectrum.bad, card.grid)
        png = matplotlib_2dmap_png(flux, mask, card.render)
        images.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        for i in range(0, len(pixels), 64):
            model(pixels[i:i + 64])
    return len(images)


RUNS = 2  # runs of `annotate run` per size; the faster is the rate (one run a size moved by ±8 % with the VM)


def _cold_fit() -> None:
    """Forget what the template fit built in this process (its fitters, bases, template library
    and training stars, 0.4-0.5 s), so that each timed run builds them as a new `annotate run`
    process does; the imports stay warm."""
    from ..fit import stage, stellar
    from ..fit.bases import load_bases
    from ..simulate.templates import load_library

    stage._fitter.cache_clear()
    stellar._TRAINING_STARS.clear()
    load_bases.cache_clear()
    load_library.cache_clear()


def bench_end_to_end(sizes, workdir: Path) -> Row:
    """`annotate run` on the demo's kind of catalog (seed 11) of each size, RUNS times with a new
    output and store and a cold fit (`_cold_fit`) each time, the fastest kept (all in
    extra['runs_s']), against the PNG way on the first BASELINE_LIMIT rows."""
    from ..demo import make_sample
    from ..pipeline import RunSettings, run

    from ..checkpoint import load_checkpoint

    row = Row(f"end-to-end annotate run ({os.cpu_count()} cores)", "spectra/s",
              baseline_name="same model, one matplotlib PNG per spectrum")
    load_checkpoint(None, "cpu")  # imports (torch, transformers) are not part of the rate
    for n in sizes:
        folder = workdir / f"e2e-{n}"
        catalog = make_sample(folder, n, seed=11)
        settings = RunSettings(catalog=catalog, progress=False,
                               out=folder / "out.fits", store=folder / "store.h5")
        runs = []
        for _ in range(RUNS):
            for path in (folder / "out.fits", folder / "store.h5"):
                path.unlink(missing_ok=True)
            _cold_fit()
            runs.append(timed(lambda: run(settings))[0])
        m = min(n, BASELINE_LIMIT["end_to_end"])
        base, _ = timed(_png_pipeline, catalog, m)
        row.sizes.append(n)
        row.ours.append(n / min(runs))
        row.extra.setdefault("runs_s", []).append(runs)
        row.baseline.append(m / base)
        for path in (folder / "out.fits", folder / "store.h5"):
            path.unlink(missing_ok=True)
    return row
