"""End to end: real Redis, real worker processes, the public API."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest
from django.core.management import call_command

import sisy
from sisy import dispatch
from sisy.heartbeat import live_workers
from sisy.models import Job, JobStatus, JobTaskStatus
from tests.conftest import Workers, wait_for
from tests.testapp.sisy_modules import recorded

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def finished(job: Job, timeout: float = 30) -> Job:
    def done() -> Job | None:
        job.refresh_from_db()
        return job if job.is_finished else None

    return wait_for(done, timeout, f"job {job.job_id} to finish")


def test_three_task_job_runs_in_order_and_records_results(workers: Workers) -> None:
    workers.start()
    job = sisy.submit(
        {
            "job_title": "three",
            "tasks": [
                {"record": {"label": "a"}},
                {"record": {"label": "b"}},
                {"record": {"label": "c"}},
            ],
        }
    )
    job = finished(job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 1
    assert job.worker
    assert job.started_at and job.finished_at and job.started_at <= job.finished_at
    assert recorded("runs") == ["a", "b", "c"]
    tasks = job.ordered_tasks()
    assert [t.status for t in tasks] == [JobTaskStatus.SUCCEEDED] * 3
    assert [t.result["label"] for t in tasks] == ["a", "b", "c"]
    assert all(t.started_at and t.finished_at for t in tasks)
    assert all(t.progress == 1.0 for t in tasks)


def test_plain_runworker_executes_jobs(workers: Workers) -> None:
    workers.start("sisy.run", command="runworker")
    job = finished(
        sisy.submit({"job_name": "plain", "tasks": [{"module": "record", "data": {"label": "x"}}]})
    )
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert recorded("runs") == ["x"]


def test_initialization_failure_fails_the_job_and_skips_the_rest(workers: Workers) -> None:
    workers.start()
    job = sisy.submit(
        {
            "job_title": "t",
            "tasks": [
                {"record": {"label": "first"}},
                {"missing_binary": {}},
                {"record": {"label": "never"}},
            ],
        }
    )
    job = finished(job)
    assert job.status == JobStatus.FAILED
    assert (
        "task 1 (missing_binary) failed: the 'sisy-no-such-binary' program is not installed"
        in job.error
    )
    statuses = [t.status for t in job.ordered_tasks()]
    assert statuses == [JobTaskStatus.SUCCEEDED, JobTaskStatus.FAILED, JobTaskStatus.SKIPPED]
    assert "Traceback" in job.ordered_tasks()[1].error
    assert recorded("runs") == ["first"]


def test_cleanup_runs_after_a_failing_run(workers: Workers) -> None:
    workers.start()
    job = finished(sisy.submit({"job_title": "t", "fail": {"message": "boom"}}))
    assert job.status == JobStatus.FAILED
    assert "boom" in job.error
    assert "RuntimeError: boom" in job.ordered_tasks()[0].error
    assert recorded("cleanups") == ["boom"]


def test_heartbeat_shows_the_running_job_then_idle(workers: Workers) -> None:
    workers.start("--worker-id", "hb-1")

    def status(expected: str) -> dict | None:
        for worker in live_workers():
            if worker["worker_id"] == "hb-1" and worker["status"] == expected:
                return worker
        return None

    wait_for(lambda: status("idle"), 20, "worker to publish idle")
    job = sisy.submit({"job_title": "slow one", "tasks": [{"slow": {"seconds": 2}}]})
    running = wait_for(lambda: status("in_progress"), 20, "in_progress heartbeat")
    assert running["job_id"] == str(job.job_id)
    assert running["job_title"] == "slow one"
    assert running["hostname"]
    finished(job)
    idle = wait_for(lambda: status("idle"), 20, "idle heartbeat after the job")
    assert "job_id" not in idle


def test_worker_key_is_removed_on_sigterm_and_exit_is_clean(workers: Workers, redis) -> None:
    process = workers.start("--worker-id", "bye-1")
    wait_for(lambda: redis.get("worker:bye-1"), 20, "heartbeat key")
    payload = json.loads(redis.get("worker:bye-1"))
    assert payload["status"] in ("startup", "idle")
    assert 0 < redis.pttl("worker:bye-1") <= 3000
    assert workers.stop(process) == 0
    assert redis.get("worker:bye-1") is None


@pytest.mark.parametrize("channels", [[], ["sisy.run"]], ids=["both channels", "run only"])
def test_sigterm_lets_the_running_job_finish(workers: Workers, channels: list[str]) -> None:
    process = workers.start(*channels, "--worker-id", "term-1")
    job = sisy.submit({"job_title": "finish me", "tasks": [{"slow": {"seconds": 1.5}}]})

    def running() -> bool:
        job.refresh_from_db()
        return job.status == JobStatus.IN_PROGRESS

    wait_for(running, 20, "job to start")
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


def test_sigterm_past_the_grace_period_releases_the_job_to_another_worker(
    workers: Workers,
) -> None:
    workers.env["SISY_TEST_SHUTDOWN_GRACE"] = "1"
    first = workers.start("--worker-id", "grace-1")
    job = sisy.submit({"job_title": "too long", "tasks": [{"slow": {"seconds": 4}}]})

    def running() -> bool:
        job.refresh_from_db()
        return job.status == JobStatus.IN_PROGRESS

    wait_for(running, 20, "job to start")
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0
    assert time.monotonic() - started < 3.5  # the grace period, not the job's 4 s
    job.refresh_from_db()
    assert (job.status, job.worker, job.attempts) == (JobStatus.QUEUED, "", 1)
    assert job.job_tasks.get().status == "pending"

    workers.start("--worker-id", "grace-2")
    job = finished(job)
    assert (job.status, job.worker, job.attempts) == (JobStatus.SUCCEEDED, "grace-2", 2)


def test_lost_wakeup_is_recovered_by_one_clock_tick(workers: Workers, redis) -> None:
    workers.start()
    # Once a job has run, the worker's start-up drain is behind it (one queue, in order).
    finished(sisy.submit({"job_title": "probe", "record": {"label": "probe"}}))
    time.sleep(0.5)  # and so is the drain that followed the probe
    # A job whose wake-up was lost: stored, but no message sent (as after a flush or expiry).
    job = Job.objects.create(job_title="orphan", channel="sisy.run")
    job.job_tasks.create(position=0, module="record", data={"label": "late"})
    time.sleep(1)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    call_command("sisy_heartbeat", "--once", verbosity=0)
    job = finished(job)
    assert job.status == JobStatus.SUCCEEDED
    assert recorded("runs") == ["probe", "late"]


def test_a_starting_worker_takes_the_backlog_without_wake_ups(workers: Workers, redis) -> None:
    jobs = [sisy.submit({"job_title": f"b{i}", "record": {"label": str(i)}}) for i in range(3)]
    dispatch.flush()
    redis.flushdb()  # every wake-up gone
    workers.start()
    for job in jobs:
        assert finished(job).status == JobStatus.SUCCEEDED
    assert sorted(recorded("runs")) == ["0", "1", "2"]


def test_two_workers_run_each_of_500_jobs_exactly_once(workers: Workers) -> None:
    workers.start("--worker-id", "many-1")
    workers.start("--worker-id", "many-2")
    jobs = [sisy.submit({"job_title": f"j{i}", "record": {"label": str(i)}}) for i in range(500)]

    def all_done() -> bool:
        return Job.objects.filter(status=JobStatus.SUCCEEDED).count() == len(jobs)

    wait_for(all_done, 120, "500 jobs to succeed")
    runs = Counter(recorded("runs"))
    assert len(runs) == 500
    assert set(runs.values()) == {1}, [label for label, n in runs.items() if n > 1]
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}
    assert Job.objects.values("worker").distinct().count() == 2


def test_poison_messages_do_not_stop_the_worker(workers: Workers, redis) -> None:
    import time

    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    process = workers.start("--worker-id", "poison-1")
    wait_for(lambda: redis.get("worker:poison-1"), 20, "worker up")
    layer = get_channel_layer()
    for message in (
        {"no": "type"},
        {"type": "nope.nothing"},
        {"type": "_private"},
        {"type": "sisy.run", "job": 12},
        {"type": "sisy.run", "job": "not-a-uuid"},
        {"type": "sisy.run", "job": "00000000-0000-0000-0000-000000000000"},
        {"type": "sisy.tick", "time": "yesterday"},
    ):
        async_to_sync(layer.send)("sisy.run", message)
    redis.zadd("asgisisy.run", {b"\x00garbage that is not msgpack": time.time()})
    job = finished(sisy.submit({"record": {"label": "after poison"}}))
    assert job.status == JobStatus.SUCCEEDED
    assert recorded("runs") == ["after poison"]
    assert process.poll() is None
    assert json.loads(redis.get("worker:poison-1"))["pid"] == process.pid
    # no type, two unknown types, a tick on the run channel, a job id that is
    # not a string and one that is not a UUID, the garbage bytes (the wake-up
    # for a job that does not exist is an ordinary no-op)
    wait_for(
        lambda: json.loads(redis.get("worker:poison-1"))["messages_dropped"] == 7,
        10,
        "the heartbeat to count the dropped messages",
    )


def test_a_tick_runs_while_the_worker_is_busy_with_a_long_job(workers: Workers, redis) -> None:
    import time

    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    workers.start("--worker-id", "busy-1")
    slow = sisy.submit({"job_title": "long", "slow": {"seconds": 4}})

    def running() -> bool:
        slow.refresh_from_db()
        return slow.status == JobStatus.IN_PROGRESS

    wait_for(running, 20, "the long job to start")
    sisy.submit({"job_title": "orphan", "record": {"label": "o"}})
    dispatch.flush()
    redis.delete("asgisisy.run")  # its wake-up is lost
    async_to_sync(get_channel_layer().send)(
        "sisy.heartbeat", {"type": "sisy.tick", "time": time.time()}
    )
    wait_for(lambda: "re-sent 1 wake-up(s)" in workers.logs[0].read_text(), 3, "the tick's sweep")
    slow.refresh_from_db()
    assert slow.status == JobStatus.IN_PROGRESS  # the sweep did not wait for the job


def test_a_worker_pops_wake_ups_with_one_command(workers: Workers, redis, settings) -> None:
    if settings.CHANNEL_LAYERS["default"]["BACKEND"] != "sisy.layers.RedisChannelLayer":
        pytest.skip("sisy's layer only")
    workers.start("--worker-id", "lean-1")
    # A first job, then both pops under way: the first receive on each channel
    # also looks at channels-redis's backup queue, once (an EVAL).
    assert finished(sisy.submit({"record": {"label": "warm"}})).status == JobStatus.SUCCEEDED

    def popping() -> bool:  # the run thread and the clock's listener, each in its pop
        return sum(client["cmd"] == "bzpopmin" for client in redis.client_list()) >= 2

    wait_for(popping, 10, "the worker to wait on both channels")
    redis.config_resetstat()
    job = finished(sisy.submit({"record": {"label": "lean"}}))
    assert job.status == JobStatus.SUCCEEDED
    calls = {name: value["calls"] for name, value in redis.info("commandstats").items()}
    assert calls.get("cmdstat_bzpopmin", 0) >= 1, calls
    # channels-redis's receive, each time: a backup script (EVAL), ZADD to the
    # backup queue, then ZPOPMIN from it; the send is sisy's script (EVALSHA).
    assert "cmdstat_eval" not in calls and "cmdstat_zpopmin" not in calls, calls


def test_the_run_thread_runs_jobs_and_their_async_calls_on_the_workers_loop(
    workers: Workers, settings
) -> None:
    if settings.CHANNEL_LAYERS["default"]["BACKEND"] != "sisy.layers.RedisChannelLayer":
        pytest.skip("sisy's layer only")
    workers.start()
    job = finished(sisy.submit({"threads": {}}))
    assert job.status == JobStatus.SUCCEEDED, job.error
    # Popped and run by the run thread; async_to_sync() went to the worker's
    # own event loop (the main thread), as from asgiref's thread before.
    assert job.ordered_tasks()[0].result == {"job": "sisy-run", "async": "MainThread"}
