"""Tasks from data migrations: the RunPython pattern and CreateTask, both ways, re-applied."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from sisy.models import Task
from sisy.operations import CreateTask

pytestmark = pytest.mark.django_db(transaction=True)

ALL = ["mig-classmethod", "mig-function", "mig-method", "mig-operation", "mig-staticmethod"]


def labels() -> list[str]:
    return sorted(Task.objects.filter(label__startswith="mig-").values_list("label", flat=True))


def test_migrations_create_and_remove_tasks() -> None:
    call_command("migrate", "migrationapp", "zero", verbosity=0)
    assert labels() == []
    call_command("migrate", "migrationapp", verbosity=0)
    assert labels() == ALL
    kinds = {t.label: t.callable["kind"] for t in Task.objects.filter(label__startswith="mig-")}
    assert kinds == {
        "mig-function": "function",
        "mig-classmethod": "classmethod",
        "mig-staticmethod": "staticmethod",
        "mig-method": "method",
        "mig-operation": "function",
    }
    created = Task.objects.get(label="mig-operation")
    assert created.enabled and created.next_run is not None
    assert created.userdata == {"from": "migration"}
    call_command("migrate", "migrationapp", "0001", verbosity=0)
    assert "mig-operation" not in labels()
    call_command("migrate", "migrationapp", "zero", verbosity=0)
    assert labels() == []


def test_create_task_is_idempotent_when_re_applied() -> None:
    call_command("migrate", "migrationapp", verbosity=0)
    Task.objects.filter(label="mig-operation").update(schedule="0 0 * * *")
    call_command("migrate", "migrationapp", "0001", "--fake", verbosity=0)
    call_command("migrate", "migrationapp", verbosity=0)  # runs CreateTask again
    assert Task.objects.filter(label="mig-operation").count() == 1
    assert Task.objects.get(label="mig-operation").schedule == "0 0 * * *"  # left as it was


def test_create_task_checks_its_callable_and_deconstructs() -> None:
    with pytest.raises(ValueError, match="dotted path"):
        CreateTask(label="x", callable=print)  # type: ignore[arg-type]
    operation = CreateTask(label="x", callable="tests.testapp.tasks.record_run", iterations=3)
    assert operation.deconstruct() == (
        "sisy.operations.CreateTask",
        [],
        {"label": "x", "callable": "tests.testapp.tasks.record_run", "iterations": 3},
    )
    assert operation.describe() == "Create sisy task 'x' running tests.testapp.tasks.record_run"
