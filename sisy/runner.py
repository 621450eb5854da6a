"""Execution: claim a job, run its tasks through the module lifecycle, record the outcome.

Everything here is plain synchronous code that tests call directly; the
Channels consumer only calls :func:`handle_wakeup`.

- **Claim** is one conditional ``UPDATE ... WHERE status = 'queued'``: of two
  workers woken for the same job, exactly one starts it.
- **Fencing**: every later write is conditional on the job still being
  ``in_progress`` with this worker and this attempt, so a worker that lost its
  job (lease expired, job cancelled) cannot overwrite what happened since.
- **Drain**: after the job it was woken for, a worker keeps claiming queued
  jobs of its channel until there are none, so a lost or refused wake-up costs
  nothing while any worker is busy.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connections, router, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from sisy import completion, signals, sql
from sisy import spec as specs
from sisy.conf import sisy_settings
from sisy.exceptions import JobCancelled, JobSpecError, TimeLimitExceeded
from sisy.models import Job, JobStatus, JobTask, JobTaskStatus
from sisy.modules import Module, registry
from sisy.state import WorkerState

logger = logging.getLogger("sisy.runner")

#: Progress is written to the database at most this often per job task (seconds).
PROGRESS_WRITE_INTERVAL = 0.5


class LostJob(Exception):
    """The job is no longer this worker's (lease expired and reassigned, or cancelled)."""


class _Cancelled(LostJob, JobCancelled):
    """A fenced write found the job cancelled (what a module sees from progress())."""


def claim(job_id: uuid.UUID | str | None, state: WorkerState, channel: str) -> Job | None:
    """Start ``job_id`` (or, when ``None``, the next queued job of ``channel``) for this worker.

    The next job is the one with the highest priority, then the oldest; a job
    deferred to a later time (``run_after``) is not claimable before it.
    Returns the claimed job, or ``None`` when there is nothing to claim.

    On PostgreSQL and SQLite this is one statement, ``UPDATE ... RETURNING``
    (with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers take
    different jobs without waiting on each other); elsewhere a SELECT of
    candidates, then a conditional UPDATE and a read.
    """
    pk: uuid.UUID | None = None
    if job_id is not None:
        try:
            pk = uuid.UUID(str(job_id))
        except ValueError:
            logger.warning("sisy: ignoring a wake-up naming %r, which is not a job id", job_id)
            state.note_dropped()
            return None
    jobs = _claim(pk, state, channel, 1)
    return jobs[0] if jobs else None


def claim_batch(state: WorkerState, channel: str, limit: int) -> list[Job]:
    """Start up to ``limit`` queued jobs of ``channel`` at once, in the order to run them.

    Each is claimed exactly as by :func:`claim` (same statement, same fencing:
    status, worker, attempt and lease are set on every row), and comes with
    its tasks. The caller runs them one after another, and gives back
    (:func:`give_back`) those it will not start.
    """
    jobs = _claim(None, state, channel, limit)
    if len(jobs) > 1:
        jobs.sort(key=lambda job: (-job.priority, job.created_at))
    return jobs


def _claim(pk: uuid.UUID | None, state: WorkerState, channel: str, limit: int) -> list[Job]:
    """Claim, and read the claimed jobs' tasks (kept on each job for :func:`run_job`)."""
    now = timezone.now()
    lease = now + timedelta(seconds=sisy_settings.JOB_LEASE)
    if _returning_supported():
        jobs = _claim_returning(pk, state, channel, now, lease, limit)
    else:
        jobs = _claim_portable(pk, state, channel, now, lease, limit)
        _attach_tasks(jobs, router.db_for_write(Job))
    for job in jobs:
        logger.debug("sisy: %s claimed job %s, attempt %d", state.worker_id, job.pk, job.attempts)
    return jobs


def _returning_supported() -> bool:
    vendor = connections[router.db_for_write(Job)].vendor
    if vendor == "postgresql":
        return True
    if vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35)
    return False


_claim_sql: dict[tuple[str, bool, bool], str] = {}


