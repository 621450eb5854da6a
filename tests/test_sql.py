"""sisy.sql: hot-path statements, and the queue sisy's SQLite writers wait in."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import NotSupportedError, connection
from django.test.utils import CaptureQueriesContext

import sisy
from sisy import sql
from sisy.exceptions import JobSpecError
from sisy.models import Job, JobTask


def fake_sqlite(path: Path | str, in_atomic_block: bool = False) -> Any:
    return SimpleNamespace(
        vendor="sqlite", settings_dict={"NAME": str(path)}, in_atomic_block=in_atomic_block
    )


def enters_while_held(db: Any) -> tuple[bool, float]:
    """Hold the lock file from another open file, try ``turn(db)`` in a thread.

    Returns whether the thread got in while the lock was held, and how long
    after the release it got in (0 when it did not wait).
    """
    lock_path = Path(db.settings_dict["NAME"] + ".sisy-lock")
    entered = threading.Event()
    entered_at: list[float] = []

    def writer() -> None:
        with sql.writer_queue.turn(db):
            entered_at.append(time.monotonic())
            entered.set()

    with lock_path.open("a+b") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        thread = threading.Thread(target=writer)
        thread.start()
        early = entered.wait(0.3)
        released = time.monotonic()
        fcntl.flock(holder, fcntl.LOCK_UN)
    thread.join(5)
    assert entered.is_set()
    return early, max(0.0, entered_at[0] - released)


def test_sqlite_writers_queue_on_a_lock_file_beside_the_database(tmp_path: Path) -> None:
    early, waited = enters_while_held(fake_sqlite(tmp_path / "db.sqlite3"))
    assert not early
    assert waited < 0.2  # woken by the release, not by a poll
    assert (tmp_path / "db.sqlite3.sisy-lock").exists()


def test_a_writer_inside_a_transaction_never_waits_for_the_queue(tmp_path: Path) -> None:
    # It may hold SQLite's own lock, which the queue's holder could be waiting for.
    early, _ = enters_while_held(fake_sqlite(tmp_path / "db.sqlite3", in_atomic_block=True))
    assert early


def test_no_queue_for_memory_databases_or_other_vendors(tmp_path: Path) -> None:
    for db in (
        fake_sqlite(":memory:"),
        fake_sqlite("file:memdb1?mode=memory&cache=shared"),
        SimpleNamespace(vendor="postgresql", settings_dict={"NAME": "x"}, in_atomic_block=False),
    ):
        with sql.writer_queue.turn(db):
            pass
    assert not list(tmp_path.iterdir())


def test_an_unwritable_directory_means_no_queue_not_an_error(tmp_path: Path) -> None:
    db = fake_sqlite(tmp_path / "missing-directory" / "db.sqlite3")
    with sql.writer_queue.turn(db):
        pass


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "sqlite", reason="the queue is for SQLite")
def test_submit_and_completion_take_their_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[bool] = []
    real = sql.writer_queue.turn

    def counting(db: Any) -> Any:
        turns.append(db.in_atomic_block)
        return real(db)

    monkeypatch.setattr(sql.writer_queue, "turn", counting)
    sisy.submit({"record": {"label": "a"}})
    assert turns == [False]
    from sisy.testing import run_jobs

    assert run_jobs() == 1
    # the claim and the completion each took a turn (then an empty claim)
    assert turns[1:] == [False, False, False]


@pytest.mark.django_db(transaction=True)
def test_fetch_joined_gives_none_for_the_missing_side() -> None:
    job = sisy.submit({"record": {"label": "a"}})
    jobs = ", ".join(["%s"] * 1)
    rows = sql.fetch_joined(
        (Job, JobTask),
        f"SELECT {sql.columns(connection, Job, 'j')}, {sql.columns(connection, JobTask, 't')} "
        f"FROM sisy_job j LEFT JOIN sisy_jobtask t ON t.job_id = j.job_id AND t.position = 5 "
        f"WHERE j.job_id IN ({jobs})",
        [Job._meta.pk.get_db_prep_value(job.job_id, connection)],
        "default",
    )
    assert len(rows) == 1
    fetched, task = rows[0]
    assert task is None
    assert isinstance(fetched, Job) and fetched.job_id == job.job_id
    assert fetched.created_at == Job.objects.get().created_at  # converters applied


def _comparable(value: Any) -> Any:
    # psycopg's Jsonb wrapper has no equality of its own: compare what it holds.
    # (Its Int2/Int4/Int8 are ints, equal to the plain int psycopg adapts alike.)
    return ("json", value.obj) if hasattr(value, "obj") else value


@pytest.mark.django_db
def test_the_quick_preparers_give_what_the_fields_give() -> None:
    import uuid
    from datetime import datetime, timezone

    from sisy.models import JobStatus

    samples = [
        None,
        "text",
        JobStatus.QUEUED,  # a str subclass
        0,
        7,
        2.5,
        True,
        datetime(2026, 12, 3, 13, 0, tzinfo=timezone.utc),
        uuid.UUID("6f1c2a9e-2f55-4a4a-8a0e-5b7d6b1d9c01"),
        {"n": 1, "nested": [1, "a", None]},
        [1, 2],
    ]
    checked = 0
    for model in (Job, JobTask):
        for field in model._meta.concrete_fields:
            for save in (True, False):
                quick = sql._preparer(connection, field, save)
                slow = field.get_db_prep_save if save else field.get_db_prep_value
                for value in samples:
                    try:
                        expected = slow(value, connection)
                    except Exception:
                        continue  # a value this field refuses: not a value sisy writes there
                    assert _comparable(quick(value)) == _comparable(expected), (field, value)
                    checked += 1
    assert checked > 200


def stored_tasks() -> list[dict[str, Any]]:
    return list(JobTask.objects.order_by("job_id", "position").values())


@pytest.mark.django_db
def test_values_store_what_instances_store() -> None:
    first, second = (sisy.submit({"record": {"label": "a"}}) for _ in range(2))
    JobTask.objects.all().delete()
    data = {"text": "é", "list": [1, 2.5, None], "nested": {"ok": True}}
    sql.insert(JobTask, [JobTask(job_id=first.pk, position=0, module="echo", data=data)])
    sql.insert(
        JobTask,
        sql.Values(
            JobTask, ("job_id", "position", "module", "data"), [(second.pk, 0, "echo", data)]
        ),
    )
    by_instance, by_values = stored_tasks()
    for row in (by_instance, by_values):
        del row["id"], row["job_id"]
    assert by_values == by_instance
    assert by_values["data"] == data and by_values["status"] == "pending"


@pytest.mark.django_db
def test_values_call_a_callable_default_for_each_row() -> None:
    rows = [("one",), ("two",)]
    sql.insert(Job, sql.Values(Job, ("job_title",), rows))
    ids = set(Job.objects.values_list("job_id", flat=True))
    assert len(ids) == 2  # job_id's default, uuid4, was called twice


@pytest.mark.django_db
def test_values_refuse_unknown_fields_and_fields_set_when_saved() -> None:
    from sisy.models import Task

    with pytest.raises(ValueError, match="no field to insert named 'nope'"):
        sql.insert(JobTask, sql.Values(JobTask, ("nope",), [(1,)]))
    with pytest.raises(ValueError, match=r"sisy.Task.created_at sets its value when saved"):
        sql.insert(Task, sql.Values(Task, ("label",), [("x",)]))
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_many_rows_store_what_one_row_stores() -> None:
    # On PostgreSQL, from COPY_FROM_ROWS rows on, insert() sends a COPY.
    first, second = (sisy.submit({"record": {"label": "a"}}) for _ in range(2))
    JobTask.objects.all().delete()
    data = {"text": "tab\there\nline \\ é \u2028", "none": None, "list": [1, 2.5, True]}
    sql.insert(JobTask, [JobTask(job_id=first.pk, position=0, module="m\tn", data=data)])
    rows = [(second.pk, n, "m\tn", data) for n in range(sql.COPY_FROM_ROWS)]
    with CaptureQueriesContext(connection) as queries:
        sql.insert(JobTask, sql.Values(JobTask, ("job_id", "position", "module", "data"), rows))
    assert queries[0]["sql"].startswith("COPY" if connection.vendor == "postgresql" else "INSERT")
    one, *many = stored_tasks()
    assert len(many) == sql.COPY_FROM_ROWS
    for row in (one, *many):
        del row["id"], row["job_id"], row["position"]
    assert all(row == one for row in many)
    assert one["data"] == data and one["module"] == "m\tn"


@pytest.mark.django_db(transaction=True)
def test_a_taken_job_id_in_a_large_bulk_is_named() -> None:
    taken = sisy.submit({"record": {"label": "first"}}).job_id
    specs = [{"record": {"label": str(n)}} for n in range(sql.COPY_FROM_ROWS)]
    specs[-1] = {"job_id": str(taken), "record": {"label": "again"}}
    with pytest.raises(JobSpecError, match=f"a job with id {taken} already exists"):
        sisy.submit_many(specs)
    assert Job.objects.count() == 1
    assert len(sisy.submit_many(specs[:-1])) == sql.COPY_FROM_ROWS - 1
    assert JobTask.objects.count() == sql.COPY_FROM_ROWS


def prepared_statements() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        return int(cursor.fetchone()[0])


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared on PostgreSQL only")
def test_hot_statements_are_prepared_on_postgresql(settings: Any) -> None:
    if (connection.settings_dict.get("OPTIONS") or {}).get("server_side_binding"):
        # tox's *-prepared environments: Django's cursors bind on the server,
        # and psycopg's prepare_threshold decides for every statement.
        assert not sql._prepares(connection)
        return
    before = prepared_statements()
    job = sisy.submit({"record": {"label": "a"}})
    assert prepared_statements() == before + 1  # the insert of the job and its task
    sql.update(Job, {"priority": 3}, {"job_id": job.pk})
    sql.update(Job, {"priority": 4}, {"job_id": job.pk})  # the same statement again
    assert prepared_statements() == before + 2
    assert Job.objects.get(pk=job.pk).priority == 4
    settings.SISY_PREPARED_STATEMENTS = False
    sql.update(Job, {"priority": 5, "error": ""}, {"job_id": job.pk})
    assert prepared_statements() == before + 2
    settings.SISY_PREPARED_STATEMENTS = True
    settings.DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True  # PgBouncer's hint
    try:
        assert not sql._prepares(connection)
    finally:
        del settings.DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"]
    assert sql._prepares(connection)


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared on PostgreSQL only")
def test_prepared_statements_behave_as_django_cursors_do() -> None:
    seen: list[str] = []

    def spy(execute: Any, sql_text: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql_text)
        return execute(sql_text, params, many, context)

    with connection.execute_wrapper(spy):
        job = sisy.submit({"record": {"label": "a"}})
    assert [s for s in seen if s.startswith("WITH")]  # the submit's one statement
    if sql._prepares(connection):
        # psycopg counts no query of Django's: it prepares only what sisy asks.
        assert connection.connection.prepare_threshold is None
    before = prepared_statements()
    sql.update(Job, {"priority": 1}, {"job_id": [job.pk]})  # an IN list: not prepared
    assert prepared_statements() == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared on PostgreSQL only")
def test_prepared_statements_spoilt_by_a_migration_cost_one_error() -> None:
    import psycopg

    if not sql._prepares(connection):
        pytest.skip("sisy prepares nothing with these database options")
    job = sisy.submit({"record": {"label": "a"}})
    table, column = Job._meta.db_table, Job._meta.get_field("job_title").column
    statement = f'UPDATE "{table}" SET "priority" = %s WHERE "job_id" = %s RETURNING *'
    with sql.statement_cursor(connection) as cursor:
        cursor.execute(statement, [1, job.pk])  # prepared, with its result type
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as other:  # a migration, elsewhere
        other.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE varchar(201)')
    try:
        with pytest.raises(NotSupportedError), sql.statement_cursor(connection) as cursor:
            cursor.execute(statement, [2, job.pk])
        assert connection.connection is None  # dropped: the next statement reconnects
        with sql.statement_cursor(connection) as cursor:
            cursor.execute(statement, [3, job.pk])
        assert Job.objects.get(pk=job.pk).priority == 3
    finally:
        with psycopg.connect(**params, autocommit=True) as other:
            other.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE varchar(200)')
