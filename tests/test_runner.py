"""The runner in-process: claim, lifecycle, recording, fencing, draining."""

from __future__ import annotations

import logging
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import sisy
from sisy import completion, runner, signals
from sisy.models import Job, JobStatus, JobTask, JobTaskStatus
from sisy.modules import Module, registry
from sisy.state import WorkerState
from tests.testapp.sisy_modules import recorded

pytestmark = pytest.mark.django_db(transaction=True)

CHANNEL = "sisy.run"
MARKER = Path(tempfile.gettempdir(), "sisy-canary-imported")  # written by tests/canary_module.py


@pytest.fixture
def state() -> WorkerState:
    return WorkerState(worker_id="w1", channels=(CHANNEL,))


def test_claim_is_exclusive(state: WorkerState) -> None:
    job = sisy.submit({"record": {"label": "a"}})
    first = runner.claim(job.job_id, state, CHANNEL)
    second = runner.claim(job.job_id, WorkerState(worker_id="w2"), CHANNEL)
    assert first is not None and second is None
    assert first.status == JobStatus.IN_PROGRESS
    assert first.worker == "w1"
    assert first.attempts == 1
    assert first.lease_expires_at is not None


def test_a_job_of_another_channel_is_not_claimed(state: WorkerState) -> None:
    job = sisy.submit({"record": {"label": "a"}}, channel="encode")
    assert runner.claim(job.job_id, state, CHANNEL) is None
    assert runner.claim(job.job_id, state, "encode") is not None


def test_wakeup_for_unclaimable_or_bogus_jobs_is_a_no_op(state: WorkerState) -> None:
    assert runner.handle_wakeup(str(uuid.uuid4()), state, CHANNEL) == 0
    assert runner.handle_wakeup("not a uuid", state, CHANNEL) == 0
    job = sisy.submit({"record": {"label": "a"}})
    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELLED)
    assert runner.handle_wakeup(str(job.job_id), state, CHANNEL) == 0
    assert recorded("runs") == []


def test_one_wakeup_drains_the_channel(state: WorkerState) -> None:
    jobs = [sisy.submit({"record": {"label": str(i)}}) for i in range(5)]
    assert runner.handle_wakeup(str(jobs[3].job_id), state, CHANNEL) == 5
    assert recorded("runs")[0] == "3"  # the job the wake-up named runs first
    assert sorted(recorded("runs")) == ["0", "1", "2", "3", "4"]
    assert state.jobs_done == 5


def test_stopping_worker_claims_nothing(state: WorkerState) -> None:
    job = sisy.submit({"record": {"label": "a"}})
    state.stopping.set()
    assert runner.handle_wakeup(str(job.job_id), state, CHANNEL) == 0
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