def _claim_returning(
    pk: uuid.UUID | None, state: WorkerState, channel: str, now: Any, lease: Any, limit: int
) -> list[Job]:
    using = router.db_for_write(Job)
    connection = connections[using]
    when = connection.ops.adapt_datetimefield_value
    claimed: list[Any] = [JobStatus.IN_PROGRESS, state.worker_id, when(now), when(lease)]
    if pk is not None:
        pk_value = Job._meta.pk.get_db_prep_value(pk, connection)
        params = [*claimed, pk_value, JobStatus.QUEUED, channel, when(now)]
    else:
        params = [JobStatus.QUEUED, channel, when(now), limit, *claimed]
        if connection.vendor != "postgresql":  # see _claim_statement
            params.append(JobStatus.QUEUED)
    # See _claim_statement. Only when the claim is its own transaction: in
    # a longer one, that transaction's commit would be asynchronous too.
    asynchronous = (
        connection.vendor == "postgresql"
        and sisy_settings.CLAIM_ASYNC_COMMIT
        and connection.get_autocommit()
    )
    key = (using, pk is not None, asynchronous)
    statement = _claim_sql.get(key)
    if statement is None:
        statement = _claim_sql[key] = _claim_statement(
            connection, by_pk=pk is not None, asynchronous=asynchronous
        )
    if connection.vendor != "postgresql":
        with sql.writer_queue.turn(connection):
            claimed = sql.fetch(Job, statement, params, using)
        jobs = [job for job in claimed if isinstance(job, Job)]
        _attach_tasks(jobs, using)
        return jobs
    # PostgreSQL: the claim and the read of the tasks are one statement.
    by_pk: dict[Any, Job] = {}
    for job, task in sql.fetch_joined((Job, JobTask), statement, params, using):
        assert isinstance(job, Job)  # the claimed side of the join
        job = by_pk.setdefault(job.pk, job)
        tasks = job.__dict__.setdefault("_sisy_tasks", [])
        if task is not None:
            tasks.append(task)
    return list(by_pk.values())


def _claim_statement(connection: Any, by_pk: bool, asynchronous: bool = False) -> str:
    """The claim: by primary key, or of up to ``limit`` jobs in queue order.

    ``asynchronous`` (PostgreSQL, outside a transaction): the claim commits
    without waiting for its WAL to reach the disk (``synchronous_commit``
    off for this one transaction; see :setting:`SISY_CLAIM_ASYNC_COMMIT`).
    A claim that a server crash loses leaves its jobs queued, as if never
    claimed: they run again, as at-least-once allows. Whatever the worker
    writes next (a completion, a renewed lease) commits durably, and the
    WAL reaches the disk in order, so from then on the claim is durable too.
    """
    meta = Job._meta
    column = {f.name: connection.ops.quote_name(str(f.column)) for f in meta.concrete_fields}
    table = connection.ops.quote_name(meta.db_table)
    due = f"({column['run_after']} IS NULL OR {column['run_after']} <= %s)"
    claimable = f"{column['status']} = %s AND {column['channel']} = %s AND {due}"
    update = (
        f"UPDATE {table} SET {column['status']} = %s, {column['worker']} = %s, "  # noqa: S608
        f"{column['attempts']} = {column['attempts']} + 1, {column['started_at']} = %s, "
        f"{column['finished_at']} = NULL, {column['lease_expires_at']} = %s "
    )
    returning = f" RETURNING {sql.columns(connection, Job)}"
    ctes = []
    if by_pk:
        if connection.vendor == "postgresql":
            # Hidden from the planner's index matching, so that it finds the
            # job by its primary key: with the conditions as they are it may
            # take the claim index, whose "queued" range keeps an entry for
            # every job claimed since the table's last vacuum (0.7 ms with
            # 20,000 of them, against 0.05 ms by the primary key).
            claimable = f"({claimable}) IS TRUE"
        update += f"WHERE {column['job_id']} = %s AND {claimable}{returning}"
    else:
        # The candidates are picked once, in a CTE: PostgreSQL may run a subquery
        # in ``IN (...)`` more than once, and a LIMIT there would not hold.
        lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
        ctes.append(  # identifiers come from the model, values are parameters
            f"picked AS (SELECT {column['job_id']} FROM {table} WHERE {claimable} "  # noqa: S608
            f"ORDER BY {column['priority']} DESC, {column['created_at']} LIMIT %s{lock})"
        )
        picked = f"SELECT {column['job_id']} FROM picked"  # noqa: S608 (identifiers)
        if connection.vendor == "postgresql":
            # The picked ids as an array, and no second look at the status.
            # With ``IN (...)`` and no fresh statistics (a queue table's size
            # swings; after a TRUNCATE there are none) the planner ran a
            # nested loop over every queued row for each picked one: 8 ms for
            # 10 jobs out of 3,000. With an array it looks the ids up in the
            # primary key, or on a small table reads it once (0.35 ms there).
            # The status needs no second look: FOR UPDATE rechecks the picked
            # rows' status on their latest version and holds them locked
            # until the commit.
            update += f"WHERE {column['job_id']} = ANY(ARRAY({picked})){returning}"
        else:
            update += (
                f"WHERE {column['job_id']} IN ({picked}) AND {column['status']} = %s{returning}"
            )
    if connection.vendor != "postgresql":
        return f"WITH {ctes[0]} {update}" if ctes else update
    # The claimed rows joined to their tasks, in one statement.
    job_column = sql.column(connection, JobTask, "job")
    position = sql.column(connection, JobTask, "position")
    tasks = connection.ops.quote_name(JobTask._meta.db_table)
    ctes.append(f"sisy_claimed AS ({update})")
    joined = ""
    if asynchronous:
        # set_config(..., true) is SET LOCAL: it lasts until this statement's
        # own transaction commits, and the commit reads it. Volatile, so the
        # CTE is run (once) rather than folded away; the join keeps it read.
        ctes.append(
            "sisy_async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS v)"
        )
        joined = " CROSS JOIN sisy_async_commit"
    return (
        f"WITH {', '.join(ctes)} SELECT {sql.columns(connection, Job, 'sisy_claimed')}, "  # noqa: S608
        f"{sql.columns(connection, JobTask, 't')} FROM sisy_claimed{joined} LEFT JOIN {tasks} t "
        f"ON t.{job_column} = sisy_claimed.{column['job_id']} "
        f"ORDER BY sisy_claimed.{column['job_id']}, t.{position}"
    )


