"""Huey: the job, and how the driver submits it, reads its result and starts workers.

Workers are ``huey_consumer -w 1 -k thread``: one worker thread. Redis holds
the queue (blocking pops, Huey's default) and the results.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import bench_common
from huey import RedisHuey

huey = RedisHuey("bench", url=bench_common.redis_url())


@huey.task()
def echo(n: int) -> int:
    return bench_common.echo(n)


class Adapter:
    name = "huey"
    bulk_api = "Task.map() (one enqueue per job)"

    def submit(self, n: int) -> Any:
        return echo(n)

    def submit_bulk(self, ns: list[int]) -> list[Any]:
        return list(echo.map(ns))

    def result(self, handle: Any) -> tuple[bool, Any]:
        value = handle.get(preserve=True)
        return value is not None, value

    def worker_argv(self) -> list[str]:
        consumer = str(Path(sys.executable).parent / "huey_consumer")
        return [consumer, "bench_huey.huey", "-w", "1", "-k", "thread", "--quiet"]

    def reset(self) -> None:
        """Nothing outside Redis, which the driver empties."""
