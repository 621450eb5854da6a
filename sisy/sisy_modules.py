"""sisy's built-in modules, registered like any app's ``sisy_modules.py``."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from sisy import callables
from sisy.clock import TASK_MODULE
from sisy.models import Task
from sisy.modules import Module, register


@register(TASK_MODULE)
class RunTask(Module):
    """Runs one firing of a scheduled :class:`~sisy.models.Task`.

    Calls the task function with ``message``, a dict holding ``task`` (the Task,
    whose ``userdata`` the function may change: it is saved afterwards) and
    ``message`` (the run's details: job id, scheduled time, attempt).
    """

    public = False
    schema = {
        "type": "object",
        "required": ["task"],
        "properties": {"task": {"type": "integer"}},
        "additionalProperties": False,
    }

    def run(self) -> Any:
        try:
            task = Task.objects.get(pk=self.data["task"])
        except Task.DoesNotExist:
            raise LookupError(f"scheduled task {self.data['task']} no longer exists") from None
        function = callables.resolve(task.callable)
        userdata_before = json.dumps(task.userdata, cls=DjangoJSONEncoder, sort_keys=True)
        message: dict[str, Any] = {"type": "sisy.run"}
        if self.job is not None:
            message.update(
                job=str(self.job.pk),
                attempt=self.job.attempts,
                scheduled_for=self.job.scheduled_for.isoformat()
                if self.job.scheduled_for
                else None,
            )
        result = function({"task": task, "message": message})
        if json.dumps(task.userdata, cls=DjangoJSONEncoder, sort_keys=True) != userdata_before:
            Task.objects.filter(pk=task.pk).update(userdata=task.userdata)
        try:
            json.dumps(result, cls=DjangoJSONEncoder)
        except (TypeError, ValueError):
            return repr(result)
        return result


#: sisy's internal module running a Django Tasks ``@task`` function (see :mod:`sisy.backends`).
DJANGO_TASK_MODULE = "sisy.django_task"

#: A dotted path to a module-level name: ``package.module.name``.
_DOTTED_PATH = r"^[^\W\d]\w*(\.[^\W\d]\w*)+$"


@register(DJANGO_TASK_MODULE)
class RunDjangoTask(Module):
    """Runs one enqueued Django Tasks ``@task`` function.

    :class:`sisy.backends.ChannelsBackend` writes its data: the task's dotted
    path, its JSON arguments, and the backend alias and queue it was enqueued
    on. The worker runs only a ``django.tasks.Task`` found at that path, so a
    forged row cannot call an arbitrary function. Needs Django 6.0 or later.
    """

    public = False
    schema = {
        "type": "object",
        "required": ["task", "args", "kwargs"],
        "properties": {
            "task": {"type": "string", "pattern": _DOTTED_PATH, "maxLength": 500},
            "args": {"type": "array"},
            "kwargs": {"type": "object"},
            "backend": {"type": "string", "minLength": 1},
            "queue_name": {"type": "string", "minLength": 1},
        },
        "additionalProperties": False,
    }

    def run(self) -> Any:
        from sisy import backends  # ImportError before Django 6.0, saying so

        return backends.run_task(self.data, self.job)