_tasks_sql: dict[tuple[str, int], str] = {}


def _attach_tasks(jobs: list[Job], using: str) -> None:
    """Read the tasks of ``jobs`` in one query; keep them on each job, in order."""
    if not jobs:
        return
    connection = connections[using]
    key = (using, len(jobs))
    statement = _tasks_sql.get(key)
    if statement is None:
        job_column = sql.column(connection, JobTask, "job")
        position = sql.column(connection, JobTask, "position")
        table = connection.ops.quote_name(JobTask._meta.db_table)
        statement = _tasks_sql[key] = (
            f"SELECT {sql.columns(connection, JobTask)} FROM {table} "  # noqa: S608
            f"WHERE {job_column} IN ({', '.join(['%s'] * len(jobs))}) "
            f"ORDER BY {job_column}, {position}"
        )
    link = JobTask._meta.get_field("job")
    params = [link.get_db_prep_value(job.pk, connection) for job in jobs]  # type: ignore[union-attr]
    by_pk: dict[Any, list[JobTask]] = {job.pk: [] for job in jobs}
    for task in sql.fetch(JobTask, statement, params, using):
        assert isinstance(task, JobTask)
        by_pk[task.job_id].append(task)
    for job in jobs:
        job._sisy_tasks = by_pk[job.pk]  # type: ignore[attr-defined]


def _claim_portable(
    pk: uuid.UUID | None, state: WorkerState, channel: str, now: Any, lease: Any, limit: int
) -> list[Job]:
    candidates: list[Any]
    if pk is not None:
        candidates = [pk]
    else:
        candidates = list(
            Job.objects.claimable(channel, now)
            .order_by("-priority", "created_at")
            .values_list("pk", flat=True)[: limit + 4]
        )
    claimed: list[Job] = []
    for candidate in candidates:
        updated = (
            Job.objects.claimable(channel, now)  # a worker only takes its own channel's jobs
            .filter(pk=candidate)
            .update(
                status=JobStatus.IN_PROGRESS,
                worker=state.worker_id,
                attempts=F("attempts") + 1,
                started_at=now,
                finished_at=None,
                lease_expires_at=lease,
            )
        )
        if updated:
            claimed.append(Job.objects.get(pk=candidate))
            if len(claimed) >= limit:
                break
    return claimed


#: Seconds of work a worker claims at once while it drains a channel: it
#: claims about this much divided by how long its recent jobs took (at most
#: :setting:`SISY_WORKER_CLAIM_BATCH` jobs). A job it claimed that is still
#: waiting once the job before it has run this long is given back at the
#: next heartbeat, for an idle worker to take.
CLAIM_WINDOW = 0.05


def claim_size(state: WorkerState) -> int:
    """How many jobs to claim next: about :data:`CLAIM_WINDOW` of work, capped."""
    most = sisy_settings.WORKER_CLAIM_BATCH
    seconds = state.job_seconds
    if most <= 1 or seconds is None:
        return 1
    return max(1, min(most, int(CLAIM_WINDOW / max(seconds, 1e-4))))


def handle_wakeup(job_id: Any, state: WorkerState, channel: str) -> int:
    """Run the job a wake-up names, then drain the channel. Returns how many jobs ran.

    Draining claims jobs in batches (see :func:`claim_size`) and runs them one
    after another; a stopping worker gives back those it has not started.
    """
    ran = 0
    state.enter()
    try:
        if state.stopping.is_set():
            return 0
        refresh_connections()
        job = claim(job_id, state, channel) if job_id is not None else None
        while True:
            if job is None:
                # Stopping ends the drain here, before a claim: a job once
                # claimed is always run or given back, or it would sit in
                # progress until its lease expired.
                if state.stopping.is_set():
                    break
                job = _next_reserved(state)
            if job is None:
                refresh_connections()
                state.reserve(claim_batch(state, channel, claim_size(state)))
                job = _next_reserved(state)
                if job is None:
                    break
            began = time.monotonic()
            run_job(job, state)
            state.note_job_seconds(time.monotonic() - began)
            ran += 1
            job = None
    finally:
        try:
            write_completions(state)
        finally:
            try:
                give_back(state, state.take_reserved())
            finally:
                state.leave()
    return ran


