"""Celery: the job, and how the driver submits it, reads its result and starts workers.

Workers are ``celery worker --pool solo --concurrency 1``: one job at a time
in the worker process. Redis is the broker and the result backend.
"""

from __future__ import annotations

import sys
from typing import Any

import bench_common
from celery import Celery, group

app = Celery("bench_celery", broker=bench_common.redis_url(), backend=bench_common.redis_url())
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.echo")
def echo(n: int) -> int:
    return bench_common.echo(n)


class Adapter:
    name = "celery"
    bulk_api = "group(...).apply_async() (one message per job)"

    def submit(self, n: int) -> Any:
        return echo.delay(n).id

    def submit_bulk(self, ns: list[int]) -> list[Any]:
        result = group(echo.s(n) for n in ns).apply_async()
        return [child.id for child in result.results]

    def result(self, handle: Any) -> tuple[bool, Any]:
        meta = app.backend.get_task_meta(handle)
        if meta.get("status") != "SUCCESS":
            return False, None
        return True, meta.get("result")

    def worker_argv(self) -> list[str]:
        # fmt: off
        return [sys.executable, "-m", "celery", "-A", "bench_celery", "worker",
                "--pool", "solo", "--concurrency", "1", "--loglevel", "WARNING"]
        # fmt: on

    def reset(self) -> None:
        """Nothing outside Redis, which the driver empties."""
