"""Redis restarted, flushed, flooded, expired and sharded (issue 5, cases 5 to 8 and 13).

Settings in every case (tests/chaos/conftest.py): a clock tick every second,
a job lease of 4 s, ``SISY_REDISPATCH_AFTER = 0``, at most 10 wake-ups re-sent
per channel and tick. Executions are counted in a Redis no fault touches.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_lib

from tests.chaos.conftest import Chaos, RedisServer, SubmitStats, poll, waited

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]

RUN_KEY = "asgisisy.run"  # where channels-redis keeps the sisy.run channel


def assert_all_succeeded_once(chaos: Chaos, total: int) -> None:
    tally = chaos.tally()
    assert tally.jobs == total
    assert tally.statuses == {"succeeded": total}, tally.statuses
    assert tally.duplicate_starts == 0
    assert tally.recorded_twice == 0
    assert tally.succeeded_without_run == 0


def test_redis_restarted_mid_stream(
    chaos: Chaos, redis_server: RedisServer, use_layer: Callable[..., None]
) -> None:
    """Case 5: 2,000 jobs submitted at up to 100 a second; Redis SIGKILLed at 6 s, back at 10 s.

    Redis keeps nothing across the restart (no persistence): every wake-up
    and heartbeat is gone. Expected: ``sisy.submit`` never raises, every job
    succeeds once, the two workers and the clock are the same processes.
    It fails now and then (once in nine runs so far) with jobs left queued
    after the restart: the bug that case 5b reproduces every time.
    """
    total, rate, down_at, up_at = 2000, 100.0, 6.0, 10.0
    use_layer([redis_server.url])
    chaos.workers.env["SISY_TEST_REDIS_URL"] = redis_server.url
    client = redis_lib.Redis.from_url(redis_server.url)
    workers = [chaos.start_worker(f"rr-{n}", redis=client) for n in range(2)]
    clock = chaos.start_clock()
    stats = SubmitStats()
    outage = SubmitStats()
    started = time.monotonic()
    down = restarted = 0.0
    for index in range(total):
        now = time.monotonic() - started
        if not down and now >= down_at:
            redis_server.kill()
            down = time.monotonic()
        if down and not restarted and now >= up_at:
            redis_server.start()
            restarted = time.monotonic()
        (outage if down and not restarted else stats).submit(chaos.spec(index))
        time.sleep(max(0.0, started + (index + 1) / rate - time.monotonic()))
    submitted = time.monotonic()
    achieved_rate = total / (submitted - started)
    finished_in = chaos.wait_finished(total, 120)
    alive = [p.poll() is None for p in [*workers, clock]]
    # Heartbeats come back after the restart, from the same processes.
    waited(lambda: all(client.exists(f"worker:rr-{n}") for n in range(2)), 10)
    beat_pids = {json.loads(client.get(f"worker:rr-{n}") or b"{}").get("pid") for n in range(2)}
    tally = chaos.tally()
    chaos.report(
        "5 redis restart",
        **tally.figures(),
        outage_s=round(restarted - down, 1),
        submit_rate_per_s=round(achieved_rate),
        submitted_during_outage=len(outage.job_ids) + len(outage.errors),
        submit_errors=len(stats.errors) + len(outage.errors),
        slowest_submit_s=round(max(stats.slowest, outage.slowest), 3),
        drained_after_last_submit_s=round(finished_in, 1),
        drained_after_restart_s=round(submitted + finished_in - restarted, 1),
        processes_alive=alive,
        same_worker_pids=beat_pids == {p.pid for p in workers},
    )
    assert stats.errors == [] and outage.errors == []
    assert len(outage.job_ids) >= 50  # fewer than 400 when a loaded machine falls behind
    assert alive == [True, True, True]
    assert beat_pids == {p.pid for p in workers}
    assert_all_succeeded_once(chaos, total)


def test_redis_flushed_during_a_backlog(chaos: Chaos) -> None:
    """Case 6: FLUSHALL once a quarter of 2,000 jobs are done: every one completes once."""
    total = 2000
    stats = chaos.submit(total)
    for n in range(2):
        chaos.start_worker(f"flush-{n}", wait=False)
    chaos.start_clock()
    poll(lambda: chaos.finished_count() >= total // 4, 60, "a quarter of the jobs", 0.1)
    backlog = total - chaos.finished_count()
    chaos.redis.flushall()
    flushed = time.monotonic()
    finished_in = chaos.wait_finished(total, 120)
    tally = chaos.tally()
    chaos.report(
        "6 redis flushed",
        **tally.figures(),
        backlog_at_flush=backlog,
        submit_errors=len(stats.errors),
        drained_after_flush_s=round(time.monotonic() - flushed, 1),
        finished_in_s=round(finished_in, 1),
    )
    assert stats.errors == []
    assert backlog > 500
    assert_all_succeeded_once(chaos, total)


def test_flood_past_the_channel_capacity(chaos: Chaos) -> None:
    """Case 7: workers stopped, 5,000 jobs submitted against the layer's capacity of 100.

    Expected: no error to any caller, the channel holds at most 100 wake-ups,
    and once three workers start, every job succeeds once.
    """
    total = 5000
    stats = chaos.submit(total)
    in_channel = chaos.redis.zcard(RUN_KEY)
    for n in range(3):
        chaos.start_worker(f"flood-{n}", wait=False)
    chaos.start_clock()
    started = time.monotonic()
    chaos.wait_finished(total, 150)
    tally = chaos.tally()
    chaos.report(
        "7 flood",
        **tally.figures(),
        submit_errors=len(stats.errors),
        submit_rate_per_s=round(total / stats.seconds),
        slowest_submit_s=round(stats.slowest, 3),
        wakeups_in_channel=in_channel,
        drained_after_workers_start_s=round(time.monotonic() - started, 1),
    )
    assert stats.errors == []
    assert in_channel <= 100
    assert_all_succeeded_once(chaos, total)


def test_wakeups_expired_while_workers_were_down(
    chaos: Chaos, use_layer: Callable[..., None], redis_url: str
) -> None:
    """Case 8: 1,000 jobs queued while the workers are down for longer than the layer's expiry.

    The layer's ``expiry`` is shortened to 3 s (channels-redis defaults to
    60 s) so the case stays short; every wake-up has expired when the
    workers come back, and the clock's sweep must restart the queue.
    """
    total, expiry = 1000, 3
    use_layer([redis_url], expiry=expiry)
    chaos.workers.env["SISY_TEST_LAYER_EXPIRY"] = str(expiry)
    first = [chaos.start_worker(f"exp-{n}") for n in range(2)]
    warm = chaos.submit(10)
    chaos.wait_finished(10, 30)
    for process in first:
        chaos.kill(process, signal.SIGTERM)
    down = time.monotonic()
    stats = chaos.submit(total)
    poll(lambda: not chaos.redis.exists(RUN_KEY), expiry + 5, "the wake-ups to expire")
    time.sleep(max(0.0, down + expiry + 1 - time.monotonic()))
    downtime = time.monotonic() - down
    for n in range(2):
        chaos.start_worker(f"exp-again-{n}", wait=False)
    chaos.start_clock()
    restarted = time.monotonic()
    chaos.wait_finished(total + 10, 90)
    tally = chaos.tally()
    chaos.report(
        "8 expiry",
        **tally.figures(),
        layer_expiry_s=expiry,
        workers_down_s=round(downtime, 1),
        exit_status=[p.returncode for p in first],
        submit_errors=len(stats.errors) + len(warm.errors),
        drained_after_restart_s=round(time.monotonic() - restarted, 1),
    )
    assert [p.returncode for p in first] == [0, 0]
    assert stats.errors == [] and warm.errors == []
    assert downtime > expiry
    assert_all_succeeded_once(chaos, total + 10)


def test_sharded_layer(
    chaos: Chaos, redis_server: RedisServer, use_layer: Callable[..., None], redis_url: str
) -> None:
    """Case 13: channels-redis sharded over two Redis servers; 2,000 jobs, 2 workers.

    channels-redis spreads a general channel's messages over its hosts in
    turn, so wake-ups land on both servers.
    """
    total = 2000
    use_layer([redis_url, redis_server.url])
    chaos.workers.env["SISY_TEST_REDIS_URL_2"] = redis_server.url
    second = redis_lib.Redis.from_url(redis_server.url)
    before = [wakeups_sent(chaos.redis), wakeups_sent(second)]
    for n in range(2):
        chaos.start_worker(f"shard-{n}")
    chaos.start_clock()
    stats = chaos.submit(total)
    chaos.wait_finished(total, 120)
    sent = [wakeups_sent(chaos.redis) - before[0], wakeups_sent(second) - before[1]]
    tally = chaos.tally()
    chaos.report(
        "13 sharded layer",
        **tally.figures(),
        submit_errors=len(stats.errors),
        wakeups_sent_per_shard=sent,
    )
    assert stats.errors == []
    # channels-redis hands a general channel's sends to its hosts in turn.
    assert min(sent) >= max(sent) / 3 and min(sent) >= 10, sent
    assert_all_succeeded_once(chaos, total)


def wakeups_sent(client: redis_lib.Redis) -> int:
    """Messages added to channels on ``client`` (channels-redis sends with ZADD)."""
    info: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return int(info.get("cmdstat_zadd", {}).get("calls", 0))


def test_redis_restarted_while_a_worker_is_busy(
    chaos: Chaos, redis_server: RedisServer, use_layer: Callable[..., None]
) -> None:
    """Case 5b: Redis restarted while the only worker runs a job and wake-ups wait.

    The deterministic form of a failure case 5 met once: the worker runs a 6 s
    job while wake-ups wait (in Redis: its run thread pops one only when it is
    free; before the run thread, in its prefetch buffer of 2); Redis is
    SIGKILLed 1 s into the job and restarted 2 s later. Expected: jobs
    submitted after the restart run (the clock re-sends their wake-ups every
    second).
    """
    use_layer([redis_server.url])
    chaos.workers.env["SISY_TEST_REDIS_URL"] = redis_server.url
    client = redis_lib.Redis.from_url(redis_server.url)
    worker = chaos.start_worker("busy-0", "--prefetch", "2", redis=client)
    chaos.start_clock()
    long = SubmitStats()
    long.submit(chaos.spec(0, seconds=6))
    poll(lambda: chaos.counter.hget("chaos:starts", long.job_ids[0]), 30, "the long job")
    before = chaos.submit(5)  # their wake-ups wait while the worker is busy
    time.sleep(1)
    redis_server.kill()
    time.sleep(2)
    redis_server.start()
    restarted = time.monotonic()
    poll(lambda: chaos.finished_count() >= 6, 30, "the jobs queued before the restart")
    after = chaos.submit(5)
    took = chaos.wait_finished(11, 15)  # a tick a second re-sends their wake-ups
    tally = chaos.tally()
    chaos.report(
        "5b redis restart, busy worker",
        **tally.figures(),
        submit_errors=len(before.errors) + len(after.errors),
        worker_alive=worker.poll() is None,
        finished_after_restart_s=round(time.monotonic() - restarted, 1),
        waited_for_later_jobs_s=round(took, 1),
    )
    assert worker.poll() is None
    assert tally.statuses == {"succeeded": 11}, tally.statuses
