"""sisy.backends.ChannelsBackend: Django's Tasks API on sisy's jobs and workers.

In-process tests drive the runner and the clock directly; the end-to-end ones
use real ``sisy_worker`` (and clock) processes. On Django < 6.0 only the test
that the backend is refused there runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import django
import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

import sisy
from sisy import clock, dispatch, runner
from sisy.models import Job, JobStatus, JobTask, JobTaskStatus
from sisy.sisy_modules import DJANGO_TASK_MODULE
from sisy.state import WorkerState
from tests.conftest import ROOT, Workers, wait_for, zcard
from tests.testapp.sisy_modules import recorded

DJANGO_6 = django.VERSION >= (6, 0)
if DJANGO_6:
    from django.tasks import (
        DEFAULT_TASK_QUEUE_NAME,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django.tasks.exceptions import (
        InvalidTask,
        InvalidTaskBackend,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )
    from django.tasks.signals import task_enqueued, task_finished, task_started

    from sisy.backends import (
        ChannelsBackend,
        InvalidTaskArguments,
        JobFailed,
        exception_class_path,
    )
    from tests.testapp import django_tasks as tasks

pytestmark = pytest.mark.django_db(transaction=True)
needs_django_6 = pytest.mark.skipif(not DJANGO_6, reason="django.tasks needs Django 6.0")

WAKEUPS = "asgisisy.run"  # the Redis key holding sisy.run's wake-ups


@pytest.fixture
def state() -> WorkerState:
    return WorkerState(worker_id="w1", channels=("sisy.run",))


def run_in_process(result: Any, state: WorkerState) -> Job:
    """Claim and run the result's job as a worker would; the job as stored."""
    job = runner.claim(result.id, state, "sisy.run")
    assert job is not None, "the job was not claimable"
    return runner.run_job(job, state)


@contextlib.contextmanager
def captured(signal: Any) -> Iterator[list[Any]]:
    """(result id, status, sender) of each time ``signal`` is sent while the block runs."""
    seen: list[Any] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append((task_result.id, task_result.status, sender))

    signal.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signal.disconnect(receiver)


def forged_job(path: str, channel: str = "sisy.run") -> Job:
    """A job row naming ``path`` as its task, as someone with database access could write."""
    job = Job.objects.create(job_title="forged", channel=channel)
    JobTask.objects.create(
        job=job,
        position=0,
        module=DJANGO_TASK_MODULE,
        data={"task": path, "args": [], "kwargs": {}, "backend": "default"},
    )
    return job


def test_job_specifications_cannot_name_the_internal_module() -> None:
    data = {"task": "tests.testapp.django_tasks.add", "args": [1, 2], "kwargs": {}}
    with pytest.raises(sisy.JobSpecError, match=r"unknown module 'sisy\.django_task'"):
        sisy.submit({"tasks": [{"module": DJANGO_TASK_MODULE, "data": data}]})
    assert not Job.objects.exists()


@pytest.mark.skipif(DJANGO_6, reason="on Django 6 the backend is offered")
class TestBeforeDjango6:
    def test_importing_the_backend_says_django_6_is_needed(self) -> None:
        sys.modules.pop("sisy.backends", None)
        with pytest.raises(ImportError, match=r"needs Django 6\.0 or later .*this is Django 5"):
            import sisy.backends  # noqa: F401

    def test_a_task_job_fails_with_that_message(self, state: WorkerState) -> None:
        job = forged_job("tests.testapp.django_tasks.add")
        job = runner.run_job(runner.claim(job.job_id, state, "sisy.run"), state)
        assert job.status == JobStatus.FAILED
        assert "needs Django 6.0 or later" in job.error

    def test_the_rest_of_sisy_works(self, state: WorkerState) -> None:
        job = sisy.submit({"record": {"label": "still here"}})
        job = runner.run_job(runner.claim(job.job_id, state, "sisy.run"), state)
        assert job.status == JobStatus.SUCCEEDED
        assert recorded("runs") == ["still here"]