def _next_reserved(state: WorkerState) -> Job | None:
    """The next job claimed in a batch that is still this worker's to run."""
    while (entry := state.next_reserved()) is not None:
        job, claimed_at = entry
        if time.monotonic() - claimed_at < CLAIM_WINDOW * 2:
            return job  # just claimed: the fenced writes will tell if it was taken away
        # It waited: check it was not cancelled meanwhile, before running anything.
        if _fenced(job).exists():
            return job
        if _record_cancellation(job):
            logger.info("sisy: job %s was cancelled before it started", job.pk)
    return None


def give_back(state: WorkerState, jobs: list[Job]) -> int:
    """Return claimed jobs this worker did not start to the queue; wake a worker for them.

    The write is fenced like every other (a job cancelled or reassigned
    meanwhile is left alone), and the attempt is not counted: the job never
    started. Returns how many were given back.
    """
    if not jobs:
        return 0
    given: list[Any] = []
    for job in jobs:
        if sql.update(
            Job,
            {
                "status": JobStatus.QUEUED,
                "worker": "",
                "attempts": job.attempts - 1,
                "started_at": None,
                "lease_expires_at": None,
            },
            {
                "job_id": job.pk,
                "status": JobStatus.IN_PROGRESS,
                "worker": job.worker,
                "attempts": job.attempts,
            },
        ):
            given.append(job.pk)
    if given:
        logger.info("sisy: worker %s gave back %d claimed job(s)", state.worker_id, len(given))
        from sisy.dispatch import wake_soon

        wake_soon(jobs[0].channel, given[: sisy_settings.SWEEP_MAX_WAKEUPS])
    return len(given)


#: A connection unused for this long is checked (``SELECT 1`` on PostgreSQL)
#: before the next claim: the server may have dropped it meanwhile.
IDLE_CONNECTION_CHECK = 5.0

_last_use = threading.local()


def refresh_connections() -> None:
    """Drop database connections that broke (a database restart) or, where
    ``CONN_MAX_AGE`` is set, grew too old; the next query reconnects.

    Like Django's ``close_old_connections()`` between requests, except that a
    worker keeps a healthy connection when ``CONN_MAX_AGE`` is 0: a worker is
    one long-running client, and reconnecting per job would cost more than the
    job. A connection left idle for :data:`IDLE_CONNECTION_CHECK` seconds is
    checked first, so that a database restarted while the worker idled costs
    no failed claim.
    """
    now = time.monotonic()
    idle = now - getattr(_last_use, "at", now) > IDLE_CONNECTION_CHECK
    _last_use.at = now
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if connection.errors_occurred or connection.settings_dict.get("CONN_MAX_AGE") != 0:
            connection.close_if_unusable_or_obsolete()
        elif idle and not connection.is_usable():
            connection.close()


_fence = completion.fence


def _fenced(job: Job) -> QuerySet[Job]:
    return Job.objects.filter(
        pk=job.pk, status=JobStatus.IN_PROGRESS, worker=job.worker, attempts=job.attempts
    )


def _fenced_task(job: Job, task: JobTask) -> QuerySet[JobTask]:
    return JobTask.objects.filter(pk=task.pk, job__in=_fenced(job))


def renew_lease(state: WorkerState) -> None:
    """Extend the leases of the jobs ``state`` holds (called by the heartbeat thread).

    Claimed jobs waiting behind a job that has run for more than
    :data:`CLAIM_WINDOW` are given back instead, for idle workers.
    """
    current = state.current_job()
    since = state.unwritten_since()
    if since is not None and time.monotonic() - since > CLAIM_WINDOW:
        try:
            write_completions(state)  # the job after them is taking its time
        except Exception:
            logger.exception("sisy: could not record finished jobs; they will run again")
    lease = timezone.now() + timedelta(seconds=sisy_settings.JOB_LEASE)
    reserved = state.reserved_ids()
    if reserved:
        if current is not None and time.monotonic() - state.job_began > CLAIM_WINDOW:
            give_back(state, state.take_reserved())
        else:
            sql.update(
                Job,
                {"lease_expires_at": lease},
                {
                    "job_id": reserved,
                    "status": JobStatus.IN_PROGRESS,
                    "worker": state.worker_id,
                },
            )
    if current is None:
        return
    mine = Job.objects.filter(
        pk=current.job_id,
        status=JobStatus.IN_PROGRESS,
        worker=state.worker_id,
        attempts=current.attempt,
    )
    mine.update(lease_expires_at=lease)
    task = state.current_task()
    if task is not None:  # a task running for a heartbeat is shown as running
        task_pk, started = task
        JobTask.objects.filter(pk=task_pk, status=JobTaskStatus.PENDING, job__in=mine).update(
            status=JobTaskStatus.RUNNING, started_at=started
        )


