"""The feature contract: columns by name and order, and a warning for columns in other units."""

import re

import numpy as np
import pytest

from pipeline.data.schema import FeatureSchema
from pipeline.errors import DataError

COLUMNS = ("pitch", "power", "wind_speed", "temperature")


@pytest.fixture
def x():
    rng = np.random.default_rng(0)
    return rng.normal([2.0, 500.0, 7.0, 12.0], [1.0, 300.0, 3.0, 6.0], (20_000, 4))


@pytest.fixture
def core(x):
    return FeatureSchema.measure(COLUMNS, ["double"] * 4, x)


def test_measure_and_moments_agree_with_numpy_and_survive_a_round_trip(x, core):
    np.testing.assert_allclose(core.mean, x.mean(0))
    np.testing.assert_allclose(core.sd, x.std(0))
    centred = x - x.mean(0)
    streamed = FeatureSchema.from_moments(COLUMNS, ["double"] * 4, x.mean(0), centred.T @ centred / len(x))
    np.testing.assert_allclose(streamed.sd, core.sd)
    assert FeatureSchema.from_dict(core.to_dict()) == core
    with pytest.raises(ValueError, match="one dtype, mean and sd per column"):
        FeatureSchema(COLUMNS, ["double"], core.mean, core.sd)


def test_the_same_columns_pass_and_any_other_order_or_column_names_the_first_difference(core):
    core.require_columns(list(COLUMNS), "site.yaml")
    with pytest.raises(DataError, match=r"site.yaml: feature column 1 of 4 is 'power' but the prior was fitted with "
                                        r"'pitch' there \(the prior has 'power' as column 2\); the prior's"):
        core.require_columns(["power", "pitch", "wind_speed", "temperature"], "site.yaml")
    with pytest.raises(DataError, match="feature column 4 of 4 is 'rotor_speed' but .* 'temperature'"):
        core.require_columns(["pitch", "power", "wind_speed", "rotor_speed"], "site.yaml")
    with pytest.raises(DataError, match=r"feature column 2 of 3 is 'wind_speed' but the prior was fitted with 'power' "
                                        r"there \(the prior has 'wind_speed' as column 3\); 3 feature columns given, "
                                        "the prior was fitted on 4; "):  # one dropped in the middle: both counts
        core.require_columns(["pitch", "wind_speed", "temperature"], "site.yaml")
    with pytest.raises(DataError, match="3 feature columns but the prior was fitted on 4; missing temperature"):
        core.require_columns(COLUMNS[:3], "site.yaml")
    with pytest.raises(DataError, match="5 feature columns .* extra humidity"):
        core.require_columns([*COLUMNS, "humidity"], "site.yaml")


def test_drift_warns_about_columns_in_other_units_and_not_about_an_ordinary_site(x, core):
    rng = np.random.default_rng(1)
    ordinary = x[rng.permutation(len(x))[:5000]] + [0.5, 100.0, 1.0, -3.0]  # a site within the fleet's range
    assert core.drift(FeatureSchema.measure(COLUMNS, ["double"] * 4, ordinary)) == []
    kilowatts = x.copy()
    kilowatts[:, 1] /= 1000  # power in kW instead of W: the sd is 1,000x smaller, the mean 1.7 sd off
    (warning,) = core.drift(FeatureSchema.measure(COLUMNS, ["double"] * 4, kilowatts))
    assert re.fullmatch(r"column power: sd 0\.\d+ is 0\.001x the core.s 29\d \(other units\?\)", warning)
    fahrenheit = x.copy()
    fahrenheit[:, 3] = fahrenheit[:, 3] * 1.8 + 32 + 60  # shifted far beyond the core's spread
    warnings = core.drift(FeatureSchema.measure(COLUMNS, ["double", "double", "double", "float"], fahrenheit))
    assert warnings[0] == "column temperature: type float, the prior was fitted on double"
    assert re.fullmatch(r"column temperature: mean 113\.\d is 17 core sd from the core's 1[12]\.\d+ \(other units\?\)",
                        warnings[1]) and len(warnings) == 2
