from django.db import migrations

import sisy.operations


class Migration(migrations.Migration):
    dependencies = [("migrationapp", "0001_tasks")]
    operations = [
        sisy.operations.CreateTask(
            label="mig-operation",
            callable="tests.testapp.tasks.record_run",
            schedule="*/5 * * * *",
            userdata={"from": "migration"},
        ),
    ]