def run_job(job: Job, state: WorkerState) -> Job:
    """Run a claimed job's tasks in order and record the outcome. Returns the job as stored."""
    state.job_started(str(job.pk), job.job_title, job.attempts)
    signals.send(signals.job_started, Job, job=job, worker=state.worker_id)
    try:
        _run_claimed(job, state)
    except LostJob as exc:
        _lost(job, state, str(exc))
    finally:
        state.job_finished()
    return job


def _lost(job: Job, state: WorkerState, when: str) -> None:
    """``job`` was no longer this worker's attempt when its outcome was written."""
    if _record_cancellation(job):
        logger.info("sisy: job %s was cancelled while it ran", job.pk)
        return
    logger.warning(
        "sisy: job %s attempt %d is no longer worker %s's; its outcome was not recorded (%s)",
        job.pk,
        job.attempts,
        state.worker_id,
        when,
    )
    job.refresh_from_db()


def _record_cancellation(job: Job) -> bool:
    """If ``job`` was cancelled while this worker ran it, mark its unfinished tasks cancelled."""
    cancelled = Job.objects.filter(
        pk=job.pk, status=JobStatus.CANCELLED, worker=job.worker, attempts=job.attempts
    )
    if not cancelled.exists():
        return False
    JobTask.objects.filter(
        job=job, status__in=[JobTaskStatus.PENDING, JobTaskStatus.RUNNING]
    ).update(status=JobTaskStatus.CANCELLED, finished_at=timezone.now())
    job.refresh_from_db()
    signals.send(signals.job_finished, Job, job=job, status=job.status)
    return True


def _run_claimed(job: Job, state: WorkerState) -> None:
    tasks = getattr(job, "_sisy_tasks", None) or job.ordered_tasks()
    problems = []
    for task in tasks:
        if task.status != JobTaskStatus.SUCCEEDED:
            problems.extend(registry.validate(task.module, task.data, task=task.position))
    if problems:
        message = "; ".join(str(problem) for problem in problems)
        with transaction.atomic():
            _finish(job, JobStatus.FAILED, f"invalid job: {message}", tasks, skip_from=0)
        signals.send(signals.job_finished, Job, job=job, status=job.status)
        return
    todo = [task for task in tasks if task.status != JobTaskStatus.SUCCEEDED]
    for task in todo:  # the ones an earlier attempt completed are kept
        outcome = _execute(job, task, state)
        last = task is todo[-1]
        if outcome.error is None and not last:
            _record(job, task, outcome)
            continue
        if outcome.error is None:
            _complete(job, task, outcome, state)
            return
        retry_delay = _retry_delay(job, task, outcome.module_class, outcome.error)
        with transaction.atomic():
            _record(job, task, outcome, retrying=retry_delay is not None)
            if retry_delay is not None:
                _queue_retry(job, task, retry_delay)
            else:
                summary = str(outcome.error) or type(outcome.error).__name__
                message = f"task {task.position} ({task.module}) failed: {summary}"
                _finish(job, JobStatus.FAILED, message, tasks, skip_from=tasks.index(task) + 1)
        signals.send(
            signals.task_failed,
            JobTask,
            job=job,
            job_task=task,
            error=task.error,
            retrying=retry_delay is not None,
        )
        if retry_delay is not None:
            _wake_later(job.channel, job.pk, retry_delay)
        else:
            signals.send(signals.job_finished, Job, job=job, status=job.status)
        return


@dataclass
class _Outcome:
    """What running one job task gave, before it is written down."""

    started: datetime
    module_class: type[Module] | None
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""


def _execute(job: Job, task: JobTask, state: WorkerState) -> _Outcome:
    """Run one job task through the module lifecycle; write nothing but progress.

    The task is not marked ``running`` here: its first progress report, or the
    worker's next heartbeat, does that (see :func:`renew_lease`), so a task that
    takes milliseconds costs no write for a state nobody could see.
    """
    outcome = _Outcome(started=timezone.now(), module_class=registry.find(task.module))
    state.task_started(task.pk, outcome.started)
    reporter = _ProgressReporter(job, task, state, outcome.started)
    module: Module | None = None
    try:
        if outcome.module_class is None:
            raise UnknownModule(f"unknown module {task.module!r}")
        module = outcome.module_class(task.data, job=job, job_task=task, reporter=reporter)
        module._checked_data = task.data  # _run_claimed checked it against the schema
        limit = job.time_limit or outcome.module_class.time_limit
        outcome.result = _json_result(_call_module(module, _Watchdog(limit, job, task, state)))
    except LostJob:
        raise
    except Exception as exc:
        outcome.error, outcome.traceback = exc, traceback.format_exc()
    finally:
        if module is not None:
            cleanup_error = _cleanup(module)
            if cleanup_error and outcome.error is None:
                outcome.error, outcome.traceback = RuntimeError("cleanup failed"), cleanup_error
    return outcome


