from django.db import migrations

from sisy.operations import CreateTask


class Migration(migrations.Migration):
    dependencies = [
        ("sisy", "0002_scheduled_tasks"),
    ]

    operations = [
        CreateTask(
            label="purge-old-jobs",
            callable="myapp.housekeeping.purge_old_jobs",
            schedule="30 3 * * *",
            userdata={"days": 30},
        ),
    ]
