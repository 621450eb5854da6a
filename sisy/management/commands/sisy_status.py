"""``manage.py sisy_status``: live workers, jobs by status, oldest queued job, recent failures."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sisy.status import status_report


class Command(BaseCommand):
    help = "Show live workers, jobs by status, the oldest queued job's age and recent failures."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
        parser.add_argument(
            "--failures", type=int, default=5, help="How many recent failures to list (5)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["failures"] < 0:
            raise CommandError(f"--failures must be 0 or more, not {options['failures']}")
        report = status_report(failures=options["failures"])
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
            return
        workers = report["workers"]
        if workers is None:
            self.stdout.write(self.style.WARNING("Workers: unknown (Redis does not answer)"))
        else:
            self.stdout.write(f"Workers: {len(workers)} live")
            for worker in workers:
                doing = worker.get("status", "?")
                if worker.get("job_id"):
                    doing += f" {worker.get('job_title') or ''} ({worker['job_id']})"
                self.stdout.write(
                    f"  {worker.get('worker_id')} on {worker.get('hostname')}: {doing}"
                )
        jobs = report["jobs"]
        self.stdout.write("Jobs: " + ", ".join(f"{n} {status}" for status, n in jobs.items()))
        oldest = report["oldest_queued_seconds"]
        self.stdout.write(
            "Oldest queued job: " + ("none queued" if oldest is None else f"{oldest:.1f} s old")
        )
        failures = report["recent_failures"]
        if failures:
            self.stdout.write("Recent failures:")
            for failure in failures:
                self.stdout.write(
                    f"  {failure['finished_at']} {failure['job_title']} ({failure['job_id']}): "
                    f"{failure['error']}"
                )
