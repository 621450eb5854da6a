"""The original sisy pattern: Tasks created in RunPython with task_with_callable.

Forwards: a customer with a fixed primary key, then one Task for each kind of
task function (a plain function, a classmethod, a staticmethod, and an instance
method of that customer named through ``pk_override``).
Backwards: ``taskinfo_with_label`` tells which customer the method Task was made
for; the Tasks are deleted by label (their Jobs are kept), then that customer.
"""

from django.db import migrations

#: The customer's key is fixed, so this migration can name it in pk_override.
CUSTOMER_PK = "0f4d5a1e-2c3b-4d5e-8f90-a1b2c3d4e5f6"
LABELS = ["demo-function", "demo-classmethod", "demo-staticmethod", "demo-method"]


def create_tasks(apps, schema_editor):
    # sisy's models are imported here, never at the top of a migration file.
    from sisy.models import task_with_callable

    from scheduleapp.models import Customer
    from scheduleapp.tasks import report

    apps.get_model("scheduleapp", "Customer").objects.create(pk=CUSTOMER_PK, name="Ada Lovelace")

    # Schedules with a sixth field, the second: every 2 to 5 seconds. The demo's
    # clock ticks every second (settings.py), since a Task fires at most once a tick.
    # A task function is given as the object itself or as its dotted path.
    task_with_callable(report, label="demo-function", schedule="* * * * * */2").save()
    task_with_callable(Customer.census, label="demo-classmethod", schedule="* * * * * */3").save()
    task_with_callable(
        "scheduleapp.models.Customer.tidy", label="demo-staticmethod", schedule="* * * * * */5"
    ).save()
    # An instance method by its path, the instance by its primary key: the worker
    # looks the customer up for every run.
    task_with_callable(
        "scheduleapp.models.Customer.greet",
        label="demo-method",
        schedule="* * * * * */2",
        pk_override=CUSTOMER_PK,
    ).save()


def remove_tasks(apps, schema_editor):
    from sisy.models import Task, taskinfo_with_label

    try:
        # The stored description of a method Task holds its instance's key.
        customer_pk = taskinfo_with_label("demo-method")["model_pk"]
    except Task.DoesNotExist:
        customer_pk = CUSTOMER_PK  # deleted by hand already
    Task.objects.filter(label__in=LABELS).delete()
    apps.get_model("scheduleapp", "Customer").objects.filter(pk=customer_pk).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("scheduleapp", "0001_initial"),
        ("sisy", "0002_scheduled_tasks"),
    ]

    operations = [migrations.RunPython(create_tasks, remove_tasks)]
