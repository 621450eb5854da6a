"""Cancellation and signals."""

from __future__ import annotations

from typing import Any

import pytest

import sisy
from sisy import runner, signals
from sisy.models import JobStatus, JobTaskStatus
from sisy.state import WorkerState
from tests.conftest import Workers, wait_for
from tests.testapp.sisy_modules import recorded

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def received() -> Any:
    events: list[tuple[str, dict[str, Any]]] = []
    handlers = {}
    for name in ("job_queued", "job_started", "job_finished", "task_failed"):

        def handler(sender: Any, _name: str = name, **kwargs: Any) -> None:
            events.append((_name, kwargs))

        handlers[name] = handler
        getattr(signals, name).connect(handler)
    yield events
    for name, handler in handlers.items():
        getattr(signals, name).disconnect(handler)


def test_a_cancelled_queued_job_never_runs(received: list) -> None:
    job = sisy.submit({"tasks": [{"record": {"label": "a"}}, {"record": {"label": "b"}}]})
    assert sisy.cancel(job.job_id) is True
    assert runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w"), "sisy.run") == 0
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert {t.status for t in job.ordered_tasks()} == {JobTaskStatus.CANCELLED}
    assert recorded("runs") == []
    assert [name for name, _ in received] == ["job_queued", "job_finished"]
    assert received[1][1]["status"] == "cancelled"


def test_cancelling_a_finished_or_unknown_job_says_so() -> None:
    job = sisy.submit({"record": {"label": "a"}})
    runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w"), "sisy.run")
    assert sisy.cancel(job.job_id) is False
    assert sisy.cancel("00000000-0000-0000-0000-000000000000") is False
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


def test_a_running_module_sees_the_cancellation_and_cleans_up(received: list) -> None:
    job = sisy.submit(
        {"tasks": [{"patient": {"seconds": 2, "cancel_self_at": 3}}, {"record": {"label": "x"}}]}
    )
    runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w"), "sisy.run")
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert [t.status for t in job.ordered_tasks()] == [
        JobTaskStatus.CANCELLED,
        JobTaskStatus.CANCELLED,
    ]
    assert recorded("seen_cancelled") == ["True"]
    assert recorded("cleanups") == ["patient"]
    assert recorded("runs") == []
    assert [name for name, _ in received] == ["job_queued", "job_started", "job_finished"]


def test_signals_of_a_failing_job(received: list) -> None:
    job = sisy.submit({"tasks": [{"fail": {"message": "nope"}}, {"record": {"label": "x"}}]})
    runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w9"), "sisy.run")
    names = [name for name, _ in received]
    assert names == ["job_queued", "job_started", "task_failed", "job_finished"]
    started, failed, finished = received[1][1], received[2][1], received[3][1]
    assert started["worker"] == "w9"
    assert "RuntimeError: nope" in failed["error"] and failed["job_task"].position == 0
    assert finished["status"] == JobStatus.FAILED


def test_a_failing_receiver_does_not_fail_the_job(caplog: pytest.LogCaptureFixture) -> None:
    def broken(sender: Any, **kwargs: Any) -> None:
        raise ValueError("receiver bug")

    signals.job_started.connect(broken)
    try:
        job = sisy.submit({"record": {"label": "a"}})
        runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w"), "sisy.run")
    finally:
        signals.job_started.disconnect(broken)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert "signal receiver" in caplog.text


@pytest.mark.e2e
def test_cancelling_a_job_running_on_a_worker(workers: Workers) -> None:
    workers.start()
    job = sisy.submit({"job_title": "long", "patient": {"seconds": 20}})

    def module_running() -> bool:
        task = job.ordered_tasks()[0]
        return task.status == JobTaskStatus.RUNNING and task.progress > 0

    wait_for(module_running, 20, "the module to report progress")
    assert sisy.cancel(job.job_id) is True
    wait_for(lambda: recorded("cleanups") == ["patient"], 10, "the module's cleanup")
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    wait_for(
        lambda: job.ordered_tasks()[0].status == JobTaskStatus.CANCELLED,
        10,
        "the task marked cancelled",
    )
    follow_up = sisy.submit({"record": {"label": "next"}})  # the worker goes on serving

    def follow_up_done() -> bool:
        follow_up.refresh_from_db()
        return follow_up.is_finished

    wait_for(follow_up_done, 20, "the next job")
    assert follow_up.status == JobStatus.SUCCEEDED
    assert recorded("runs") == ["next"]


def test_cancel_with_a_malformed_id_is_false() -> None:
    assert sisy.cancel("nope") is False


def test_cancelling_a_requeued_job_cancels_its_interrupted_task() -> None:
    from sisy.models import Job, JobTask

    job = sisy.submit({"tasks": [{"record": {"label": "a"}}, {"record": {"label": "b"}}]})
    # As after a lost worker: requeued, its first task left "running".
    JobTask.objects.filter(job=job, position=0).update(status=JobTaskStatus.RUNNING)
    Job.objects.filter(pk=job.pk).update(attempts=1)
    assert sisy.cancel(job.job_id) is True
    assert {t.status for t in job.ordered_tasks()} == {JobTaskStatus.CANCELLED}


def test_retry_sends_job_queued(received: list) -> None:
    job = sisy.submit({"fail": {}})
    runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w"), "sisy.run")
    received.clear()
    assert sisy.retry(job.job_id) is True
    assert [name for name, _ in received] == ["job_queued"]
    assert sisy.retry(job.job_id) is False  # queued, not failed
