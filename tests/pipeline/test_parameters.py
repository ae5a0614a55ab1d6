"""The pipeline's parameters: the protocol's settings, overrides and validation."""

import pytest
from pydantic import ValidationError

from recflow.pipeline.parameters import DEFAULTS, STRATIFIED_SETTINGS, depth_list, feature_list, parameters_for


def test_the_time_protocol_takes_the_defaults():
    assert parameters_for("time") == DEFAULTS


def test_the_stratified_protocol_takes_its_settings_and_overrides_win():
    parameters = parameters_for("stratified", epochs=3)
    assert parameters.protocol == "stratified"
    assert parameters.epochs == 3
    assert {name: getattr(parameters, name) for name in STRATIFIED_SETTINGS if name != "epochs"} == {
        name: value for name, value in STRATIFIED_SETTINGS.items() if name != "epochs"
    }


def test_unknown_or_ill_typed_parameters_are_errors():
    with pytest.raises(ValidationError, match="epoch"):
        parameters_for("time", epoch=3)
    with pytest.raises(ValidationError, match="mmr_lambda"):
        parameters_for("time", mmr_lambda=1.5)


def test_feature_list():
    assert feature_list("") == []
    assert feature_list(" user_age, item_ctr_7d ,") == ["user_age", "item_ctr_7d"]
    assert feature_list("*") == ["*"]


def test_candidate_depths():
    assert depth_list(DEFAULTS.candidate_depths) == [100, 200]
    assert depth_list(" 50, 150 ") == [50, 150]
    for bad in ("", "100,", "0,100", "100,2e2", "-5"):
        with pytest.raises(ValidationError, match="candidate_depths"):
            parameters_for("time", candidate_depths=bad)
