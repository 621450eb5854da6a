"""What every system's job function shares: the work, and where it records its timings.

The job is the same for every system: take a small int and return it. On the
way it appends ``"<n> <start> <end>"`` (``time.time()`` on entry and just
before returning) to the Redis list ``bench:done`` on the benchmark's own
Redis, so that the driver reads start and completion times taken by one clock,
on one machine, whatever the system. That costs each job one Redis round trip,
the same for all of them.
"""

from __future__ import annotations

import os
import time

import redis

DONE_KEY = "bench:done"

_client: redis.Redis | None = None
_client_pid = 0


def redis_url() -> str:
    try:
        return os.environ["BENCH_REDIS_URL"]
    except KeyError:
        raise SystemExit("BENCH_REDIS_URL is not set: run bench/compare.py") from None


def client() -> redis.Redis:
    """One connection per process (a forked child makes its own)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(redis_url())
        _client_pid = os.getpid()
    return _client


def echo(n: int) -> int:
    """The benchmark's job: record when it ran, return ``n``."""
    start = time.time()
    client().rpush(DONE_KEY, f"{n} {start!r} {time.time()!r}")
    return n
