"""Many readers, poison messages and database contention (issue 5, cases 9, 10 and 12).

Settings in every case (tests/chaos/conftest.py): a clock tick every second,
a job lease of 4 s. Executions are counted in a Redis of their own.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable

import msgpack
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

import sisy
from sisy.models import Job, JobStatus, JobTask
from tests.chaos.conftest import FULL, Chaos, poll

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

RUN_KEY = "asgisisy.run"

LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}


@pytest.mark.parametrize(
    ("layer", "total"),
    [("core", 10_000 if FULL else 2500), ("pubsub", 10_000 if FULL else 1000)],
)
def test_many_readers_on_one_channel(
    chaos: Chaos, use_layer: Callable[..., None], redis_url: str, layer: str, total: int
) -> None:
    """Case 9: four workers read one channel, no faults: no job starts twice.

    Shrunk from 10,000 jobs to 2,500 (1,000 with the pub/sub layer, which
    hands every wake-up to all four workers) to keep the whole suite within
    CI's time; ``SISY_CHAOS_FULL=1`` runs 10,000 with each layer.
    """
    use_layer([redis_url], backend=LAYERS[layer])
    chaos.workers.env["SISY_TEST_LAYER_BACKEND"] = LAYERS[layer]
    ids = [f"reader-{layer}-{n}" for n in range(4)]
    for worker_id in ids:
        chaos.start_worker(worker_id, wait=False)
    for worker_id in ids:
        chaos.wait_worker_up(worker_id)
    chaos.start_clock()
    started = time.monotonic()
    stats = chaos.submit(total)
    chaos.wait_finished(total, max(180, total / 20))
    elapsed = time.monotonic() - started
    tally = chaos.tally()
    per_worker = Counter(Job.objects.values_list("worker", flat=True))
    chaos.report(
        f"9 many readers ({layer})",
        **tally.figures(),
        workers=len(ids),
        submit_errors=len(stats.errors),
        jobs_per_worker=sorted(per_worker.values()),
        jobs_per_s=round(total / elapsed),
    )
    assert stats.errors == []
    assert tally.statuses == {"succeeded": total}, tally.statuses
    assert tally.duplicate_starts == 0
    assert tally.recorded_twice == 0 and tally.succeeded_without_run == 0
    assert set(per_worker) == set(ids)


def test_poison_messages_and_failing_jobs(chaos: Chaos) -> None:
    """Case 10: garbage on the sisy.run channel plus 1,000 jobs of which every tenth raises.

    Injected straight into Redis or through the layer: a message without a
    ``type``, an unknown type, a private-looking type, bytes that are not
    msgpack, msgpack that is not a map, a job id that is not a string / not a
    UUID / too long, and wake-ups for a missing, a finished and a cancelled
    job. Expected: the same worker processes throughout, 900 jobs succeed,
    100 fail with a traceback, the finished job is not run again and the
    cancelled one never runs.
    """
    total = 1000
    workers = [chaos.start_worker(f"poison-{n}") for n in range(2)]
    chaos.start_clock()
    finished = sisy.submit(chaos.spec(-1))
    poll(lambda: Job.objects.get(pk=finished.pk).is_finished, 30, "the first job")
    with transaction.atomic():  # cancelled before its own wake-up is sent, at commit
        cancelled = sisy.submit({"job_title": "to cancel", "tasks": [{"chaos": {}}]})
        assert sisy.cancel(cancelled.pk)
    layer = get_channel_layer()
    poison: list[dict[str, object]] = [
        {"no": "type"},
        {"type": "nope.nothing"},
        {"type": "_private"},
        {"type": "sisy.run"},
        {"type": "sisy.run", "job": 12},
        {"type": "sisy.run", "job": {"nested": ["x"]}},
        {"type": "sisy.run", "job": "not-a-uuid"},
        {"type": "sisy.run", "job": "x" * 100_000},
        {"type": "sisy.run", "job": str(uuid.uuid4())},  # no such job
        {"type": "sisy.run", "job": str(finished.pk)},
        {"type": "sisy.run", "job": str(cancelled.pk)},
        {"type": "sisy.tick", "time": "yesterday"},
    ]
    for message in poison:
        async_to_sync(layer.send)("sisy.run", message)
    raw = [
        b"\x00garbage that is not msgpack",
        os.urandom(12) + msgpack.packb([1, 2, 3]),
        os.urandom(12) + msgpack.packb("a string"),
        os.urandom(12) + b"\xc1",  # a byte msgpack never uses
        b"",
    ]
    for blob in raw:
        chaos.redis.zadd(RUN_KEY, {blob: time.time()})
    stats = SubmitFailing(chaos, total)
    chaos.wait_finished(total + 2, 150)
    alive = [p.poll() is None for p in workers]
    beat_pids = [
        json.loads(chaos.redis.get(f"worker:poison-{n}") or b"{}").get("pid") for n in range(2)
    ]
    mine = Job.objects.exclude(pk__in=[finished.pk, cancelled.pk])
    statuses = Counter(mine.values_list("status", flat=True))
    failed_tasks = JobTask.objects.filter(job__in=mine, job__status=JobStatus.FAILED)
    with_traceback = sum(
        1
        for error in failed_tasks.values_list("error", flat=True)
        if "Traceback" in error and "RuntimeError: chaos: job" in error
    )
    starts = {
        key.decode(): int(value) for key, value in chaos.counter.hgetall("chaos:starts").items()
    }
    finished.refresh_from_db()
    cancelled.refresh_from_db()
    tally = chaos.tally()
    chaos.report(
        "10 poison",
        injected=len(poison) + len(raw),
        submit_errors=len(stats.errors),
        succeeded=statuses.get("succeeded", 0),
        failed=statuses.get("failed", 0),
        failed_with_traceback=with_traceback,
        workers_alive=alive,
        same_worker_pids=beat_pids == [p.pid for p in workers],
        finished_job_runs=starts.get(str(finished.pk), 0),
        cancelled_job_runs=starts.get(str(cancelled.pk), 0),
        duplicate_starts=tally.duplicate_starts,
        recorded_twice=tally.recorded_twice,
    )
    assert stats.errors == []
    assert alive == [True, True]
    assert beat_pids == [p.pid for p in workers]
    assert statuses == {"succeeded": 900, "failed": 100}
    assert with_traceback == 100
    assert finished.status == JobStatus.SUCCEEDED and starts.get(str(finished.pk)) == 1
    assert cancelled.status == JobStatus.CANCELLED and str(cancelled.pk) not in starts
    assert tally.duplicate_starts == 0 and tally.recorded_twice == 0


class SubmitFailing:
    """Submit ``total`` jobs; every tenth one raises in run()."""

    def __init__(self, chaos: Chaos, total: int) -> None:
        self.errors: list[str] = []
        for index in range(total):
            try:
                sisy.submit(chaos.spec(index, fail=index % 10 == 9))
            except Exception as exc:
                self.errors.append(repr(exc))


#: What a worker or a job must never show under write contention.
CONTENTION = re.compile(
    r"database is locked|database table is locked|could not serialize access|"
    r"deadlock detected|OperationalError|Traceback",
)


def test_database_contention(chaos: Chaos) -> None:
    """Case 12: 2,000 jobs on 3 workers with SQLite, 4 with PostgreSQL.

    No job may fail, and no worker may log, "database is locked", a
    serialization failure, a deadlock or any traceback.
    """
    total = 2000
    count = 3 if connection.vendor == "sqlite" else 4
    processes = [chaos.start_worker(f"db-{n}", wait=False) for n in range(count)]
    for n in range(count):
        chaos.wait_worker_up(f"db-{n}")
    chaos.start_clock()
    started = time.monotonic()
    stats = chaos.submit(total)
    chaos.wait_finished(total, max(180, total / 20))
    elapsed = time.monotonic() - started
    tally = chaos.tally()
    errors = list(Job.objects.exclude(error="").values_list("error", flat=True))
    errors += list(JobTask.objects.exclude(error="").values_list("error", flat=True))
    logged = [
        line
        for process in processes
        for line in chaos.log_of(process).splitlines()
        if CONTENTION.search(line)
    ]
    chaos.report(
        "12 database contention",
        **tally.figures(),
        workers=count,
        submit_errors=len(stats.errors),
        job_errors=len(errors),
        contention_lines_logged=len(logged),
        jobs_per_s=round(total / elapsed),
    )
    assert stats.errors == [], stats.errors[:3]
    assert errors == [], errors[:3]
    assert logged == [], logged[:10]
    assert tally.statuses == {"succeeded": total}, tally.statuses
    assert tally.duplicate_starts == 0 and tally.recorded_twice == 0
    assert all(p.poll() is None for p in processes)
