"""CPU affinity of the servers and the load generator (`--cpus`): parsed strictly, inherited by every thread."""

from __future__ import annotations

import argparse
import os

import pytest

from serving.affinity import cpu_list, pin
from serving.process import ServerProcess


@pytest.mark.parametrize(("text", "cpus"), [("0", {0}), ("0,2", {0, 2}), ("0-3,6", {0, 1, 2, 3, 6}), (" 1 , 3 ", {1, 3})])
def test_cpu_lists_parse_like_taskset(text, cpus):
    assert cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "x", "3-1", "-1", "0,,1", "1-"])
def test_a_bad_cpu_list_is_refused_naming_it(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a CPU list"):
        cpu_list(text)


def test_cpus_this_process_may_not_use_are_refused():
    allowed = os.sched_getaffinity(0)
    with pytest.raises(ValueError, match="not among those this process may use"):
        pin({max(allowed) + 1})
    assert os.sched_getaffinity(0) == allowed


def test_a_pinned_server_runs_every_thread_on_its_cpus(tmp_path):
    """Set before any thread starts, so the event loop's, the thread pools' and torch's threads all inherit it."""
    cpu = min(os.sched_getaffinity(0))
    with ServerProcess(["--request-path", "--cpus", str(cpu)], tmp_path / "server.log") as server:
        tasks = os.listdir(f"/proc/{server.process.pid}/task")
        placements = {int(tid): os.sched_getaffinity(int(tid)) for tid in tasks}
    assert len(placements) > 1, "expected the server to run several threads"
    assert all(cpus == {cpu} for cpus in placements.values()), placements


def test_the_bench_keeps_the_load_generator_off_the_servers_cpus():
    from benchmarks.serve import _load_cpus

    allowed = os.sched_getaffinity(0)
    assert _load_cpus(None) is None
    if len(allowed) > 1:
        first = {min(allowed)}
        assert _load_cpus(first) == allowed - first
    with pytest.raises(ValueError, match="leave no CPU"):
        _load_cpus(set(allowed))