@needs_django_6
class TestConfiguration:
    def test_the_configured_backend_is_sisys_and_says_what_it_supports(self) -> None:
        backend = task_backends["default"]
        assert isinstance(backend, ChannelsBackend)
        assert default_task_backend.supports_defer is True
        assert default_task_backend.supports_async_task is True
        assert default_task_backend.supports_get_result is True
        assert default_task_backend.supports_priority is True
        assert tasks.add.get_backend() is backend

    def test_queues_map_to_channels(self) -> None:
        backend = task_backends["default"]
        assert backend.channel_for("emails") == "sisy.emails"
        assert backend.channel_for(DEFAULT_TASK_QUEUE_NAME) == "sisy.run"
        with override_settings(SISY_RUN_CHANNEL="sisy.elsewhere"):
            assert backend.channel_for(DEFAULT_TASK_QUEUE_NAME) == "sisy.elsewhere"
        mapped = ChannelsBackend("x", {"OPTIONS": {"CHANNELS": {"default": "sisy.mine"}}})
        assert mapped.channel_for(DEFAULT_TASK_QUEUE_NAME) == "sisy.mine"

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"OPTIONS": {"CHANNEL": {}}}, r"unknown key 'CHANNEL'"),
            ({"OPTIONS": {"CHANNELS": ["sisy.run"]}}, r"must map queue names"),
            (
                {"QUEUES": ["default", "bulk"], "OPTIONS": {"CHANNELS": {"bulk": "no spaces"}}},
                r"\['CHANNELS'\]\['bulk'\] must be a channel name",
            ),
            (
                {"QUEUES": ["default"], "OPTIONS": {"CHANNELS": {"bulk": "sisy.bulk"}}},
                r"maps the queue 'bulk', which is not in TASKS\['x'\]\['QUEUES'\]",
            ),
            ({"QUEUES": ["default", "bulk"]}, r"the queue 'bulk' has no channel"),
            ({"OPTIONS": {"CHANNELS": {"default": "x" * 101}}}, r"must be a channel name"),
        ],
    )
    def test_bad_options_are_refused_naming_the_setting(
        self, params: dict[str, Any], message: str
    ) -> None:
        backend = ChannelsBackend("x", params)  # Django's check builds it: no raise here
        [error] = backend.check()
        assert error.id == "sisy.E006"
        assert re.search(message, error.msg)
        with pytest.raises(InvalidTaskBackend, match=message):
            backend.channel_for(DEFAULT_TASK_QUEUE_NAME)

    def test_manage_py_check_reports_bad_options(self) -> None:
        from django.core.management import call_command
        from django.core.management.base import SystemCheckError

        setting = {"default": {"BACKEND": "sisy.backends.ChannelsBackend", "OPTIONS": {"X": 1}}}
        with (
            override_settings(TASKS=setting),
            pytest.raises(SystemCheckError, match=r"sisy\.E006.*unknown key 'X'"),
        ):
            call_command("check")

    def test_tasks_defined_on_a_bad_backend_import_and_enqueue_refuses(self) -> None:
        """Defining a task must not crash start-up (check says why); enqueuing raises."""
        from django.tasks import Task

        setting = {"default": {"BACKEND": "sisy.backends.ChannelsBackend", "OPTIONS": {"X": 1}}}
        with override_settings(TASKS=setting):
            defined = Task(priority=0, func=tasks.add.func, backend="default", queue_name="default",
                           run_after=None, takes_context=False)  # fmt: skip
            with pytest.raises(InvalidTaskBackend, match="unknown key 'X'"):
                defined.enqueue(1, 2)
        assert not Job.objects.exists()

    def test_the_clock_s_channel_is_refused_for_a_queue(self) -> None:
        backend = ChannelsBackend("x", {"OPTIONS": {"CHANNELS": {"default": "sisy.heartbeat"}}})
        [error] = backend.check()
        assert "the clock's channel" in error.msg

    def test_manage_py_check_runs_django_s_check_of_tasks(self, tmp_path: Path) -> None:
        """sisy imports django.tasks so that Django's check of TASKS (and E006) runs."""
        (tmp_path / "bad_tasks_settings.py").write_text(
            "from tests.settings import *\n"
            "TASKS = {'default': {'BACKEND': 'sisy.backends.ChannelsBackend', "
            "'OPTIONS': {'X': 1}}}\n"
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bad_tasks_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        }
        done = subprocess.run(
            [sys.executable, "-m", "django", "check"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "sisy.E006" in done.stderr and "unknown key 'X'" in done.stderr

    def test_a_channel_no_worker_routes_is_a_warning(self) -> None:
        assert task_backends["default"].check() == []  # the test project routes sisy.emails
        backend = ChannelsBackend(
            "x", {"QUEUES": ["default", "bulk"], "OPTIONS": {"CHANNELS": {"bulk": "sisy.bulk"}}}
        )
        [warning] = backend.check()
        assert warning.id == "sisy.W006"
        assert "sisy.bulk" in warning.msg and "tests.asgi.application" in warning.msg
        with override_settings(ASGI_APPLICATION=None):
            [warning] = backend.check()
        assert "sisy's own router" in warning.msg

    def test_with_any_queue_allowed_an_unmapped_queue_is_invalid(self) -> None:
        tasks_setting = {
            "default": {
                "BACKEND": "sisy.backends.ChannelsBackend",
                "QUEUES": [],
                "OPTIONS": {"CHANNELS": {"emails": "sisy.emails"}},
            }
        }
        with override_settings(TASKS=tasks_setting):
            assert tasks.add.using(queue_name="emails").queue_name == "emails"
            with pytest.raises(InvalidTask, match="Queue 'nowhere' has no sisy channel"):
                tasks.add.using(queue_name="nowhere")


@needs_django_6
class TestEnqueue:
    def test_enqueue_stores_a_queued_job_and_wakes_a_worker(self, redis: Any) -> None:
        with captured(task_enqueued) as seen:
            result = tasks.add.enqueue(2, b=3)
        assert result.status == TaskResultStatus.READY
        assert result.args == [2] and result.kwargs == {"b": 3}
        assert result.backend == "default"
        assert result.task is tasks.add
        assert (result.started_at, result.finished_at, result.worker_ids) == (None, None, [])
        job = Job.objects.get(pk=uuid.UUID(result.id))
        assert result.enqueued_at == job.created_at
        assert (job.status, job.channel, job.priority, job.run_after) == (
            "queued",
            "sisy.run",
            0,
            None,
        )
        assert job.job_title == "tests.testapp.django_tasks.add"
        (job_task,) = job.ordered_tasks()
        assert job_task.module == DJANGO_TASK_MODULE
        assert job_task.data == {
            "task": "tests.testapp.django_tasks.add",
            "args": [2],
            "kwargs": {"b": 3},
            "backend": "default",
            "queue_name": "default",
        }
        assert zcard(redis, WAKEUPS) == 1
        assert seen == [(result.id, TaskResultStatus.READY, ChannelsBackend)]

    def test_queue_priority_and_run_after_reach_the_job(self, redis: Any) -> None:
        when = timezone.now() + timedelta(hours=1)
        result = tasks.send_email.using(priority=7, run_after=when).enqueue("ada@example.com")
        job = Job.objects.get(pk=result.id)
        assert (job.channel, job.priority, job.run_after) == ("sisy.emails", 7, when)
        assert zcard(redis, "asgisisy.emails") == 0  # not due: the clock wakes it later

    def test_a_wakeup_waits_for_the_transaction(self, redis: Any) -> None:
        with transaction.atomic():
            result = tasks.add.enqueue(1, 1)
            assert zcard(redis, WAKEUPS) == 0
        assert zcard(redis, WAKEUPS) == 1
        assert Job.objects.filter(pk=result.id).exists()

    @pytest.mark.parametrize(
        ("make", "message"),
        [
            (lambda: tasks.add.using(queue_name="nope"), "Queue 'nope' is not valid"),
            (lambda: tasks.add.using(priority=101), "priority must be a whole number"),
            (lambda: tasks.add.using(priority=-101), "priority must be a whole number"),
            (
                lambda: tasks.add.using(run_after=timezone.now().replace(tzinfo=None)),
                "run_after must be an aware datetime",
            ),
        ],
    )
    def test_invalid_tasks_are_refused_by_djangos_validation(self, make: Any, message: str) -> None:
        with pytest.raises(InvalidTask, match=message):
            make().enqueue(1, 2)
        assert not Job.objects.exists()

    def test_a_nested_function_is_not_a_task(self) -> None:
        def nested() -> None:
            pass

        with pytest.raises(InvalidTask, match="module level"):
            task(nested)

    @pytest.mark.parametrize(
        ("args", "kwargs", "message"),
        [
            ((object(),), {}, r"args\[0\] is a object, which cannot be stored as JSON"),
            ((), {"when": timezone.now()}, r"kwargs\['when'\] is a datetime"),
            (([1, {"deep": {1, 2}}],), {}, r"args\[0\]\[1\]\['deep'\] is a set"),
            ((float("nan"),), {}, r"args\[0\] is nan, which JSON cannot represent"),
            (({1: "one"},), {}, r"args\[0\] has the key 1: JSON object keys are strings"),
            ((b"\xff",), {}, r"args\[0\] holds bytes that are not UTF-8"),
        ],
    )
    def test_arguments_that_are_not_json_are_refused(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(InvalidTaskArguments, match=message) as caught:
            tasks.echo.enqueue(*args, **kwargs)
        assert isinstance(caught.value, InvalidTask)
        assert isinstance(caught.value, TypeError)  # as Django's own backends raise
        assert not Job.objects.exists()

    def test_tuples_and_utf8_bytes_are_stored_as_json_like_django_does(self) -> None:
        result = tasks.echo.enqueue((1, 2), "é".encode())
        assert result.args == [[1, 2], "é"]
        assert JobTask.objects.get(job_id=result.id).data["args"] == [[1, 2], "é"]

    def test_unknown_or_foreign_result_ids_do_not_exist(self) -> None:
        job = sisy.submit({"record": {"label": "a sisy job, not a task"}})
        for result_id in (str(uuid.uuid4()), "not-a-uuid", str(job.job_id)):
            with pytest.raises(TaskResultDoesNotExist):
                default_task_backend.get_result(result_id)

    def test_get_result_through_another_task_is_a_mismatch(self) -> None:
        result = tasks.add.enqueue(1, 2)
        assert tasks.add.get_result(result.id).id == result.id
        with pytest.raises(TaskResultMismatch):
            tasks.echo.get_result(result.id)

    def test_async_enqueue_and_get_result(self) -> None:
        async def go() -> tuple[Any, Any]:
            result = await tasks.add.aenqueue(4, 5)
            return result, await default_task_backend.aget_result(result.id)

        result, fetched = async_to_sync(go)()
        assert fetched.id == result.id
        assert fetched.status == TaskResultStatus.READY
        assert fetched.args == [4, 5]


@needs_django_6
class TestRunningTasks:
    """The worker's side, in-process: what a real worker does, step by step."""

    def test_a_successful_task_records_its_return_value(self, state: WorkerState) -> None:
        with captured(task_started) as started, captured(task_finished) as finished:
            result = tasks.add.enqueue(2, 3)
            job = run_in_process(result, state)
        assert job.status == JobStatus.SUCCEEDED
        assert job.ordered_tasks()[0].result == 5
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 5
        assert result.errors == []
        assert result.worker_ids == ["w1"] and result.attempts == 1
        assert result.started_at == result.last_attempted_at == job.started_at
        assert result.finished_at == job.finished_at
        assert result.enqueued_at <= result.started_at <= result.finished_at
        assert started == [(result.id, TaskResultStatus.RUNNING, ChannelsBackend)]
        assert finished == [(result.id, TaskResultStatus.SUCCESSFUL, ChannelsBackend)]

    def test_a_failing_task_records_its_exception_class_and_traceback(
        self, state: WorkerState
    ) -> None:
        result = tasks.explode.enqueue("kaput")
        with captured(task_finished) as finished:
            job = run_in_process(result, state)
        assert finished == [(result.id, TaskResultStatus.FAILED, ChannelsBackend)]
        assert job.status == JobStatus.FAILED
        assert job.error == "task 0 (sisy.django_task) failed: kaput"
        result.refresh()
        assert result.status == TaskResultStatus.FAILED
        with pytest.raises(ValueError, match="Task failed"):
            result.return_value  # noqa: B018
        (error,) = result.errors
        assert error.exception_class_path == "tests.testapp.django_tasks.Boom"
        assert error.exception_class is tasks.Boom
        assert "Traceback (most recent call last)" in error.traceback
        assert "raise Boom(message)" in error.traceback
        assert error.traceback == job.ordered_tasks()[0].error

    def test_a_builtin_exception_is_found_in_builtins(self, state: WorkerState) -> None:
        result = tasks.bad_value.enqueue("twelve")
        run_in_process(result, state)
        result.refresh()
        (error,) = result.errors
        assert error.exception_class_path == "builtins.ValueError"
        assert error.exception_class is ValueError

    def test_a_return_value_that_is_not_json_fails_the_task(self, state: WorkerState) -> None:
        result = tasks.returns_a_datetime.enqueue()
        run_in_process(result, state)
        result.refresh()
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[0].exception_class is TypeError
        assert "the task's return value is a datetime" in result.errors[0].traceback

    def test_a_task_taking_context_gets_its_result_and_attempt(self, state: WorkerState) -> None:
        result = tasks.about_myself.using(priority=9).enqueue("me")
        run_in_process(result, state)
        result.refresh()
        assert result.return_value == {
            "label": "me",
            "attempt": 1,
            "id": result.id,
            "status": "RUNNING",
            "queue_name": "default",
            "priority": 9,
            "worker_ids": ["w1"],
        }

    def test_an_async_task_runs(self, state: WorkerState) -> None:
        result = tasks.async_add.enqueue(20, 22)
        run_in_process(result, state)
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
        assert result.return_value == 42

    def test_a_forged_row_naming_a_plain_function_is_refused(self, state: WorkerState) -> None:
        for path in (
            "tests.testapp.django_tasks.plain_function",
            "os.system",
            "tests.nothing.here",
        ):
            job = forged_job(path)
            job = runner.run_job(runner.claim(job.job_id, state, "sisy.run"), state)
            assert job.status == JobStatus.FAILED, path
            with pytest.raises(TaskResultDoesNotExist):
                default_task_backend.get_result(str(job.job_id))
        errors = list(Job.objects.order_by("created_at").values_list("error", flat=True))
        assert (
            "'tests.testapp.django_tasks.plain_function' is a function, not a Django task"
            in errors[0]
        )
        assert "'os.system' is a builtin_function_or_method, not a Django task" in errors[1]
        assert "the task 'tests.nothing.here' cannot be imported" in errors[2]
        assert recorded("plain") == []

    def test_a_forged_row_with_bad_data_is_refused_before_running(self, state: WorkerState) -> None:
        job = forged_job("tests.testapp.django_tasks.record_label")
        JobTask.objects.filter(job=job).update(
            data={"task": "not a path", "args": [], "kwargs": {}}
        )
        job = runner.run_job(runner.claim(job.job_id, state, "sisy.run"), state)
        assert job.status == JobStatus.FAILED
        assert job.error.startswith("invalid job: task 0, $.task: 'not a path' does not match")
        assert recorded("django_runs") == []

    def test_cancelled_and_lost_jobs_read_as_failed(self) -> None:
        cancelled = tasks.add.enqueue(1, 1)
        assert sisy.cancel(cancelled.id)
        cancelled.refresh()
        assert cancelled.status == TaskResultStatus.FAILED
        assert cancelled.errors[0].exception_class_path == "sisy.exceptions.JobCancelled"
        assert cancelled.worker_ids == []

        lost = tasks.add.enqueue(1, 2)
        Job.objects.filter(pk=lost.id).update(
            status=JobStatus.FAILED,
            attempts=3,
            worker="w3",
            error="worker lost: the job's lease expired on its last allowed attempt",
        )
        JobTask.objects.filter(job_id=lost.id).update(status=JobTaskStatus.SKIPPED)
        lost.refresh()
        assert lost.status == TaskResultStatus.FAILED
        (error,) = lost.errors
        assert error.exception_class is JobFailed
        assert error.traceback.startswith("worker lost")
        assert lost.worker_ids == ["?", "?", "w3"] and lost.attempts == 3

    def test_statuses_follow_the_job(self, state: WorkerState) -> None:
        result = tasks.add.enqueue(1, 2)
        job = runner.claim(result.id, state, "sisy.run")
        result.refresh()
        assert result.status == TaskResultStatus.RUNNING
        assert result.worker_ids == ["w1"]
        assert not result.is_finished
        with pytest.raises(ValueError, match="not finished"):
            result.return_value  # noqa: B018
        runner.run_job(job, state)
        result.refresh()
        assert result.is_finished and result.return_value == 3


class TestPriorityAndRunAfter:
    """sisy's own ``priority`` and ``run_after`` (any Django version)."""

    def test_priority_and_run_after_are_checked_naming_the_field(self) -> None:
        spec = {"record": {"label": "a"}}
        with pytest.raises(ValueError, match="priority must be an integer"):
            sisy.submit(spec, priority="high")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="priority must be an integer"):
            sisy.submit(spec, priority=True)
        with pytest.raises(ValueError, match="priority must be between -32768 and 32767"):
            sisy.submit(spec, priority=40000)
        with pytest.raises(ValueError, match="run_after must be an aware datetime"):
            sisy.submit(spec, run_after=timezone.now().replace(tzinfo=None))
        with pytest.raises(ValueError, match="run_after must be a datetime"):
            sisy.submit(spec, run_after="tomorrow")  # type: ignore[arg-type]
        aware = timezone.now()
        with (
            override_settings(USE_TZ=False),
            pytest.raises(ValueError, match="run_after must be a naive datetime"),
        ):
            sisy.submit(spec, run_after=aware)
        assert not Job.objects.exists()

    def test_only_a_due_job_is_woken_when_stored(self, redis: Any) -> None:
        later = dispatch.submit(
            {"record": {"label": "later"}}, run_after=timezone.now() + timedelta(minutes=5)
        )
        assert zcard(redis, WAKEUPS) == 0
        due = dispatch.submit({"record": {"label": "due"}}, priority=3, run_after=timezone.now())
        assert zcard(redis, WAKEUPS) == 1
        assert Job.objects.get(pk=due.pk).priority == 3
        assert Job.objects.get(pk=later.pk).run_after > Job.objects.get(pk=due.pk).run_after

    def test_a_worker_takes_higher_priorities_first_then_the_oldest(
        self, state: WorkerState
    ) -> None:
        for label, priority in [("low", -5), ("mid-1", 0), ("high", 50), ("mid-2", 0)]:
            sisy.submit({"record": {"label": label}}, priority=priority)
        sisy.submit(
            {"record": {"label": "deferred"}},
            priority=100,
            run_after=timezone.now() + timedelta(hours=1),
        )
        assert runner.handle_wakeup(None, state, "sisy.run") == 4
        assert recorded("runs") == ["high", "mid-1", "mid-2", "low"]

    def test_the_clock_wakes_a_deferred_job_once_it_is_due(self, redis: Any) -> None:
        when = timezone.now() + timedelta(minutes=10)
        job = sisy.submit({"record": {"label": "later"}}, run_after=when)
        assert zcard(redis, WAKEUPS) == 0
        before = clock.tick(when - timedelta(seconds=1))
        assert (before.deferred, before.woken) == (0, 0)
        assert zcard(redis, WAKEUPS) == 0
        after = clock.tick(when + timedelta(seconds=1))
        assert (after.deferred, after.woken) == (1, 1)
        assert zcard(redis, WAKEUPS) == 1
        assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED  # a worker claims it

    def test_deferred_wakeups_are_bounded_per_channel_highest_priority_first(
        self, redis: Any
    ) -> None:
        when = timezone.now() + timedelta(minutes=1)
        jobs = [
            sisy.submit({"record": {"label": str(p)}}, priority=p, run_after=when) for p in range(4)
        ]
        sisy.submit({"record": {"label": "e"}}, channel="sisy.emails", run_after=when)
        with override_settings(SISY_SWEEP_MAX_WAKEUPS=2):
            report = clock.tick(when)
        assert report.deferred == 3  # two on sisy.run, one on sisy.emails
        woken = redis.zrange(WAKEUPS, 0, -1)  # the layer's encoded messages
        assert len(woken) == 2
        for job, expected in zip(jobs, [0, 0, 1, 1], strict=True):
            assert sum(str(job.pk).encode() in message for message in woken) == expected
        assert zcard(redis, "asgisisy.emails") == 1

    def test_a_deferred_job_is_neither_claimable_nor_stale_before_it_is_due(self) -> None:
        now = timezone.now()
        sisy.submit({"record": {"label": "later"}}, run_after=now + timedelta(minutes=1))
        assert not Job.objects.stale(now + timedelta(seconds=30), older_than=0).exists()
        assert not Job.objects.claimable("sisy.run", now).exists()
        assert Job.objects.claimable("sisy.run", now + timedelta(minutes=2)).exists()
        assert Job.objects.deferred_due(now + timedelta(minutes=2)).count() == 1


@needs_django_6
class TestTaskPriorityAndDeferral:
    def test_workers_take_higher_priorities_first_then_the_oldest(self, state: WorkerState) -> None:
        low = tasks.record_label.using(priority=-5).enqueue("low")
        first_mid = tasks.record_label.enqueue("mid-1")
        high = tasks.record_label.using(priority=50).enqueue("high")
        second_mid = tasks.record_label.enqueue("mid-2")
        tasks.record_label.using(
            priority=100, run_after=timezone.now() + timedelta(hours=1)
        ).enqueue("deferred")
        order = []
        while (job := runner.claim(None, state, "sisy.run")) is not None:
            order.append(str(job.pk))
            runner.run_job(job, state)
        assert order == [high.id, first_mid.id, second_mid.id, low.id]
        assert recorded("django_runs") == ["high", "mid-1", "mid-2", "low"]

    def test_a_deferred_task_cannot_be_claimed_before_its_time(self, state: WorkerState) -> None:
        when = timezone.now() + timedelta(hours=1)
        result = tasks.record_label.using(run_after=when).enqueue("later")
        assert runner.claim(result.id, state, "sisy.run") is None
        assert runner.handle_wakeup(result.id, state, "sisy.run") == 0
        before = clock.tick(when - timedelta(seconds=1))
        assert before.deferred == 0
        assert clock.tick(when).deferred == 1
        Job.objects.filter(pk=result.id).update(run_after=timezone.now() - timedelta(seconds=1))
        assert runner.handle_wakeup(result.id, state, "sisy.run") == 1
        result.refresh()
        assert result.return_value == "later"


@needs_django_6
@pytest.mark.parametrize(
    ("formatted", "expected"),
    [
        (
            'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no\n',
            "builtins.ValueError",
        ),
        ('Traceback (most recent call last):\n  File "x.py"\nKeyError\n', "builtins.KeyError"),
        (
            "Traceback (most recent call last):\n  File \"a.py\"\nKeyError: 'a'\n\n"
            "The above exception was the direct cause of the following exception:\n\n"
            'Traceback (most recent call last):\n  File "b.py"\n    raise X\n'
            "app.errors.Refused: two\nlines: of message\n",
            "app.errors.Refused",
        ),
        ("worker lost", "builtins.Exception"),
        ("", "builtins.Exception"),
    ],
)
def test_the_exception_class_is_read_from_the_last_traceback(formatted: str, expected: str) -> None:
    assert exception_class_path(formatted) == expected


@needs_django_6
@pytest.mark.e2e
class TestOnRealWorkers:
    """Django's task API against ``sisy_worker`` processes (and a real clock)."""

    def test_tasks_run_on_a_worker_and_their_results_come_back(self, workers: Workers) -> None:
        workers.start("--worker-id", "tasks-1")
        results = {
            "add": tasks.add.enqueue(2, 3),
            "async": tasks.async_add.enqueue(40, 2),
            "loop": tasks.on_the_worker_loop.enqueue(),
            "context": tasks.about_myself.enqueue("ctx"),
            "explode": tasks.explode.enqueue("kaput"),
            "async api": async_to_sync(tasks.echo.aenqueue)("a", k=[1, 2]),
        }
        for name, result in results.items():
            wait_for(lambda r=result: r.refresh() or r.is_finished, 30, f"{name} to finish")
        assert results["add"].return_value == 5
        assert results["add"].worker_ids == ["tasks-1"]
        assert results["async"].return_value == 42
        assert results["loop"].return_value is True
        assert results["context"].return_value["worker_ids"] == ["tasks-1"]
        assert results["context"].return_value["id"] == results["context"].id
        assert results["async api"].return_value == {"args": ["a"], "kwargs": {"k": [1, 2]}}
        failed = results["explode"]
        assert failed.status == TaskResultStatus.FAILED
        assert failed.errors[0].exception_class is tasks.Boom
        assert "Boom: kaput" in failed.errors[0].traceback
        fetched = async_to_sync(default_task_backend.aget_result)(results["add"].id)
        assert fetched.return_value == 5
        for result in results.values():
            assert result.started_at and result.finished_at
            assert result.enqueued_at <= result.started_at <= result.finished_at

    def test_a_queue_runs_on_its_own_channel(self, workers: Workers, tmp_path: Path) -> None:
        # A project routing the emails queue's channel in its asgi.py, as the docs show.
        (tmp_path / "emails_asgi.py").write_text(
            "from channels.routing import ChannelNameRouter, ProtocolTypeRouter\n"
            "import django\n"
            "django.setup()\n"
            "import sisy.routing\n"
            "from sisy.consumers import RunConsumer\n"
            "routes = {**sisy.routing.channel_routes(), 'sisy.emails': RunConsumer.as_asgi()}\n"
            "application = ProtocolTypeRouter({'channel': ChannelNameRouter(routes)})\n"
        )
        (tmp_path / "emails_settings.py").write_text(
            "from tests.settings import *  # noqa: F403\n"
            "ASGI_APPLICATION = 'emails_asgi.application'\n"
        )
        workers.env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), workers.env["PYTHONPATH"]])
        workers.env["DJANGO_SETTINGS_MODULE"] = "emails_settings"
        workers.start("sisy.emails", "--worker-id", "mailer")
        email = tasks.send_email.enqueue("ada@example.com")
        other = tasks.add.enqueue(1, 1)  # on sisy.run, where nobody listens
        wait_for(lambda: email.refresh() or email.is_finished, 30, "the email to be sent")
        assert email.return_value == "sent to ada@example.com"
        assert email.worker_ids == ["mailer"]
        assert recorded("emails") == ["ada@example.com"]
        other.refresh()
        assert other.status == TaskResultStatus.READY

    def test_a_busy_worker_takes_the_highest_priority_next(
        self, workers: Workers, redis: Any
    ) -> None:
        workers.start()
        blocker = tasks.wait_for_release.enqueue("test:release")
        wait_for(
            lambda: blocker.refresh() or blocker.status == TaskResultStatus.RUNNING, 30, "blocker"
        )
        queued = [
            tasks.record_label.using(priority=-10).enqueue("low"),
            tasks.record_label.enqueue("normal"),
            tasks.record_label.using(priority=10).enqueue("high"),
        ]
        redis.set("test:release", "1")
        for result in queued:
            wait_for(lambda r=result: r.refresh() or r.is_finished, 30, "the queued tasks")
        assert recorded("django_runs") == ["high", "normal", "low"]

    def test_a_deferred_task_runs_after_its_time_woken_by_the_clock(self, workers: Workers) -> None:
        workers.env["SISY_TEST_HEARTBEAT_FREQUENCY"] = "1"
        workers.start("--worker-id", "deferred-1")
        workers.start(command="sisy_heartbeat")
        now_result = tasks.record_label.enqueue("now")
        wait_for(lambda: now_result.refresh() or now_result.is_finished, 30, "the worker to start")
        when = timezone.now() + timedelta(seconds=3)
        later = tasks.record_label.using(run_after=when).enqueue("later")
        later.refresh()
        assert later.status == TaskResultStatus.READY
        wait_for(lambda: later.refresh() or later.is_finished, 30, "the deferred task")
        assert later.return_value == "later"
        assert later.started_at >= when
        # Woken by the first tick after its time (ticks every second), with room for a slow CI.
        assert later.started_at - when < timedelta(seconds=6), later.started_at - when
        assert recorded("django_runs") == ["now", "later"]
