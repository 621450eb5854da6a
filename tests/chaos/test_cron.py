"""Cron exactly-once with several clocks, one of them killed (issue 5, case 11)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from sisy.models import UNFINISHED, Job, Task, task_with_callable
from tests.chaos.conftest import FULL, Chaos, poll, waited
from tests.testapp import tasks
from tests.testapp.sisy_modules import recorded

pytestmark = [pytest.mark.chaos, pytest.mark.django_db(transaction=True)]


def test_three_clocks_one_killed_fire_each_second_once(chaos: Chaos) -> None:
    """Case 11: a 1 s schedule over a 20 s window, three clocks, one SIGKILLed halfway.

    Shrunk from 60 s to 20 s to fit CI's time (``SISY_CHAOS_FULL=1``: 60 s). Every clock sends
    a tick each second (there is no leader: any tick may fire a due run), so
    "the active clock" is simply the first one started. Expected: one firing
    per whole second of the window, plus or minus one, no run fired twice,
    each fired run executed once.
    """
    duration = 60 if FULL else 20
    Task.objects.all().delete()
    for n in range(2):
        chaos.start_worker(f"cron-{n}", wait=False)
    clocks = [chaos.start_clock() for _ in range(3)]
    for n in range(2):
        chaos.wait_worker_up(f"cron-{n}")
    start = (timezone.now() + timedelta(seconds=3)).replace(microsecond=0)
    end = start + timedelta(seconds=duration - 1)  # `duration` whole seconds, both ends included
    task = task_with_callable(tasks.record_run, label="chaos-every-second", schedule="* * * * * *")
    task.start_running, task.end_running = start, end
    task.save()
    halfway = start + timedelta(seconds=duration / 2)
    time.sleep(max(0.0, (halfway - timezone.now()).total_seconds()))
    chaos.kill(clocks[0])
    killed_at = timezone.now()

    def retired() -> bool:
        task.refresh_from_db()
        return task.is_retired

    poll(retired, duration + 30, "the window to close", interval=0.2)
    waited(lambda: not Job.objects.filter(status__in=UNFINISHED).exists(), 30)
    runs = list(Job.objects.filter(task=task).values_list("scheduled_for", "created_at", "status"))
    scheduled = [moment for moment, _, _ in runs]
    fired_twice = sum(n - 1 for n in Counter(scheduled).values() if n > 1)
    executions = Counter(recorded("runs")).get(task.label, 0)
    late = max(((created - moment).total_seconds() for moment, created, _ in runs), default=0.0)
    before_kill = sum(1 for moment in scheduled if moment <= killed_at)
    chaos.report(
        "11 cron exactly once",
        duration_s=duration,
        clocks=len(clocks),
        firings=len(scheduled),
        firings_before_kill=before_kill,
        firings_after_kill=len(scheduled) - before_kill,
        fired_twice=fired_twice,
        executions=executions,
        latest_firing_s=round(late, 2),
        statuses=dict(Counter(status for _, _, status in runs)),
        surviving_clocks=sum(1 for clock in clocks if clock.poll() is None),
    )
    assert fired_twice == 0
    assert duration - 1 <= len(scheduled) <= duration + 1, sorted(scheduled)
    assert all(start <= moment <= end for moment in scheduled)
    assert executions == len(scheduled)
    assert {status for _, _, status in runs} == {"succeeded"}
    assert len(scheduled) - before_kill >= duration / 2 - 2  # the survivors kept firing
