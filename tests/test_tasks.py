"""Scheduled Tasks: creation, windows, iterations, retirement, overlap, exactly-once firing."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone as dj_timezone

from sisy import clock, runner
from sisy.models import Job, JobStatus, Task, task_with_callable, taskinfo_with_label
from sisy.state import WorkerState
from tests.testapp import tasks
from tests.testapp.models import Gadget
from tests.testapp.sisy_modules import recorded

pytestmark = pytest.mark.django_db(transaction=True)

UTC = timezone.utc
NOW = datetime(2026, 11, 23, 10, 0, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_tasks() -> None:
    Task.objects.all().delete()  # e.g. those the migration test app made at database creation


def run_all(channel: str = "sisy.run") -> int:
    return runner.handle_wakeup(None, WorkerState(worker_id="t"), channel)


def test_task_with_callable_returns_an_unsaved_task_with_defaults() -> None:
    task = task_with_callable(
        "tests.testapp.tasks.record_run", schedule="0,15,30,45 9-17 * * mon-fri"
    )
    assert task.pk is None
    assert task.label == "tests.testapp.tasks.record_run"
    assert task.callable == {"kind": "function", "path": "tests.testapp.tasks.record_run"}
    assert Task.objects.count() == 0
    task.save()
    assert task.enabled and task.next_run is not None and task.iterations == 0


@override_settings(SISY_DEFAULT_SCHEDULE="*/5 * * * *")
def test_default_schedule_setting() -> None:
    assert task_with_callable(tasks.record_run).schedule == "*/5 * * * *"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "61 * * * *"}, "'61' is not a valid minute field"),
        ({"userdata": ["x"]}, "userdata must be a dict"),
    ],
)
def test_creation_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        task_with_callable(tasks.record_run, **kwargs)


def test_saving_an_invalid_schedule_is_refused() -> None:
    task = task_with_callable(tasks.record_run, label="x")
    task.schedule = "* * * *"
    with pytest.raises(ValueError, match="has 4 field"):
        task.save()


def test_next_run_follows_the_schedule_and_the_window() -> None:
    start = dj_timezone.now() + timedelta(days=2)
    task = task_with_callable(tasks.record_run, label="w", schedule="0 12 * * *")
    task.start_running = start
    task.save()
    assert task.next_run >= start
    assert task.next_run.hour == 12 and task.next_run.minute == 0
    task.end_running = start - timedelta(days=1)
    task.schedule = "0 13 * * *"  # a change of plan recomputes
    task.save()
    assert (task.enabled, task.next_run, task.is_retired) == (False, None, True)


def test_wait_for_schedule_false_is_due_at_once() -> None:
    task = task_with_callable(tasks.record_run, label="now", schedule="0 0 1 1 *")
    task.wait_for_schedule = False
    task.save()
    assert task.next_run <= dj_timezone.now()


def test_run_once_validates_delay_until() -> None:
    with pytest.raises(ValueError, match="aware"):
        Task.run_once(tasks.record_run, delay_until=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="in the future"):
        Task.run_once(tasks.record_run, delay_until=dj_timezone.now() - timedelta(seconds=1))
    later = dj_timezone.now() + timedelta(days=3)
    task = Task.run_once("tests.testapp.tasks.record_run", delay_until=later)
    assert task.pk is not None and task.next_run == later and task.iterations == 1


def test_run_iterations_validates_its_count() -> None:
    with pytest.raises(ValueError, match="iterations"):
        Task.run_iterations(tasks.record_run, "* * * * *", 0)


def test_taskinfo_with_label_gives_the_description_with_the_model_pk() -> None:
    gadget = Gadget.objects.create(name="g")
    task_with_callable("tests.testapp.models.Gadget.greet", label="g", pk_override=gadget.pk).save()
    info = taskinfo_with_label("g")
    assert info["model_pk"] == str(gadget.pk)
    assert info["path"] == "tests.testapp.models.Gadget.greet"


def test_a_due_task_fires_once_and_moves_on(redis) -> None:
    task = task_with_callable(tasks.record_run, label="due", schedule="* * * * *")
    task.save()
    Task.objects.filter(pk=task.pk).update(next_run=NOW - timedelta(hours=5))  # long missed
    report = clock.tick(NOW)
    assert report.fired == 1
    task.refresh_from_db()
    assert task.run_count == 1 and task.last_run == NOW
    assert task.next_run == datetime(2026, 11, 23, 10, 1, tzinfo=UTC)  # one catch-up, no flood
    job = Job.objects.get(task=task)
    assert job.scheduled_for == NOW - timedelta(hours=5)
    assert job.job_title == "due"
    assert clock.tick(NOW).fired == 0  # not due again until 10:01
    assert run_all() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert recorded("runs") == ["due"]
    task.refresh_from_db()
    assert task.userdata == {"runs": 1}  # written by the task function, persisted


def test_iterations_retire_the_task_and_keep_its_history() -> None:
    task = Task.run_iterations(tasks.record_run, "* * * * *", 2, label="twice")
    for minute in range(4):
        moment = NOW + timedelta(minutes=minute)
        Task.objects.filter(pk=task.pk, enabled=True).update(next_run=moment)
        clock.tick(moment)
    task.refresh_from_db()
    assert task.run_count == 2
    assert (task.enabled, task.next_run) == (False, None)
    assert task.retired_at is not None
    assert Job.objects.filter(task=task).count() == 2


def test_end_running_wins_over_remaining_iterations() -> None:
    task = Task.run_iterations(tasks.record_run, "0 * * * *", 10, label="ends")
    Task.objects.filter(pk=task.pk).update(next_run=NOW, end_running=NOW + timedelta(minutes=30))
    clock.tick(NOW)
    task.refresh_from_db()
    assert task.run_count == 1 and task.is_retired  # 11:00 would be past the end


def test_run_once_runs_once() -> None:
    task = Task.run_once(tasks.record_run, label="once")
    assert clock.tick(dj_timezone.now()).fired == 1
    assert clock.tick(dj_timezone.now() + timedelta(days=1)).fired == 0
    task.refresh_from_db()
    assert task.is_retired and task.run_count == 1


def test_no_overlap_skips_a_run_while_the_previous_is_unfinished() -> None:
    task = task_with_callable(tasks.record_run, label="solo", schedule="* * * * *")
    task.allow_overlap = False
    task.save()
    Task.objects.filter(pk=task.pk).update(next_run=NOW)
    assert clock.tick(NOW).fired == 1
    report = clock.tick(NOW + timedelta(minutes=1))
    assert (report.fired, report.skipped) == (0, 1)
    task.refresh_from_db()
    assert task.next_run == NOW + timedelta(minutes=1, seconds=30)  # moved on, nothing queued up
    assert run_all() == 1
    assert clock.tick(NOW + timedelta(minutes=2)).fired == 1


def test_overlap_allowed_queues_runs_side_by_side() -> None:
    task = task_with_callable(tasks.record_run, label="many", schedule="* * * * *")
    task.save()
    for minute in range(3):
        Task.objects.filter(pk=task.pk).update(next_run=NOW + timedelta(minutes=minute))
        clock.tick(NOW + timedelta(minutes=minute))
    assert Job.objects.filter(task=task, status=JobStatus.QUEUED).count() == 3


def test_a_run_is_fired_once_even_if_two_clocks_race() -> None:
    task = task_with_callable(tasks.record_run, label="race", schedule="* * * * *")
    task.save()
    Task.objects.filter(pk=task.pk).update(next_run=NOW)
    reports = []

    def one_clock() -> None:
        try:
            reports.append(clock.tick(NOW))
        finally:
            connection.close()

    threads = [threading.Thread(target=one_clock) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.fired for r in reports) == 1
    assert Job.objects.filter(task=task).count() == 1
    assert Task.objects.get(pk=task.pk).run_count == 1


def test_deleted_task_fails_its_queued_run_clearly() -> None:
    task = Task.run_once(tasks.record_run, label="gone")
    clock.tick(dj_timezone.now())
    job = Job.objects.get(task=task)
    Task.objects.filter(pk=task.pk).delete()
    run_all()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "no longer exists" in job.error


def test_model_method_with_a_uuid_pk_runs_on_its_instance() -> None:
    Gadget.objects.create(name="other")
    gadget = Gadget.objects.create(name="mine")
    Task.run_once(gadget.greet, label="uuid")
    clock.tick(dj_timezone.now())
    run_all()
    assert recorded("method") == [f"gadget:{gadget.pk}:mine"]
    assert Job.objects.get(task__label="uuid").ordered_tasks()[0].result == "hello from mine"


def test_internal_module_cannot_be_submitted() -> None:
    import sisy

    with pytest.raises(sisy.JobSpecError, match=r"unknown module 'sisy\.task'"):
        sisy.submit({"sisy.task": {"task": 1}})


def test_firing_takes_a_fixed_number_of_statements() -> None:
    """Statements per tick do not grow with the number of due Tasks."""
    counts = []
    for n in (5, 50):
        Task.objects.bulk_create(
            task_with_callable(tasks.record_run, label=f"bulk-{n}-{i}", schedule="* * * * *")
            for i in range(n)
        )
        Task.objects.filter(label__startswith=f"bulk-{n}-").update(next_run=NOW, enabled=True)
        with CaptureQueriesContext(connection) as queries:
            assert clock.fire_due_tasks(NOW)[0] == n
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


def test_saving_a_stale_copy_does_not_turn_the_clock_back() -> None:
    task = task_with_callable(tasks.record_run, label="stale", schedule="* * * * *")
    task.save()
    Task.objects.filter(pk=task.pk).update(next_run=NOW)
    stale = Task.objects.get(pk=task.pk)
    assert clock.tick(NOW).fired == 1
    stale.userdata = {"edited": True}
    stale.save()  # read before the firing
    fresh = Task.objects.get(pk=task.pk)
    assert (fresh.run_count, fresh.next_run) == (1, NOW + timedelta(seconds=30))
    assert fresh.userdata == {"edited": True}
    assert clock.tick(NOW + timedelta(seconds=30)).fired == 1


def test_a_run_that_already_has_a_job_still_moves_the_task_on() -> None:
    task = task_with_callable(tasks.record_run, label="again", schedule="* * * * *")
    task.save()
    Task.objects.filter(pk=task.pk).update(next_run=NOW)
    assert clock.tick(NOW).fired == 1
    Task.objects.filter(pk=task.pk).update(next_run=NOW)  # as a stale write would
    assert clock.tick(NOW + timedelta(seconds=1)).fired == 0
    task.refresh_from_db()
    assert task.next_run == NOW + timedelta(seconds=30) and task.run_count == 1


def test_changing_the_end_replans_and_a_run_past_the_end_never_fires() -> None:
    task = task_with_callable(tasks.record_run, label="end", schedule="0 * * * *")
    task.save()
    task.end_running = dj_timezone.now() - timedelta(seconds=1)
    task.save()
    assert task.is_retired
    other = task_with_callable(tasks.record_run, label="late", schedule="* * * * *")
    other.save()
    Task.objects.filter(pk=other.pk).update(next_run=NOW, end_running=NOW - timedelta(minutes=1))
    report = clock.tick(NOW)
    assert report.fired == 0
    other.refresh_from_db()
    assert other.is_retired and not Job.objects.filter(task=other).exists()


def test_re_enabling_a_retired_task_clears_its_retirement() -> None:
    task = Task.run_once(tasks.record_run, label="again-once")
    clock.tick(dj_timezone.now())
    task.refresh_from_db()
    assert task.is_retired
    task.iterations = 2
    task.enabled = True
    task.save()
    assert task.enabled and not task.is_retired and task.next_run is not None