def test_a_job_claimed_as_the_worker_starts_stopping_still_runs(
    state: WorkerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [sisy.submit({"record": {"label": str(i)}}) for i in range(2)]
    claim = runner.claim

    def claim_then_stop(*args: Any) -> Job | None:
        job = claim(*args)
        state.stopping.set()  # SIGTERM lands between the claim and the run
        return job

    monkeypatch.setattr(runner, "claim", claim_then_stop)
    assert runner.handle_wakeup(str(jobs[0].job_id), state, CHANNEL) == 1
    statuses = {job.pk: job.status for job in Job.objects.all()}
    assert statuses == {jobs[0].pk: JobStatus.SUCCEEDED, jobs[1].pk: JobStatus.QUEUED}


def test_successful_job_records_results_and_timings(state: WorkerState) -> None:
    job = sisy.submit({"tasks": [{"record": {"label": "a"}}, {"slow": {"seconds": 0.05}}]})
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.SUCCEEDED
    assert job.error == ""
    assert job.lease_expires_at is None
    first, second = job.ordered_tasks()
    assert first.result["label"] == "a"
    assert second.result == "slept"
    assert second.progress == 1.0
    assert second.progress_message == "step 10 of 10"
    assert second.duration is not None and second.duration.total_seconds() >= 0.05


def test_failure_skips_the_rest_and_keeps_the_traceback(state: WorkerState) -> None:
    job = sisy.submit(
        {"tasks": [{"fail": {"message": "disk full"}}, {"record": {"label": "never"}}]}
    )
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.FAILED
    assert job.error == "task 0 (fail) failed: disk full"
    failed, skipped = job.ordered_tasks()
    assert failed.status == JobTaskStatus.FAILED
    assert "Traceback (most recent call last)" in failed.error
    assert "RuntimeError: disk full" in failed.error
    assert skipped.status == JobTaskStatus.SKIPPED
    assert recorded("cleanups") == ["disk full"]
    assert recorded("runs") == []


class _Unstorable(Module):
    def run(self) -> Any:
        return object()


class _NulText(Module):
    def run(self) -> Any:
        return {"log": ["fine", "bad\x00byte"]}


class _CleanupFails(Module):
    def run(self) -> str:
        return "ran"

    def cleanup(self) -> None:
        raise OSError("temp dir vanished")


@pytest.fixture
def extra_modules() -> Any:
    registry.register("unstorable", _Unstorable)
    registry.register("cleanup_fails", _CleanupFails)
    registry.register("nul_text", _NulText)
    yield
    registry.unregister("nul_text")
    registry.unregister("unstorable")
    registry.unregister("cleanup_fails")


@pytest.mark.usefixtures("extra_modules")
def test_unserialisable_result_fails_clearly(state: WorkerState) -> None:
    job = sisy.submit({"unstorable": {}})
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.FAILED
    assert "cannot be stored as JSON" in job.error


@pytest.mark.usefixtures("extra_modules")
def test_a_result_a_database_would_refuse_fails_clearly(state: WorkerState) -> None:
    job = sisy.submit({"nul_text": {}})
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.FAILED
    assert "cannot be stored at $.log[1]: " in job.error


def test_a_failed_group_write_still_records_the_others(
    state: WorkerState, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A row the database refuses (simulated: the real ones are refused earlier,
    # see above) fails the grouped write; each job is then written alone.
    jobs = [sisy.submit({"record": {"label": str(n)}}) for n in range(3)]
    refused = jobs[1].pk
    write = completion.write

    def refusing_write(done: list[completion.Success], using: str) -> set[Any]:
        if any(success.job.pk == refused for success in done):
            raise DatabaseError("refused")
        return write(done, using)

    monkeypatch.setattr(completion, "write", refusing_write)
    state.job_seconds = 0.001
    assert runner.handle_wakeup(None, state, CHANNEL) == 3
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {
        jobs[0].pk: JobStatus.SUCCEEDED,
        refused: JobStatus.IN_PROGRESS,  # runs again once its lease expires
        jobs[2].pk: JobStatus.SUCCEEDED,
    }
    assert f"could not record job {refused}; it will run again" in caplog.text
    assert state.count_unwritten() == 0


@pytest.mark.usefixtures("extra_modules")
def test_failing_cleanup_fails_the_task(state: WorkerState) -> None:
    job = sisy.submit({"cleanup_fails": {}})
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.FAILED
    assert "OSError: temp dir vanished" in job.ordered_tasks()[0].error


def test_forged_row_with_a_dotted_path_fails_without_importing(state: WorkerState) -> None:
    sys.modules.pop("tests.canary_module", None)
    MARKER.unlink(missing_ok=True)
    job = Job.objects.create(job_title="forged", channel=CHANNEL)
    JobTask.objects.create(job=job, position=0, module="tests.canary_module", data={})
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.FAILED
    assert "unknown module 'tests.canary_module'" in job.error
    assert job.ordered_tasks()[0].status == JobTaskStatus.SKIPPED
    assert "tests.canary_module" not in sys.modules
    assert not MARKER.exists()


def test_worker_revalidates_data_before_the_first_task(state: WorkerState) -> None:
    job = sisy.submit({"tasks": [{"record": {"label": "a"}}, {"record": {"label": "b"}}]})
    JobTask.objects.filter(job=job, position=1).update(data={"label": 5})
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.FAILED
    assert "task 1, $.label: 5 is not of type 'string'" in job.error
    assert recorded("runs") == []


def test_late_completion_after_reassignment_is_refused(
    state: WorkerState, caplog: pytest.LogCaptureFixture
) -> None:
    job = sisy.submit({"record": {"label": "a"}})
    mine = runner.claim(job.job_id, state, CHANNEL)
    # Meanwhile the lease expired, and the sweep handed the job to another worker.
    Job.objects.filter(pk=job.pk).update(worker="w2", attempts=2)
    with caplog.at_level(logging.WARNING, logger="sisy.runner"):
        runner.run_job(mine, state)
    job.refresh_from_db()
    assert job.status == JobStatus.IN_PROGRESS
    assert job.worker == "w2"
    assert job.ordered_tasks()[0].status == JobTaskStatus.PENDING
    assert "is no longer worker w1's" in caplog.text


def test_requeued_attempt_resumes_after_succeeded_tasks(state: WorkerState) -> None:
    job = sisy.submit({"tasks": [{"record": {"label": "a"}}, {"record": {"label": "b"}}]})
    JobTask.objects.filter(job=job, position=0).update(status=JobTaskStatus.SUCCEEDED)
    job = runner.run_job(runner.claim(job.job_id, state, CHANNEL), state)
    assert job.status == JobStatus.SUCCEEDED
    assert recorded("runs") == ["b"]


def test_lease_renewal_is_fenced(state: WorkerState) -> None:
    job = sisy.submit({"record": {"label": "a"}})
    claimed = runner.claim(job.job_id, state, CHANNEL)
    state.job_started(str(job.job_id), job.job_title, claimed.attempts)
    Job.objects.filter(pk=job.pk).update(lease_expires_at=claimed.started_at)
    runner.renew_lease(state)
    assert Job.objects.get(pk=job.pk).lease_expires_at > claimed.lease_expires_at
    Job.objects.filter(pk=job.pk).update(worker="w2", lease_expires_at=claimed.started_at)
    runner.renew_lease(state)
    assert Job.objects.get(pk=job.pk).lease_expires_at == claimed.started_at


@pytest.mark.parametrize("named", [True, False], ids=["woken-for-it", "drained"])
def test_statements_per_one_task_job(state: WorkerState, named: bool) -> None:
    """The hot path's cost, deterministic so it may be asserted (printed with -s)."""
    job = sisy.submit({"record": {"label": "a"}})
    with CaptureQueriesContext(connection) as queries:
        runner.run_job(runner.claim(job.job_id if named else None, state, CHANNEL), state)
    statements = [q["sql"] for q in queries if not q["sql"].upper().startswith(("BEGIN", "COMMIT"))]
    print(f"\nstatements per one-task job, claim to completion: {len(statements)}")
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED
    # PostgreSQL: the claim with its tasks (UPDATE ... RETURNING in a WITH
    # clause, joined to the tasks), then job done and task done (one statement).
    # Elsewhere: the claim, the read of its tasks, then the two updates in one
    # transaction.
    assert len(statements) == (2 if connection.vendor == "postgresql" else 4), statements


def test_a_task_shows_running_once_it_reports_progress_or_a_heartbeat_passes(
    state: WorkerState,
) -> None:
    job = sisy.submit({"tasks": [{"record": {"label": "a"}}, {"slow": {"seconds": 0.01}}]})
    claimed = runner.claim(job.job_id, state, CHANNEL)
    state.job_started(str(claimed.pk), claimed.job_title, claimed.attempts)
    task = claimed.ordered_tasks()[0]
    started = claimed.started_at
    state.task_started(task.pk, started)
    runner.renew_lease(state)  # what the heartbeat thread does each beat
    task.refresh_from_db()
    assert (task.status, task.started_at) == (JobTaskStatus.RUNNING, started)
    reporter = runner._ProgressReporter(claimed, claimed.ordered_tasks()[1], state, started)
    reporter(0.5, "half")
    second = claimed.ordered_tasks()[1]
    assert (second.status, second.progress, second.progress_message) == ("running", 0.5, "half")


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite has no server whose restart drops connections"
)
def test_a_connection_the_server_dropped_is_replaced_before_the_next_claim(
    state: WorkerState,
) -> None:
    import psycopg
    from django.db import DatabaseError

    job = sisy.submit({"job_title": "after restart", "record": {"label": "x"}})
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as admin:  # what a restart does to it
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(DatabaseError):
        runner.handle_wakeup(str(job.job_id), state, CHANNEL)
    assert runner.handle_wakeup(str(job.job_id), state, CHANNEL) == 1
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert connection.connection.info.backend_pid != pid


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite has no server whose restart drops connections"
)
def test_a_connection_dropped_while_the_worker_idled_costs_no_failed_claim(
    state: WorkerState,
) -> None:
    import psycopg

    job = sisy.submit({"job_title": "after an idle restart", "record": {"label": "x"}})
    runner.refresh_connections()
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    runner._last_use.at -= runner.IDLE_CONNECTION_CHECK + 1  # the worker idled meanwhile
    assert runner.handle_wakeup(str(job.job_id), state, CHANNEL) == 1
    assert connection.connection.info.backend_pid != pid


def test_a_healthy_connection_is_kept_between_jobs(state: WorkerState) -> None:
    first = sisy.submit({"job_title": "one", "record": {"label": "1"}})
    runner.handle_wakeup(str(first.job_id), state, CHANNEL)
    raw = connection.connection
    second = sisy.submit({"job_title": "two", "record": {"label": "2"}})
    runner.handle_wakeup(str(second.job_id), state, CHANNEL)
    assert connection.connection is raw


# --- Batched claims -----------------------------------------------------------------


def test_a_batch_claim_takes_jobs_in_priority_then_age_order_with_their_tasks(
    state: WorkerState,
) -> None:
    low = sisy.submit({"record": {"label": "low"}}, priority=-1)
    first = sisy.submit({"record": {"label": "first"}})
    second = sisy.submit({"tasks": [{"record": {"label": "a"}}, {"record": {"label": "b"}}]})
    urgent = sisy.submit({"record": {"label": "urgent"}}, priority=5)
    with CaptureQueriesContext(connection) as queries:
        jobs = runner.claim_batch(state, CHANNEL, 3)
    assert [job.pk for job in jobs] == [urgent.pk, first.pk, second.pk]
    # the claim, then every claimed job's tasks (one statement on PostgreSQL)
    assert len(queries) == (1 if connection.vendor == "postgresql" else 2)
    assert [t.position for t in jobs[2]._sisy_tasks] == [0, 1]  # type: ignore[attr-defined]
    rows = {job.pk: job for job in Job.objects.all()}
    assert rows[low.pk].status == JobStatus.QUEUED
    for job in jobs:
        assert (rows[job.pk].status, rows[job.pk].worker, rows[job.pk].attempts) == (
            JobStatus.IN_PROGRESS,
            "w1",
            1,
        )
        assert rows[job.pk].lease_expires_at is not None


def test_jobs_claimed_together_cost_fewer_statements_each(
    state: WorkerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(10):
        sisy.submit({"record": {"label": str(n)}})
    state.job_seconds = 0.001  # claims are sized from recent jobs: pretend they were short
    # A claimed job that waited longer than twice the window is checked for
    # cancellation first (one more statement): a slow machine must not count.
    monkeypatch.setattr(runner, "CLAIM_WINDOW", 60.0)
    with CaptureQueriesContext(connection) as queries:
        assert runner.handle_wakeup(None, state, CHANNEL) == 10
    statements = [q["sql"] for q in queries if not q["sql"].upper().startswith(("BEGIN", "COMMIT"))]
    print(f"\nstatements for 10 one-task jobs drained in a batch: {len(statements)}")
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
    # one claim of 10 and one read of their tasks (one statement on
    # PostgreSQL); the ten successes written together: one statement on
    # PostgreSQL, two updates per job in one transaction elsewhere; then an
    # empty claim ends the drain
    if connection.vendor == "postgresql":
        assert len(statements) == 1 + 1 + 1, statements
    else:
        assert len(statements) == 2 + 2 * 10 + 1, statements
        assert len([q for q in statements if q.upper().startswith("SAVEPOINT")]) == 0


def claim_two(state: WorkerState) -> tuple[Job, Job]:
    for label in ("first", "second"):
        sisy.submit({"record": {"label": label}})
    state.job_seconds = 0.001
    first, second = runner.claim_batch(state, CHANNEL, 2)
    state.reserve([second])
    return first, second


def test_a_success_waits_for_the_next_job_of_the_batch(state: WorkerState) -> None:
    finished: list[Any] = []

    def on_finished(sender: Any, job: Job, status: str, **kwargs: Any) -> None:
        finished.append((job.job_title, status))

    first, _ = claim_two(state)
    signals.job_finished.connect(on_finished)
    try:
        runner.run_job(first, state)
        # Kept in hand: the job after it is about to run.
        assert Job.objects.get(pk=first.pk).status == JobStatus.IN_PROGRESS
        assert state.count_unwritten() == 1 and finished == []
        assert runner.handle_wakeup(None, state, CHANNEL) == 1  # runs the second one
    finally:
        signals.job_finished.disconnect(on_finished)
    assert {job.status for job in Job.objects.all()} == {JobStatus.SUCCEEDED}
    assert set(JobTask.objects.values_list("status", flat=True)) == {JobTaskStatus.SUCCEEDED}
    assert Job.objects.get(pk=first.pk).finished_at == first.finished_at
    assert finished == [(first.job_title, JobStatus.SUCCEEDED)] * 2
    assert state.count_unwritten() == 0


def test_the_heartbeat_writes_successes_held_while_a_job_runs_long(
    state: WorkerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = claim_two(state)
    runner.run_job(first, state)
    assert state.count_unwritten() == 1
    runner.renew_lease(state)  # just now: still waiting for the next job
    assert Job.objects.get(pk=first.pk).status == JobStatus.IN_PROGRESS
    monkeypatch.setattr(runner, "CLAIM_WINDOW", 0.0)  # as if the next job ran for a while
    runner.renew_lease(state)
    assert Job.objects.get(pk=first.pk).status == JobStatus.SUCCEEDED
    task = JobTask.objects.get(job=first)
    assert task.status == JobTaskStatus.SUCCEEDED and task.progress == 1.0
    assert state.count_unwritten() == 0


def test_a_job_cancelled_before_its_success_was_written_stays_cancelled(
    state: WorkerState,
) -> None:
    first, second = claim_two(state)
    runner.run_job(first, state)
    assert sisy.cancel(first.pk)  # it ran, but that was not written yet
    assert runner.handle_wakeup(None, state, CHANNEL) == 1
    assert Job.objects.get(pk=first.pk).status == JobStatus.CANCELLED
    assert JobTask.objects.get(job=first).status == JobTaskStatus.CANCELLED
    assert Job.objects.get(pk=second.pk).status == JobStatus.SUCCEEDED
    assert JobTask.objects.get(job=second).status == JobTaskStatus.SUCCEEDED


def test_claim_size_follows_how_long_jobs_take(state: WorkerState, settings: Any) -> None:
    assert runner.claim_size(state) == 1  # nothing known yet
    state.note_job_seconds(0.0001)
    assert runner.claim_size(state) == 50  # SISY_WORKER_CLAIM_BATCH
    settings.SISY_WORKER_CLAIM_BATCH = 4
    assert runner.claim_size(state) == 4
    settings.SISY_WORKER_CLAIM_BATCH = 50
    state.job_seconds = 0.005
    assert runner.claim_size(state) == 10  # about CLAIM_WINDOW (50 ms) of work
    for _ in range(30):
        state.note_job_seconds(1.0)
    assert runner.claim_size(state) == 1  # long jobs: one at a time


def test_a_stopping_worker_gives_back_what_it_claimed_and_did_not_start(
    state: WorkerState,
) -> None:
    jobs = [sisy.submit({"record": {"label": str(n)}}) for n in range(4)]
    state.job_seconds = 0.001

    def stop(**kwargs: Any) -> None:
        state.stopping.set()

    signals.job_started.connect(stop)
    try:
        assert runner.handle_wakeup(None, state, CHANNEL) == 1
    finally:
        signals.job_started.disconnect(stop)
    rows = {job.pk: job for job in Job.objects.all()}
    assert rows[jobs[0].pk].status == JobStatus.SUCCEEDED
    for job in jobs[1:]:
        row = rows[job.pk]
        assert (row.status, row.worker, row.attempts, row.started_at) == (
            JobStatus.QUEUED,
            "",
            0,
            None,
        )
    assert state.reserved == []


def test_claimed_jobs_waiting_behind_a_long_job_are_given_back_at_the_next_beat(
    state: WorkerState,
) -> None:
    long_job = sisy.submit({"record": {"label": "long"}})
    waiting = [sisy.submit({"record": {"label": str(n)}}) for n in range(3)]
    jobs = runner.claim_batch(state, CHANNEL, 4)
    assert jobs[0].pk == long_job.pk
    state.reserve(jobs[1:])
    state.job_started(str(jobs[0].pk), "", 1)
    state.job_began -= runner.CLAIM_WINDOW + 0.01  # it has run for longer than the window
    runner.renew_lease(state)  # the heartbeat thread
    assert state.reserved == []
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses[long_job.pk] == JobStatus.IN_PROGRESS
    assert {statuses[job.pk] for job in waiting} == {JobStatus.QUEUED}


def test_renewing_leases_covers_claimed_jobs_not_started_yet(state: WorkerState) -> None:
    sisy.submit({"record": {"label": "a"}})
    sisy.submit({"record": {"label": "b"}})
    jobs = runner.claim_batch(state, CHANNEL, 2)
    state.reserve(jobs)
    Job.objects.update(lease_expires_at=None)
    runner.renew_lease(state)
    assert all(Job.objects.values_list("lease_expires_at", flat=True))
    assert len(state.reserved) == 2


def test_a_claimed_job_cancelled_while_it_waited_is_not_run(state: WorkerState) -> None:
    job = sisy.submit({"record": {"label": "cancelled"}})
    [claimed] = runner.claim_batch(state, CHANNEL, 1)
    state.reserve([claimed])
    state.reserved[0] = (claimed, state.reserved[0][1] - 1.0)  # claimed a second ago
    assert sisy.cancel(job.pk)
    assert runner.handle_wakeup(None, state, CHANNEL) == 0
    assert recorded("runs") == []
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED
    assert JobTask.objects.get(job=job).status == JobTaskStatus.CANCELLED


def test_run_jobs_runs_the_queued_jobs_of_each_channel_named() -> None:
    from sisy.testing import run_jobs

    sisy.submit({"record": {"label": "default"}})
    sisy.submit({"record": {"label": "other"}}, channel="sisy.other")
    later = sisy.submit(
        {"record": {"label": "later"}},
        run_after=timezone.now() + timedelta(hours=1),
    )
    assert run_jobs() == 1
    assert recorded("runs") == ["default"]
    assert run_jobs(["sisy.run", "sisy.other"]) == 1
    assert sorted(recorded("runs")) == ["default", "other"]
    assert Job.objects.get(pk=later.pk).status == JobStatus.QUEUED


def _commit_mode_of_claims(by_pk: bool, state: WorkerState) -> list[str]:
    """Run a claim in a transaction of its own; read ``synchronous_commit`` before it commits.

    The claim runs as usual, in autocommit mode; a wrapper opens the
    transaction around it, reads the setting on the same connection, and
    commits it, so what is read is what the claim's own commit would use.
    """
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "RETURNING" not in sql:
            return execute(sql, params, many, context)
        raw = context["connection"].connection
        raw.execute("BEGIN")
        try:
            result = execute(sql, params, many, context)
            row = raw.execute("SHOW synchronous_commit").fetchone()
            seen.append(row[0])
        finally:
            raw.execute("COMMIT")
        return result

    job = sisy.submit({"record": {"label": "a"}})
    with connection.execute_wrapper(wrapper):
        if by_pk:
            claimed = [runner.claim(job.job_id, state, CHANNEL)]
        else:
            claimed = runner.claim_batch(state, CHANNEL, 10)
    assert [j.pk for j in claimed if j is not None] == [job.pk]
    assert Job.objects.get(pk=job.pk).status == JobStatus.IN_PROGRESS  # committed
    return seen


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL setting")
@pytest.mark.parametrize("by_pk", [True, False], ids=["by-pk", "batch"])
def test_claims_commit_asynchronously_on_postgresql(
    by_pk: bool, state: WorkerState, settings: Any
) -> None:
    assert _commit_mode_of_claims(by_pk, state) == ["off"]
    settings.SISY_CLAIM_ASYNC_COMMIT = False
    assert _commit_mode_of_claims(by_pk, state) == ["on"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL setting")
def test_a_claim_inside_a_transaction_leaves_its_commit_alone(state: WorkerState) -> None:
    from django.db import transaction

    job = sisy.submit({"record": {"label": "a"}})
    with transaction.atomic():
        assert runner.claim(job.job_id, state, CHANNEL) is not None
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
