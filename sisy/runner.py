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

import logging
import time
import traceback
import uuid
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from sisy import signals
from sisy.conf import sisy_settings
from sisy.exceptions import JobCancelled
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
    """
    if job_id is not None:
        try:
            candidates: list[Any] = [uuid.UUID(str(job_id))]
        except ValueError:
            logger.warning("sisy: ignoring a wake-up naming %r, which is not a job id", job_id)
            return None
    else:
        candidates = list(
            Job.objects.claimable(channel)
            .order_by("-priority", "created_at")
            .values_list("pk", flat=True)[:5]
        )
    for pk in candidates:
        now = timezone.now()
        updated = (
            Job.objects.claimable(channel, now)  # a worker only takes its own channel's jobs
            .filter(pk=pk)
            .update(
                status=JobStatus.IN_PROGRESS,
                worker=state.worker_id,
                attempts=F("attempts") + 1,
                started_at=now,
                finished_at=None,
                lease_expires_at=now + timedelta(seconds=sisy_settings.JOB_LEASE),
            )
        )
        if updated:
            job = Job.objects.get(pk=pk)
            logger.debug("sisy: %s claimed job %s, attempt %d", state.worker_id, pk, job.attempts)
            return job
    return None


def handle_wakeup(job_id: Any, state: WorkerState, channel: str) -> int:
    """Run the job a wake-up names, then drain the channel. Returns how many jobs ran."""
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
                # claimed is always run, or it would sit in progress until its
                # lease expired.
                if state.stopping.is_set():
                    break
                refresh_connections()
                job = claim(None, state, channel)
                if job is None:
                    break
            run_job(job, state)
            ran += 1
            job = None
    finally:
        state.leave()
    return ran


def refresh_connections() -> None:
    """Drop database connections that broke (a database restart) or, where
    ``CONN_MAX_AGE`` is set, grew too old; the next query reconnects.

    Like Django's ``close_old_connections()`` between requests, except that a
    worker keeps a healthy connection when ``CONN_MAX_AGE`` is 0: a worker is
    one long-running client, and reconnecting per job would cost more than the job.
    """
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if connection.errors_occurred or connection.settings_dict.get("CONN_MAX_AGE") != 0:
            connection.close_if_unusable_or_obsolete()


def _fenced(job: Job) -> QuerySet[Job]:
    return Job.objects.filter(
        pk=job.pk, status=JobStatus.IN_PROGRESS, worker=job.worker, attempts=job.attempts
    )


def _fenced_task(job: Job, task: JobTask) -> QuerySet[JobTask]:
    return JobTask.objects.filter(pk=task.pk, job__in=_fenced(job))


def renew_lease(state: WorkerState) -> None:
    """Extend the lease of the job ``state`` is running (called by the heartbeat thread)."""
    current = state.current_job()
    if current is None:
        return
    Job.objects.filter(
        pk=current.job_id,
        status=JobStatus.IN_PROGRESS,
        worker=state.worker_id,
        attempts=current.attempt,
    ).update(lease_expires_at=timezone.now() + timedelta(seconds=sisy_settings.JOB_LEASE))


def run_job(job: Job, state: WorkerState) -> Job:
    """Run a claimed job's tasks in order and record the outcome. Returns the job as stored."""
    state.job_started(str(job.pk), job.job_title, job.attempts)
    signals.send(signals.job_started, Job, job=job, worker=state.worker_id)
    try:
        _run_claimed(job, state)
    except LostJob as exc:
        if _record_cancellation(job):
            logger.info("sisy: job %s was cancelled while it ran", job.pk)
            return job
        logger.warning(
            "sisy: job %s attempt %d is no longer worker %s's; its outcome was not recorded (%s)",
            job.pk,
            job.attempts,
            state.worker_id,
            exc,
        )
        job.refresh_from_db()
    finally:
        state.job_finished()
    return job


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
    tasks = job.ordered_tasks()
    problems = []
    for task in tasks:
        if task.status != JobTaskStatus.SUCCEEDED:
            problems.extend(registry.validate(task.module, task.data, task=task.position))
    if problems:
        message = "; ".join(str(problem) for problem in problems)
        _finish(job, JobStatus.FAILED, f"invalid job: {message}", tasks, skip_from=0)
        return
    for index, task in enumerate(tasks):
        if task.status == JobTaskStatus.SUCCEEDED:
            continue  # done by an earlier attempt
        error = _run_task(job, task, state)
        if error is not None:
            message = f"task {task.position} ({task.module}) failed: {error}"
            _finish(job, JobStatus.FAILED, message, tasks, skip_from=index + 1)
            return
    _finish(job, JobStatus.SUCCEEDED, "", tasks, skip_from=len(tasks))


def _run_task(job: Job, task: JobTask, state: WorkerState) -> str | None:
    """Run one job task through the module lifecycle; return the error's summary, if any."""
    started = timezone.now()
    if not _fenced_task(job, task).update(
        status=JobTaskStatus.RUNNING, started_at=started, progress=0.0, error=""
    ):
        raise LostJob(f"before task {task.position}")
    reporter = _ProgressReporter(job, task, state)
    module: Module | None = None
    result: Any = None
    error: BaseException | None = None
    try:
        module = registry.get(task.module)(task.data, job=job, job_task=task, reporter=reporter)
        module.initialize()
        module.validate()
        result = _json_result(module.run())
    except LostJob:
        raise
    except Exception as exc:
        error = exc
        task_error = traceback.format_exc()
    finally:
        if module is not None:
            cleanup_error = _cleanup(module)
            if cleanup_error and error is None:
                error = RuntimeError("cleanup failed")
                task_error = cleanup_error
    fields: dict[str, Any] = {"finished_at": timezone.now()}
    if error is None:
        fields.update(status=JobTaskStatus.SUCCEEDED, result=result, progress=1.0)
    else:
        fields.update(status=JobTaskStatus.FAILED, error=task_error)
    if not _fenced_task(job, task).update(**fields):
        raise LostJob(f"after task {task.position}")
    if error is None:
        return None
    task.error = task_error
    signals.send(signals.task_failed, JobTask, job=job, job_task=task, error=task_error)
    return str(error) or type(error).__name__


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
    return value


def _finish(job: Job, status: str, error: str, tasks: list[JobTask], skip_from: int) -> None:
    now = timezone.now()
    remaining = [t.pk for t in tasks[skip_from:] if t.status != JobTaskStatus.SUCCEEDED]
    with transaction.atomic() if remaining else nullcontext():
        if not _fenced(job).update(
            status=status, finished_at=now, error=error, lease_expires_at=None
        ):
            raise LostJob("at completion")
        if remaining:
            JobTask.objects.filter(pk__in=remaining).update(
                status=JobTaskStatus.SKIPPED, finished_at=now
            )
    job.status, job.finished_at, job.error, job.lease_expires_at = status, now, error, None
    logger.debug("sisy: job %s %s", job.pk, status)
    signals.send(signals.job_finished, Job, job=job, status=status)


class _ProgressReporter:
    """Receives ``Module.progress()``: updates the heartbeat at once, the row now and then."""

    def __init__(self, job: Job, task: JobTask, state: WorkerState) -> None:
        self.job, self.task, self.state = job, task, state
        self._last_write = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        self.state.set_progress(fraction, message)
        now = time.monotonic()
        if now - self._last_write < PROGRESS_WRITE_INTERVAL and fraction < 1.0:
            return
        self._last_write = now
        if not _fenced_task(self.job, self.task).update(
            progress=fraction, progress_message=message[:200]
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
