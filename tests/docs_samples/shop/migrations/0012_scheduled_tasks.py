# shop/migrations/0012_scheduled_tasks.py
from django.db import migrations

CUSTOMER_PK = "5b0c7a52-4f0e-4b8e-9f59-2a4a3c8f0d11"
LABELS = ["hourly-sync", "statement-ada"]


def create_tasks(apps, schema_editor):
    from sisy.models import task_with_callable

    task_with_callable("shop.tasks.sync", label="hourly-sync", schedule="0 * * * *").save()
    task_with_callable(
        "shop.models.Customer.send_statement",
        label="statement-ada",
        schedule="0 8 1 * *",
        pk_override=CUSTOMER_PK,
    ).save()


def remove_tasks(apps, schema_editor):
    from sisy.models import Task, taskinfo_with_label

    try:
        # The description of a method Task holds the instance's key.
        customer_pk = taskinfo_with_label("statement-ada")["model_pk"]
    except Task.DoesNotExist:
        customer_pk = None  # deleted by hand already: nothing to undo
    if customer_pk is not None:
        ...  # undo whatever was set up for that customer
    Task.objects.filter(label__in=LABELS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("shop", "0011_customer_statement"),
        ("sisy", "0002_scheduled_tasks"),
    ]

    operations = [migrations.RunPython(create_tasks, remove_tasks)]