def _complete(job: Job, task: JobTask, outcome: _Outcome, state: WorkerState) -> None:
    """The last task succeeded: record it and the job's success (fenced), as one unit.

    While more claimed jobs wait to run, the record is kept in hand, to be
    written with the next ones (see :func:`write_completions`).
    """
    success = completion.Success(
        job, task, outcome.started, timezone.now(), outcome.result, time.monotonic()
    )
    if _may_wait(state):
        state.keep_unwritten(success)
    else:
        write_completions(state, [success])


def _may_wait(state: WorkerState) -> bool:
    """Whether a job that succeeded may wait to be written with the next ones.

    Only while claimed jobs wait to run, at most
    :setting:`SISY_WORKER_CLAIM_BATCH` together, and only while the oldest
    held ended less than :data:`CLAIM_WINDOW` ago. Should the job then
    running take longer, the next heartbeat writes them (see :func:`renew_lease`).
    """
    if not state.reserved or state.stopping.is_set():
        return False
    if state.count_unwritten() + 1 >= sisy_settings.WORKER_CLAIM_BATCH:
        return False
    since = state.unwritten_since()
    return since is None or time.monotonic() - since < CLAIM_WINDOW


def write_completions(state: WorkerState, more: list[completion.Success] | None = None) -> int:
    """Write the succeeded jobs ``state`` keeps, and ``more``, in one go. Returns how many.

    One statement on PostgreSQL, one transaction elsewhere. Each job is then
    marked succeeded in memory and ``job_finished`` sent for it; one that was
    no longer this worker's attempt is handled as at any fenced write.
    """
    done = state.take_unwritten() + (more or [])
    if not done:
        return 0
    using = router.db_for_write(Job)
    unrecorded: set[Any] = set()  # neither written nor lost: the write failed
    try:
        written = completion.write(done, using)
    except DatabaseError:
        if len(done) == 1:
            raise
        # One bad row (a result the database refuses) must not lose the others.
        logger.warning("sisy: a grouped write of %d jobs failed; writing each alone", len(done))
        written = set()
        for success in done:
            try:
                written |= completion.write([success], using)
            except DatabaseError:
                logger.exception("sisy: could not record job %s; it will run again", success.job.pk)
                unrecorded.add(success.job.pk)
    for success in done:
        job, task = success.job, success.task
        if job.pk not in written:
            continue
        job.status, job.finished_at, job.error, job.lease_expires_at = (
            JobStatus.SUCCEEDED,
            success.finished,
            "",
            None,
        )
        task.status, task.error = JobTaskStatus.SUCCEEDED, ""
        logger.debug("sisy: job %s %s", job.pk, job.status)
        signals.send(signals.job_finished, Job, job=job, status=job.status)
    for success in done:
        if success.job.pk not in written and success.job.pk not in unrecorded:
            try:
                _lost(success.job, state, "at completion")
            except Exception:
                logger.exception("sisy: job %s: could not check why it was lost", success.job.pk)
    return len(written)


def _record(job: Job, task: JobTask, outcome: _Outcome, retrying: bool = False) -> None:
    """Write a job task's outcome (fenced: ``LostJob`` if the job is no longer ours)."""
    fields: dict[str, Any] = {"started_at": outcome.started, "finished_at": timezone.now()}
    if outcome.error is None:
        fields.update(status=JobTaskStatus.SUCCEEDED, result=outcome.result, progress=1.0, error="")
    elif retrying:
        fields.update(
            status=JobTaskStatus.PENDING,
            error=outcome.traceback,
            retry_count=F("retry_count") + 1,
            finished_at=None,
        )
    else:
        fields.update(status=JobTaskStatus.FAILED, error=outcome.traceback)
    if not _fenced_task(job, task).update(**fields):
        raise LostJob(f"after task {task.position}")
    task.status, task.error = fields["status"], fields.get("error", "")


class UnknownModule(LookupError):
    """A job task names a module that is not registered in this worker."""


#: Errors a retry cannot fix: the task's data or the deployment must change first.
NOT_RETRIED = (UnknownModule, JobSpecError, JobCancelled)


