"""sisy: how the driver submits the job, reads its result and starts workers.

The job is the module ``bench.echo`` (benchapp/sisy_modules.py), one job task
per job. Workers are ``python -m django sisy_worker`` with benchsite.settings;
results are the job task's ``result`` column, read once the job is
``succeeded``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
django.setup()

from django.db import connection  # noqa: E402

import sisy  # noqa: E402
from sisy.models import Job, JobStatus, JobTask  # noqa: E402


def spec(n: int) -> dict[str, Any]:
    return {"job_title": "echo", "tasks": [{"module": "bench.echo", "data": {"n": n}}]}


class Adapter:
    name = "sisy"
    bulk_api = "sisy.submit_many" if hasattr(sisy, "submit_many") else None

    def submit(self, n: int) -> Any:
        return sisy.submit(spec(n)).pk

    def submit_bulk(self, ns: list[int]) -> list[Any]:
        submit_many = getattr(sisy, "submit_many", None)
        if submit_many is None:
            raise NotImplementedError
        return [job.pk for job in submit_many([spec(n) for n in ns])]

    def result(self, handle: Any) -> tuple[bool, Any]:
        rows = list(
            JobTask.objects.filter(job_id=handle, job__status=JobStatus.SUCCEEDED).values_list(
                "result", flat=True
            )[:1]
        )
        return (True, rows[0]) if rows else (False, None)

    def results(self) -> dict[Any, Any]:
        """Every succeeded job's result, in one query (for checking a drain)."""
        return dict(
            JobTask.objects.filter(job__status=JobStatus.SUCCEEDED).values_list("job_id", "result")
        )

    def worker_argv(self) -> list[str]:
        return [sys.executable, "-m", "django", "sisy_worker", "--verbosity", "0"]

    def reset(self) -> None:
        """Empty sisy's tables (the driver empties Redis).

        On PostgreSQL with TRUNCATE: each workload starts on fresh tables and
        indexes, not on the dead rows of the one before (this server may run
        without autovacuum, and a DELETE would leave them all there).
        """
        tables = [connection.ops.quote_name(m._meta.db_table) for m in (JobTask, Job)]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"TRUNCATE {', '.join(tables)}")
            else:
                for table in tables:
                    cursor.execute(f"DELETE FROM {table}")  # names from _meta
        connection.close()  # a fresh connection for what follows; SQLite frees its WAL
