"""sisy's reversible migration operation: CreateTask.

Forwards it creates the Task unless one with that label exists; backwards it
deletes it. It works on the migration's historical Task model.
"""

from django.db import migrations

from sisy.operations import CreateTask


class Migration(migrations.Migration):
    dependencies = [
        ("scheduleapp", "0002_scheduled_tasks"),
        ("sisy", "0002_scheduled_tasks"),
    ]

    operations = [
        CreateTask(
            label="demo-createtask",
            callable="scheduleapp.tasks.tally",
            schedule="* * * * * */4",
            userdata={"from": "CreateTask"},
        ),
    ]
