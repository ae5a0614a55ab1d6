"""Real torchrun runs through `run_torchrun`: data-parallel equivalence and elastic restart."""

import logging

import pytest
import torch

from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.launch import TrainingFailed, run_torchrun
from recflow.training.train import FAIL_AT_STEP_ENV, FAILURE_MARKER

pytestmark = pytest.mark.slow

# 2000 rows / 64 = 31 steps per epoch, 62 in all.
CONFIG = TrainConfig(
    epochs=2,
    batch_size=64,
    learning_rate=0.01,
    embedding_dim=8,
    hidden_dim=16,
    max_history=5,
    device="cpu",
    log_every_steps=10,
    checkpoint_every_steps=10,
)


def _weights(directory) -> dict[str, torch.Tensor]:
    return torch.load(directory / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_frame):
    """A training set, its spec, and the same run with 1 and with 2 torchrun workers."""
    root = tmp_path_factory.mktemp("reference")
    frame = make_frame()
    frame.to_parquet(root / "training_set.parquet", index=False)
    spec = FeatureSpec.infer(frame)
    metrics = {
        n: run_torchrun(root / "training_set.parquet", spec, root / f"workers_{n}", CONFIG, nproc_per_node=n)
        for n in (1, 2)
    }
    return root, spec, metrics


def test_two_workers_train_the_same_model_as_one(reference):
    root, _, metrics = reference
    assert metrics[1]["world_size"] == 1 and metrics[2]["world_size"] == 2
    assert metrics[1]["steps"] == metrics[2]["steps"] == 62
    one, two = _weights(root / "workers_1"), _weights(root / "workers_2")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-4, msg=name)
    assert metrics[2]["epoch_losses"] == pytest.approx(metrics[1]["epoch_losses"], abs=1e-5)


def test_a_killed_worker_is_restarted_and_resumes_from_the_checkpoint(reference, tmp_path, monkeypatch, caplog):
    root, spec, _ = reference
    # The last worker exits hard before step 45, once; the last checkpoint is at step 40.
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "45")
    with caplog.at_level(logging.INFO, logger="recflow.training.launch"):
        metrics = run_torchrun(
            root / "training_set.parquet",
            spec,
            tmp_path / "model",
            CONFIG,
            nproc_per_node=2,
            checkpoint_dir=tmp_path / "checkpoints",
            max_restarts=1,
        )
    assert (tmp_path / "checkpoints" / FAILURE_MARKER).is_file()
    assert "exiting hard before step 45" in caplog.text
    assert "resuming from step 40" in caplog.text
    assert metrics["resumed_from_step"] == 40 and metrics["steps"] == 62
    # The resumed run continues the uninterrupted one exactly.
    uninterrupted, resumed = _weights(root / "workers_2"), _weights(tmp_path / "model")
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6, msg=name)


def test_a_failed_run_raises_with_the_log_tail(tmp_path):
    with pytest.raises(TrainingFailed) as failure:
        run_torchrun(tmp_path / "missing.parquet", FeatureSpec(), tmp_path / "model", CONFIG, nproc_per_node=1)
    assert failure.value.returncode != 0
    assert "missing.parquet" in str(failure.value)
    assert 0 < len(failure.value.tail) <= 40
