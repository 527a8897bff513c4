"""A checkpoint's config.json with absurd or ill-typed values is refused when it is loaded, in
one line and before any spectrum is read (each was a traceback, a memory error or silent NaN
predictions before)."""

import json
import shutil

import pytest

from annotate.cli import main

from helpers import Case


def _set(path: list, value):
    def edit(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return config
    return edit


CARD_CASES = {
    "image size 10^6": (_set(["backbone", "image_size"], 10 ** 6), "image_size must be an integer from 1 to 1024"),
    "negative hidden size": (_set(["backbone", "hidden_size"], -64), "hidden_size must be an integer"),
    "hidden size as text": (_set(["backbone", "hidden_size"], "big"), "hidden_size must be an integer"),
    "backbone not a mapping": (_set(["backbone"], [1, 2, 3]), "'backbone' is a list, not a mapping"),
    "the file a list": (lambda config: [config], "holds a list, not a mapping"),
    "a grid of 10^9 pixels": (_set(["grid", "n_pix"], 10 ** 9), "beyond any spectrograph"),
    "a grid the 2D Map cannot hold": (_set(["grid", "n_pix"], 90_000), "2D Map"),
    "two class names": (_set(["class_names"], ["GALAXY", "STAR"]), "but the heads predict"),
    "label norm with zero std": (_set(["label_norm", "teff", "std"], 0.0), "label_norm teff: needs a finite mean"),
    "label norm with a huge mean": (_set(["label_norm", "z", "mean"], 1e300), "label_norm z: needs a finite mean"),
    "an unknown label transform": (_set(["label_norm", "z", "transform"], "sqrt"), "unknown transform 'sqrt'"),
}


@pytest.mark.parametrize("name", sorted(CARD_CASES))
def test_checkpoint_card_with_absurd_values_is_refused_before_ingest(tmp_path, micro_model, capsys, name):
    edit, message = CARD_CASES[name]
    case = Case(tmp_path, micro_model).write()
    folder = tmp_path / "model"
    shutil.copytree(micro_model, folder)
    config = folder / "config.json"
    config.write_text(json.dumps(edit(json.loads(config.read_text()))))
    case.model = folder
    assert main(case.argv()) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not any(case.out_dir.iterdir())  # no store, no output: refused before any spectrum was read
