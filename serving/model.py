"""The ``recommender`` KServe model: requests in, micro-batches through the stack, answers out.

The event loop only parses, queues and answers. Blocking work runs in two
thread pools: the online feature read (bounded by a deadline, after which the
batch is answered with popular items; a read still queued is dropped, one
already running finishes in the background) and the model call (one thread:
batches run one after another, so the stages never compete with each other
for the two cores).

Concurrent requests are grouped the way Triton's dynamic batcher does it:
whatever arrived while the previous batch ran goes into the next model call,
up to ``max_batch_users``, and a batch waits a little (at most
``batch_gather_share`` of a recent call, and ``batch_gather_ms``) for as
many requests as were in flight when the previous one was answered: its
own, whose clients under steady load ask again at once, and those that
queued while it ran. The stack's cost is mostly per call, not
per user, so under load a request pays for a share of a batch instead of a
whole call; a lone client is never held back waiting for company.

On a cluster every answer names the variant that served it in
``X-Recflow-Variant`` (:func:`served_variant`), as the local platform's
proxy does: the feedback a client sends back carries it, so the canary
analysis and the drift monitor tell the stable model's traffic from the
canary's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from recflow.features.online import UserFeatureReader, UserFeatures
from recflow.recommender.online import Answer, BatchTrace, Bundle, OnlineRecommender, Query, load_bundle
from recflow.rollout.proxy import VARIANT_HEADER
from serving import metrics
from serving.config import ServingConfig
from serving.protocol import parse_v1, parse_v2, v1_response, v2_response

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised on purpose by :class:`~serving.config.FaultConfig` ``errors``: KServe answers it with HTTP 500."""

MODEL_NAME = "recommender"
# The pod's name, from the Downward API (the chart sets it in Standard mode).
POD_NAME_ENV = "RECFLOW_POD_NAME"
# A user id no one has: the warm-up reads it (default features) and runs the stack on it.
WARM_UP_USER = "__recflow_warm_up__"


def served_variant(environ=os.environ) -> str:
    """The name this server answers as on a cluster, the one the canary analysis selects feedback by:
    its Knative revision (``K_REVISION``, Serverless mode), else the Deployment of its pod
    (``<deployment>-<replicaset hash>-<suffix>``, Standard mode); "" on the local platform, whose
    proxy names the slot instead."""
    if environ.get("K_REVISION"):
        return environ["K_REVISION"]
    pod = environ.get(POD_NAME_ENV, "")
    return pod.rsplit("-", 2)[0] if pod.count("-") >= 2 else ""


class BatchedModel(Model):
    """What every batched model of this server shares: ``predict`` parses V1 or V2, names the variant,
    injects a configured fault, and sends the queries through the micro-batcher that ``load`` sets up."""

    def __init__(self, config: ServingConfig, name: str = MODEL_NAME):
        super().__init__(name, return_response_headers=True)  # predict names the variant in a header
        self.config = config
        self._batcher: MicroBatcher | None = None
        self.variant = served_variant()

    @property
    def version(self) -> str:
        """The model version the answers name."""
        raise NotImplementedError

    async def predict(self, payload, headers=None, response_headers=None):
        started = time.perf_counter()
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        if self.variant and response_headers is not None:
            response_headers[VARIANT_HEADER] = self.variant
        try:
            await self._injected_fault()
            if protocol == "v2":
                queries = parse_v2(payload, self.config)
                answers = await self._batcher.submit(queries)
                return v2_response(payload, answers, queries, self.name, self.version)
            answers = await self._batcher.submit(parse_v1(payload, self.config))
            return v1_response(answers, self.version)
        finally:  # failed requests too: the latency alert must see them
            metrics.REQUEST_SECONDS.labels(protocol).observe(time.perf_counter() - started)

    async def _injected_fault(self) -> None:
        fault = self.config.inject_fault
        if fault is None:
            return
        if fault.kind == "latency":
            await asyncio.sleep(fault.latency_ms / 1000.0)
        elif random.random() < fault.error_rate:
            raise InjectedFault(f"injected fault: failing {fault.error_rate:.0%} of requests")


