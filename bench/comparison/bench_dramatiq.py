"""Dramatiq: the job, and how the driver submits it, reads its result and starts workers.

Workers are ``dramatiq --processes 1 --threads 1``. Results are stored by
Dramatiq's ``Results`` middleware with its Redis backend.
"""

from __future__ import annotations

import sys
from typing import Any

import bench_common
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import ResultMissing, Results
from dramatiq.results.backends import RedisBackend

broker = RedisBroker(url=bench_common.redis_url())
backend = RedisBackend(url=bench_common.redis_url())
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name="bench")
def echo(n: int) -> int:
    return bench_common.echo(n)


class Adapter:
    name = "dramatiq"
    bulk_api = "group(...).run() (one message per job)"

    def submit(self, n: int) -> Any:
        return echo.send(n)

    def submit_bulk(self, ns: list[int]) -> list[Any]:
        messages = [echo.message(n) for n in ns]
        dramatiq.group(messages).run()
        return messages

    def result(self, handle: Any) -> tuple[bool, Any]:
        try:
            return True, backend.get_result(handle, block=False)
        except ResultMissing:
            return False, None

    def worker_argv(self) -> list[str]:
        # fmt: off
        return [sys.executable, "-m", "dramatiq", "bench_dramatiq",
                "--processes", "1", "--threads", "1", "--queues", "bench"]
        # fmt: on

    def reset(self) -> None:
        """Nothing outside Redis, which the driver empties."""
