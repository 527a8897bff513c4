"""The default model and the template fit on real survey spectra, against each file's own pipeline.

Evaluation only: the files are never trained on and no setting is chosen on them. Each file is read
by annotate's readers (SDSS/BOSS spec files, LAMOST low-resolution files, single-target DESI
coadds), predicted by the default ViT and fitted as `annotate run` does (the survey's fit
settings, the ViT as the prior). Printed per file: the pipeline's class, subclass and z (SDSS:
the SPECOBJ or SPALL row; LAMOST: the primary header; a DESI coadd-X.fits: the REDSHIFTS row of
the redrock-X.fits beside it), the ViT's class and z, the fit's class,
z ± σ_z and stellar labels, and the velocity between the fit's z and the pipeline's in km/s and
in units of the two σ combined (the pull; the fit's alone where the pipeline gives no z_err). A
file that cannot be read gets a row saying why. Where fastspecfit's own tests fit a target of its
fixtures at another redshift than redrock's (its `input_redshift`), a line says so: redrock's z
is then not the object's.

    python training/real_spectra.py            # the SDSS DR18 spectra that ppxf ships
    python training/real_spectra.py FILE ...   # those files as well

Real spectra that packages on PyPI ship, to pass as FILEs (see the README's template fit):
s3fit 2.2.6's sdist (examples/example_quasar_spec_w.fits, an SDSS quasar), bossbrain 1.0.12
(bossbrain/data/spec-3586-55181-0500.fits, a BOSS G star), rvspecfit 0.9.0's sdist
(tests/data/spec-0266-51602-0031.fits, an SDSS white dwarf) and laspec 2021.525.0
(laspec/data/lamost/spec-58397-*.fits and laspec/data/KIC8098300/DR6_low/spec-57287-*.fits.gz,
LAMOST stars).
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import astuple
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits

from annotate import CLASS_NAMES, SPEED_OF_LIGHT_KMS
from annotate.checkpoint import load_checkpoint
from annotate.fit.settings import fit_settings
from annotate.fit.stage import fit_batch
from annotate.ingest import ingest_rows
from annotate.errors import SpectrumError
from annotate.readers import identify_loader, read_spectrum
from annotate.store import STATUS
from annotate.predict import predict_batch


def pipeline_values(path: Path, reader: str) -> dict:
    """class, subclass, z, z_err as the file's own pipeline gives them, from the labels the
    survey's `reader` finds in it (SDSS: the SPALL or SPECOBJ row; LAMOST: the primary header;
    '' / NaN where it gives none, a z_err of 0 or below, a placeholder, as NaN); for a DESI
    coadd-X.fits, redrock's first row in the redrock-X.fits beside it, where there is one."""
    redrock = path.with_name("redrock-" + path.name.removeprefix("coadd-"))
    if path.name.startswith("coadd-") and redrock.is_file():
        row = fits.getdata(redrock, "REDSHIFTS")[0]
        out = {"class": str(row["SPECTYPE"]).strip(), "subclass": str(row["SUBTYPE"]).strip(),
               "z": float(row["Z"]), "z_err": float(row["ZERR"]), "targetid": int(row["TARGETID"])}
    else:
        labels = read_spectrum(path, reader).labels
        out = {"class": str(labels.get("CLASS", "")), "subclass": str(labels.get("SUBCLASS", "")),
               "z": float(labels.get("Z", np.nan)), "z_err": float(labels.get("Z_ERR", np.nan))}
    return out | {"z_err": out["z_err"] if out["z_err"] > 0 else np.nan}


@lru_cache(maxsize=None)
def fixture_redshifts(data_folder: Path) -> dict:
    """{TARGETID: z} at which fastspecfit's own tests fit the targets of its fixtures in
    `data_folder` (fastspecfit/test/data): the `input_redshift` of each target in its
    test/build_test_spectra.py, read as text (the module imports what a --no-deps install lacks);
    {} where there is no such file."""
    import ast

    source = Path(data_folder).parent / "build_test_spectra.py"
    if not source.is_file():
        return {}
    out = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "dict":
            keywords = {k.arg: k.value for k in node.keywords}
            if "targetid" in keywords and "input_redshift" in keywords:
                try:  # a target written otherwise (not literals, no redshift) is left out
                    out[int(ast.literal_eval(keywords["targetid"]))] = float(ast.literal_eval(keywords["input_redshift"]))
                except (ValueError, TypeError):
                    continue
    return out


