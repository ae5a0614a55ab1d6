"""The micro-batcher: answers stay with their requests, failures stay in their batch.

The read and answer functions are small stand-ins that record what they were
given; the batcher, its thread pools and its deadline are the real ones. The
last test serves the batcher behind a real server with fixed answers
(``RequestPathModel``, the serving benchmark's middle row).
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from recflow.recommender.online import Answer, Query
from serving.config import ServingConfig
from serving.model import MicroBatcher
from serving.process import ServerProcess


class Recorder:
    def __init__(self, read_seconds: float = 0.0, fail_on: str | None = None):
        self.read_seconds = read_seconds
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.failures: list[str | None] = []
        self.reads = 0
        self.lock = threading.Lock()

    def read(self, user_ids):
        with self.lock:
            self.reads += 1
        time.sleep(self.read_seconds)
        return user_ids

    def answer(self, queries, features, failure):
        users = [query.user_id for query in queries]
        self.batches.append(users)
        self.failures.append(failure)
        if self.fail_on in users:
            raise RuntimeError("model failed")
        return [Answer(query.user_id, [(f"item-of-{query.user_id}", float(query.k))], failure) for query in queries]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_of_mixed_sizes_get_their_own_answers_in_batches_of_at_most_four():
    recorder = Recorder()
    config = ServingConfig(max_batch_users=4, max_users_per_request=3, max_k=10)
    batcher = MicroBatcher(recorder.read, recorder.answer, config)
    requests = [[Query(f"u{r}-{i}", k=1 + (r + i) % 5) for i in range(1 + r % 3)] for r in range(12)]

    async def main():
        return await asyncio.gather(*(batcher.submit(request) for request in requests))

    answers = run(main())
    for request, got in zip(requests, answers):
        assert [a.user_id for a in got] == [q.user_id for q in request]
        assert [a.items[0] for a in got] == [(f"item-of-{q.user_id}", float(q.k)) for q in request]
    assert all(len(batch) <= 4 for batch in recorder.batches)
    assert sum(len(batch) for batch in recorder.batches) == sum(len(r) for r in requests)
    assert len(recorder.batches) < len(requests)  # requests were grouped


def test_two_halves_of_the_clients_that_missed_each_other_end_up_in_one_batch():
    """Closed-loop clients that once landed in two batches must not alternate for good.

    Four clients ask while the other four's batch runs; each asks again as
    soon as it is answered. Waiting only for as many requests as the last
    batch answered kept two batches of 4 going back and forth, each paying a
    whole model call; the batcher waits for every request in flight instead.
    """

    class SlowModel(Recorder):
        def answer(self, queries, features, failure):
            time.sleep(0.01)
            return super().answer(queries, features, failure)

    recorder = SlowModel()
    batcher = MicroBatcher(recorder.read, recorder.answer, ServingConfig(batch_gather_ms=20))

    async def client(name: str, delay: float):
        await asyncio.sleep(delay)
        for round_ in range(8):
            await batcher.submit([Query(f"{name}-{round_}", 1)])

    async def main():
        await asyncio.gather(*(client(f"c{c}", 0.0 if c < 4 else 0.003) for c in range(8)))

    run(main())
    sizes = [len(batch) for batch in recorder.batches]
    # The first half alone, then everyone together; the first half, a round
    # ahead, is done before the second half's last round.
    assert sizes == [4] + [8] * 7 + [4], sizes


def _batch_sizes_of_slow_calls_and_slow_clients(config: ServingConfig) -> list[int]:
    """Eight clients whose next request comes back 1 to 8 ms after their answer; a model call takes 30 ms."""

    class SlowModel(Recorder):
        def answer(self, queries, features, failure):
            time.sleep(0.03)
            return super().answer(queries, features, failure)

    recorder = SlowModel()
    batcher = MicroBatcher(recorder.read, recorder.answer, config)

    async def client(number: int):
        for round_ in range(6):
            await batcher.submit([Query(f"c{number}-{round_}", 1)])
            await asyncio.sleep(0.001 * (1 + number))

    async def main():
        await asyncio.gather(*(client(number) for number in range(8)))

    run(main())
    return [len(batch) for batch in recorder.batches]


def test_the_wait_for_returning_clients_follows_the_cost_of_a_call():
    """Clients slower to come back than a fixed few milliseconds still share one batch when a call is slow.

    The batch waits up to half a recent call (15 ms here) for the eight
    requests in flight. Without that wait (share 0) the first client back
    goes alone and the other seven queue behind its whole call.
    """
    assert _batch_sizes_of_slow_calls_and_slow_clients(ServingConfig()) == [8] * 6
    unwaited = _batch_sizes_of_slow_calls_and_slow_clients(ServingConfig(batch_gather_share=0.0))
    assert len(unwaited) > 6 and min(unwaited) < 8, unwaited


def test_a_failing_batch_fails_its_requests_only_and_the_worker_goes_on():
    recorder = Recorder(fail_on="bad")
    batcher = MicroBatcher(recorder.read, recorder.answer, ServingConfig())

    async def main():
        failed = await asyncio.gather(batcher.submit([Query("bad", 1)]), return_exceptions=True)
        later = await batcher.submit([Query("good", 2)])
        return failed, later

    failed, later = run(main())
    assert isinstance(failed[0], RuntimeError)
    assert later[0].user_id == "good" and later[0].fallback is None


def test_a_read_past_the_deadline_answers_with_the_timeout_and_queued_reads_are_dropped():
    recorder = Recorder(read_seconds=0.3)
    batcher = MicroBatcher(recorder.read, recorder.answer, ServingConfig(feature_deadline_ms=20, max_k=10))

    async def main():
        # One after another: each batch's read misses its deadline.
        return [await batcher.submit([Query(f"u{i}", 3)]) for i in range(12)]

    answers = run(main())
    assert {a[0].fallback for a in answers} == {"feature_store_timeout"}
    assert set(recorder.failures) == {"feature_store_timeout"}
    # 4 read threads, 12 deadlines of 20 ms within ~0.3 s: reads still queued were cancelled, not run.
    time.sleep(0.7)
    assert recorder.reads < 12


def test_contradictory_settings_are_rejected():
    with pytest.raises(ValueError, match="default_k"):
        ServingConfig(default_k=20, max_k=10)
    with pytest.raises(ValueError, match="max_batch_users"):
        ServingConfig(max_batch_users=8, max_users_per_request=16)
    with pytest.raises(ValueError, match="max_kk"):
        ServingConfig(max_kk=3)


def test_the_request_path_alone_answers_v1_and_v2_through_the_batcher_with_its_fixed_list(tmp_path):
    """``python -m serving --request-path`` (the serving benchmark's middle row): the real server, no bundle."""
    config = tmp_path / "serving.yaml"
    config.write_text("max_k: 20\n")
    with ServerProcess(["--request-path", "--config", str(config)], tmp_path / "server.log") as server:
        v1 = httpx.post(f"{server.url}/v1/models/recommender:predict",
                        json={"instances": [{"user_id": "a", "k": 3}, {"user_id": "b"}]}).json()  # fmt: skip
        assert [(p["user_id"], len(p["items"]), p["model_version"]) for p in v1["predictions"]] == [
            ("a", 3, "request-path"), ("b", 10, "request-path")
        ]
        assert v1["predictions"][0]["items"][0] == {"item_id": "item-1", "score": 1.0}
        v2 = httpx.post(f"{server.url}/v2/models/recommender/infer", json={"inputs": [
            {"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            {"name": "k", "shape": [1], "datatype": "INT32", "data": [2]},
        ]}).json()  # fmt: skip
        assert next(o for o in v2["outputs"] if o["name"] == "item_ids")["data"] == ["item-1", "item-2"]
        too_many = httpx.post(f"{server.url}/v1/models/recommender:predict", json={"instances": [{"user_id": "a", "k": 21}]})
        assert too_many.status_code == 400 and "k" in too_many.text  # its config's max_k, checked as the recommender checks it
