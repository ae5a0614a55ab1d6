"""One in-batch-softmax step's gradients, from 1 process or N torchrun processes.

    python softmax_step_worker.py TRAINING_SET OUT.pt              # one process
    torchrun --nproc-per-node 2 softmax_step_worker.py TRAINING_SET OUT.pt

Not a test module: tests/training/test_distributed.py launches it and compares
the gradients rank 0 holds after DDP's all-reduce with the single-process ones.
"""

import sys

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recflow.training.config import TrainConfig
from recflow.training.features import LABEL, FeatureSpec, Preprocessor
from recflow.training.model import TwoTowerModel
from recflow.training.train import (
    _freeze_softmax_invariant,
    _in_batch_softmax_loss,
    _Processes,
    item_log_frequency,
    leave_process_groups,
    softmax_gather_group,
)

CONFIG = TrainConfig(
    objective="in_batch_softmax", temperature=0.5, batch_size=64, embedding_dim=8, hidden_dim=16, max_history=5
)


def main(training_set: str, out: str) -> None:
    processes = _Processes.from_env()
    torch.set_num_threads(1)
    if processes.world_size > 1:
        dist.init_process_group("gloo")
    loss, grads = _one_step(training_set, processes)
    if processes.is_main:
        torch.save({"loss": loss, "grads": grads}, out)
    if dist.is_initialized():
        dist.barrier()  # leave together, as recflow.training.train does
        leave_process_groups()


def _one_step(training_set: str, processes: _Processes) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The global loss and the gradients this rank holds after DDP's all-reduce."""
    frame = pd.read_parquet(training_set, dtype_backend="pyarrow")
    spec = FeatureSpec.infer(frame)
    preprocessor = Preprocessor.fit(frame, spec, CONFIG.max_history)
    frame = frame[frame[LABEL].to_numpy(dtype=np.float32) > 0]
    users, items = preprocessor.encode_users(frame), preprocessor.encode_items(frame)
    torch.manual_seed(CONFIG.seed)
    model = TwoTowerModel.from_preprocessor(
        preprocessor, CONFIG.embedding_dim, CONFIG.hidden_dim, CONFIG.initial_embedding_std()
    )
    _freeze_softmax_invariant(model)
    trained = DistributedDataParallel(model, broadcast_buffers=False) if processes.world_size > 1 else model
    batch = torch.from_numpy(np.random.default_rng(0).permutation(len(frame))[: CONFIG.batch_size])
    local = CONFIG.local_batch_size(processes.world_size)
    rows = batch[processes.rank * local : (processes.rank + 1) * local]
    log_q = item_log_frequency(items["ids"], preprocessor.num_items)
    gather_group = softmax_gather_group(processes)
    loss = _in_batch_softmax_loss(trained, users, items, rows, batch, log_q, CONFIG, processes, gather_group)
    loss.backward()
    if processes.world_size > 1:
        dist.all_reduce(loss)
        loss /= processes.world_size
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


if __name__ == "__main__":
    main(*sys.argv[1:3])