class RecommenderModel(BatchedModel):
    def __init__(self, bundle_dir: str | Path, feature_repo: str | Path, config: ServingConfig, name: str = MODEL_NAME):
        super().__init__(config, name)
        self.bundle_dir = Path(bundle_dir)
        self.feature_repo = Path(feature_repo)
        self.bundle: Bundle | None = None
        self.recommender: OnlineRecommender | None = None
        self.reader: UserFeatureReader | None = None

    def load(self) -> bool:
        """Load the bundle and connect to the feature store; ``ready`` only once both worked."""
        from recflow.features.store import get_store
        from recflow.features.training_set import on_demand_transforms
        from recflow.retrieval.index import set_search_threads

        torch.set_num_threads(self.config.torch_threads)
        set_search_threads(self.config.search_threads)
        store = get_store(self.feature_repo)
        self.bundle = load_bundle(self.bundle_dir, lambda service: on_demand_transforms(store, service))
        candidates = self.bundle.stack.config.candidates
        if self.config.max_k > candidates:
            raise ValueError(f"max_k {self.config.max_k} exceeds the {candidates} candidates the bundle's stack retrieves")
        self.reader = UserFeatureReader(store, self.bundle.feature_service)
        self.recommender = OnlineRecommender(self.bundle)
        self._warm_up()
        self._batcher = MicroBatcher(self._read_features, self._answer, self.config)
        metrics.MODEL_INFO.info(
            {"version": self.bundle.version, "feature_service": self.bundle.feature_service, "model": self.name}
        )
        log.info("loaded bundle %s (version %s)", self.bundle_dir, self.bundle.version)
        self.ready = True
        return self.ready

    @property
    def version(self) -> str:
        return self.bundle.version

    def _warm_up(self, calls: int = 3) -> None:
        """Run the whole path a few times before reporting ready, metrics untouched.

        A fresh server's first calls pay for lazy set-up in torch, faiss and
        Feast (tens of milliseconds each); without this they would land on its
        first users, and a canary's first p99 would be its start-up, not its model.
        """
        try:
            features = self.reader.read([WARM_UP_USER])
        except Exception as error:  # the store's own types; a server starts without it and answers fallbacks
            log.warning("no warm-up: the online store did not answer: %s: %s", type(error).__name__, error)
            return
        as_known = dataclasses.replace(features, known=np.ones(1, dtype=bool))  # the stack, not the cold start
        for _ in range(calls):
            self.recommender.answer([Query(WARM_UP_USER, self.config.default_k)], as_known, pd.Timestamp.now(tz="UTC"))

    def _read_features(self, user_ids: list[str]) -> UserFeatures:
        return self.reader.read(user_ids)

    def _answer(self, queries: list[Query], features: UserFeatures | None, failure: str | None) -> list[Answer]:
        at = pd.Timestamp(self.config.request_time) if self.config.request_time else pd.Timestamp.now(tz="UTC")
        answers, trace = self.recommender.answer(queries, features, at, failure)
        _record(trace, answers, features, at)
        return answers


def _record(trace: BatchTrace, answers: list[Answer], features: UserFeatures | None, at: pd.Timestamp) -> None:
    metrics.BATCH_USERS.observe(len(answers))
    for stage, seconds in trace.seconds.items():
        metrics.STAGE_SECONDS.labels(stage).observe(seconds)
    for reason, users in trace.fallbacks.items():
        metrics.FALLBACKS.labels(reason).inc(users)
    metrics.SCORES.observe_many(score for answer in answers if answer.fallback is None for _, score in answer.items)
    if features is not None:
        metrics.FEATURE_AGE.observe_many(np.maximum(at.timestamp() - features.updated_at[features.known], 0.0))


