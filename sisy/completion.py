"""Writing down succeeded jobs, one at a time or several in one write.

A job whose last task succeeded is recorded by two fenced updates: the job's
row (``succeeded``, only where it is still ``in_progress`` with this worker
and this attempt) and its last task's row (only if the job's matched). A
worker draining a batch of quick jobs keeps these in hand (see
:mod:`sisy.runner`) and writes them together: one statement on PostgreSQL,
one transaction elsewhere, instead of one commit per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, transaction

from sisy import sql
from sisy.models import Job, JobStatus, JobTask, JobTaskStatus


@dataclass
class Success:
    """A job whose last task succeeded, not yet written down."""

    job: Job
    task: JobTask
    started: datetime
    finished: datetime
    result: Any
    #: ``time.monotonic()`` when the job ended.
    ended: float


def write(done: list[Success], using: str) -> set[Any]:
    """Record every one of ``done`` whose fence still holds; the primary keys of those written.

    A job missing from the answer was no longer this worker's attempt
    (cancelled, or its lease expired and it was requeued): nothing of it was
    written.
    """
    if not done:
        return set()
    connection = connections[using]
    if connection.vendor == "postgresql":
        return _write_postgresql(connection, done)
    written = set()
    with sql.writer_queue.turn(connection), transaction.atomic(using=using):
        for success in done:
            if sql.update(Job, _job_values(success), fence(success.job), using) and sql.update(
                JobTask, _task_values(success), {"id": success.task.pk}, using
            ):
                written.add(success.job.pk)
    return written


def fence(job: Job) -> dict[str, Any]:
    """The conditions of every write a worker makes to its job's row."""
    return {
        "job_id": job.pk,
        "status": JobStatus.IN_PROGRESS,
        "worker": job.worker,
        "attempts": job.attempts,
    }


def _job_values(success: Success) -> dict[str, Any]:
    return {
        "status": JobStatus.SUCCEEDED,
        "finished_at": success.finished,
        "error": "",
        "lease_expires_at": None,
    }


def _task_values(success: Success) -> dict[str, Any]:
    return {
        "started_at": success.started,
        "finished_at": success.finished,
        "status": JobTaskStatus.SUCCEEDED,
        "result": success.result,
        "progress": 1.0,
        "error": "",
    }


#: The columns of the ``VALUES`` list on PostgreSQL: (model, field) of each.
_ROW = (
    (Job, "job_id"),
    (Job, "attempts"),
    (Job, "worker"),
    (JobTask, "id"),
    (JobTask, "started_at"),
    (JobTask, "finished_at"),
    (JobTask, "result"),
)

_statements: dict[tuple[str, int], str] = {}
_row_preparers: dict[str, list[Any]] = {}


def _write_postgresql(connection: Any, done: list[Success]) -> set[Any]:
    key = (connection.alias, len(done))
    statement = _statements.get(key)
    if statement is None:
        statement = _statements[key] = _statement(connection, len(done))
    prepare = _row_preparers.get(connection.alias)
    if prepare is None:
        prepare = _row_preparers[connection.alias] = [
            sql._preparer(connection, sql._field(model._meta, name)) for model, name in _ROW
        ]
    params: list[Any] = []
    for s in done:
        row = (s.job.pk, s.job.attempts, s.job.worker, s.task.pk, s.started, s.finished, s.result)
        params.extend(p(value) for p, value in zip(prepare, row, strict=True))
    params += [JobStatus.SUCCEEDED, JobStatus.IN_PROGRESS, JobTaskStatus.SUCCEEDED]
    # A group's statement varies with its size: prepared only for one job.
    with sql.statement_cursor(connection, prepare=len(done) == 1) as cursor:
        cursor.execute(statement, params)
        return {row[0] for row in cursor.fetchall()}


def _statement(connection: Any, rows: int) -> str:
    """``UPDATE`` of the jobs in a ``WITH`` clause, then of their tasks where it matched."""
    quote = connection.ops.quote_name

    def col(model: type[Any], name: str) -> str:
        return quote(str(sql._field(model._meta, name).column))

    def cast(model: type[Any], name: str) -> str:
        field = sql._field(model._meta, name)
        kind = "bigint" if field.primary_key and name == "id" else field.db_type(connection)
        return f"CAST(%s AS {kind})"

    names = ", ".join(f"c{n}" for n in range(len(_ROW)))
    row = "(" + ", ".join(cast(model, name) for model, name in _ROW) + ")"
    job, task = quote(Job._meta.db_table), quote(JobTask._meta.db_table)
    job_pk, task_pk = col(Job, "job_id"), col(JobTask, "id")
    return (
        f"WITH sisy_done ({names}) AS (VALUES {', '.join([row] * rows)}), "  # noqa: S608 (identifiers from _meta)
        f"sisy_parent AS (UPDATE {job} SET {col(Job, 'status')} = %s, "
        f"{col(Job, 'finished_at')} = sisy_done.c5, {col(Job, 'error')} = '', "
        f"{col(Job, 'lease_expires_at')} = NULL FROM sisy_done "
        f"WHERE {job}.{job_pk} = sisy_done.c0 AND {job}.{col(Job, 'status')} = %s "
        f"AND {job}.{col(Job, 'worker')} = sisy_done.c2 "
        f"AND {job}.{col(Job, 'attempts')} = sisy_done.c1 RETURNING {job}.{job_pk}) "
        f"UPDATE {task} SET {col(JobTask, 'started_at')} = sisy_done.c4, "
        f"{col(JobTask, 'finished_at')} = sisy_done.c5, {col(JobTask, 'status')} = %s, "
        f"{col(JobTask, 'result')} = sisy_done.c6, {col(JobTask, 'progress')} = 1.0, "
        f"{col(JobTask, 'error')} = '' FROM sisy_done, sisy_parent "
        f"WHERE {task}.{task_pk} = sisy_done.c3 AND sisy_parent.{job_pk} = sisy_done.c0 "
        f"RETURNING {task}.{col(JobTask, 'job')}"
    )
