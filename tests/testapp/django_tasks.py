"""Django Tasks (``@task`` functions) for tests/test_backends.py; Django >= 6.0 only.

They run on sisy's workers through ``sisy.backends.ChannelsBackend`` (see
``TASKS`` in tests/settings.py). Runs are recorded in Redis, so tests see what
really ran.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from typing import Any

from django.tasks import TaskContext, task

from tests.testapp.sisy_modules import _redis, record


class Boom(Exception):
    """A task's own exception, to find again by its dotted path."""


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@task
def explode(message: str) -> None:
    raise Boom(message)


@task
def bad_value(value: str) -> int:
    return int(value)  # ValueError for anything but digits


@task
def returns_a_datetime() -> datetime.datetime:
    return datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


@task(takes_context=True)
def about_myself(context: TaskContext, label: str) -> dict[str, Any]:
    result = context.task_result
    return {
        "label": label,
        "attempt": context.attempt,
        "id": result.id,
        "status": str(result.status),
        "queue_name": result.task.queue_name,
        "priority": result.task.priority,
        "worker_ids": result.worker_ids,
    }


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


@task
async def on_the_worker_loop() -> bool:
    """Whether this runs on the worker's own event loop (its main thread), as documented."""
    return threading.current_thread() is threading.main_thread()


@task
def record_label(label: str) -> str:
    record("django_runs", label)
    return label


@task(queue_name="emails")
def send_email(to: str) -> str:
    record("emails", to)
    return f"sent to {to}"


@task
def wait_for_release(key: str, timeout: float = 30.0) -> str:
    """Keep a worker busy until ``key`` is set in Redis."""
    deadline = time.monotonic() + timeout
    while not _redis().exists(key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was not set within {timeout}s")
        time.sleep(0.02)
    return "released"


def plain_function(*args: Any, **kwargs: Any) -> str:
    """Not a task: a forged job naming it must not run it."""
    record("plain", "ran")
    return "ran"
