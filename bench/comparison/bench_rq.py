"""RQ: the job, and how the driver submits it, reads its result and starts workers.

Workers are ``rq worker --worker-class rq.worker.SimpleWorker``: one job at a
time, in the worker process itself (no fork per job). Results go to RQ's own
result store on the same Redis (``Job.latest_result()``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import bench_common
from redis import Redis
from rq import Queue
from rq.results import Result

QUEUE = "bench"


def echo(n: int) -> int:
    return bench_common.echo(n)


class Adapter:
    name = "rq"
    bulk_api = "Queue.enqueue_many (one pipeline)"

    def __init__(self) -> None:
        self.connection = Redis.from_url(bench_common.redis_url())
        self.queue = Queue(QUEUE, connection=self.connection)

    def submit(self, n: int) -> Any:
        return self.queue.enqueue(echo, n)

    def submit_bulk(self, ns: list[int]) -> list[Any]:
        return self.queue.enqueue_many([Queue.prepare_data(echo, (n,)) for n in ns])

    def result(self, handle: Any) -> tuple[bool, Any]:
        latest = handle.latest_result()
        if latest is None or latest.type != Result.Type.SUCCESSFUL:
            return False, None
        return True, latest.return_value

    def worker_argv(self) -> list[str]:
        rq = str(Path(sys.executable).parent / "rq")
        # fmt: off
        return [rq, "worker", "--worker-class", "rq.worker.SimpleWorker",
                "--url", bench_common.redis_url(), "--quiet", QUEUE]
        # fmt: on

    def reset(self) -> None:
        """Nothing outside Redis, which the driver empties."""