def _retry_delay(
    job: Job, task: JobTask, module_class: type[Module] | None, error: BaseException | None
) -> float | None:
    """Seconds until the retry of a failed task, or ``None`` if it is not retried."""
    if error is None or module_class is None or isinstance(error, NOT_RETRIED):
        return None
    allowed = job.retries if job.retries is not None else module_class.retries
    if task.retry_count >= allowed:
        return None
    return module_class.retry_delay(task.retry_count + 1)


def _queue_retry(job: Job, task: JobTask, delay: float) -> None:
    """Queue ``job`` again, not before ``delay`` seconds from now (a fenced write)."""
    from django.db.models.functions import Greatest

    run_after = timezone.now() + timedelta(seconds=delay)
    if not _fenced(job).update(
        status=JobStatus.QUEUED,
        worker="",
        lease_expires_at=None,
        run_after=run_after,
        # A retry is not a lost worker: it does not use up the job's attempts.
        max_attempts=Greatest(F("max_attempts"), F("attempts") + 1),
    ):
        raise LostJob(f"queueing task {task.position} again")
    job.status, job.run_after = JobStatus.QUEUED, run_after
    logger.info(
        "sisy: job %s task %d (%s) failed; retry %d in %.1fs",
        job.pk,
        task.position,
        task.module,
        task.retry_count + 1,
        delay,
    )


def _wake_later(channel: str, job_id: uuid.UUID, delay: float) -> None:
    """Send the retry's wake-up when it is due, from this process.

    If the process is gone by then, the clock's tick sends it instead (see
    ``clock.wake_deferred``), so this only makes retries punctual.
    """
    from sisy.dispatch import wake

    timer = threading.Timer(delay, wake, args=(channel, [job_id]))
    timer.daemon = True
    timer.start()


def _call_module(module: Module, watchdog: _Watchdog) -> Any:
    """initialize(), validate() and run(), under the time limit."""
    watchdog.arm()
    try:
        module.initialize()
        module.validate()
        return module.run()
    finally:
        # A TimeLimitExceeded already on its way is raised in here, at the latest.
        watchdog.disarm()


class _Watchdog:
    """Enforces a job task's time limit.

    When the limit passes, :class:`~sisy.exceptions.TimeLimitExceeded` is
    raised in the task's thread, at the next Python instruction it runs; the
    runner records it like any error (and retries when allowed). A thread stuck
    in C code (a blocking call) never gets there: after
    :setting:`SISY_TIME_LIMIT_GRACE` more seconds the watchdog records the
    failure itself and replaces the worker process, since nothing else can stop
    that thread.
    """

    def __init__(self, limit: float | None, job: Job, task: JobTask, state: WorkerState) -> None:
        self.limit, self.job, self.task, self.state = limit, job, task, state
        self.thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._armed = False
        self._fired = False
        self._timers: list[threading.Timer] = []

    def arm(self) -> None:
        if self.limit is None:
            return
        self._armed = True
        self._start(self.limit, self._soft)

    def _start(self, delay: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(delay, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def disarm(self) -> None:
        if self.limit is None:
            return
        with self._lock:
            self._armed = False
            fired = self._fired
            if fired:
                # Withdraw the asynchronous exception if it is still pending, so
                # that it cannot surface later in sisy's own code; it is raised
                # here instead (also when run() caught and swallowed it).
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)
        for timer in self._timers:
            timer.cancel()
        if fired and not isinstance(sys.exc_info()[1], TimeLimitExceeded):
            raise TimeLimitExceeded(f"stopped after its {self.limit}s time limit")

    def _soft(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self._fired = True
            logger.warning(
                "sisy: job %s task %d (%s) passed its %ss time limit; stopping it",
                self.job.pk,
                self.task.position,
                self.task.module,
                self.limit,
            )
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.thread_id), ctypes.py_object(TimeLimitExceeded)
            )
        self._start(sisy_settings.TIME_LIMIT_GRACE, self._hard)

    def _hard(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self._armed = False
        logger.error(
            "sisy: job %s task %d (%s) ignored its time limit for %ss more; "
            "recording the failure and replacing this worker process",
            self.job.pk,
            self.task.position,
            self.task.module,
            sisy_settings.TIME_LIMIT_GRACE,
        )
        try:
            _record_abandoned(self.job, self.task, self.limit or 0.0)
        except Exception:
            logger.exception("sisy: could not record the timeout; the job's lease will expire")
        try:
            write_completions(self.state)  # the jobs that succeeded before this one
        except Exception:
            logger.exception("sisy: could not record finished jobs; they will run again")
        replace_process()


def _record_abandoned(job: Job, task: JobTask, limit: float) -> None:
    """The hard time limit's outcome, written from the watchdog's thread."""
    message = f"sisy.exceptions.TimeLimitExceeded: stopped after {limit}s (the task did not return)"
    module_class = registry.find(task.module)
    started = task.started_at or timezone.now()
    outcome = _Outcome(started, module_class, error=TimeLimitExceeded(message), traceback=message)
    retry_delay = _retry_delay(job, task, module_class, outcome.error)
    tasks = job.ordered_tasks()
    try:
        with transaction.atomic():
            _record(job, task, outcome, retrying=retry_delay is not None)
            if retry_delay is not None:
                _queue_retry(job, task, retry_delay)
            else:
                summary = f"task {task.position} ({task.module}) failed: {message}"
                _finish(job, JobStatus.FAILED, summary, tasks, skip_from=task.position + 1)
    except LostJob:
        return  # cancelled or reassigned meanwhile: its outcome stands
    if retry_delay is not None:
        from sisy.dispatch import wake  # this process is about to go: wake now

        wake(job.channel, [job.pk])
    else:
        signals.send(signals.job_finished, Job, job=job, status=job.status)


def replace_process() -> None:
    """Start this worker afresh in the same process (same pid, new worker id).

    The heartbeat key is removed first; file descriptors of sockets and files
    Python opened are not inherited (they are close-on-exec).
    """
    from sisy.worker import stop_heartbeat

    try:
        stop_heartbeat()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)  # noqa: S606 - the worker's own command line


