"""Run the training entrypoint under torchrun, locally, in a subprocess.

This is what the KFP train component calls. torchrun (`torch.distributed.run`)
starts `nproc_per_node` workers of :mod:`recflow.training.train`, sets their
RANK/WORLD_SIZE/LOCAL_RANK, and on a worker failure restarts the whole group
up to `max_restarts` times; with a checkpoint directory the restarted workers
resume from the last checkpoint. The Kubernetes backend
(:class:`recflow.kubernetes.trainjob.TrainJobLauncher`) takes the same
arguments and runs the same entrypoint (:func:`entrypoint_args`) under torchrun
in a TrainJob's pods.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import recflow
from recflow.training.config import TrainConfig
from recflow.training.features import FeatureSpec
from recflow.training.train import METRICS_FILE

logger = logging.getLogger("recflow.training.launch")

# Log lines kept for the error message of a failed run.
TAIL_LINES = 40


class TrainingFailed(RuntimeError):
    """torchrun exited non-zero; carries its exit code and the last log lines."""

    def __init__(self, returncode: int, tail: list[str]) -> None:
        self.returncode = returncode
        self.tail = tail
        super().__init__(f"training exited with code {returncode}; last log lines:\n" + "\n".join(tail))


# Set for torchrun and its workers wherever they run (see _worker_env).
TORCHRUN_ENV = {"PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def entrypoint_args(
    training_set: str | Path,
    feature_spec_file: str | Path,
    output: str | Path,
    config_file: str | Path,
    checkpoint_dir: str | Path | None,
) -> list[str]:
    """What torchrun runs, here and in a TrainJob: the training entrypoint and its arguments."""
    args = [
        "-m", "recflow.training.train",
        "--training-set", str(training_set),
        "--feature-spec", str(feature_spec_file),
        "--output", str(output),
        "--config", str(config_file),
    ]  # fmt: skip
    if checkpoint_dir is not None:
        args += ["--checkpoint-dir", str(checkpoint_dir)]
    return args


def _torchrun_command(
    training_set: str | Path,
    feature_spec_file: Path,
    output: str | Path,
    config_file: Path,
    nproc_per_node: int,
    checkpoint_dir: str | Path | None,
    max_restarts: int,
) -> list[str]:
    """The torchrun command line; `--standalone` picks a free local rendezvous port."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone",
        "--nproc-per-node", str(nproc_per_node),
        "--max-restarts", str(max_restarts),
        *entrypoint_args(training_set, feature_spec_file, output, config_file, checkpoint_dir),
    ]  # fmt: skip


def run_torchrun(
    training_set: str | Path,
    feature_spec: FeatureSpec,
    output: str | Path,
    config: TrainConfig,
    nproc_per_node: int = 1,
    checkpoint_dir: str | Path | None = None,
    max_restarts: int = 0,
) -> dict:
    """Train with `nproc_per_node` torchrun workers; return the run's train metrics.

    The workers' output is streamed through the `recflow.training.launch`
    logger as it arrives. Raises :class:`TrainingFailed` on a non-zero exit.
    """
    # Fail here, with the config error, rather than in every worker.
    config.local_batch_size(nproc_per_node)
    with tempfile.TemporaryDirectory(prefix="recflow-train-") as scratch:
        spec_file = Path(scratch) / "feature_spec.json"
        config_file = Path(scratch) / "train_config.json"
        spec_file.write_text(feature_spec.model_dump_json())
        config_file.write_text(config.model_dump_json())
        command = _torchrun_command(
            training_set, spec_file, output, config_file, nproc_per_node, checkpoint_dir, max_restarts
        )
        logger.info("running %s", " ".join(command))
        returncode, tail = _stream(command, _worker_env())
    if returncode != 0:
        raise TrainingFailed(returncode, tail)
    return json.loads((Path(output) / METRICS_FILE).read_text())


def _worker_env() -> dict[str, str]:
    """This environment, adjusted for torchrun and its workers.

    - The workers are started with `-m recflow.training.train`, so this
      recflow checkout goes on PYTHONPATH: they import the same code as the
      caller even when recflow is not installed.
    - TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: by default torchrun's workers
      reuse the rendezvous TCP store across restarts, and after a restart the
      new workers can read the previous attempt's gloo addresses from it
      ("Gloo connectFullMesh failed ... Connection refused"; pytorch/pytorch
      #135712, still seen with torch 2.13). A store per attempt avoids that.
    """
    env = dict(os.environ)
    source_root = str(Path(recflow.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    env.update(TORCHRUN_ENV)
    return env


def _stream(command: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run `command`, logging each output line as it comes; return (exit code, last lines)."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            logger.info("%s", line)
        returncode = process.wait()
    return returncode, list(tail)
