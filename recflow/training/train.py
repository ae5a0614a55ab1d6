"""The training entrypoint: one process, or N processes under torchrun.

    python -m recflow.training.train --training-set PATH --feature-spec SPEC.json \\
        --output DIR [--config CONFIG.json] [--checkpoint-dir DIR]

or `torchrun --nproc-per-node N -m recflow.training.train ...` (see
:mod:`recflow.training.launch`). The same code runs in both cases: RANK,
WORLD_SIZE and LOCAL_RANK come from the environment torchrun sets and default
to a single process.

Data parallelism is exact: every step consumes the next `batch_size` rows of a
seeded per-epoch permutation (the *global* batch) and rank r trains on the r-th
contiguous slice of it. Each rank's loss is the mean over its slice and DDP
averages the gradients, so the update equals that of one process on the whole
global batch; N processes reproduce a 1-process run up to float rounding.
(Rounding differs because the gradient sums are ordered differently; over
hundreds of steps ReLU kinks and Adam's per-parameter normalisation let it
grow in single weights while the losses stay equal to ~1e-4.)
Contiguous slices of one global order, rather than a per-rank sampler such as
DistributedSampler (strided, padded with repeated rows), make the union of
the ranks' rows at every step exactly the batch one process would take; the
last incomplete global batch is dropped so every step has the same size.

Objectives (``TrainConfig.objective``):

- ``bce``: binary cross-entropy of every row's logit against its label.
- ``in_batch_softmax``: the rows are the positives only (label-0 rows are
  dropped after the preprocessor is fitted on the whole file, so vocabularies
  and statistics do not depend on the objective). Each step's global batch of
  B positives forms a B-way softmax per positive: its own item is the target
  and the other B-1 positives' items are the negatives. Every rank computes
  the user vectors of its slice and the item vectors/biases of its slice, and
  a differentiable ``all_gather`` (``torch.distributed.nn``) assembles the
  item side of the whole global batch on every rank; its backward sends each
  rank the gradient every other rank's loss put on its items. Each rank's loss
  is the mean cross-entropy of its own rows, DDP averages the gradients, and so
  the update is that of one process on the whole batch, as for ``bce``.
  Logits are ``(u·v + b) / temperature``; with ``logq_correction`` every
  column is then lowered by log Q(item), Q being the item's frequency among
  the training positives: the batch is a sample of items drawn with
  probability Q, and the correction makes the in-batch softmax estimate the
  softmax over the whole catalogue (Yi et al., RecSys 2019). The row's own
  positive is corrected too: it is one of the sampled items of the batch like
  any other (for the gradient, correcting the target term or not makes no
  difference; it only changes how the target competes in the normaliser).
  Accidental hits, the row's item appearing again at another position of the
  batch, are masked out of its softmax.

Checkpoints (rank 0, atomic) are written at the end of every epoch and every
`checkpoint_every_steps` steps. A start that finds one in `--checkpoint-dir`
resumes from it on every rank, which is what lets torchrun's elastic restart
(`--max-restarts`) finish a run after a worker was killed.

Test-only fault injection: with RECFLOW_TEST_FAIL_AT_STEP=N in the environment,
the last rank exits hard (``os._exit(1)``) just before global step N. It does so
once: a marker file in the checkpoint directory (or the output directory
without one) records it, so the restarted run goes through.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as differentiable_all_gather
from torch.nn.parallel import DistributedDataParallel

from recflow.training.config import TrainConfig
from recflow.training.features import LABEL, FeatureSpec, Preprocessor
from recflow.training.model import TwoTowerModel

logger = logging.getLogger("recflow.training")

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
PREPROCESSOR_FILE = "preprocessor.json"
FEATURE_SPEC_FILE = "feature_spec.json"
CONFIG_FILE = "train_config.json"
# Written last: its presence marks a complete export.
METRICS_FILE = "train_metrics.json"

FAIL_AT_STEP_ENV = "RECFLOW_TEST_FAIL_AT_STEP"
FAILURE_MARKER = ".recflow_test_failure_injected"

# Config fields that shape the optimisation trajectory: a checkpoint written
# under other values cannot be continued. Logging/checkpoint cadence, the
# device and the number of epochs (the shuffle depends on the epoch only) can change.
TRAJECTORY_FIELDS = (
    "seed",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "embedding_dim",
    "hidden_dim",
    "max_history",
    "embedding_init_std",
    "ignore_features",
    "objective",
    "temperature",
    "logq_correction",
)


@dataclass(frozen=True)
class _Processes:
    """This process's place in the job, as torchrun describes it."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> _Processes:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class _Progress:
    """Where the run stands; what a checkpoint restores besides the tensors."""

    epoch: int = 0  # epoch to run next
    step: int = 0  # step within that epoch to run next
    global_step: int = 0  # optimiser steps taken since the start of the run
    epoch_losses: list[float] = field(default_factory=list)  # mean loss of each finished epoch
    epoch_loss_sum: float = 0.0  # sum of global-batch losses of the current epoch so far


