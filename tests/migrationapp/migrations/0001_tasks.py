"""The original sisy pattern: Tasks created in RunPython, removed by label on the way back."""

import contextlib

from django.db import migrations

LABELS = ["mig-function", "mig-classmethod", "mig-staticmethod", "mig-method"]
GADGET_PK = "5b0c7a52-4f0e-4b8e-9f59-2a4a3c8f0d11"


def create_tasks(apps, schema_editor):
    from sisy.models import task_with_callable
    from tests.testapp.models import Gadget
    from tests.testapp.tasks import record_run

    task_with_callable(record_run, label="mig-function", schedule="0 * * * *").save()
    task_with_callable(Gadget.nightly, label="mig-classmethod").save()
    task_with_callable("tests.testapp.models.Gadget.cleanup", label="mig-staticmethod").save()
    task_with_callable(
        "tests.testapp.models.Gadget.greet", label="mig-method", pk_override=GADGET_PK
    ).save()


def remove_tasks(apps, schema_editor):
    from sisy.models import Task, taskinfo_with_label

    # How a reverse migration finds the instance a method Task was made for
    # (unless the Task was already deleted by hand: nothing to undo then).
    with contextlib.suppress(Task.DoesNotExist):
        assert taskinfo_with_label("mig-method")["model_pk"] == GADGET_PK
    Task.objects.filter(label__in=LABELS).delete()


class Migration(migrations.Migration):
    dependencies = [("sisy", "0002_scheduled_tasks")]
    operations = [migrations.RunPython(create_tasks, remove_tasks)]
