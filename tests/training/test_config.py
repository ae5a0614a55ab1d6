import pytest
from pydantic import ValidationError

from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.launch import run_torchrun


def test_unknown_keys_are_rejected():
    with pytest.raises(ValidationError, match="lerning_rate"):
        TrainConfig.model_validate_json('{"lerning_rate": 0.1}')


def test_from_file_round_trips(tmp_path):
    config = TrainConfig(epochs=3, batch_size=96, device="cpu")
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json())
    assert TrainConfig.from_file(path) == config


def test_invalid_values_are_rejected():
    with pytest.raises(ValidationError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValidationError, match="device"):
        TrainConfig(device="tpu")


def test_global_batch_must_split_evenly_over_processes():
    config = TrainConfig(batch_size=100)
    assert config.local_batch_size(4) == 25
    with pytest.raises(ValueError, match=r"batch_size=100 .* divisible by the number of training processes \(3\)"):
        config.local_batch_size(3)


def test_launcher_rejects_a_bad_batch_before_starting_torchrun(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        run_torchrun(tmp_path / "missing.parquet", FeatureSpec(), tmp_path / "out", TrainConfig(batch_size=9), 2)
