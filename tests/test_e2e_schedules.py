"""Scheduled Tasks end to end: real clock processes (one tick a second) and real workers."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from sisy.models import Job, JobStatus, Task, task_with_callable
from tests.conftest import Workers, wait_for
from tests.testapp import tasks
from tests.testapp.models import Gadget
from tests.testapp.sisy_modules import recorded

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def clocked(workers: Workers) -> Workers:
    Task.objects.all().delete()  # e.g. those the migration test app made at database creation
    workers.env["SISY_TEST_HEARTBEAT_FREQUENCY"] = "1"
    return workers


def whole_second(seconds_from_now: float):
    moment = timezone.now() + timedelta(seconds=seconds_from_now)
    return moment.replace(microsecond=0)


def processes_up() -> None:
    """Wait until a clock fires and a worker runs: under load, start-up takes seconds."""
    Task.run_once(tasks.record_run, label="probe")
    wait_for(lambda: "probe" in recorded("runs"), 60, "a clock and a worker to be up")


def test_three_clocks_fire_each_run_of_a_seconds_schedule_once(clocked: Workers) -> None:
    clocked.start("--worker-id", "sched-1")
    clocked.start("--worker-id", "sched-2")
    for _ in range(3):
        clocked.start(command="sisy_heartbeat")
    processes_up()  # the window opens once they are up
    time.sleep(1)  # the other clocks started with the first
    start, end = whole_second(3), whole_second(8)
    task = task_with_callable(tasks.record_run, label="every-second", schedule="* * * * * *")
    task.start_running, task.end_running = start, end
    task.save()

    def retired() -> bool:
        task.refresh_from_db()
        return task.is_retired

    wait_for(retired, 30, "the window to close")
    wait_for(lambda: not Job.objects.filter(status__in=["queued", "in_progress"]).exists(), 20)
    scheduled = list(Job.objects.filter(task=task).values_list("scheduled_for", flat=True))
    assert len(scheduled) == len(set(scheduled)), "a run was fired twice"
    assert all(start <= moment <= end for moment in scheduled)
    # One run per whole second from start to end; a tick delayed past its
    # period is dropped, so under load a run may be missed, never doubled.
    assert 5 <= len(scheduled) <= 6, scheduled
    assert Counter(recorded("runs")) == {"every-second": len(scheduled), "probe": 1}
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}


def test_run_once_run_iterations_and_a_uuid_model_method(clocked: Workers) -> None:
    Gadget.objects.create(name="decoy")
    gadget = Gadget.objects.create(name="target")
    once = Task.run_once(tasks.record_run, label="once")
    thrice = Task.run_iterations(tasks.record_run, "* * * * * *", 3, label="thrice")
    method = Task.run_once(gadget.greet, label="method")
    clocked.start()
    clocked.start(command="sisy_heartbeat")

    def all_retired() -> bool:
        return Task.objects.filter(retired_at__isnull=True).count() == 0

    wait_for(all_retired, 30, "the three tasks to retire")
    wait_for(lambda: len(recorded("runs")) == 4 and recorded("method"), 20, "their runs")
    time.sleep(2)  # two more ticks: nothing else may fire
    assert Counter(recorded("runs")) == {"once": 1, "thrice": 3}
    assert recorded("method") == [f"gadget:{gadget.pk}:target"]
    for task in (once, thrice, method):
        task.refresh_from_db()
        assert not task.enabled and task.next_run is None
    thrice.refresh_from_db()
    assert thrice.userdata == {"runs": 3}


def test_no_overlap_with_a_slow_task_function(clocked: Workers) -> None:
    clocked.start("--worker-id", "ov-1")
    clocked.start("--worker-id", "ov-2")  # a free worker would take an overlapping run
    clocked.start(command="sisy_heartbeat")
    processes_up()
    task = task_with_callable(
        tasks.slow_run, label="slow", schedule="* * * * * *", userdata={"seconds": 1.6}
    )
    task.allow_overlap = False
    task.end_running = whole_second(7)
    task.save()

    def done() -> bool:
        task.refresh_from_db()
        return (
            task.is_retired
            and not Job.objects.filter(status__in=["queued", "in_progress"]).exists()
        )

    wait_for(done, 40, "the window to close and runs to finish")
    events = [line.split() for line in recorded("overlap")]
    intervals = [(float(events[i][1]), float(events[i + 1][1])) for i in range(0, len(events), 2)]
    assert all(kind == "start" for kind, _ in events[0::2])
    assert len(intervals) >= 2
    for (_, previous_end), (next_start, _) in itertools.pairwise(intervals):
        assert next_start >= previous_end, intervals
