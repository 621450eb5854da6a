"""The clock's tick: expired leases requeued or failed, lost wake-ups re-sent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

import sisy
from sisy import clock, runner
from sisy.models import Job, JobStatus, JobTaskStatus
from sisy.state import WorkerState
from tests.conftest import zcard

pytestmark = pytest.mark.django_db(transaction=True)

WAKEUP_KEY = "asgisisy.run"


def claimed(spec: dict, attempts: int = 1, max_attempts: int = 3) -> Job:
    job = sisy.submit({**spec, "max_attempts": max_attempts})
    Job.objects.filter(pk=job.pk).update(attempts=attempts - 1)
    got = runner.claim(job.job_id, WorkerState(worker_id="dead"), "sisy.run")
    assert got is not None
    return got


def test_expired_lease_is_requeued_for_another_attempt(redis) -> None:
    job = claimed({"record": {"label": "a"}})
    zcard(redis, WAKEUP_KEY)  # the submit's wake-up has landed: now lose it
    redis.delete(WAKEUP_KEY)
    report = clock.tick(job.lease_expires_at + timedelta(seconds=1))
    assert report.requeued == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert job.worker == ""
    assert job.attempts == 1  # counted again when the next worker claims it
    assert report.woken == 1
    assert zcard(redis, WAKEUP_KEY) == 1


def test_live_lease_is_left_alone() -> None:
    job = claimed({"record": {"label": "a"}})
    assert clock.tick(job.lease_expires_at - timedelta(seconds=1)).requeued == 0
    job.refresh_from_db()
    assert job.status == JobStatus.IN_PROGRESS


def test_expired_lease_on_the_last_attempt_fails_as_worker_lost() -> None:
    job = claimed(
        {"tasks": [{"record": {"label": "a"}}, {"record": {"label": "b"}}]},
        attempts=2,
        max_attempts=2,
    )
    report = clock.tick(job.lease_expires_at + timedelta(seconds=1))
    assert (report.requeued, report.lost) == (0, 1)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("worker lost")
    assert {t.status for t in job.ordered_tasks()} == {JobTaskStatus.SKIPPED}


@override_settings(SISY_REDISPATCH_AFTER=60, SISY_SWEEP_MAX_WAKEUPS=2)
def test_stale_jobs_get_a_bounded_number_of_wakeups(redis) -> None:
    for i in range(5):
        sisy.submit({"record": {"label": str(i)}})
    zcard(redis, WAKEUP_KEY)  # the submit's wake-up has landed: now lose it
    redis.delete(WAKEUP_KEY)
    assert clock.tick().woken == 0  # not stale yet
    assert clock.tick(timezone.now() + timedelta(seconds=61)).woken == 2
    assert zcard(redis, WAKEUP_KEY) == 2


def test_heartbeat_once_command_runs_one_tick(redis, capsys: pytest.CaptureFixture[str]) -> None:
    sisy.submit({"record": {"label": "a"}})
    zcard(redis, WAKEUP_KEY)  # the submit's wake-up has landed: now lose it
    redis.delete(WAKEUP_KEY)
    call_command("sisy_heartbeat", "--once")
    assert "1 wake-up(s) sent" in capsys.readouterr().out
    assert zcard(redis, WAKEUP_KEY) == 1
