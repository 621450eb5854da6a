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
