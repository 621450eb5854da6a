"""``manage.py sisy_submit spec.json [--wait]``: submit a job; optionally follow it to the end."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sisy.dispatch import submit
from sisy.exceptions import JobSpecError
from sisy.models import Job, JobStatus

BAR_WIDTH = 30


class Command(BaseCommand):
    help = (
        "Submit the job in a JSON file ('-' reads standard input). With --wait, show its "
        "progress until it ends; the exit status is 0 only if it succeeded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("spec", help="Path of a JSON job specification, or '-'.")
        parser.add_argument("--wait", action="store_true", help="Follow the job until it ends.")
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="With --wait, give up after this many seconds.",
        )
        parser.add_argument(
            "--interval", type=float, default=None, help="With --wait, seconds between polls (0.2)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        timeout, interval = options["timeout"], options["interval"]
        if not options["wait"] and (timeout is not None or interval is not None):
            raise CommandError("--timeout and --interval apply only with --wait")
        for name, value in (("--timeout", timeout), ("--interval", interval)):
            if value is not None and not value > 0:  # NaN too
                raise CommandError(f"{name} must be a positive number of seconds, not {value}")
        if interval is not None and not math.isfinite(interval):
            raise CommandError(f"--interval must be a finite number of seconds, not {interval}")
        text = self._read(options["spec"])
        try:
            job = submit(text)
        except JobSpecError as exc:
            raise CommandError(
                "invalid job specification:\n" + "\n".join(f"  {p}" for p in exc.problems)
            ) from None
        self.stdout.write(f"submitted job {job.job_id} ({job.job_title})")
        if options["wait"]:
            self._follow(job, timeout, max(0.05, 0.2 if interval is None else interval))

    def _read(self, source: str) -> str:
        if source == "-":
            return sys.stdin.read()
        try:
            return Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {source}: {exc}") from None

    def _follow(self, job: Job, timeout: float | None, interval: float) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        last = ""
        while True:
            job.refresh_from_db()
            tasks = job.ordered_tasks()
            line = _progress_line(job, tasks)
            if line != last:
                self.stdout.write(line)
                last = line
            if job.is_finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise CommandError(f"job {job.job_id} is still {job.status} after {timeout} s")
            time.sleep(interval)
        if job.status != JobStatus.SUCCEEDED:
            raise CommandError(
                f"job {job.job_id} {job.status}" + (f": {job.error}" if job.error else "")
            )
        self.stdout.write(self.style.SUCCESS(f"job {job.job_id} succeeded"))


def _progress_line(job: Job, tasks: list[Any]) -> str:
    """``[####......] task 2 of 3 (module) 40% message`` for the task in hand."""
    total = len(tasks) or 1
    current = next((t for t in tasks if t.status == "running"), None)
    done = sum(1 for t in tasks if t.status == "succeeded")
    if current is None:
        return f"{job.status}: {done} of {total} task(s) done"
    fraction = (done + current.progress) / total
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    message = f" {current.progress_message}" if current.progress_message else ""
    return (
        f"[{bar}] task {current.position + 1} of {total} ({current.module}) "
        f"{current.progress:.0%}{message}"
    )