def _cleanup(module: Module) -> str:
    try:
        module.cleanup()
    except Exception:
        logger.exception("sisy: cleanup of module %r failed", module.name)
        return traceback.format_exc()
    return ""


def _json_result(value: Any) -> Any:
    """``value`` if it can be stored as JSON; a clear error otherwise."""
    import json

    try:
        json.dumps(value, cls=DjangoJSONEncoder)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"run() returned a value that cannot be stored as JSON: {exc}") from exc
    unstorable = specs._unstorable(value, "$")
    if unstorable is not None:  # a database would refuse it (NUL characters, ...)
        path, problem = unstorable
        raise ValueError(f"run() returned text that cannot be stored at {path}: {problem}")
    return value


def _finish(job: Job, status: str, error: str, tasks: list[JobTask], skip_from: int) -> None:
    """Record the job's outcome and skip the tasks from ``skip_from`` on (fenced).

    Callers wrap it in a transaction with the task's own write and send
    ``job_finished`` after the commit.
    """
    now = timezone.now()
    finished = {"status": status, "finished_at": now, "error": error, "lease_expires_at": None}
    if not sql.update(Job, finished, _fence(job)):
        raise LostJob("at completion")
    remaining = [t.pk for t in tasks[skip_from:] if t.status != JobTaskStatus.SUCCEEDED]
    if remaining:
        JobTask.objects.filter(pk__in=remaining).update(
            status=JobTaskStatus.SKIPPED, finished_at=now
        )
    job.status, job.finished_at, job.error, job.lease_expires_at = status, now, error, None
    logger.debug("sisy: job %s %s", job.pk, status)


class _ProgressReporter:
    """Receives ``Module.progress()``: updates the heartbeat at once, the row now and then."""

    def __init__(self, job: Job, task: JobTask, state: WorkerState, started: datetime) -> None:
        self.job, self.task, self.state, self.started = job, task, state, started
        self._last_write = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.state.set_progress(fraction, message)
        now = time.monotonic()
        if now - self._last_write < PROGRESS_WRITE_INTERVAL and fraction < 1.0:
            return
        self._last_write = now
        if not _fenced_task(self.job, self.task).update(
            progress=fraction,
            progress_message=message[:200],
            status=JobTaskStatus.RUNNING,
            started_at=self.started,
        ):
            if Job.objects.filter(pk=self.job.pk, status=JobStatus.CANCELLED).exists():
                raise _Cancelled(f"job {self.job.pk} was cancelled")
            raise LostJob(f"during task {self.task.position}")


def release(state: WorkerState) -> uuid.UUID | None:
    """Give the job ``state`` is running back to the queue, for another worker.

    Used when a stopping worker's grace period runs out. The write is fenced,
    so a job that finished, was cancelled or was reassigned meanwhile is left
    alone. The attempt stays counted. Returns the released job's id, if any.
    """
    current = state.current_job()
    if current is None:
        return None
    with transaction.atomic():
        released = Job.objects.filter(
            pk=current.job_id,
            status=JobStatus.IN_PROGRESS,
            worker=state.worker_id,
            attempts=current.attempt,
        ).update(status=JobStatus.QUEUED, worker="", lease_expires_at=None)
        if released:
            JobTask.objects.filter(job_id=current.job_id, status=JobTaskStatus.RUNNING).update(
                status=JobTaskStatus.PENDING, progress=0.0, progress_message=""
            )
    if not released:
        return None
    logger.warning(
        "sisy: worker %s released job %s (attempt %d) for another worker",
        state.worker_id,
        current.job_id,
        current.attempt,
    )
    return uuid.UUID(str(current.job_id))