def train(
    training_set: str | Path,
    feature_spec: FeatureSpec,
    output: str | Path,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict:
    """Train the two-tower model on a training-set parquet; rank 0 exports it to `output`.

    Returns the training metrics (also written to `output/train_metrics.json`).
    """
    config = config or TrainConfig()
    if config.ignore_features:
        feature_spec = feature_spec.without(config.ignore_features)
    processes = _Processes.from_env()
    local_batch_size = config.local_batch_size(processes.world_size)
    device = _resolve_device(config.device, processes.local_rank)
    threads = torch.get_num_threads()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # One intra-op thread per process (torchrun sets the same for N > 1):
        # the model's ops are too small to gain from threading, and OpenMP
        # barriers slow steps down ~10x when the cores are shared with other
        # work. Scale out with processes instead.
        torch.set_num_threads(1)
    if processes.world_size > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(
            Path(training_set),
            feature_spec,
            Path(output),
            config,
            Path(checkpoint_dir) if checkpoint_dir else None,
            processes,
            local_batch_size,
            device,
        )
    except BaseException as error:
        # The traceback keeps _train's locals, DDP among them, alive: let go of
        # them so that leave_process_groups can free the reducer on this path too.
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        if dist.is_initialized():
            leave_process_groups()
        torch.set_num_threads(threads)  # an in-process caller gets its setting back


def leave_process_groups() -> None:
    """Destroy this process's process groups, once nothing else holds them.

    DDP's reducer holds its process group and sits in a reference cycle, so
    it outlives the function that trained. Left to a later garbage
    collection, it drops the group's last reference while holding the GIL;
    the gloo group's destructor then joins a worker thread that can be
    waiting for the GIL to free a just-finished collective's tensors, and the
    process never exits (py-spy: ~Reducer -> ~ProcessGroupGloo ->
    thread::join). The test's one-step worker, which leaves right after a
    collective, hung in 8 of 90 two-worker runs on a loaded machine; two-worker
    training, whose window is narrower, in none of 90 before this existed.
    Collected here first, the reducer leaves the last reference to
    destroy_process_group, whose groups are destroyed without the GIL.
    """
    gc.collect()
    dist.destroy_process_group()


def _train(
    training_set: Path,
    spec: FeatureSpec,
    output: Path,
    config: TrainConfig,
    checkpoint_dir: Path | None,
    processes: _Processes,
    local_batch_size: int,
    device: torch.device,
) -> dict:
    started = time.perf_counter()
    # Every rank reads the file and fits the preprocessor itself instead of
    # rank 0 fitting and broadcasting: fitting is deterministic (sorted
    # vocabularies, float64 statistics in file order), every rank needs the
    # encoded rows anyway, and it avoids shipping vocabularies of millions of
    # ids through the process group. `_check_ranks_agree` verifies the result.
    frame = _read_training_set(training_set, spec)
    preprocessor = Preprocessor.fit(frame, spec, config.max_history)
    file_rows = len(frame)
    softmax = config.objective == "in_batch_softmax"
    if softmax:
        frame = frame[frame[LABEL].to_numpy(dtype=np.float32) > 0]
    users = _to_device(preprocessor.encode_users(frame), device)
    items = _to_device(preprocessor.encode_items(frame), device)
    labels = torch.from_numpy(frame[LABEL].to_numpy(dtype=np.float32)).to(device)
    num_rows = len(frame)
    del frame
    log_q = item_log_frequency(items["ids"], preprocessor.num_items) if softmax and config.logq_correction else None
    steps_per_epoch = num_rows // config.batch_size
    if steps_per_epoch == 0:
        what = "positive rows" if softmax else "rows"
        raise ValueError(
            f"{training_set} has {num_rows} {what}, fewer than one global batch ({config.batch_size})"
        )
    if processes.is_main:
        logger.info(
            "%d %s, %d users, %d items; objective %s; %d processes x %d rows per step, %d steps per epoch; "
            "preprocessing took %.1fs",
            num_rows,
            "positive rows" if softmax else "rows",
            preprocessor.num_users - 1,
            preprocessor.num_items - 1,
            config.objective,
            processes.world_size,
            local_batch_size,
            steps_per_epoch,
            time.perf_counter() - started,
        )

    torch.manual_seed(config.seed)
    model = TwoTowerModel.from_preprocessor(
        preprocessor, config.embedding_dim, config.hidden_dim, config.initial_embedding_std()
    ).to(device)
    if softmax:
        _freeze_softmax_invariant(model)
    optimizer = torch.optim.AdamW(
        [parameter for parameter in model.parameters() if parameter.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )

    fingerprint = preprocessor.fingerprint()
    checkpoint = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir else None
    progress = _Progress()
    resumed_from = None
    if checkpoint is not None and checkpoint.exists():
        progress = _load_checkpoint(checkpoint, model, optimizer, config, fingerprint)
        resumed_from = progress.global_step
        if processes.is_main:
            logger.info(
                "resuming from step %d (epoch %d, step %d) of %s",
                progress.global_step,
                progress.epoch + 1,
                progress.step,
                checkpoint,
            )
    trained: torch.nn.Module = model
    if processes.world_size > 1:
        _check_ranks_agree(fingerprint, progress.global_step)
        device_ids = [processes.local_rank] if device.type == "cuda" else None
        # The only buffers are constant index offsets: nothing to broadcast per step.
        trained = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    gather_group = softmax_gather_group(processes) if softmax else None

    fail_at_step = _injected_failure_step(processes, checkpoint_dir or output)
    samples_seen = 0
    loop_started = time.perf_counter()
    window_started, window_steps = loop_started, 0
    for epoch in range(progress.epoch, config.epochs):
        # Derived from (seed, epoch) alone, so a resumed run needs no RNG state
        # to continue the same order.
        order = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(num_rows)).to(device)
        loss_sum = torch.tensor(progress.epoch_loss_sum, dtype=torch.float64, device=device)
        for step in range(progress.step, steps_per_epoch):
            if progress.global_step == fail_at_step:
                _inject_failure(progress.global_step, checkpoint_dir or output)
            start = step * config.batch_size + processes.rank * local_batch_size
            rows = order[start : start + local_batch_size]
            if softmax:
                batch = order[step * config.batch_size : (step + 1) * config.batch_size]
                loss = _in_batch_softmax_loss(trained, users, items, rows, batch, log_q, config, processes, gather_group)
            else:
                logits = trained(_take(users, rows), _take(items, rows))
                loss = F.binary_cross_entropy_with_logits(logits, labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            loss_sum += _global_mean(loss.detach(), processes.world_size)
            progress.global_step += 1
            progress.step = step + 1
            samples_seen += config.batch_size
            window_steps += 1
            if processes.is_main and progress.global_step % config.log_every_steps == 0:
                now = time.perf_counter()
                logger.info(
                    "epoch %d/%d step %d/%d loss %.4f samples/s %.0f",
                    epoch + 1,
                    config.epochs,
                    step + 1,
                    steps_per_epoch,
                    loss_sum.item() / (step + 1),
                    window_steps * config.batch_size / (now - window_started),
                )
                window_started, window_steps = now, 0
            at_epoch_end = step + 1 == steps_per_epoch
            if config.checkpoint_every_steps and not at_epoch_end:
                if progress.global_step % config.checkpoint_every_steps == 0:
                    progress.epoch_loss_sum = loss_sum.item()
                    _save_checkpoint(checkpoint, processes, model, optimizer, progress, config, fingerprint)

        progress.epoch_losses.append(loss_sum.item() / steps_per_epoch)
        progress.epoch, progress.step, progress.epoch_loss_sum = epoch + 1, 0, 0.0
        _save_checkpoint(checkpoint, processes, model, optimizer, progress, config, fingerprint)
        if processes.is_main:
            logger.info("epoch %d/%d done: mean loss %.4f", epoch + 1, config.epochs, progress.epoch_losses[-1])

    loop_seconds = time.perf_counter() - loop_started
    metrics = {
        "epoch_losses": progress.epoch_losses,
        "samples_per_second": samples_seen / loop_seconds if samples_seen else 0.0,
        "world_size": processes.world_size,
        "wall_seconds": time.perf_counter() - started,
        "train_loop_seconds": loop_seconds,
        "rows": file_rows,
        "objective": config.objective,
        # Rows trained on: every row for bce, the positives for in_batch_softmax.
        "training_rows": num_rows,
        "global_batch_size": config.batch_size,
        "steps": progress.global_step,
        "resumed_from_step": resumed_from,
    }
    if processes.is_main:
        _export(output, model, preprocessor, config, metrics)
        logger.info(
            "trained %d steps in %.1fs (%.0f samples/s on %d processes); exported to %s",
            progress.global_step,
            metrics["wall_seconds"],
            metrics["samples_per_second"],
            processes.world_size,
            output,
        )
    if processes.world_size > 1:
        # Every rank leaves together: a rank that tears its process group down
        # while rank 0 is still exporting can leave rank 0 blocked in its own
        # teardown (seen with gloo under load).
        dist.barrier()
    return metrics


def item_log_frequency(item_ids: torch.Tensor, num_items: int) -> torch.Tensor:
    """[num_items] log of each item's share of `item_ids` (the training positives).

    That share is the probability that a row drawn into a batch holds the
    item: the Q of the logQ correction. Items that never occur get the log of
    half an occurrence; they are never in a batch, so the value is only a
    finite placeholder.
    """
    counts = torch.bincount(item_ids, minlength=num_items).to(torch.float64)
    return (counts.clamp(min=0.5) / len(item_ids)).log().to(torch.float32)


def _freeze_softmax_invariant(model: TwoTowerModel) -> None:
    """Freeze the parameters that add the same term to every item's score.

    The item MLP's output bias c (adds u·c to every item of a user) and the
    intercept of the numeric item bias cancel out of a softmax over items, so
    their gradient is float rounding only, which Adam's normalisation would
    blow up into steps of learning-rate size that differ between 1 and N
    processes. They stay at their initial values; as the same constant for
    every item of a user, they change no ranking.
    """
    invariant = [model.item_mix.mlp[-1].bias] if model.item_mix.mlp is not None else []
    if model.item_numeric_bias is not None:
        invariant.append(model.item_numeric_bias.bias)
    for parameter in invariant:
        parameter.requires_grad_(False)


def in_batch_softmax_logits(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    item_bias: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float = 1.0,
    item_log_q: torch.Tensor | None = None,
    first_row: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of the in-batch softmax for `b` users against a batch of `B` items.

    `user_vectors` [b, d] are rows ``first_row .. first_row + b - 1`` of the
    global batch, whose items are `item_vectors` [B, d], `item_bias` [B],
    `item_ids` [B] (vocabulary indices) and, for the logQ correction,
    `item_log_q` [B]. Returns ``(logits [b, B], targets [b])``: row i's target
    is column ``first_row + i``; the logits are ``(u·v + bias) / temperature
    - log Q(item)`` and -inf where the column holds the row's own item at
    another position (an accidental hit, which must not count as a negative).
    """
    logits = (user_vectors @ item_vectors.T + item_bias) / temperature
    if item_log_q is not None:
        logits = logits - item_log_q
    rows = torch.arange(len(user_vectors), device=logits.device)
    targets = rows + first_row
    accidental = item_ids[targets].unsqueeze(1) == item_ids.unsqueeze(0)
    accidental[rows, targets] = False
    return logits.masked_fill(accidental, float("-inf")), targets


def softmax_gather_group(processes: _Processes):
    """The process group the in-batch softmax gathers item vectors over (None: one process).

    Not DDP's: the gather's backward is a collective issued by autograd,
    while DDP all-reduces gradient buckets on its group as they fill, and
    the two can be issued in a different order on different ranks. On one
    group a rank then waits in one collective while the other waits in the
    other (a two-process test run in CI hung that way until its 300 s
    timeout). Every rank must call this at the same point.
    """
    return dist.new_group() if processes.world_size > 1 else None


def _in_batch_softmax_loss(
    trained: torch.nn.Module,
    users: dict[str, torch.Tensor],
    items: dict[str, torch.Tensor],
    rows: torch.Tensor,
    batch: torch.Tensor,
    log_q: torch.Tensor | None,
    config: TrainConfig,
    processes: _Processes,
    gather_group=None,
) -> torch.Tensor:
    """Mean in-batch softmax cross-entropy of this rank's `rows` against the whole global `batch`.

    ``gather_group``: :func:`softmax_gather_group`'s, when several processes train.
    """
    user_vectors, item_vectors, item_bias = trained(_take(users, rows), _take(items, rows), towers=True)
    if processes.world_size > 1:
        # Rank r holds the r-th contiguous slice of the batch, so concatenating
        # in rank order gives the batch's items in batch order.
        packed = torch.cat([item_vectors, item_bias.unsqueeze(1)], dim=1)
        gathered = torch.cat(differentiable_all_gather(packed, group=gather_group), dim=0)
        item_vectors, item_bias = gathered[:, :-1], gathered[:, -1]
    item_ids = items["ids"].index_select(0, batch)
    logits, targets = in_batch_softmax_logits(
        user_vectors,
        item_vectors,
        item_bias,
        item_ids,
        config.temperature,
        log_q.index_select(0, item_ids) if log_q is not None else None,
        first_row=processes.rank * len(rows),
    )
    return F.cross_entropy(logits, targets)


def _resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _read_training_set(path: Path, spec: FeatureSpec) -> pd.DataFrame:
    """The columns the model reads, Arrow-backed so encoding needs no conversion."""
    columns = [*spec.user_columns(), *spec.item_columns(), LABEL]
    frame = pd.read_parquet(path, columns=columns, dtype_backend="pyarrow")
    if frame[LABEL].isna().any():
        raise ValueError(f"{path}: column {LABEL!r} has nulls")
    return frame


def _to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def _take(tensors: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: tensor.index_select(0, rows) for name, tensor in tensors.items()}


def _global_mean(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of a per-rank scalar over all ranks: the loss of the global batch."""
    if world_size > 1:
        dist.all_reduce(value)
        value = value / world_size
    return value.to(torch.float64)


def _check_ranks_agree(fingerprint: str, start_step: int) -> None:
    """Fail fast if ranks encoded different data or resumed from different steps."""
    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, (fingerprint, start_step))
    if len(set(views)) != 1:
        raise RuntimeError(f"ranks disagree on (preprocessor fingerprint, start step): {views}")


def _save_checkpoint(
    path: Path | None,
    processes: _Processes,
    model: TwoTowerModel,
    optimizer: torch.optim.Optimizer,
    progress: _Progress,
    config: TrainConfig,
    fingerprint: str,
) -> None:
    """Rank 0 writes the full training state; tmp + rename, so a crash never leaves half a file."""
    if path is None or not processes.is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng: dict[str, object] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": progress.epoch,
        "step": progress.step,
        "global_step": progress.global_step,
        "epoch_losses": progress.epoch_losses,
        "epoch_loss_sum": progress.epoch_loss_sum,
        "rng": rng,
        "config": config.model_dump(),
        "preprocessor_fingerprint": fingerprint,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    logger.debug("checkpoint at step %d written to %s", progress.global_step, path)


def _load_checkpoint(
    path: Path,
    model: TwoTowerModel,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    fingerprint: str,
) -> _Progress:
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state["config"]
    changed = [name for name in TRAJECTORY_FIELDS if name not in saved or saved[name] != getattr(config, name)]
    if changed or state["preprocessor_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} belongs to another run (changed config fields: {changed or 'none'}; same training set: "
            f"{state['preprocessor_fingerprint'] == fingerprint}); use a fresh checkpoint directory"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return _Progress(
        epoch=state["epoch"],
        step=state["step"],
        global_step=state["global_step"],
        epoch_losses=list(state["epoch_losses"]),
        epoch_loss_sum=state["epoch_loss_sum"],
    )


def _injected_failure_step(processes: _Processes, marker_dir: Path) -> int | None:
    """The step at which this rank must fail (test hook, see the module docstring), if any."""
    step = os.environ.get(FAIL_AT_STEP_ENV)
    if step is None or processes.rank != processes.world_size - 1 or (marker_dir / FAILURE_MARKER).exists():
        return None
    return int(step)


def _inject_failure(step: int, marker_dir: Path) -> None:
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / FAILURE_MARKER).write_text(f"failed at step {step}\n")
    logger.error("%s=%d: exiting hard before step %d", FAIL_AT_STEP_ENV, step, step)
    os._exit(1)


def _export(output: Path, model: TwoTowerModel, preprocessor: Preprocessor, config: TrainConfig, metrics: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), output / MODEL_FILE)
    preprocessor.save(output / PREPROCESSOR_FILE)
    (output / FEATURE_SPEC_FILE).write_text(preprocessor.spec.model_dump_json(indent=2))
    (output / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recflow.training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--training-set", required=True, help="training-set parquet file")
    parser.add_argument("--feature-spec", required=True, help="FeatureSpec JSON file")
    parser.add_argument("--output", required=True, help="directory the trained model is exported to")
    parser.add_argument("--config", help="TrainConfig JSON file (defaults otherwise)")
    parser.add_argument("--checkpoint-dir", help="directory for checkpoint.pt; an existing one is resumed")
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
    )
    train(
        training_set=args.training_set,
        feature_spec=FeatureSpec.model_validate_json(Path(args.feature_spec).read_text()),
        output=args.output,
        config=TrainConfig.from_file(args.config) if args.config else None,
        checkpoint_dir=args.checkpoint_dir,
    )


if __name__ == "__main__":
    main()
