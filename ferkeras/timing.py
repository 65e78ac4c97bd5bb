"""How long things take, measured one way everywhere: the standard library only, so that the deploy
tools, the exporters and the benchmarks can all import it.

- `time_calls(call, repeats, warmup)`: warm up, then time each of `repeats` calls (or calls for a time
  budget); the per-call wall and CPU seconds, their median and best, items per second.
- `Stopwatch`: the seconds of one block of code (`with Stopwatch() as watch: ...; watch.seconds`).

Wall time says how long a user waits; CPU time (this process, all threads) says how much work it took
and is far less swayed by other jobs on shared cores.
"""
import os
import statistics
import time
from typing import NamedTuple


def clocks():
    """(wall seconds, CPU seconds of this process, all threads), for differences."""
    return time.perf_counter(), time.process_time()


def load_average():
    """The 1-minute load average (the number of runnable processes the cores were shared by), None
    where the system has none: absolute times scale with it, so it goes beside every figure."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def items_per_second(items, seconds):
    """`items` / `seconds`, infinite for a clock too coarse to see the time pass."""
    return items / seconds if seconds > 0 else float("inf")


class Stopwatch:
    """Started when made (and again on entering a `with` block): `elapsed()` is the wall seconds
    since; `seconds` and `cpu_seconds` are those of the `with` block once it is left."""

    seconds = cpu_seconds = 0.0

    def __init__(self):
        self.start, self.cpu_start = clocks()

    def __enter__(self):
        self.start, self.cpu_start = clocks()
        return self

    def __exit__(self, *exc):
        wall, cpu = clocks()
        self.seconds, self.cpu_seconds = wall - self.start, cpu - self.cpu_start
        return False

    def elapsed(self):
        return time.perf_counter() - self.start


class CallTimes(NamedTuple):
    """What `time_calls` measured: wall and CPU seconds of each timed call, and the last call's result."""
    walls: list
    cpus: list
    result: object = None

    @property
    def median(self):
        """Median wall seconds per call."""
        return statistics.median(self.walls)

    @property
    def median_cpu(self):
        return statistics.median(self.cpus)

    @property
    def total(self):
        """Wall seconds of all the timed calls."""
        return sum(self.walls)

    @property
    def best(self):
        """Wall seconds of the fastest call."""
        return min(self.walls)

    def per_second(self, items):
        """Items per second of a call that handles `items`, from the median call."""
        return items_per_second(items, self.median)


def time_calls(call, repeats=1, warmup=1, warmup_call=None, budget_s=None, max_repeats=None):
    """Call `warmup_call` (default: `call`) `warmup` times untimed (tracing, session set-up and the
    allocator's first growth are not the work being timed), then time `call` `repeats` times.

    With `budget_s`, calls go on after `repeats` until the timed calls have taken `budget_s` seconds
    in all, or `max_repeats` calls have been made. Returns `CallTimes`.
    """
    for _ in range(warmup):
        (warmup_call or call)()
    walls, cpus, result = [], [], None
    while len(walls) < repeats or (budget_s is not None and sum(walls) < budget_s and
                                   (max_repeats is None or len(walls) < max_repeats)):
        with Stopwatch() as watch:
            result = call()
        walls.append(watch.seconds)
        cpus.append(watch.cpu_seconds)
    return CallTimes(walls, cpus, result)
