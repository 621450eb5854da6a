# reports/migrations/0007_nightly_task.py
from django.db import migrations

from sisy.operations import CreateTask


class Migration(migrations.Migration):
    dependencies = [
        ("reports", "0006_report_summary"),
        ("sisy", "0002_scheduled_tasks"),
    ]

    operations = [
        CreateTask(
            label="nightly-report",
            callable="reports.tasks.nightly",
            schedule="0 3 * * *",
            userdata={"recipients": ["ops@example.com"]},
        ),
    ]
