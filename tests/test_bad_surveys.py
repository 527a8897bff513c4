"""A survey YAML with a wrong shape anywhere is refused when it is loaded, in one line naming the
key (each was a traceback when a catalog was first read before)."""

import copy

import pytest
import yaml

from annotate.cli import main
from annotate.errors import ConfigError
from annotate.surveys import load_survey, survey_dirs

from helpers import Case


@pytest.fixture(scope="module")
def dr18() -> dict:
    path = next(d / "sdss_dr18.yaml" for d in survey_dirs() if (d / "sdss_dr18.yaml").is_file())
    return yaml.safe_load(path.read_text())


def _edit(raw, change):
    raw = copy.deepcopy(raw)
    change(raw)
    return raw


SURVEY_CASES = {
    "a path rule without a template": (lambda r: r["paths"][0].pop("template"), "has no 'template'"),
    "a template with an unknown field": (lambda r: r["paths"][0].update(template="{nosuch}/x.fits"),
                                         "uses nosuch, which neither fields nor derived define"),
    "a template with an unbalanced brace": (lambda r: r["paths"][0].update(template="{run2d/x.fits"),
                                            "does not parse"),
    "paths a string": (lambda r: r.update(paths="spectra/{plate}.fits"), "'paths' must be a list"),
    "a selection rule that is a string": (lambda r: r.update(selection=["ZWARNING == 0"]),
                                          "selection entry 1 must be a mapping"),
    "columns a list": (lambda r: r.update(columns=["Z"]), "'columns' must be a mapping"),
    "an unknown required role": (lambda r: r.update(required=["object_id", "colour"]), "unknown required roles colour"),
    "missing_value text": (lambda r: r.update(missing_value="none"), "'missing_value' must be a number"),
}


@pytest.mark.parametrize("name", sorted(SURVEY_CASES))
def test_survey_file_with_a_wrong_shape_is_refused_on_load(tmp_path, micro_model, dr18, capsys, name):
    change, message = SURVEY_CASES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_edit(dr18, change)))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        load_survey(str(path))
    case = Case(tmp_path, micro_model).write()
    assert main(case.argv("--survey", str(path))) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_the_shipped_surveys_pass_their_own_checks():
    for name in ("sdss_dr18", "lamost_dr10"):
        assert load_survey(name).paths
