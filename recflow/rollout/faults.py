"""Deliberately faulty candidates: the drills that show a rollout rolls a bad model back.

Three faults, one per way a candidate goes wrong in production
(``recflow rollout --inject-fault``):

- ``latency`` and ``errors``: the candidate server runs with
  :class:`serving.config.FaultConfig` (every answer delayed; a share of the
  requests answered 500). The p99 and error-rate checks must catch them.
- ``bad-model``: the candidate is a copy of a good bundle whose ranker weights
  are shuffled within each tensor. It loads, serves fast and without errors,
  with scores on the usual scale, but ranks by noise: only the served-score
  distribution and the click-through from feedback can tell, which is what
  those checks are for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from recflow.ranking.model import MODEL_FILE
from recflow.recommender.online import MODEL_CARD
from serving.config import FaultConfig

FAULTS = ("latency", "errors", "bad-model")


def serving_fault(kind: str) -> FaultConfig | None:
    """The server-side fault for ``kind`` (None for ``bad-model``, which is in the bundle)."""
    if kind not in FAULTS:
        raise ValueError(f"unknown fault {kind!r}: choose one of {', '.join(FAULTS)}")
    return None if kind == "bad-model" else FaultConfig(kind=kind)


def bad_model_bundle(bundle: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A copy of ``bundle`` at ``out`` with its ranker's weights shuffled and its version marked."""
    bundle, out = Path(bundle), Path(out)
    if not (bundle / "ranker" / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{bundle} has no ranker to spoil ({bundle / 'ranker' / MODEL_FILE} missing)")
    if out.exists():
        raise FileExistsError(f"{out} exists; a faulty bundle is written to a new directory")
    shutil.copytree(bundle, out)
    weights_path = out / "ranker" / MODEL_FILE
    weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and tensor.numel() > 1:
            flat = tensor.flatten()
            weights[name] = flat[torch.randperm(flat.numel(), generator=generator)].reshape(tensor.shape)
    torch.save(weights, weights_path)
    card = json.loads((out / MODEL_CARD).read_text())
    card["version"] = f"{card['version']}-bad-model"
    card["fault"] = "bad-model: ranker weights shuffled (a rollout drill)"
    (out / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return out