class MicroBatcher:
    """Queues queries from concurrent requests and answers them a batch at a time."""

    def __init__(self, read_features, answer, config: ServingConfig):
        self.read_features = read_features
        self.answer = answer
        self.config = config
        self.deadline = config.feature_deadline_ms / 1000.0
        self.longest_gather = config.batch_gather_ms / 1000.0
        # Moving mean of a model call's seconds, feature read included (0 until the first call).
        self.call_seconds = 0.0
        # A read past its deadline keeps its thread until it returns; a few
        # threads let the next batches try the store meanwhile.
        self.feature_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="features")
        self.model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        # A request that did not fit into the last batch opens the next one.
        self._carried = None

    async def submit(self, queries: list[Query]) -> list[Answer]:
        if self.worker is None or self.worker.done():
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((queries, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Requests in flight when the last batch was answered: its own, which under
        # steady load come back at once, and those that queued meanwhile. Waiting
        # for all of them keeps concurrent clients in one batch; without it, two
        # halves that once missed each other would alternate for good, each
        # paying a whole model call.
        expected = 1
        while True:
            batch = [self._carried or await self.queue.get()]
            self._carried = None
            users = len(batch[0][0])
            gather_until = loop.time() + self.gather_window()
            while users < self.config.max_batch_users:
                if self.queue.empty():
                    remaining = gather_until - loop.time()
                    if len(batch) >= expected or remaining <= 0:
                        break
                    try:
                        waiting = await asyncio.wait_for(self.queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                else:
                    waiting = self.queue.get_nowait()
                if users + len(waiting[0]) > self.config.max_batch_users:
                    self._carried = waiting
                    break
                batch.append(waiting)
                users += len(waiting[0])
            queries = [query for request, _ in batch for query in request]
            started = loop.time()
            try:
                answers = await self._answer_batch(queries)
            except Exception as error:  # unexpected: those requests fail (500), the worker lives on
                log.exception("batch of %d users failed", len(queries))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            finally:
                expected = len(batch) + self.queue.qsize() + (self._carried is not None)
                self._observe_call(loop.time() - started)
            start = 0
            for request, future in batch:
                if not future.done():  # the client may have gone away
                    future.set_result(answers[start : start + len(request)])
                start += len(request)

    def gather_window(self) -> float:
        """Seconds a batch may wait for the requests expected: a share of a recent call, at most ``batch_gather_ms``.

        Waiting delays the requests already in the batch; not waiting splits
        the batch, and the rest pay a whole model call of their own. So the
        wait follows what a call costs: a fixed 2 ms kept full batches only
        while the machine was fast (figures in ``docs/design.md``, Serving).
        """
        return min(self.longest_gather, self.config.batch_gather_share * self.call_seconds)

    def _observe_call(self, seconds: float) -> None:
        """Fold a call into the moving mean: the newest weighs a fifth, so a change of load shows
        within a few calls and one slow call (a feature read at its deadline) moves it little."""
        self.call_seconds = seconds if not self.call_seconds else 0.8 * self.call_seconds + 0.2 * seconds

    async def _answer_batch(self, queries: list[Query]) -> list[Answer]:
        loop = asyncio.get_running_loop()
        features, failure = None, None
        started = time.perf_counter()
        read = self.feature_pool.submit(self.read_features, [query.user_id for query in queries])
        try:
            # On timeout wait_for cancels the read: one still queued is dropped (a stuck
            # store must not leave a backlog of stale reads); one running finishes.
            features = await asyncio.wait_for(asyncio.wrap_future(read), self.deadline)
        except asyncio.TimeoutError:
            failure = "feature_store_timeout"
            read.add_done_callback(_log_late_read)
        except Exception as error:  # the store is down, its file gone, its server stopped
            failure = "feature_store_unavailable"
            log.warning("online feature read failed: %s: %s", type(error).__name__, error)
        metrics.STAGE_SECONDS.labels("features").observe(time.perf_counter() - started)
        return await loop.run_in_executor(self.model_pool, self.answer, queries, features, failure)


def _log_late_read(read: concurrent.futures.Future) -> None:
    if not read.cancelled() and read.exception() is not None:
        log.warning("online feature read failed after its deadline: %s", read.exception())


class RequestPathModel(BatchedModel):
    """The recommender's request path without its work: the benchmark's middle row.

    Requests are parsed, queued, batched and sent through both thread hops
    exactly as :class:`RecommenderModel` does it (the same
    :class:`BatchedModel`), and answered with one
    fixed list: no feature read, no stage. Between the no-op floor and the
    recommender, it tells what the protocol and the batching cost from
    what the features and the stages cost.
    """

    def __init__(self, config: ServingConfig = ServingConfig(), name: str = MODEL_NAME):
        super().__init__(config, name)
        self._items = [(f"item-{rank}", 1.0 / rank) for rank in range(1, config.max_k + 1)]

    def load(self) -> bool:
        self._batcher = MicroBatcher(lambda user_ids: None, self._fixed_answers, self.config)
        self.ready = True
        return self.ready

    @property
    def version(self) -> str:
        return "request-path"

    def _fixed_answers(self, queries: list[Query], features: None, failure: str | None) -> list[Answer]:
        return [Answer(query.user_id, self._items[: query.k], None) for query in queries]


class NoOpModel(Model):
    """The benchmark's floor: the same server and protocol handling, no work at all."""

    def __init__(self, name: str = MODEL_NAME):
        super().__init__(name)

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload, headers=None, response_headers=None):
        if not isinstance(payload, dict):
            raise InvalidInput("the request body must be a JSON object")
        return {"predictions": [None for _ in payload.get("instances", [])]}

