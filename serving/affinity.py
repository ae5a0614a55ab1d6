"""Which CPUs a process's threads run on (Linux affinity, as ``taskset`` sets it): a process setting, like its port.

The model server's work is serialised by the GIL, but it is spread over
threads: the event loop, the feature reads, the model call. Left to the
OS, they wake each other across cores, and on this VM a cross-core wake-up
is expensive: with the server on one core (the load generator on the other)
the recommender served 632.6 against 523.6 requests/s for the same server
unpinned, at 1.60 against 1.86 CPU ms per request, while the no-op floor
did not move (``docs/design.md``, Serving). On a cluster the kubelet's
static CPU manager gives a Guaranteed pod whole cores the same way.
"""

from __future__ import annotations

import argparse
import os


def cpu_list(text: str) -> set[int]:
    """CPU numbers from a list like ``0``, ``0,2`` or ``0-3,6``: the ``type`` of the ``--cpus`` flags.

    Raises ``argparse.ArgumentTypeError``, which argparse reports with this message.
    """
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list like 0, 0,2 or 0-3: {part.strip()!r}") from None
        if low < 0 or high < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list like 0, 0,2 or 0-3: {part.strip()!r} is no range")
        cpus.update(range(low, high + 1))
    return cpus


def pin(cpus: set[int]) -> None:
    """Run this thread, and the threads it starts from now on, on ``cpus`` only (call it before starting any)."""
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ValueError(f"CPUs {sorted(cpus)} are not among those this process may use: {sorted(allowed)}")
    os.sched_setaffinity(0, cpus)
