import numpy as np
import pytest

from annotate.errors import CatalogError, ConfigError
from annotate.readers import loader_names
from annotate.surveys import available_surveys, load_survey, survey_from_dict


@pytest.mark.parametrize("name", available_surveys())
def test_every_shipped_survey_loads(name):
    survey = load_survey(name)
    assert survey.name == name
    assert {"object_id", "class", "z"} <= set(survey.required)
    assert survey.reader in loader_names()


def test_sdss_dr18_paths_follow_the_v6_0_4_tree():
    survey = load_survey("sdss_dr18")
    table = {"RUN2D": np.array(["v6_0_4"]), "FIELD": np.array([15170]), "MJD": np.array([59292]),
             "CATALOGID": np.array([4570401475])}
    assert survey.spectrum_paths(table) == ["v6_0_4/spectra/full/15170p/59292/spec-15170-59292-04570401475.fits"]


def test_sdss_legacy_paths_boss_and_sdss_spectrographs():
    survey = load_survey("sdss_dr18")
    table = {"run2d": np.array([b"v5_13_2", b"26"]), "plate": np.array([3586, 2488]), "mjd": np.array([55181, 54149]),
             "fiberid": np.array([1, 1])}
    assert survey.spectrum_paths(table) == ["v5_13_2/spectra/full/3586/spec-3586-55181-0001.fits",
                                            "26/spectra/2488/spec-2488-54149-0001.fits"]


def test_missing_columns_named_in_one_line():
    survey = load_survey("sdss_dr18")
    with pytest.raises(CatalogError) as info:
        survey.check_catalog(["PLATE", "MJD", "FIBERID", "RUN2D", "CLASS"])
    message = str(info.value)
    assert "SPECOBJID" in message and "Z" in message and "\n" not in message


def test_no_path_columns():
    survey = load_survey("sdss_dr18")
    with pytest.raises(CatalogError, match="spectrum paths"):
        survey.check_catalog(["SPECOBJID", "CLASS", "Z"])


def test_selection_and_reference_sdss():
    survey = load_survey("sdss_dr18")
    table = {"SPECOBJID": np.array([1, 2, 3]), "CLASS": np.array([b"GALAXY ", b"QSO", b"STAR"]),
             "Z": np.array([0.1, 2.0, 0.0]), "ZWARNING": np.array([0, 4, 0]),
             "OBJTYPE": np.array(["SCIENCE", "SCIENCE", "SPECTROPHOTO_STD"])}
    assert survey.selected(table).tolist() == [True, False, False]
    reference = survey.reference(table)
    assert reference["class"].tolist() == ["GALAXY", "QSO", "STAR"]
    assert np.isnan(reference["teff"]).all()  # no stellar columns in this catalog


def test_lamost_snr_and_missing_values():
    survey = load_survey("lamost_dr10")
    table = {"obsid": np.array([1, 2]), "class": np.array(["STAR", "Unknown"]), "z": np.array([0.0001, -9999.0]),
             "z_err": np.array([1e-5, 1e-5]), "snru": np.array([3.0, 1.0]), "snrg": np.array([4.0, 1.0]),
             "snrr": np.array([0.0, 1.0]), "snri": np.array([0.0, 1.0]), "snrz": np.array([0.0, 1.0])}
    reference = survey.reference(table)
    assert reference["snr"][0] == pytest.approx(5.0)
    assert np.isnan(reference["z"][1])
    assert reference["class"].tolist() == ["STAR", ""]
    assert survey.selected(table).tolist() == [True, False]


def test_misspelt_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid:"):
        survey_from_dict({"name": "x", "reader": "sdss_spec", "columns": {}, "paths": [], "selction": []})


def test_unknown_survey_lists_known():
    with pytest.raises(ConfigError, match="sdss_dr18"):
        load_survey("euclid_dr1")


def test_sdss_dr19_paths_pad_the_field_and_drop_the_p():
    survey = load_survey("sdss_dr18")
    table = {"RUN2D": np.array(["v6_1_3"]), "FIELD": np.array([15000]), "MJD": np.array([59146]),
             "CATALOGID": np.array([4375786564])}
    assert survey.spectrum_paths(table) == ["v6_1_3/spectra/full/015000/59146/spec-015000-59146-4375786564.fits"]


def test_mask_bits_bad_become_one_integer_for_the_readers():
    from annotate.readers.sdss import BAD_PIXEL_BITS

    assert load_survey("sdss_dr18").bad_pixel_bits == BAD_PIXEL_BITS
    assert load_survey("desi_dr1").bad_pixel_bits == 2**10 - 1  # every bit of desispec's specmask
    assert load_survey("lamost_dr10").bad_pixel_bits is None    # the reader's own rule
    base = {"name": "x", "reader": "sdss_spec", "columns": {}, "paths": []}
    for value, bits in (([{"name": "A", "bit": 0}, {"name": "B", "bit": 23}], 1 | 1 << 23),
                        ({"A": 2, "B": 5}, 4 | 32), (9, 9), (None, None), ([], 0)):
        assert survey_from_dict({**base, "mask_bits_bad": value}).bad_pixel_bits == bits
    for value, message in (([{"name": "A", "bit": 70}], "bit must be an integer 0-62"),
                           ([{"name": "A"}], "bit must be an integer"), (-1, "must lie in 0"), (2**63, "must lie in 0"),
                           ("BRIGHTSKY", "must be a list or a mapping or an integer")):
        with pytest.raises(ConfigError, match=message):
            survey_from_dict({**base, "mask_bits_bad": value}, source="x.yaml")
