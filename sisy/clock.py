"""The clock's tick: what happens every ``SISY_HEARTBEAT_FREQUENCY`` seconds.

``tick(now)`` is a plain function: the heartbeat consumer calls it for each
tick message and ``sisy_heartbeat --once`` calls it in-process. It

- requeues running jobs whose lease expired (their worker is presumed dead),
  or fails them with "worker lost" once they used ``max_attempts``;
- re-sends wake-ups for jobs queued longer than ``SISY_REDISPATCH_AFTER``
  (their wake-up may have been lost: Redis flushed, channel full, expired);
- sends the wake-ups of deferred jobs (``run_after``) whose time has come;
- fires the scheduled Tasks that are due, each due run exactly once however
  many clocks tick (row locks where the database has them, and a unique
  constraint on the Task and the scheduled time as the backstop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, DateTimeField, F, QuerySet, Value, When
from django.utils import timezone

from sisy import dispatch, scheduling, signals
from sisy.conf import sisy_settings
from sisy.models import UNFINISHED, Job, JobStatus, JobTask, JobTaskStatus, Task

logger = logging.getLogger("sisy.clock")

TICK_MESSAGE_TYPE = "sisy.tick"


@dataclass
class TickReport:
    """What one tick did: jobs requeued, jobs failed as lost, wake-ups sent.

    ``woken`` counts every wake-up sent; ``deferred`` those of them that were
    for deferred jobs which became due.
    """

    requeued: int = 0
    lost: int = 0
    woken: int = 0
    deferred: int = 0
    fired: int = 0
    skipped: int = 0


def tick(now: datetime | None = None) -> TickReport:
    """Run the clock's pass as of ``now`` (default: the current time)."""
    now = now or timezone.now()
    report = TickReport()
    report.requeued, report.lost = reap_expired_leases(now)
    report.woken = redispatch_stale(now)
    report.deferred = wake_deferred(now)
    report.woken += report.deferred
    while True:
        fired, skipped, more = fire_due_tasks(now)
        report.fired += fired
        report.skipped += skipped
        if not more:
            break
    if report.requeued or report.lost or report.woken or report.fired or report.skipped:
        logger.info(
            "sisy: tick fired %d task(s) (%d skipped: still running), requeued %d job(s), "
            "failed %d lost job(s), re-sent %d wake-up(s) for stale jobs, sent %d for "
            "deferred jobs now due",
            report.fired,
            report.skipped,
            report.requeued,
            report.lost,
            report.woken - report.deferred,
            report.deferred,
        )
    return report


TASK_MODULE = "sisy.task"
#: Wake-ups sent for a batch of fired Tasks; woken workers drain the rest.
MAX_WAKEUPS_PER_BATCH = 100


def fire_due_tasks(now: datetime) -> tuple[int, int, bool]:
    """Turn due Tasks into Jobs, one batch; returns (fired, skipped, more may be due).

    One transaction and a fixed number of statements per batch, whatever the
    number of Tasks: select the due ones (locked, skipping rows another clock
    holds), find those with an unfinished run when overlap is not allowed,
    insert the Jobs and their job tasks, then move the Tasks on with at most
    four UPDATEs (fired or not, retired or not), each setting ``next_run``
    from the few distinct values a batch has.
    """
    batch = sisy_settings.CLOCK_BATCH
    tz = timezone.get_default_timezone()
    channel = sisy_settings.RUN_CHANNEL
    with transaction.atomic():
        due = Task.objects.due(now).order_by("next_run")
        features = connection.features
        if features.has_select_for_update_skip_locked:
            of = ("self",) if features.has_select_for_update_of else ()
            due = due.select_for_update(skip_locked=True, of=of)
        tasks = list(due[:batch])
        if not tasks:
            return 0, 0, False
        exclusive = [t.pk for t in tasks if not t.allow_overlap]
        busy = set(
            Job.objects.filter(task__in=exclusive, status__in=UNFINISHED)
            .order_by()
            .values_list("task_id", flat=True)
            if exclusive
            else ()
        )
        jobs: dict[int, Job] = {
            task.pk: Job(
                job_title=task.label,
                channel=channel,
                max_attempts=sisy_settings.MAX_ATTEMPTS,
                task=task,
                scheduled_for=task.next_run,
            )
            for task in tasks
            if task.pk not in busy and not _past_its_end(task)
        }
        Job.objects.bulk_create(jobs.values(), ignore_conflicts=True)
        # A run that already has a Job was fired before (by another clock, or
        # a stale save put next_run back): only the Jobs inserted now are ours.
        ours = set(
            Job.objects.filter(pk__in=[j.pk for j in jobs.values()])
            .order_by()
            .values_list("pk", flat=True)
        )
        JobTask.objects.bulk_create(
            JobTask(job=job, position=0, module=TASK_MODULE, data={"task": task_pk})
            for task_pk, job in jobs.items()
            if job.pk in ours
        )
        # Move every selected Task on, grouped by outcome.
        groups: dict[tuple[bool, bool], dict[datetime | None, list[int]]] = {}
        for task in tasks:
            fired = task.pk in jobs and jobs[task.pk].pk in ours
            runs = task.run_count + (1 if fired else 0)
            if _past_its_end(task):
                plan = scheduling.Plan(None, retire=True)
            else:
                plan = scheduling.after_run(
                    task.schedule,
                    now,
                    tz,
                    runs=runs,
                    iterations=task.iterations,
                    end_running=task.end_running,
                )
            group = groups.setdefault((fired, plan.retire), {})
            group.setdefault(plan.next_run, []).append(task.pk)
        for (fired, retire), by_next_run in groups.items():
            _move_on(by_next_run, fired=fired, retire=retire, now=now)
        fired_ids = [job.pk for job in jobs.values() if job.pk in ours]
        if fired_ids:
            wake_ids = fired_ids[:MAX_WAKEUPS_PER_BATCH]
            transaction.on_commit(lambda: dispatch.wake(channel, wake_ids))
    return len(fired_ids), len(busy), len(tasks) == batch