def check_one(path: Path, model, card) -> dict:
    """One file's row for the table (or {'file', 'error'} where it cannot be read)."""
    import torch

    try:
        with fits.open(path) as hdul:
            reader = identify_loader(hdul).name
        ref = pipeline_values(path, reader)
    except (OSError, ValueError, KeyError, IndexError, SpectrumError) as exc:
        return {"file": path.name, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = ingest_rows({"start": 0, "paths": [str(path)], "refused": [False], "grid": card.grid.to_dict(),
                            "reader": reader})
    if rows["status"][0] != STATUS["OK"]:
        return {"file": path.name, "error": rows["error"][0]}
    with torch.inference_mode():
        vit = predict_batch(model, card, rows["flux"], rows["mask"])
    fit = fit_batch(astuple(card.grid), astuple(fit_settings(reader)), rows["flux"], rows["ivar"], rows["mask"],
                    {key: vit[key] for key in ("prob", "z", "z_err")})
    fixture_z = fixture_redshifts(path.resolve().parent).get(ref.get("targetid"), np.nan)
    kms = SPEED_OF_LIGHT_KMS / (1 + ref["z"])
    dv = (fit["fit_z"][0] - ref["z"]) * kms
    sigma = np.hypot(fit["fit_z_err"][0], np.nan_to_num(ref["z_err"])) * kms
    return {"file": path.name, "reader": reader, "pipeline": ref,
            "vit": (CLASS_NAMES[int(np.argmax(vit["prob"][0]))], float(np.max(vit["prob"][0])), float(vit["z"][0])),
            "fit": (str(fit["fit_class"][0]), float(fit["fit_z"][0]), float(fit["fit_z_err"][0]), str(fit["fit_spectype"][0])),
            "dv_kms": float(dv), "sigma_fit_kms": float(fit["fit_z_err"][0] * kms), "pull": float(dv / sigma),
            "fixture_z": float(fixture_z),
            "labels": tuple(float(fit[f"fit_{key}"][0]) for key in ("teff", "logg", "feh")),
            "label_errs": tuple(float(fit[f"fit_{key}_err"][0]) for key in ("teff", "logg", "feh"))}


def check(paths: list[Path], model_folder: str | None = None):
    """`check_one` of each file in turn (a generator: each row as soon as it is made), with the
    checkpoint in `model_folder` (default: the shipped default model)."""
    model, card = load_checkpoint(model_folder, "cpu")
    for path in paths:
        yield check_one(Path(path), model, card)


def main(argv: list[str] | None = None) -> int:
    import ppxf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped default model)")
    args = parser.parse_args(argv)
    spectra = Path(ppxf.__file__).parent / "spectra"
    paths = [spectra / "NGC3522_SDSS_DR18.fits", spectra / "NGC3073_SDSS_DR18.fits", *args.files]
    print("file | pipeline class, subclass, z | ViT class (P), z | fit class, z ± σ_z, type | Δv to pipeline (km/s), σ_z fit (km/s), pull | Teff, log g, [Fe/H]",
          flush=True)
    for r in check(paths, args.model):
        if "error" in r:
            print(f"{r['file']} | not read: {r['error']}", flush=True)
            continue
        ref, (vc, vp, vz), (fc, fz, fe, ft) = r["pipeline"], r["vit"], r["fit"]
        labels = ", ".join(f"{v:.0f} ± {e:.0f}" if i == 0 else f"{v:.2f} ± {e:.2f}"
                           for i, (v, e) in enumerate(zip(r["labels"], r["label_errs"]))) if np.isfinite(r["labels"][0]) else "–"
        print(f"{r['file']} | {ref['class']} {ref['subclass']}, {ref['z']:.5f} | {vc} ({vp:.2f}), {vz:.4f} | "
              f"{fc}, {fz:.5f} ± {fe:.5f}, {ft or '–'} | {r['dv_kms']:+.0f}, {r['sigma_fit_kms']:.0f}, {r['pull']:+.1f} | {labels}",
              flush=True)
        if abs(r["fixture_z"] - ref["z"]) > 0.01:
            print(f"  fastspecfit's own tests fit this target at z {r['fixture_z']:.4f}, not at the pipeline's "
                  f"{ref['z']:.4f}: the fit's z is {fz - r['fixture_z']:+.4f} from it", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
