"""The template fit against redrock's zfind with the same bases."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import BASELINE_LIMIT, Row, peak_rss_mb, reset_peak_rss, timed


def bench_fit(sizes, workdir: Path) -> Row:
    """The template fit on held-out simulated objects (seed 11), one process and
    one thread, seeded by the shipped ViT (whose own time is the end-to-end row's), against
    redrock's zfind on the first BASELINE_LIMIT of them with the same bases. Also recorded: the
    rate without the prior, each one's Ross success against the truth, the median |Δv| between
    them, and the fit's peak memory above what the process held before it (`batch_rss_mb`: what one
    batch costs; a run fits tasks of 256 rows, so that is what bounds its memory)."""
    from ..checkpoint import load_checkpoint
    from ..fit.evaluate import held_out_sample, ross_success
    from ..fit.fitter import Fitter, FitSettings
    from ..fit.redrock_compare import import_redrock, run_redrock, write_redrock_templates
    from ..fit.stage import fit_rows, single_threaded
    from ..fit.stellar import training_stars
    from ..grid import WavelengthGrid
    from ..metrics import velocity_offset_kms
    from ..predict import predict_batch

    row = Row("template fit seeded by the ViT, 1 core", "spectra/s", baseline_name="redrock zfind, same bases")
    grid = WavelengthGrid()
    model, card = load_checkpoint(None, "cpu")
    try:
        import_redrock()
        templates = workdir / "rrtemplates"
        write_redrock_templates(templates, grid=grid)
    except ImportError as exc:
        templates, row.extra["baseline_missing"] = None, str(exc)
    extra = {key: [] for key in ("rate_without_prior", "success", "baseline_success", "median_dv_between_kms",
                                 "batch_rss_mb")}
    with single_threaded():
        fitters = {prior: Fitter(grid, FitSettings(prior=prior)) for prior in (True, False)}
        training_stars(grid, fitters[True].bases)  # a cache too (the first two rows need not be stars)
        for n in sizes:
            sample = held_out_sample(n, 11, grid)
            vit = predict_batch(model, card, sample["flux"], sample["mask"])
            rates = {}
            for prior, fitter in fitters.items():
                fit_rows(fitter, sample["flux"][:2], sample["ivar"][:2], sample["mask"][:2],
                         {k: v[:2] for k, v in vit.items()})  # caches built outside the clock
                resident = peak_rss_mb("VmRSS")
                reset_peak_rss()
                seconds, out = timed(fit_rows, fitter, sample["flux"], sample["ivar"], sample["mask"], vit)
                rates[prior] = n / seconds
                if prior:
                    ours = out
                    extra["batch_rss_mb"].append(peak_rss_mb() - resident)
            row.sizes.append(n)
            row.ours.append(rates[True])
            extra["rate_without_prior"].append(rates[False])
            extra["success"].append(float(ross_success(ours["fit_class"], ours["fit_z"], sample["class"], sample["z"]).mean()))
            m = min(n, BASELINE_LIMIT["fit"])
            if templates is None:
                row.baseline.append(float("nan"))
                extra["baseline_success"].append(float("nan"))
                extra["median_dv_between_kms"].append(float("nan"))
                continue
            theirs = run_redrock(sample["flux"][:m], sample["ivar"][:m], sample["mask"][:m], grid, templates)
            row.baseline.append(m / theirs["seconds_fit"])
            extra["baseline_success"].append(float(ross_success(theirs["spectype"], theirs["z"], sample["class"][:m],
                                                                sample["z"][:m]).mean()))
            extra["median_dv_between_kms"].append(float(np.nanmedian(velocity_offset_kms(ours["fit_z"][:m], theirs["z"]))))
    row.extra.update(extra)
    return row
