"""Live traffic from the synthetic world: users ask for recommendations and click what they like.

The world's oracle (:class:`recflow.data.world.GroundTruth`) knows each user's
true click probability for each item, so simulated users click the way the
world's users did, and a better model earns a higher click-through rate
online, which is what the canary analysis compares.

Per request (open loop, ``rps`` a second, at most ``concurrency`` in flight):
a random user of the world asks the proxy for ``k`` items (V1, with the
``X-Recflow-User`` header the proxy's sticky split hashes); each item served
is clicked with the oracle's probability on ``day``; every served item
becomes a feedback event (an impression, clicked or not) stamped with the
variant that served it (the proxy's ``X-Recflow-Variant`` answer header).
Events go to the feedback service in batches; a batch that fails is sent
again, whole, with the same event ids, so the service's deduplication makes
retries safe and none is lost.

Every request that does not come back 200 is counted by kind (status code,
connection error, timeout): under a rollout, these are the failed requests
the acceptance counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recflow.data.world import GroundTruth, world_config, world_ground_truth
from recflow.rollout.proxy import USER_HEADER, VARIANT_HEADER

log = logging.getLogger(__name__)

V1_PATH = "/v1/models/recommender:predict"
FEEDBACK_PATH = "/v1/feedback"
# Events per feedback request (the service takes up to 10,000).
MAX_FEEDBACK_BATCH = 5000


class SimulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rps: float = Field(gt=0, description="Requests per second (open loop)")
    duration_seconds: float = Field(gt=0)
    k: int = Field(10, ge=1, le=100, description="Items asked per request")
    concurrency: int = Field(64, ge=1, description="Most requests in flight; beyond it requests start late")
    day: int | None = Field(None, description="World day whose tastes apply (default: the day after the log)")
    drift_strength: float | None = Field(
        None, ge=0, le=1, description="Override how far tastes have moved to the trending mix (the world drifting)"
    )
    feedback_interval_seconds: float = Field(0.5, gt=0, description="How often feedback is sent")
    request_timeout_seconds: float = Field(10.0, gt=0)
    seed: int = 0


@dataclasses.dataclass
class SimulationReport:
    requests: int = 0
    ok: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    fallbacks: dict[str, int] = dataclasses.field(default_factory=dict)
    by_variant: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    events_sent: int = 0
    events_duplicate: int = 0
    events_unsent: int = 0
    late_starts: int = 0

    def to_dict(self) -> dict:
        result = dataclasses.asdict(self)
        for figures in result["by_variant"].values():
            figures["ctr"] = figures["clicks"] / figures["impressions"] if figures["impressions"] else None
        return result


def describe(report: SimulationReport) -> str:
    """What ``recflow simulate`` prints."""
    lines = [
        f"requests {report.requests}: {report.ok} answered, failed {sum(report.errors.values())} {report.errors or ''}",
        f"latency p50 {report.latency_p50_ms:.1f} ms, p99 {report.latency_p99_ms:.1f} ms; "
        f"{report.late_starts} requests started late (concurrency limit)",
        f"fallbacks {report.fallbacks or 'none'}",
    ]
    for variant, figures in report.to_dict()["by_variant"].items():
        ctr = f"{figures['ctr']:.3f}" if figures["ctr"] is not None else "-"
        lines.append(
            f"variant {variant or '(direct)'}: {figures.get('requests', 0)} requests, "
            f"{figures.get('impressions', 0)} impressions, {figures.get('clicks', 0)} clicks, CTR {ctr}"
        )
    lines.append(
        f"feedback: {report.events_sent} events logged, {report.events_duplicate} duplicates, "
        f"{report.events_unsent} not delivered"
    )
    return "\n".join(lines)


class Background:
    """:meth:`Simulator.run` in a thread for the length of a ``with`` block (rollouts, the demo's phases)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.stop = threading.Event()
        self.report: SimulationReport | None = None
        self.thread = threading.Thread(target=self._run, name="simulator")

    def _run(self) -> None:
        self.report = self.simulator.run(self.stop)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(120)


def ground_truth_for(card: dict, ground_truth_dir: str | Path | None = None) -> GroundTruth:
    """The oracle of the world a model was trained on: a saved one, or drawn again from the card's scale and seed."""
    if ground_truth_dir is not None:
        return GroundTruth.load(ground_truth_dir)
    data = card.get("data", {})
    if data.get("source") not in ("world", "dataset") or data.get("scale") in (None, "custom"):
        raise ValueError(
            f"the model was trained on {data.get('source')!r} data of scale {data.get('scale')!r}: "
            "the simulator needs a named synthetic world, or pass the world's ground_truth directory"
        )
    return world_ground_truth(world_config(data["scale"], seed=data.get("seed", 0)))


class Simulator:
    """Plays ``config`` against a proxy and a feedback service; :meth:`run` returns the report."""

    def __init__(self, config: SimulationConfig, truth: GroundTruth, proxy_url: str, feedback_url: str) -> None:
        self.config = config
        if config.drift_strength is not None:
            drifted = truth.config.model_copy(update={"drift_strength": config.drift_strength})
            if drifted.drift_start_day is None:
                drifted = drifted.model_copy(update={"drift_start_day": 0})
            truth = dataclasses.replace(truth, config=drifted)
        self.truth = truth
        self.day = config.day if config.day is not None else truth.config.days
        self.proxy_url = proxy_url.rstrip("/") + V1_PATH
        self.feedback_url = feedback_url.rstrip("/") + FEEDBACK_PATH
        self.items = set(truth.item_ids.tolist())
        self.rng = np.random.default_rng(config.seed)
        self.run_id = uuid.uuid4().hex[:12]
        self.report = SimulationReport()
        self._latencies: list[float] = []
        self._events: list[dict] = []
        self._variants: dict[str, Counter] = defaultdict(Counter)

    def run(self, stop: threading.Event | None = None) -> SimulationReport:
        """Play until the configured duration has passed or ``stop`` is set (from any thread)."""
        return asyncio.run(self._run(stop))

    def in_background(self) -> Background:
        """A context manager playing in a thread until the block ends; its ``report`` after."""
        return Background(self)

    async def _run(self, stop: threading.Event | None) -> SimulationReport:
        config = self.config
        timeout = aiohttp.ClientTimeout(total=config.request_timeout_seconds)
        connector = aiohttp.TCPConnector(limit=config.concurrency + 4)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            sender = asyncio.create_task(self._send_feedback_forever(session))
            in_flight = asyncio.Semaphore(config.concurrency)
            tasks = []
            started = time.monotonic()
            total = int(config.rps * config.duration_seconds)
            for number in range(total):
                if stop is not None and stop.is_set():
                    break
                delay = started + number / config.rps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if in_flight.locked():
                    self.report.late_starts += 1
                await in_flight.acquire()
                tasks.append(asyncio.create_task(self._request(session, number, in_flight)))
            await asyncio.gather(*tasks)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await self._flush_feedback(session, attempts=20)
        self.report.by_variant = {name: dict(counts) for name, counts in sorted(self._variants.items())}
        if self._latencies:
            values = np.asarray(self._latencies) * 1000.0
            self.report.latency_p50_ms = float(np.percentile(values, 50))
            self.report.latency_p99_ms = float(np.percentile(values, 99))
        self.report.events_unsent = len(self._events)
        return self.report

    async def _request(self, session: aiohttp.ClientSession, number: int, in_flight: asyncio.Semaphore) -> None:
        user = str(self.truth.user_ids[self.rng.integers(len(self.truth.user_ids))])
        body = json.dumps({"instances": [{"user_id": user, "k": self.config.k}]})
        headers = {"Content-Type": "application/json", USER_HEADER: user}
        self.report.requests += 1
        started = time.perf_counter()
        try:
            async with session.post(self.proxy_url, data=body, headers=headers) as response:
                payload = await response.read()
                status, variant = response.status, response.headers.get(VARIANT_HEADER, "")
        except asyncio.TimeoutError:
            status = "timeout"
        except aiohttp.ClientError as error:
            status = type(error).__name__
        finally:
            in_flight.release()
        if status != 200:
            self.report.errors[str(status)] = self.report.errors.get(str(status), 0) + 1
            return
        self._latencies.append(time.perf_counter() - started)
        self.report.ok += 1
        prediction = json.loads(payload)["predictions"][0]
        if prediction.get("fallback"):
            self.report.fallbacks[prediction["fallback"]] = self.report.fallbacks.get(prediction["fallback"], 0) + 1
        shown = [item["item_id"] for item in prediction["items"] if item["item_id"] in self.items]
        counts = self._variants[variant]
        counts["requests"] += 1
        if not shown:
            return
        clicked = self.rng.random(len(shown)) < self.truth.affinity([user], shown, self.day)[0]
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        for rank, (item, click) in enumerate(zip(shown, clicked)):
            self._events.append(
                {
                    "event_id": f"sim-{self.run_id}-{number}-{rank}",
                    "user_id": user,
                    "item_id": item,
                    "event_timestamp": now,
                    "clicked": bool(click),
                    "variant": variant,
                    "model_version": prediction.get("model_version") or "",
                }
            )
        counts["impressions"] += len(shown)
        counts["clicks"] += int(clicked.sum())

    async def _send_feedback_forever(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.config.feedback_interval_seconds)
            await self._flush_feedback(session, attempts=1)

    async def _flush_feedback(self, session: aiohttp.ClientSession, attempts: int) -> None:
        """Send the buffered events; a failed batch stays buffered, in order, for the next attempt."""
        failures = 0
        while self._events and failures < attempts:
            batch = self._events[:MAX_FEEDBACK_BATCH]
            try:
                async with session.post(self.feedback_url, json={"events": batch}) as response:
                    answer = await response.json(content_type=None)
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {answer}")
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, ValueError) as error:
                log.warning("feedback batch of %d events not taken (%s); kept for the next attempt", len(batch), error)
                failures += 1
                if failures < attempts:
                    await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            del self._events[: len(batch)]
            self.report.events_sent += answer["accepted"]
            self.report.events_duplicate += answer["duplicates"]
