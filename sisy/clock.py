"""The clock's tick: what happens every ``SISY_HEARTBEAT_FREQUENCY`` seconds.

``tick(now)`` is a plain function: the heartbeat consumer calls it for each
tick message and ``sisy_heartbeat --once`` calls it in-process. It

- requeues running jobs whose lease expired (their worker is presumed dead),
  or fails them with "worker lost" once they used ``max_attempts``;
- re-sends wake-ups for jobs queued longer than ``SISY_REDISPATCH_AFTER``
  (their wake-up may have been lost: Redis flushed, channel full, expired).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db.models import F
from django.utils import timezone

from sisy import dispatch
from sisy.conf import sisy_settings
from sisy.models import Job, JobStatus, JobTask, JobTaskStatus

logger = logging.getLogger("sisy.clock")

TICK_MESSAGE_TYPE = "sisy.tick"


@dataclass
class TickReport:
    """What one tick did: jobs requeued, jobs failed as lost, wake-ups sent."""

    requeued: int = 0
    lost: int = 0
    woken: int = 0


def tick(now: datetime | None = None) -> TickReport:
    """Run the clock's pass as of ``now`` (default: the current time)."""
    now = now or timezone.now()
    report = TickReport()
    report.requeued, report.lost = reap_expired_leases(now)
    report.woken = redispatch_stale(now)
    if report.requeued or report.lost or report.woken:
        logger.info(
            "sisy: tick requeued %d job(s), failed %d lost job(s), sent %d wake-up(s)",
            report.requeued,
            report.lost,
            report.woken,
        )
    return report


def reap_expired_leases(now: datetime) -> tuple[int, int]:
    """Requeue jobs whose worker stopped renewing their lease; fail those out of attempts."""
    expired = Job.objects.expired_leases(now)
    lost_ids = list(expired.filter(attempts__gte=F("max_attempts")).values_list("pk", flat=True))
    lost = 0
    if lost_ids:
        lost = (
            Job.objects.expired_leases(now)
            .filter(pk__in=lost_ids)
            .update(
                status=JobStatus.FAILED,
                finished_at=now,
                lease_expires_at=None,
                error="worker lost: the job's lease expired on its last allowed attempt",
            )
        )
        JobTask.objects.filter(
            job__in=lost_ids, status__in=[JobTaskStatus.PENDING, JobTaskStatus.RUNNING]
        ).update(status=JobTaskStatus.SKIPPED, finished_at=now)
    requeued = (
        Job.objects.expired_leases(now)
        .filter(attempts__lt=F("max_attempts"))
        .update(status=JobStatus.QUEUED, worker="", lease_expires_at=None)
    )
    return requeued, lost


def redispatch_stale(now: datetime) -> int:
    """Wake workers for queued jobs nobody started; a bounded number per channel.

    A woken worker drains its channel, so a few wake-ups restart the whole backlog.
    """
    limit = sisy_settings.SWEEP_MAX_WAKEUPS
    stale = Job.objects.stale(now, sisy_settings.REDISPATCH_AFTER)
    channels = stale.order_by().values_list("channel", flat=True).distinct()
    sent = 0
    for channel in channels:
        ids = list(
            stale.filter(channel=channel)
            .order_by("created_at")
            .values_list("pk", flat=True)[:limit]
        )
        sent += dispatch.wake(channel, ids)
    return sent
