"""Issue 6 benchmark: the OPD queue. What is measured so far (``--part``; all by default):

  recompute  Waiting-time recomputation in-process (``sehat.queue.eta.QueueEstimator``) for a queue of
             ``--tokens`` (500) waiting tokens of every priority class, one room with a consultation under way:
             each sample is one event (in turn: a patient joins, the next token is called, the consultation
             under way finishes and the called one starts, a delay is reported, the queue pauses or resumes)
             followed by the estimates of every waiting token; arrivals and calls balance, so the line keeps
             its length. Median and p99 over ``--samples`` events, timed with ``perf_counter_ns``.
             In the same run, two references the issue names: a naive recomputation (sort the whole line,
             then the estimates token by token in Python) and one Redis sorted-set read of the line
             (``ZRANGE 0 -1 WITHSCORES`` on the local Redis, one round trip).

Targets (issue 6): recomputation median <= 0.1 ms and p99 <= 0.2 ms for 500 tokens. The board-socket fan-out and
the HTTP queue operations join this command as those parts of the issue are built.

    python3 dev.py bench queue
    python3 dev.py bench queue --tokens 1000 --samples 50000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from harness import RESULTS_DIR, log_step, percentile
from sehat.queue.eta import PriorityClass, QueueEstimator

PARTS = ("recompute",)
TARGET_MEDIAN_MS = 0.1
TARGET_P99_MS = 0.2
REDIS_URL = "redis://127.0.0.1:6379/0"
MINUTE = 60.0
PLANNED = {PriorityClass.emergency: 15 * MINUTE, PriorityClass.priority: 10 * MINUTE}
# How a busy OPD line is made up: mostly booked and walk-in patients.
MIX = (
    (PriorityClass.emergency, 0.02),
    (PriorityClass.priority, 0.13),
    (PriorityClass.booked, 0.45),
    (PriorityClass.walk_in, 0.40),
)


def parse_options(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--tokens", type=int, default=500, help="waiting tokens in the queue")
    parser.add_argument("--samples", type=int, default=20_000, help="events timed")
    parser.add_argument("--seed", type=int, default=6, help="random seed of the line's make-up")
    options = parser.parse_args(arguments)
    options.parts = options.part or list(PARTS)
    return options


class Line:
    """The queue under test and a stream of the events an OPD sees, applied one at a time."""

    def __init__(self, tokens: int, seed: int, now: float) -> None:
        self.random = random.Random(seed)
        self.now = now
        self.estimator = QueueEstimator(rooms=1)
        self.numbers = itertools.count(1)
        self.planned: dict[int, float] = {}
        for _ in range(tokens):
            self.join()
        self.call_next()
        # As many arrivals as calls, so the line keeps its length for the whole run.
        self.events: list[Callable[[], None]] = [self.join, self.call_next, self.report_delay, self.pause_and_resume]

    def join(self) -> None:
        priority = self.random.choices([kind for kind, _ in MIX], [weight for _, weight in MIX])[0]
        number = next(self.numbers)
        planned = PLANNED.get(priority, self.random.choice((10 * MINUTE, 20 * MINUTE)))
        order = self.now + self.random.uniform(-60, 60) * MINUTE
        self.planned[number] = planned
        self.estimator.add_waiting(number, priority, order, planned)

    def call_next(self) -> None:
        if self.estimator.paused:
            self.estimator.resume()
        token = self.estimator.next_token()
        if token is None:
            return
        self.estimator.remove_waiting(token)
        if self.estimator.in_consultation("room 1") is not None:
            self.estimator.finish_consultation("room 1", self.now)
        self.estimator.start_consultation("room 1", token, self.now, self.planned[token])

    def report_delay(self) -> None:
        self.estimator.report_delay(self.now, self.random.choice((0, 10, 20)) * MINUTE)

    def pause_and_resume(self) -> None:
        if self.estimator.paused:
            self.estimator.resume()
        else:
            self.estimator.pause(until=self.now + 15 * MINUTE)

    def step(self, index: int) -> None:
        self.now += 7.0
        self.events[index % len(self.events)]()


def measure_recompute(options: argparse.Namespace) -> dict[str, Any]:
    line = Line(options.tokens, options.seed, now=1_800_000_000.0)
    waiting = len(line.estimator.waiting())
    log_step(f"recompute: {options.samples:,} events on a line of {waiting} waiting tokens")
    for index in range(2_000):  # warm: the interpreter's caches
        line.step(index)
        line.estimator.estimates(line.now)
    samples = []
    gc.collect()
    for index in range(options.samples):
        line.step(index)
        started = time.perf_counter_ns()
        estimates = line.estimator.estimates(line.now)
        samples.append(time.perf_counter_ns() - started)
        if len(estimates) != len(line.estimator.waiting()):
            raise AssertionError("an estimate per waiting token")
    event_samples = []
    for index in range(options.samples):
        started = time.perf_counter_ns()
        line.step(index)
        line.estimator.estimates(line.now)
        event_samples.append(time.perf_counter_ns() - started)
    naive = measure_naive(line, options.samples // 10)
    redis_read = asyncio.run(measure_redis_read(line, options.samples // 10))
    return {
        "waiting_tokens": waiting,
        "samples": options.samples,
        "estimates_only": _figures(samples),
        "event_and_estimates": _figures(event_samples),
        "naive_sort_and_loop": _figures(naive),
        "redis_zrange_round_trip": _figures(redis_read),
    }


def measure_naive(line: Line, samples: int) -> list[int]:
    """The reference: sort the whole line on each event, then walk it in Python."""
    rows = [
        (int(priority), line.random.uniform(0, 1e6), number, line.planned.get(number, 600.0))
        for number, priority in zip(
            range(len(line.estimator.waiting())),
            itertools.cycle(list(PriorityClass)),
            strict=False,
        )
    ]
    timings = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        ordered = sorted(rows)
        clock = line.now
        estimates = []
        for _, _, _, planned in ordered:
            estimates.append(clock)
            clock += planned
        timings.append(time.perf_counter_ns() - started)
    return timings


async def measure_redis_read(line: Line, samples: int) -> list[int]:
    """The reference: one round trip reading the line from a Redis sorted set."""
    redis = Redis.from_url(REDIS_URL)
    key = f"bench:queue:{uuid.uuid4().hex}"
    try:
        await redis.zadd(key, {str(token): float(index) for index, token in enumerate(line.estimator.waiting())})
        timings = []
        for _ in range(samples):
            started = time.perf_counter_ns()
            await redis.zrange(key, 0, -1, withscores=True)
            timings.append(time.perf_counter_ns() - started)
        return timings
    finally:
        await redis.delete(key)
        await redis.aclose()


def _figures(nanoseconds: list[int]) -> dict[str, float]:
    milliseconds = [value / 1e6 for value in nanoseconds]
    return {
        "median_ms": round(statistics.median(milliseconds), 4),
        "p99_ms": round(percentile(milliseconds, 99), 4),
        "max_ms": round(max(milliseconds), 4),
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        f"sehat benchmark: OPD queue (issue 6) at {results['measured_at']}",
        f"machine: Python {results['python']}, in-process, one core",
        "",
    ]
    recompute = results.get("recompute")
    if recompute:
        lines.append(f"  waiting-time recomputation, {recompute['waiting_tokens']} waiting tokens, one room busy:")
        for label, name in (
            ("estimates of every waiting token", "estimates_only"),
            ("an event, then those estimates", "event_and_estimates"),
            ("reference: naive sort + Python loop", "naive_sort_and_loop"),
            ("reference: Redis ZRANGE (redis-py parses)", "redis_zrange_round_trip"),
        ):
            figures = recompute[name]
            lines.append(
                f"    {label:<40} median {figures['median_ms']:.4f} ms   p99 {figures['p99_ms']:.4f} ms   "
                f"max {figures['max_ms']:.3f} ms"
            )
        figures = recompute["event_and_estimates"]
        lines += [
            "",
            "targets (an event and the recomputation):",
            f"  median {figures['median_ms']:.4f} ms   target <= {TARGET_MEDIAN_MS} ms: "
            f"{'MET' if figures['median_ms'] <= TARGET_MEDIAN_MS else 'NOT MET'}",
            f"  p99 {figures['p99_ms']:.4f} ms   target <= {TARGET_P99_MS} ms: "
            f"{'MET' if figures['p99_ms'] <= TARGET_P99_MS else 'NOT MET'}",
        ]
    return "\n".join(lines)


def main(arguments: list[str]) -> int:
    options = parse_options(arguments)
    results: dict[str, Any] = {
        "benchmark": "queue",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
    }
    if "recompute" in options.parts:
        results["recompute"] = measure_recompute(options)
    print(render(results))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "queue.json").write_text(json.dumps(results, indent=2))
    log_step("figures written to bench/results/queue.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
