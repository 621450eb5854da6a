"""What an operator asks first: who is working, what is waiting, what failed.

Plain functions returning plain dicts; the ``sisy_status`` command prints
them, and the admin and the JSON API can serve the same.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db.models import Count, Min
from django.utils import timezone

from sisy.models import Job, JobStatus

logger = logging.getLogger("sisy.status")


def status_report(now: datetime | None = None, failures: int = 5) -> dict[str, Any]:
    """Live workers, jobs by status, the oldest queued job's age, the latest failures."""
    from sisy.heartbeat import live_workers

    now = now or timezone.now()
    try:
        workers: list[dict[str, Any]] | None = live_workers()
    except Exception as exc:  # Redis away: report the rest
        logger.warning("sisy: cannot read worker heartbeats: %s", exc)
        workers = None
    counts = dict.fromkeys(JobStatus.values, 0)
    for row in Job.objects.order_by().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    # Deferred jobs wait on purpose: the oldest *claimable* job says whether workers keep up.
    oldest = Job.objects.claimable(now=now).aggregate(at=Min("created_at"))["at"]
    failed = Job.objects.filter(status=JobStatus.FAILED).order_by("-finished_at")[:failures]
    return {
        "time": now.isoformat(),
        "workers": workers,
        "jobs": counts,
        "oldest_queued_seconds": round((now - oldest).total_seconds(), 3) if oldest else None,
        "recent_failures": [
            {
                "job_id": str(job.job_id),
                "job_title": job.job_title,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
                "error": job.error.strip().splitlines()[-1] if job.error.strip() else "",
            }
            for job in failed.only("job_id", "job_title", "finished_at", "error")
        ],
    }
