"""A Django Tasks backend: ``@task`` functions run as sisy jobs on sisy's workers.

Needs Django 6.0 or later (``django.tasks``); on older versions importing this
module raises ``ImportError`` saying so, and the rest of sisy works as before::

    TASKS = {
        "default": {
            "BACKEND": "sisy.backends.ChannelsBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"CHANNELS": {"emails": "sisy.emails"}},
        }
    }

Each enqueued task becomes a :class:`~sisy.models.Job` (its id is the
result's id) with one job task of sisy's internal ``sisy.django_task``
module, whose data holds the task's dotted path and JSON arguments. The
queue ``default`` runs on ``SISY_RUN_CHANNEL`` unless ``CHANNELS`` maps it
elsewhere; every other queue must be mapped to a channel. The task's priority
and ``run_after`` become the job's ``priority`` and ``run_after``, so a
worker starts higher priorities first and a deferred job is woken by the
clock once it is due. A worker resolves the dotted path and refuses anything
that is not a ``django.tasks.Task``.
"""

from __future__ import annotations

import math
import re
import traceback
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from django.utils import timezone
from django.utils.module_loading import import_string

from sisy.conf import sisy_settings

try:
    from django.tasks import (
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError as exc:  # Django < 6.0 has no django.tasks
    import django

    raise ImportError(
        "sisy.backends.ChannelsBackend needs Django 6.0 or later (django.tasks); "
        f"this is Django {django.get_version()}"
    ) from exc

if TYPE_CHECKING:
    from sisy.models import Job, JobTask

__all__ = ["ChannelsBackend", "InvalidTaskArguments", "JobFailed"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: A channel name Channels accepts, and that fits ``Job.channel``.
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}\Z")
_CLASS_PATH = re.compile(r"[^\W\d][\w.]*\Z")
#: In ``worker_ids``, an earlier attempt's worker (sisy keeps only the latest one).
UNKNOWN_WORKER = "?"

# Looked up by value: django-stubs types the members themselves as "...".
READY, RUNNING, SUCCESSFUL, FAILED = (
    TaskResultStatus(value) for value in ("READY", "RUNNING", "SUCCESSFUL", "FAILED")
)


class InvalidTaskArguments(InvalidTask, TypeError):
    """The arguments of a task cannot be stored as JSON; nothing was stored.

    Both an ``InvalidTask`` (Django's error for a task its backend refuses)
    and a ``TypeError`` (what Django's own backends raise for such arguments).
    """


class JobFailed(Exception):
    """A task's job failed outside the task function: its worker was lost, or
    its job was invalid. The ``TaskError``'s traceback holds sisy's reason."""


def _status(job_status: str) -> TaskResultStatus:
    from sisy.models import JobStatus

    return {
        JobStatus.QUEUED: READY,
        JobStatus.IN_PROGRESS: RUNNING,
        JobStatus.SUCCEEDED: SUCCESSFUL,
        JobStatus.FAILED: FAILED,
        JobStatus.CANCELLED: FAILED,  # Django has no "cancelled"
    }[job_status]


class ChannelsBackend(BaseTaskBackend):
    """Runs Django Tasks on sisy workers; results live in sisy's Job rows.

    ``OPTIONS``: ``CHANNELS`` maps queue names to sisy channels. The queue
    ``default`` goes to ``SISY_RUN_CHANNEL`` unless mapped; any other queue
    in ``QUEUES`` must be mapped.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        #: What is wrong with ``OPTIONS``, if anything: reported by
        #: ``manage.py check`` (sisy.E006) and raised on first use, rather than
        #: raised here, where Django's own check would crash on it.
        self.invalid: str | None = None
        try:
            self.channels = self._configured_channels()
        except InvalidTaskBackend as exc:
            self.invalid, self.channels = str(exc), {}

    def check(self, **kwargs: Any) -> list[Any]:
        """Django's check of this backend: its options, and the routing of its channels."""
        from django.core import checks

        from sisy.checks import unrouted

        messages = list(super().check(**kwargs))
        if self.invalid is not None:
            messages.append(
                checks.Error(
                    self.invalid,
                    hint="See sisy's docs on its Tasks backend for OPTIONS['CHANNELS'].",
                    id="sisy.E006",
                )
            )
            return messages
        found = unrouted(sorted(set(self.channels.values())))
        if found is not None:
            where, missing = found
            messages.append(
                checks.Warning(
                    f"TASKS[{self.alias!r}] sends tasks on channel(s) {', '.join(missing)}, "
                    f"which {where} does not route: workers would drop them.",
                    hint="Route each to sisy.consumers.RunConsumer in the ChannelNameRouter "
                    "of your ASGI application, with sisy.routing.channel_routes().",
                    id="sisy.W006",
                )
            )
        return messages

    def _configured_channels(self) -> dict[str, str]:
        where = f"TASKS[{self.alias!r}]"
        if not isinstance(self.options, Mapping):
            raise InvalidTaskBackend(f"{where}['OPTIONS'] must be a dict, not {self.options!r}")
        unknown = sorted(str(key) for key in self.options if key != "CHANNELS")
        if unknown:
            raise InvalidTaskBackend(
                f"{where}['OPTIONS'] has an unknown key {unknown[0]!r}; "
                "sisy's backend knows only 'CHANNELS'"
            )
        channels = self.options.get("CHANNELS", {})
        if not isinstance(channels, Mapping):
            raise InvalidTaskBackend(
                f"{where}['OPTIONS']['CHANNELS'] must map queue names to channel names, "
                f"not {channels!r}"
            )
        try:
            clock_channel = sisy_settings.HEARTBEAT_CHANNEL
        except ValueError:
            clock_channel = None  # sisy.E003 says why
        for queue, channel in channels.items():
            if not isinstance(channel, str) or not _CHANNEL_NAME.match(channel):
                raise InvalidTaskBackend(
                    f"{where}['OPTIONS']['CHANNELS'][{queue!r}] must be a channel name "
                    f"(at most 100 ASCII letters, digits, '.', '-' or '_'), not {channel!r}"
                )
            if channel == clock_channel:
                raise InvalidTaskBackend(
                    f"{where}['OPTIONS']['CHANNELS'][{queue!r}] is {channel!r}, the clock's "
                    "channel (SISY_HEARTBEAT_CHANNEL), whose consumer runs no jobs"
                )
            if self.queues and queue not in self.queues:
                raise InvalidTaskBackend(
                    f"{where}['OPTIONS']['CHANNELS'] maps the queue {queue!r}, "
                    f"which is not in {where}['QUEUES']"
                )
        for queue in sorted(self.queues):
            if queue != DEFAULT_TASK_QUEUE_NAME and queue not in channels:
                raise InvalidTaskBackend(
                    f"{where}: the queue {queue!r} has no channel; map it in "
                    f"OPTIONS['CHANNELS'], e.g. {{{queue!r}: 'sisy.{queue}'}}"
                )
        return dict(channels)

    def channel_for(self, queue_name: str) -> str:
        """The sisy channel whose workers run the tasks of ``queue_name``.

        ``InvalidTaskBackend`` when the backend's ``OPTIONS`` are invalid.
        """
        if self.invalid is not None:
            raise InvalidTaskBackend(self.invalid)
        channel = self.channels.get(queue_name)
        if channel is not None:
            return channel
        if queue_name == DEFAULT_TASK_QUEUE_NAME:
            return sisy_settings.RUN_CHANNEL
        raise InvalidTask(
            f"Queue {queue_name!r} has no sisy channel: map it in "
            f"TASKS[{self.alias!r}]['OPTIONS']['CHANNELS']."
        )

    def validate_task(self, task: Task[..., Any]) -> None:
        super().validate_task(task)
        if self.invalid is None:  # else: defining tasks is fine; check and enqueue() say why
            self.channel_for(task.queue_name)

    def enqueue(
        self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[_P, _R]:
        """Store the task as a queued job and wake a worker (on commit, once it is due)."""
        from sisy import dispatch
        from sisy.modules import registry
        from sisy.sisy_modules import DJANGO_TASK_MODULE
        from sisy.spec import MAX_TITLE_LENGTH, JobSpec, TaskSpec

        if self.invalid is not None:
            raise InvalidTaskBackend(self.invalid)
        self.validate_task(task)
        try:
            stored_args = _to_json(list(args), "args")
            stored_kwargs = _to_json(dict(kwargs), "kwargs")
        except TypeError as exc:
            raise InvalidTaskArguments(str(exc)) from None
        data = {
            "task": task.module_path,
            "args": stored_args,
            "kwargs": stored_kwargs,
            "backend": self.alias,
            "queue_name": task.queue_name,
        }
        problems = registry.validate(DJANGO_TASK_MODULE, data)
        if problems:
            raise InvalidTask("; ".join(str(problem) for problem in problems))
        job_spec = JobSpec(
            job_id=uuid.uuid4(),
            title=task.module_path[:MAX_TITLE_LENGTH],
            tasks=(TaskSpec(DJANGO_TASK_MODULE, data),),
        )
        try:
            job = dispatch.store(
                job_spec,
                channel=self.channel_for(task.queue_name),
                priority=task.priority,
                run_after=task.run_after,
            )
        except ValueError as exc:  # run_after or priority that sisy cannot store
            raise InvalidTask(str(exc)) from exc
        result = TaskResult(
            task=task,
            id=str(job.job_id),
            status=READY,
            enqueued_at=job.created_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=stored_args,
            kwargs=stored_kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        """The task's result as its job row says now; ``TaskResultDoesNotExist`` otherwise."""
        from sisy.models import JobTask
        from sisy.sisy_modules import DJANGO_TASK_MODULE

        try:
            job_id = uuid.UUID(str(result_id))
        except ValueError:
            raise TaskResultDoesNotExist(result_id) from None
        job_task = (
            JobTask.objects.select_related("job")
            .filter(job_id=job_id, position=0, module=DJANGO_TASK_MODULE)
            .first()
        )
        if job_task is None:
            raise TaskResultDoesNotExist(result_id)
        try:
            task = _enqueued_task(job_task.data, job_task.job)
        except (LookupError, TypeError) as exc:
            raise TaskResultDoesNotExist(f"{result_id}: {exc}") from exc
        return _result(task, job_task.job, job_task, backend=self.alias)


def _enqueued_task(data: Mapping[str, Any], job: Job | None) -> Task[..., Any]:
    """The Task at ``data["task"]``, with the queue, priority and time it was enqueued with.

    ``LookupError`` when the path cannot be imported; ``TypeError`` when it is
    not a ``django.tasks.Task`` (a plain function, a class, anything else).
    """
    path = data["task"]
    try:
        found = import_string(path)
    except ImportError as exc:
        raise LookupError(f"the task {path!r} cannot be imported: {exc}") from exc
    if not isinstance(found, Task):
        raise TypeError(
            f"{path!r} is a {type(found).__name__}, not a Django task (a @task function): "
            "sisy runs only django.tasks.Task objects"
        )
    if job is None:
        return found
    try:
        return found.using(
            backend=data.get("backend"),
            queue_name=data.get("queue_name"),
            priority=job.priority,
            run_after=job.run_after,
        )
    except (InvalidTask, InvalidTaskBackend):
        return found  # the configuration changed since; the task is still this one


def _result(
    task: Task[..., Any], job: Job, job_task: JobTask, *, backend: str
) -> TaskResult[..., Any]:
    status = _status(job.status)
    result = TaskResult(
        task=task,
        id=str(job.job_id),
        status=status,
        enqueued_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        last_attempted_at=job.started_at,
        args=job_task.data["args"],
        kwargs=job_task.data["kwargs"],
        backend=backend,
        errors=_errors(job, job_task) if status == FAILED else [],
        worker_ids=_worker_ids(job),
    )
    if status == SUCCESSFUL:
        object.__setattr__(result, "_return_value", job_task.result)
    return result


def _worker_ids(job: Job) -> list[str]:
    """One entry per attempt, as Django counts attempts; sisy keeps the latest worker only."""
    if not job.attempts:
        return []
    return [UNKNOWN_WORKER] * (job.attempts - 1) + [job.worker or UNKNOWN_WORKER]


def _errors(job: Job, job_task: JobTask) -> list[TaskError]:
    from sisy.exceptions import JobCancelled
    from sisy.models import JobStatus

    if job_task.error:
        return [
            TaskError(
                exception_class_path=exception_class_path(job_task.error),
                traceback=job_task.error,
            )
        ]
    if job.status == JobStatus.CANCELLED:
        cls: type[BaseException] = JobCancelled
        reason = job.error or "the job was cancelled"
    else:
        cls, reason = JobFailed, job.error or f"the job {job.status}"
    return [TaskError(exception_class_path=_class_path(cls), traceback=reason)]


def _class_path(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def exception_class_path(formatted: str) -> str:
    """The dotted class of the exception a formatted traceback ends with.

    Python prints the last exception after its last ``Traceback (most recent
    call last):`` header and the indented frame lines, as ``module.Class:
    message`` (``Class: message`` for built-in exceptions).
    """
    lines = formatted.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    name = ""
    if headers:
        for line in lines[headers[-1] + 1 :]:
            if line and not line[0].isspace():
                name = line.split(":", 1)[0].strip()
                break
    if not _CLASS_PATH.match(name):
        return "builtins.Exception"
    return name if "." in name else f"builtins.{name}"


def _to_json(value: Any, path: str) -> Any:
    """``value`` as the JSON it is stored as; ``TypeError`` naming the first part that is not.

    Like Django's ``normalize_json``, tuples become lists and UTF-8 bytes become
    strings; unlike it, non-string keys and NaN or infinite floats are refused,
    since JSON would not give them back as they were.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value!r}, which JSON cannot represent")
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise TypeError(f"{path} holds bytes that are not UTF-8 text") from None
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has the key {key!r}: JSON object keys are strings")
            converted[key] = _to_json(item, f"{path}[{key!r}]")
        return converted
    if isinstance(value, Sequence):
        return [_to_json(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise TypeError(
        f"{path} is a {type(value).__qualname__}, which cannot be stored as JSON "
        "(use str, int, float, bool, None, lists and dicts)"
    )


def run_task(data: Mapping[str, Any], job: Job | None) -> Any:
    """Run the task ``data`` describes, for ``job``: the ``sisy.django_task`` module's work.

    Sends ``task_started`` and ``task_finished`` as Django's backends do, and
    returns the JSON return value; an exception from the task propagates, so
    the worker records its traceback.
    """
    task = _enqueued_task(data, job)  # refuses anything but a Task
    args, kwargs = list(data["args"]), dict(data["kwargs"])
    result = TaskResult(
        task=task,
        id=str(job.job_id) if job is not None else "",
        status=RUNNING,
        enqueued_at=job.created_at if job is not None else None,
        started_at=job.started_at if job is not None else timezone.now(),
        finished_at=None,
        last_attempted_at=job.started_at if job is not None else None,
        args=args,
        kwargs=kwargs,
        backend=data.get("backend", task.backend),
        errors=[],
        worker_ids=_worker_ids(job) if job is not None else [],
    )
    task_started.send(ChannelsBackend, task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = _to_json(value, "the task's return value")
    except Exception as exc:
        object.__setattr__(result, "status", FAILED)
        object.__setattr__(result, "finished_at", timezone.now())
        result.errors.append(
            TaskError(
                exception_class_path=_class_path(type(exc)),
                traceback="".join(traceback.format_exception(exc)),
            )
        )
        task_finished.send(ChannelsBackend, task_result=result)
        raise
    object.__setattr__(result, "status", SUCCESSFUL)
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "_return_value", value)
    task_finished.send(ChannelsBackend, task_result=result)
    return value
