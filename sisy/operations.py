"""Migration operations for scheduled Tasks.

In a data migration (depend on ``("sisy", "0002_scheduled_tasks")`` or later)::

    from sisy.operations import CreateTask

    operations = [
        CreateTask(label="nightly-report", callable="reports.tasks.nightly", schedule="0 3 * * *"),
    ]

Forwards creates the Task unless one with that label exists, so re-applying is
harmless; backwards deletes it (its Jobs are kept). It works on the migration's
historical models, and the callable is checked (imported) when the migration runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import ProjectState
from django.utils import timezone


class CreateTask(migrations.operations.base.Operation):
    reversible = True
    reduces_to_sql = False
    atomic = True

    def __init__(
        self,
        label: str,
        callable: str,
        schedule: str | None = None,
        *,
        pk_override: Any = None,
        userdata: dict[str, Any] | None = None,
        enabled: bool = True,
        iterations: int = 0,
        wait_for_schedule: bool = True,
        allow_overlap: bool = True,
        start_running: datetime | None = None,
        end_running: datetime | None = None,
    ) -> None:
        if not isinstance(callable, str):
            raise ValueError("CreateTask takes the task function as a dotted path string")
        self.label = label
        self.callable = callable
        self.schedule = schedule
        self.pk_override = pk_override
        self.userdata = userdata or {}
        self.enabled = enabled
        self.iterations = iterations
        self.wait_for_schedule = wait_for_schedule
        self.allow_overlap = allow_overlap
        self.start_running = start_running
        self.end_running = end_running

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"label": self.label, "callable": self.callable}
        for name, default in (
            ("schedule", None),
            ("pk_override", None),
            ("userdata", {}),
            ("enabled", True),
            ("iterations", 0),
            ("wait_for_schedule", True),
            ("allow_overlap", True),
            ("start_running", None),
            ("end_running", None),
        ):
            if getattr(self, name) != default:
                kwargs[name] = getattr(self, name)
        return "sisy.operations.CreateTask", [], kwargs

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        pass  # data only

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        from sisy import callables, cron, scheduling
        from sisy.conf import sisy_settings

        task_model = to_state.apps.get_model("sisy", "Task")
        manager = task_model._default_manager.using(schema_editor.connection.alias)
        if manager.filter(label=self.label).exists():
            return
        description = callables.describe(self.callable, pk_override=self.pk_override)
        schedule = self.schedule or sisy_settings.DEFAULT_SCHEDULE
        cron.parse(schedule)
        now = timezone.now()
        plan = scheduling.first_run(
            schedule,
            now,
            timezone.get_default_timezone(),
            start_running=self.start_running,
            end_running=self.end_running,
            wait_for_schedule=self.wait_for_schedule,
        )
        enabled = self.enabled and not plan.retire
        manager.create(
            label=self.label,
            schedule=schedule,
            callable=description,
            userdata=self.userdata,
            enabled=enabled,
            iterations=self.iterations,
            wait_for_schedule=self.wait_for_schedule,
            allow_overlap=self.allow_overlap,
            start_running=self.start_running,
            end_running=self.end_running,
            next_run=plan.next_run if enabled else None,
            retired_at=now if plan.retire else None,
        )

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        task_model = from_state.apps.get_model("sisy", "Task")
        task_model._default_manager.using(schema_editor.connection.alias).filter(
            label=self.label
        ).delete()

    def describe(self) -> str:
        return f"Create sisy task {self.label!r} running {self.callable}"

    @property
    def migration_name_fragment(self) -> str:
        return f"sisy_task_{self.label}".replace("-", "_").replace(".", "_")[:40]
