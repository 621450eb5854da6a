"""Retries with backoff, and time limits: in-process runner tests and real workers."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

import sisy
from sisy import runner, signals
from sisy.exceptions import JobSpecError
from sisy.heartbeat import live_workers
from sisy.models import Job, JobStatus, JobTaskStatus
from sisy.modules import Module, registry
from sisy.state import WorkerState
from tests.conftest import Workers, wait_for
from tests.testapp.sisy_modules import recorded

pytestmark = pytest.mark.django_db(transaction=True)
CHANNEL = "sisy.run"


@pytest.fixture
def state() -> WorkerState:
    return WorkerState(worker_id="r1", channels=(CHANNEL,))


def run_until_settled(job: Job, state: WorkerState, rounds: int = 10) -> Job:
    """Run the job, making each deferred retry due at once instead of waiting for it."""
    for _ in range(rounds):
        runner.handle_wakeup(str(job.job_id), state, CHANNEL)
        job.refresh_from_db()
        if job.is_finished:
            return job
        assert job.status == JobStatus.QUEUED and job.run_after > timezone.now() - timedelta(1)
        Job.objects.filter(pk=job.pk).update(run_after=timezone.now())
    raise AssertionError(f"job still {job.status} after {rounds} rounds")


def test_a_failing_task_is_retried_after_a_backoff_then_succeeds(state: WorkerState) -> None:
    job = sisy.submit(
        {"tasks": [{"record": {"label": "before"}}, {"flaky": {"key": "a", "failures": 2}}]}
    )
    before = timezone.now()
    runner.handle_wakeup(str(job.job_id), state, CHANNEL)
    job.refresh_from_db()
    task = job.job_tasks.get(position=1)
    assert (job.status, job.worker, task.status, task.retry_count) == (
        JobStatus.QUEUED,
        "",
        JobTaskStatus.PENDING,
        1,
    )
    assert "RuntimeError: failure 1 of 2" in task.error
    assert (
        before + timedelta(seconds=0.04) < job.run_after < timezone.now() + timedelta(seconds=0.06)
    )
    assert runner.claim(None, state, CHANNEL) is None  # deferred: not claimable yet

    job = run_until_settled(job, state)
    assert job.status == JobStatus.SUCCEEDED
    task = job.job_tasks.get(position=1)
    assert (task.retry_count, task.result) == (2, {"runs": 3})
    assert recorded("runs") == ["before"]  # the first task succeeded once and was kept
    assert recorded("flaky") == ["a:1", "a:2", "a:3"]
    assert job.attempts == 3 and job.max_attempts >= 3


def test_retries_run_out_and_the_job_fails(state: WorkerState) -> None:
    failures: list[bool] = []

    def receiver(sender: Any, retrying: bool, **kwargs: Any) -> None:
        failures.append(retrying)

    signals.task_failed.connect(receiver)
    try:
        job = sisy.submit(
            {"tasks": [{"flaky": {"key": "b", "failures": 5}}, {"record": {"label": "x"}}]}
        )
        job = run_until_settled(job, state)
    finally:
        signals.task_failed.disconnect(receiver)
    assert job.status == JobStatus.FAILED
    assert "failure 3 of 5" in job.error
    assert failures == [True, True, False]
    assert [t.status for t in job.ordered_tasks()] == [JobTaskStatus.FAILED, JobTaskStatus.SKIPPED]


def test_a_job_overrides_the_modules_retries(state: WorkerState) -> None:
    none = run_until_settled(
        sisy.submit({"retries": 0, "flaky": {"key": "c", "failures": 1}}), state
    )
    assert none.status == JobStatus.FAILED and recorded("flaky") == ["c:1"]
    more = run_until_settled(
        sisy.submit({"retries": 4, "flaky": {"key": "d", "failures": 4}}), state
    )
    assert more.status == JobStatus.SUCCEEDED and more.job_tasks.get().retry_count == 4


def test_invalid_data_and_unknown_modules_are_not_retried(state: WorkerState) -> None:
    job = sisy.submit({"retries": 3, "flaky": {"key": "e", "failures": 0}})
    job.job_tasks.update(data={"key": 5})
    job = run_until_settled(job, state)
    assert job.status == JobStatus.FAILED and "invalid job" in job.error

    class Picky(Module):
        retries = 3

        def validate(self) -> None:
            raise JobSpecError([])

    registry.register("picky", Picky)
    try:
        job = run_until_settled(sisy.submit({"picky": {}}), state)
    finally:
        registry.unregister("picky")
    assert job.status == JobStatus.FAILED and job.job_tasks.get().retry_count == 0


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    class Steady(Module):
        retry_backoff, retry_backoff_max, retry_jitter = 2.0, 10.0, False

    assert [Steady.retry_delay(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]

    class Jittery(Steady):
        retry_jitter = True

    delays = [Jittery.retry_delay(3) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 100


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": True}, "retries must be an int >= 0"),
        ({"retry_backoff": "1"}, "retry_backoff must be a number"),
        ({"time_limit": 0}, "time_limit must be a number of seconds > 0"),
    ],
)
def test_bad_retry_and_time_limit_attributes_are_refused(
    attrs: dict[str, Any], fragment: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=fragment):
        registry.register("bad-policy", type("Bad", (Module,), attrs))
    assert "bad-policy" not in registry


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"retries": -1}, "$.retries"),
        ({"retries": 101}, "$.retries"),
        ({"time_limit": 0}, "$.time_limit"),
    ],
)
def test_bad_job_overrides_name_the_field(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        sisy.submit({**spec, "record": {"label": "x"}})
    assert [d["path"] for d in caught.value.as_details()] == [path]


def test_a_time_limit_stops_busy_python_code_and_cleanup_runs(state: WorkerState) -> None:
    job = sisy.submit(
        {"time_limit": 0.3, "tasks": [{"spin": {"seconds": 30}}, {"record": {"label": "next"}}]}
    )
    started = time.monotonic()
    runner.handle_wakeup(str(job.job_id), state, CHANNEL)
    assert time.monotonic() - started < 5
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "TimeLimitExceeded" in job.job_tasks.get(position=0).error
    assert recorded("cleanup") == [f"spin:{job.pk}"]
    assert recorded("runs") == []
    # The runner goes on: the next job runs in the same thread.
    follow = sisy.submit({"record": {"label": "after"}})
    runner.handle_wakeup(str(follow.job_id), state, CHANNEL)
    follow.refresh_from_db()
    assert follow.status == JobStatus.SUCCEEDED


def test_a_task_within_its_time_limit_is_not_disturbed(state: WorkerState) -> None:
    job = sisy.submit({"time_limit": 5, "spin": {"seconds": 0.2}})
    runner.handle_wakeup(str(job.job_id), state, CHANNEL)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    time.sleep(0.3)  # no stray exception arrives later either
    assert runner.handle_wakeup(None, state, CHANNEL) == 0


@pytest.mark.e2e
def test_a_real_worker_retries_without_a_clock(workers: Workers) -> None:
    """The worker's own timer sends the retry's wake-up: the clock here ticks every 60 s."""
    workers.start("--worker-id", "retry-1")
    job = sisy.submit({"flaky": {"key": "f", "failures": 2}})

    def done() -> bool:
        job.refresh_from_db()
        return job.is_finished

    wait_for(done, 20, "the retried job")
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 3
    assert recorded("flaky") == ["f:1", "f:2", "f:3"]


@pytest.mark.e2e
def test_a_task_stuck_in_c_code_is_abandoned_and_the_worker_replaces_itself(
    workers: Workers,
) -> None:
    workers.env["SISY_TEST_TIME_LIMIT_GRACE"] = "0.5"
    process = workers.start()
    job = sisy.submit({"tasks": [{"block": {"seconds": 60}}, {"record": {"label": "never"}}]})

    def done() -> bool:
        job.refresh_from_db()
        return job.is_finished

    wait_for(done, 30, "the stuck job to be failed")
    assert job.status == JobStatus.FAILED
    assert "TimeLimitExceeded" in job.error and "did not return" in job.error
    assert [t.status for t in job.ordered_tasks()] == [JobTaskStatus.FAILED, JobTaskStatus.SKIPPED]
    # Same process (exec), a new worker id; it serves the next job.
    following = sisy.submit({"record": {"label": "after"}})

    def ran() -> bool:
        following.refresh_from_db()
        return following.status == JobStatus.SUCCEEDED

    wait_for(ran, 30, "the next job on the replaced worker")
    assert process.poll() is None
    pids = {w["pid"] for w in live_workers()}
    assert pids == {process.pid}
    assert following.worker != job.worker