def _move_on(
    by_next_run: dict[datetime | None, list[int]], *, fired: bool, retire: bool, now: datetime
) -> None:
    """One UPDATE for Tasks sharing an outcome; ``next_run`` by a CASE over few values."""
    ids = [pk for pks in by_next_run.values() for pk in pks]
    fields: dict[str, Any] = {}
    if retire:
        fields.update(next_run=None, enabled=False, retired_at=now)
    elif len(by_next_run) == 1:
        fields["next_run"] = next(iter(by_next_run))
    else:
        fields["next_run"] = Case(
            *(When(pk__in=pks, then=Value(moment)) for moment, pks in by_next_run.items()),
            output_field=DateTimeField(),
        )
    if fired:
        fields.update(run_count=F("run_count") + 1, last_run=now)
    Task.objects.filter(pk__in=ids).update(**fields)


def _past_its_end(task: Task) -> bool:
    """A due run that must not fire: after the window, or beyond the iterations."""
    ends, due = task.end_running, task.next_run
    if ends is not None and due is not None and due > ends:
        return True
    return bool(task.iterations) and task.run_count >= task.iterations


def reap_expired_leases(now: datetime) -> tuple[int, int]:
    """Requeue jobs whose worker stopped renewing their lease; fail those out of attempts."""
    expired = Job.objects.expired_leases(now)
    lost_ids = list(expired.filter(attempts__gte=F("max_attempts")).values_list("pk", flat=True))
    lost = 0
    if lost_ids:
        lost = (
            Job.objects.expired_leases(now)
            .filter(pk__in=lost_ids)
            .update(
                status=JobStatus.FAILED,
                finished_at=now,
                lease_expires_at=None,
                error="worker lost: the job's lease expired on its last allowed attempt",
            )
        )
        JobTask.objects.filter(
            job__in=lost_ids, status__in=[JobTaskStatus.PENDING, JobTaskStatus.RUNNING]
        ).update(status=JobTaskStatus.SKIPPED, finished_at=now)
    requeued = (
        Job.objects.expired_leases(now)
        .filter(attempts__lt=F("max_attempts"))
        .update(status=JobStatus.QUEUED, worker="", lease_expires_at=None)
    )
    return requeued, lost


def redispatch_stale(now: datetime) -> int:
    """Wake workers for queued jobs nobody started; a bounded number per channel.

    A woken worker drains its channel, so a few wake-ups restart the whole backlog.
    """
    stale = Job.objects.stale(now, sisy_settings.REDISPATCH_AFTER)
    return _wake_per_channel(stale, "created_at")


def wake_deferred(now: datetime) -> int:
    """Wake workers for deferred jobs whose ``run_after`` has come; a bounded number per channel.

    Nothing woke them when they were stored, so this is their first wake-up
    (and, while they stay queued, a repeated one, like a stale job's).
    Highest priority first, then the earliest due.
    """
    return _wake_per_channel(Job.objects.deferred_due(now), "run_after")


def _wake_per_channel(jobs: QuerySet[Job], oldest_first: str) -> int:
    """Send at most SISY_SWEEP_MAX_WAKEUPS wake-ups per channel for ``jobs``."""
    limit = sisy_settings.SWEEP_MAX_WAKEUPS
    channels = jobs.order_by().values_list("channel", flat=True).distinct()
    sent = 0
    for channel in channels:
        ids = list(
            jobs.filter(channel=channel)
            .order_by("-priority", oldest_first)
            .values_list("pk", flat=True)[:limit]
        )
        sent += dispatch.wake(channel, ids)
    return sent


def run_now(task: Task, now: datetime | None = None) -> Job:
    """Queue one run of ``task`` now, outside its schedule (the admin's "run now").

    The Task's own schedule, ``next_run`` and run count are left as they are.
    """
    now = now or timezone.now()
    with transaction.atomic():
        job = Job.objects.create(
            job_title=task.label,
            channel=sisy_settings.RUN_CHANNEL,
            max_attempts=sisy_settings.MAX_ATTEMPTS,
            task=task,
            scheduled_for=now,
        )
        JobTask.objects.create(job=job, position=0, module=TASK_MODULE, data={"task": task.pk})

        def committed() -> None:
            signals.send(signals.job_queued, Job, job=job)
            dispatch.wake(job.channel, [job.pk])

        transaction.on_commit(committed)
    return job
